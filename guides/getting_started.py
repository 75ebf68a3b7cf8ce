"""
Title: Getting started with SigLIP 2 in Keras
Author: keras-siglip2 contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: Load a SigLIP 2 preset, score images against texts, classify
images zero-shot and retrieve images and captions.
Accelerator: None
"""

# ## Introduction
#
# SigLIP 2 (Tschannen et al., 2025, arXiv 2502.14786) is a pair of
# encoders, one for images and one for text, trained so that an image and
# a caption that describes it get a high score. The score of an image and
# a text is a logit `exp(t') * <image, text> + b` on L2-normalised
# embeddings, and `sigmoid(logit)` is the model's probability that the two
# belong together. Every pair is scored on its own (a *sigmoid*, not a
# softmax over the batch), which is what lets the same model be used for
#
# - **zero-shot classification**: score an image against one prompt per
#   class ("a photo of a red circle.") and take the best class;
# - **retrieval**: rank a gallery of captions for an image, or of images
#   for a caption;
# - **features**: use the image tower alone for a downstream model.
#
# This guide loads a model and its preprocessing from a *preset* and does
# all three.

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

from keras_siglip2 import eval as siglip2_eval  # noqa: E402
from keras_siglip2.data import generated_examples  # noqa: E402
from keras_siglip2.data import train_demo_sentencepiece  # noqa: E402
from keras_siglip2.data import zero_shot_class_names  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2ImageConverter  # noqa: E402
from keras_siglip2.models import SigLIP2Preprocessor  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2Tokenizer  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402
from keras_siglip2.models.presets import get_preset  # noqa: E402
from keras_siglip2.models.presets import preset_names  # noqa: E402

# ## Presets
#
# The released checkpoints are published as keras-hub presets. Their
# names say the size of the image tower (B, L, So400m, g), the patch size
# and the input resolution:

for name in preset_names("SigLIP 2")[:4]:
    print(f"{name}: {get_preset(name).description}")

# `SigLIP2Backbone.from_preset("siglip2_base_patch16_224")` downloads the
# weights through keras-hub (from Kaggle) and translates them into this
# library's classes; `SigLIP2Preprocessor.from_preset(...)` loads the
# matching tokenizer (Gemma, 256k pieces, lower-cased text, 64 tokens) and
# image converter (resize to 224 px, scale to `[-1, 1]`).
#
# `from_preset` also takes a local directory, which is what this guide
# uses when it runs offline (as in the tests): a tiny randomly
# initialised model with the same structure, and a SentencePiece
# vocabulary trained on the captions of the generated dataset, written
# with `save_to_preset`. Set `SIGLIP2_PRESET` to a preset name or
# directory to run the guide on real weights.

preset = os.environ.get("SIGLIP2_PRESET")
if preset is None:
    preset = tempfile.mkdtemp(prefix="siglip2_tiny_preset_")
    tokenizer = SigLIP2Tokenizer(
        proto=train_demo_sentencepiece(vocab_size=600, num_examples=300),
        sequence_length=16,
    )
    tiny = SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=32,
            patch_size=8,
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=64,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(),
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=64,
            max_sequence_length=16,
        ),
    )
    tiny.save_to_preset(preset)
    SigLIP2Preprocessor(
        tokenizer, SigLIP2ImageConverter(image_size=32)
    ).save_to_preset(preset)
    print(f"offline: wrote a tiny random preset to {preset}")
    print("preset files:", sorted(os.listdir(preset)))

# ## Loading
#
# One call each for the model and its preprocessing. The backbone is a
# `keras.Model`; its towers are `backbone.vision_encoder` and
# `backbone.text_encoder`.

backbone = SigLIP2Backbone.from_preset(preset)
preprocessor = SigLIP2Preprocessor.from_preset(preset)
vision = backbone.vision_encoder
print(
    f"image tower: {vision.image_size} px, patch {vision.patch_size}, "
    f"{vision.count_params():,} parameters; text tower: "
    f"{backbone.text_encoder.count_params():,} parameters"
)

