"""A tiny end-to-end recipe run, driven by test_recipe.py in subprocesses.

Usage: python recipe_script.py CHECKPOINT_DIR OUTPUT_NPZ [naflex] [stop=N]

With `stop=N`, `fit` first stops at step N and a second `fit` resumes
from the checkpoint (in the same process) to the end.

Runs stages A, B, C (fixed-res: 16 -> 20 px, keeping self-distillation;
NaFlex: lengths 8 and 16, half batches at 16) and D (ACID with a wider
teacher). Writes the final backbone weights and, under `__stages__`, the
stages whose end `on_stage_end` reported, with the backbone's input form.
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


def _tiny_backbone(tokenizer, width, patch_size, num_layers):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=patch_size,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=tokenizer.vocabulary_size(),
        hidden_dim=width,
        num_layers=num_layers,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=12,
    )
    return SigLIP2Backbone(vision, text)


def main(checkpoint_dir, output, naflex=False, stop_after_steps=None):
    keras.utils.set_random_seed(0)
    tokenizer = SigLIP2Tokenizer(
        proto=train_demo_sentencepiece(vocab_size=600, num_examples=100),
        sequence_length=12,
    )
    student = _tiny_backbone(tokenizer, 16, patch_size=4, num_layers=2)
    # ACID's teacher may differ in width and depth (the paper's is an
    # So400m); it reads the same token ids.
    teacher = _tiny_backbone(tokenizer, 24, patch_size=8, num_layers=1)
    config = RecipeConfig(
        total_examples=32,
        batch_size=4,
        checkpoint_every=2,
        image_size=16,
        decoder_length=20,
        num_location_bins=16,
        naflex=naflex,
        naflex_sequence_lengths=(8, 16),
        # Stage C: batches 6 (length 8), 7 and 8 (16, two half steps each)
        # in steps 6-11 (rounded up to a checkpoint segment).
        naflex_stretch=1.5,
        stage_c_image_size=None if naflex else 20,
        num_local_crops=2,
        local_crop_size=8,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        num_prototypes=32,
        num_patch_prototypes=16,
        distillation_examples=16,
    )
    recipe = SigLIP2Recipe(
        config,
        student,
        tokenizer,
        lambda start: generated_dataset(
            "train", seed=0, start=start, side_range=(16, 40)
        ),
        teacher=teacher,
    )
    stages = []

    def on_stage_end(name, backbone):
        stages.append(f"{name}:{'naflex' if backbone.naflex else 'fixed'}")

    if stop_after_steps is not None:
        recipe.fit(
            checkpoint_dir,
            verbose=0,
            stop_after_steps=stop_after_steps,
            on_stage_end=on_stage_end,
        )
    result = recipe.fit(checkpoint_dir, verbose=0, on_stage_end=on_stage_end)
    backbone = result["backbone"]
    np.savez(
        output,
        __stages__=np.array(stages, dtype=str),
        **{w.path: keras.ops.convert_to_numpy(w) for w in backbone.weights},
    )
    print("DONE", recipe.plan, sorted(result["histories"]))


if __name__ == "__main__":
    options = sys.argv[3:]
    stops = [int(o.split("=")[1]) for o in options if o.startswith("stop=")]
    main(
        sys.argv[1],
        sys.argv[2],
        naflex="naflex" in options,
        stop_after_steps=stops[0] if stops else None,
    )
