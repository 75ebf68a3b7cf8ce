"""
Title: NaFlex: native aspect ratio and variable resolution with SigLIP 2
Author: keras-siglip2 contributors
Description: Encode very wide and very tall images at several sequence
lengths with one NaFlex checkpoint, and look at the patch grids chosen.
Accelerator: None
"""

# ## Introduction
#
# Fixed-resolution ViTs squash every image to a square. NaFlex (SigLIP 2,
# Sec. 2.4) instead resizes each image so that both sides are multiples of
# the patch size, its aspect ratio is kept as well as possible, and its
# patch count fits a *sequence length* chosen at inference time. The patches
# are padded to that length; a mask keeps the padding out of every
# attention, and the learned 16 x 16 position table is resized to each
# image's own patch grid.
#
# One checkpoint serves every sequence length: more patches, more detail,
# more compute.

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from keras_siglip2.data.naflex import naflex_image_size  # noqa: E402
from keras_siglip2.data.naflex import naflex_preprocess_batch  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402

# ## A model
#
# A released NaFlex checkpoint in HF format loads with
# `keras_siglip2.convert.hf.load_hf_checkpoint(path)` (for example a local
# copy of `google/siglip2-base-patch16-naflex`). Point `SIGLIP2_NAFLEX` at
# such a directory to use it. Without one (this guide runs offline), we
# build a tiny randomly initialised NaFlex model with the same structure:
# patch 16 and a 16 x 16 position table.

checkpoint = os.environ.get("SIGLIP2_NAFLEX")
if checkpoint:
    from keras_siglip2.convert.hf import load_hf_checkpoint

    backbone = load_hf_checkpoint(checkpoint)
else:
    vision = SigLIP2VisionEncoder(
        image_size=256,
        patch_size=16,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=1000,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
    )
    backbone = SigLIP2Backbone(vision, text, naflex=True)
patch_size = backbone.vision_encoder.patch_size

# ## Two extreme images
#
# A banner (wide) and a receipt (tall), drawn procedurally: stripes and a
# disc, in 8-bit RGB.


def draw(height, width, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), "float32")
    image[..., 0] = 127 + 120 * np.sin(x / 9.0)
    image[..., 1] = 127 + 120 * np.cos(y / 13.0)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    radius = 0.3 * min(height, width)
    image[(y - cy) ** 2 + (x - cx) ** 2 < radius**2] = (250, 250, 40)
    return image.astype("uint8")


wide = draw(120, 900, seed=0)
tall = draw(1000, 150, seed=1)

# ## The patch grid at each sequence length
#
# `naflex_image_size` finds the largest aspect-preserving size whose patch
# count fits the sequence length; the grid is that size over the patch
# size. Sequence lengths of the released models are 128 to 1024.

for length in (128, 576):
    for name, image in (("wide", wide), ("tall", tall)):
        height, width = (
            int(v)
            for v in naflex_image_size(
                image.shape[0], image.shape[1], patch_size, length
            )
        )
        grid = (height // patch_size, width // patch_size)
        print(
            f"{name} {image.shape[0]}x{image.shape[1]} at length {length}: "
            f"resized to {height}x{width}, grid {grid[0]}x{grid[1]} = "
            f"{grid[0] * grid[1]} patches"
        )

# ## Encoding
#
# `naflex_preprocess_batch` returns the three inputs of a NaFlex model:
# padded patches, the validity mask and each image's grid. Both images
# share one batch, each with its own grid.

for length in (128, 576):
    inputs = naflex_preprocess_batch([wide, tall], patch_size, length)
    embeddings = np.asarray(backbone.get_vision_embeddings(inputs))
    print(
        f"length {length}: patches {inputs['patches'].shape}, real patches "
        f"{inputs['patch_mask'].sum(-1).tolist()}, grids "
        f"{inputs['spatial_shapes'].tolist()}, embeddings {embeddings.shape}"
    )

# ## Text and logits
#
# Text goes through the text tower as usual (64 right-padded token ids;
# see the tokenizer). Logits are the same sigmoid image-text scores as the
# fixed-resolution model.

token_ids = np.zeros((2, backbone.text_encoder.max_sequence_length), "int32")
token_ids[:, :3] = [[5, 6, 1], [7, 8, 1]]
logits = backbone({**inputs, "token_ids": token_ids})
print("image-text logits:", np.round(np.asarray(logits), 3).tolist())

# ## Compilation
#
# Every distinct sequence length is a distinct static shape, so a jitted
# model compiles once per length. In training, draw one length per batch
# (`keras_siglip2.data.naflex.naflex_batches`) from a small set such as
# {128, 256, 576, 784, 1024}.
