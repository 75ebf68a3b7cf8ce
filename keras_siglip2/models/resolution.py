"""Fixed-resolution adaptation: new image size or new patch size.

Used when a fixed-resolution model continues at another resolution (Stage
C): the position table is resized like an image (antialiased bilinear), and
a new patch size gets the FlexiViT pseudo-inverse (PI) resize of the patch
kernel, which keeps the embedding of a resized patch equal to the original
embedding of the original patch.
"""

import keras
import numpy as np

from keras_siglip2.layers.interpolation import linear_interpolation_matrix
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder


def pi_resize_patch_kernel(kernel: np.ndarray, patch_size: int) -> np.ndarray:
    """FlexiViT pseudo-inverse resize of a patch-embedding kernel.

    With `B` the bilinear resize of a `(p, p)` patch to `(q, q)` (as a
    `(q*q, p*p)` matrix), the new kernel solves `min ||B^T w' - w||` per
    channel and output: `w' = pinv(B^T) w`. When upsampling (`q >= p`),
    `<w', B x> = <w, x>` holds exactly for every patch `x`.

    Args:
        kernel: float `(p, p, channels, hidden_dim)`.
        patch_size: int. New patch side `q`.

    Returns:
        float32 `(q, q, channels, hidden_dim)`.
    """
    kernel = np.asarray(kernel, np.float64)
    old = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != old:
        raise ValueError(
            "`kernel` must have shape (p, p, channels, hidden_dim); got "
            f"{kernel.shape}."
        )
    # Upsampling kernels never antialias; for downsampling, FlexiViT's
    # reference resize is also plain bilinear.
    rows = np.asarray(
        linear_interpolation_matrix(old, patch_size, antialias=False),
        np.float64,
    )
    resize = np.kron(rows, rows)
    flat = kernel.reshape(old * old, -1)
    new = np.linalg.pinv(resize.T) @ flat
    return new.reshape((patch_size, patch_size) + kernel.shape[2:]).astype(
        np.float32
    )


def _copy_vision_encoder(encoder: SigLIP2VisionEncoder, **overrides):
    config = encoder.get_config()
    config.update(overrides)
    return SigLIP2VisionEncoder.from_config(config)


def _rebuild(backbone: SigLIP2Backbone, vision: SigLIP2VisionEncoder):
    """A new backbone with `vision`, copying every other weight."""
    text = keras.layers.deserialize(
        keras.layers.serialize(backbone.text_encoder)
    )
    config = backbone.get_config()
    new = SigLIP2Backbone(
        vision,
        text,
        logit_scale_init=config["logit_scale_init"],
        logit_bias_init=config["logit_bias_init"],
        naflex=backbone.naflex,
        dtype=config["dtype"],
    )
    new.text_encoder.set_weights(backbone.text_encoder.get_weights())
    new.contrastive_logits.set_weights(
        backbone.contrastive_logits.get_weights()
    )
    old_vision = backbone.vision_encoder
    skipped = {
        id(old_vision.patch_embedding.kernel),
        id(old_vision.position_embedding.embeddings),
    }
    for source, target in zip(old_vision.weights, new.vision_encoder.weights):
        if id(source) not in skipped:
            target.assign(source)
    return new


def with_image_size(
    backbone: SigLIP2Backbone, image_size: int
) -> SigLIP2Backbone:
    """Returns a copy of a fixed-resolution backbone for another image size.

    The position table is resized (antialiased bilinear) to the new
    `image_size // patch_size` grid; every other weight is copied.

    Args:
        backbone: a fixed-resolution `SigLIP2Backbone`.
        image_size: int. New square image side in pixels.

    Returns:
        A new `SigLIP2Backbone`; `backbone` is unchanged.
    """
    old = backbone.vision_encoder
    vision = _copy_vision_encoder(old, image_size=image_size)
    new = _rebuild(backbone, vision)
    grid = vision.grid_size
    new.vision_encoder.position_embedding.embeddings.assign(
        old.position_embedding.resize(grid, grid)
    )
    new.vision_encoder.patch_embedding.kernel.assign(old.patch_embedding.kernel)
    return new


def with_patch_size(
    backbone: SigLIP2Backbone, patch_size: int, image_size: int | None = None
) -> SigLIP2Backbone:
    """Returns a copy of a backbone with another patch size.

    The patch kernel is PI-resized (`pi_resize_patch_kernel`) and the
    position table resized to the new grid.

    Args:
        backbone: a `SigLIP2Backbone`.
        patch_size: int. New patch side.
        image_size: optional new image side; defaults to the current one.

    Returns:
        A new `SigLIP2Backbone`; `backbone` is unchanged.
    """
    old = backbone.vision_encoder
    vision = _copy_vision_encoder(
        old,
        patch_size=patch_size,
        image_size=image_size or old.image_size,
    )
    new = _rebuild(backbone, vision)
    grid = vision.grid_size
    new.vision_encoder.position_embedding.embeddings.assign(
        old.position_embedding.resize(grid, grid)
    )
    new.vision_encoder.patch_embedding.kernel.assign(
        pi_resize_patch_kernel(
            keras.ops.convert_to_numpy(old.patch_embedding.kernel),
            patch_size,
        )
    )
    return new
