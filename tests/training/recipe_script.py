"""A tiny end-to-end recipe run, driven by test_recipe.py in subprocesses.

Usage: python recipe_script.py CHECKPOINT_DIR OUTPUT_NPZ [naflex]
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip2.data.generated import generated_dataset  # noqa: E402
from keras_siglip2.data.vocabulary import train_demo_sentencepiece  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2Tokenizer  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402
from keras_siglip2.training.recipe import RecipeConfig  # noqa: E402
from keras_siglip2.training.recipe import SigLIP2Recipe  # noqa: E402


def main(checkpoint_dir, output, naflex):
    keras.utils.set_random_seed(0)
    tokenizer = SigLIP2Tokenizer(
        proto=train_demo_sentencepiece(vocab_size=600, num_examples=100),
        sequence_length=12,
    )
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=4,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=tokenizer.vocabulary_size(),
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=12,
    )
    config = RecipeConfig(
        total_examples=32,
        batch_size=4,
        checkpoint_every=2,
        image_size=16,
        decoder_length=20,
        num_location_bins=16,
        naflex=naflex,
        naflex_sequence_lengths=(8, 16),
        stage_c_image_size=None if naflex else 20,
        num_local_crops=2,
        local_crop_size=8,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        num_prototypes=32,
        num_patch_prototypes=16,
    )
    recipe = SigLIP2Recipe(
        config,
        SigLIP2Backbone(vision, text),
        tokenizer,
        lambda start: generated_dataset(
            "train", seed=0, start=start, side_range=(16, 40)
        ),
    )
    result = recipe.fit(checkpoint_dir, verbose=0)
    backbone = result["backbone"]
    np.savez(
        output,
        **{w.path: keras.ops.convert_to_numpy(w) for w in backbone.weights},
    )
    print("DONE", recipe.plan)


if __name__ == "__main__":
    main(
        sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "naflex"
    )
