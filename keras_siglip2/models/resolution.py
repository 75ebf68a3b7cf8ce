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


def resize_vision_weights(
    source: SigLIP2VisionEncoder, target: SigLIP2VisionEncoder
) -> None:
    """Copies a vision encoder's weights into one of another resolution
    or patch size.

    The position table is resized (antialiased bilinear) to `target`'s
    grid, the patch kernel is PI-resized (`pi_resize_patch_kernel`) when
    the patch sizes differ, and every other weight is copied.

    Args:
        source: a built `SigLIP2VisionEncoder`.
        target: a built encoder with the same config except `image_size`
            and/or `patch_size`.

    Raises:
        ValueError: if the two encoders differ in architecture.
    """
    if len(source.weights) != len(target.weights) or any(
        s.shape != t.shape
        for s, t in zip(source.weights, target.weights)
        if s is not source.position_embedding.embeddings
        and s is not source.patch_embedding.kernel
    ):
        raise ValueError(
            f"Encoders {source.name!r} and {target.name!r} differ in "
            "architecture (only image and patch size may differ)."
        )
    table = source.position_embedding.embeddings
    kernel = source.patch_embedding.kernel
    grid = target.grid_size
    for src, dst in zip(source.weights, target.weights):
        if src is table:
            value = source.position_embedding.resize(grid, grid)
        elif src is kernel and source.patch_size != target.patch_size:
            value = pi_resize_patch_kernel(
                keras.ops.convert_to_numpy(kernel), target.patch_size
            )
        else:
            value = src.value
        dst.assign(value)


def _rebuild(backbone: SigLIP2Backbone, vision: SigLIP2VisionEncoder):
    """A new backbone with `vision`, every weight copied or resized."""
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
    resize_vision_weights(backbone.vision_encoder, new.vision_encoder)
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
    vision = _copy_vision_encoder(
        backbone.vision_encoder, image_size=image_size
    )
    return _rebuild(backbone, vision)


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
    return _rebuild(backbone, vision)