# ## Images and texts
#
# No images are downloaded here: `keras_siglip2.data` generates a
# grounded, multilingual dataset of coloured shapes with captions, boxes
# and class labels, so everything below runs offline and has ground
# truth. Each example is a dict with a uint8 `"image"` (any size), its
# `"captions"` and, for single-object scenes, the class `"label"`.

examples = list(
    generated_examples("test", seed=0, num_examples=24, num_objects=(1, 1))
)
print("an example:", examples[0]["image"].shape, examples[0]["captions"][0])

# ## Image-text scores
#
# The preprocessor turns `{"images", "prompts"}` into model inputs (the
# images resized and scaled, the texts tokenized to fixed-length ids), and
# the backbone returns the `(num_images, num_texts)` logits. The numbers
# of images and texts need not match.

prompts = ["a red circle", "a blue square", "a green triangle"]
inputs = preprocessor(
    {"images": [e["image"] for e in examples[:2]], "prompts": prompts}
)
logits = backbone(inputs)
probabilities = keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))
for row, example in zip(probabilities, examples):
    print(
        f"image of '{example['captions'][0]}': "
        + ", ".join(f"'{p}' {q:.2g}" for p, q in zip(prompts, row))
    )

# A freshly initialised model starts with logit bias `b = -10`, so every
# probability is about `sigmoid(-10)`, 5e-5: most pairs in a batch are
# negatives, and this start keeps the loss from being swamped by them.
# A trained model gives matching pairs a high probability.

# The embeddings themselves come from `get_vision_embeddings` and
# `get_text_embeddings` (before L2 normalisation):

image_embeddings = backbone.get_vision_embeddings(inputs["images"])
text_embeddings = backbone.get_text_embeddings(inputs["token_ids"])
print(
    f"embeddings: images {tuple(image_embeddings.shape)}, texts "
    f"{tuple(text_embeddings.shape)}"
)

# ## Zero-shot classification
#
# `keras_siglip2.eval` runs the standard protocol: each class name goes
# into several prompt templates, the text embeddings are averaged per
# class, and each image gets the class with the closest embedding. The
# `BackboneEncoder` batches images and texts through the model (one
# compiled shape per tower).

encoder = siglip2_eval.BackboneEncoder(
    backbone, preprocessor.tokenizer, batch_size=8
)
class_names = zero_shot_class_names("en")
zero_shot = siglip2_eval.evaluate_zero_shot(
    encoder, examples, class_names, ks=(1, 5)
)
print(f"zero-shot over {len(class_names)} classes: {zero_shot}")

# The generated captions and class names exist in seven languages, and so
# do the templates; SigLIP 2 is multilingual, so a classifier can be built
# per language:

multilingual = siglip2_eval.evaluate_zero_shot(
    encoder,
    examples,
    {lang: zero_shot_class_names(lang) for lang in ("en", "de", "zh")},
    {
        lang: siglip2_eval.MULTILINGUAL_TEMPLATES[lang]
        for lang in ("en", "de", "zh")
    },
    ks=(1,),
)
print("per language:", {k: v for k, v in multilingual.items() if "/" in k})

# ## Retrieval
#
# Image-to-text and text-to-image recall at k over the captions of the
# examples:

retrieval = siglip2_eval.evaluate_retrieval(encoder, examples, ks=(1, 5))
print(
    siglip2_eval.format_table(
        {"zero_shot": zero_shot, "retrieval": retrieval},
        title="tiny random model (chance level)"
        if "SIGLIP2_PRESET" not in os.environ
        else preset,
    )
)

# With the tiny random model these numbers are at chance level (top-1
# about 1 / 80 for 80 classes, R@1 about 1 / 24). The fine-tuning guide
# (`guides/fine_tuning.py`) trains a model with `model.fit` and measures
# again.
