"""`SigLIP2ImageConverter`: fixed-resolution resize and scale to [-1, 1]."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.tensor_utils import in_tf_function

from keras_siglip2.models.backbone import SigLIP2Backbone

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos3", "lanczos5")


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2ImageConverter(ImageConverter):
    """Resizes RGB images to `image_size` and scales them to `[-1, 1]`.

    Images are cast to float, resized (the whole image, aspect ratio not
    kept, like HF and big_vision) and mapped by `x * scale + offset`; the
    defaults turn pixel values in `[0, 255]` into `x / 127.5 - 1` in
    `[-1, 1]`. Inputs are expected in the `[0, 255]` range, as `uint8` or
    float; for float images in `[0, 1]` pass `scale=2.0, offset=-1.0`.

    Resampling defaults to HF's `SiglipImageProcessor` (and keras-hub's
    SigLIP presets): bicubic with antialiasing. big_vision's SigLIP 2 demo
    resizes bilinearly without antialiasing; get that with
    `interpolation="bilinear", antialias=False`.

    Differences from HF. HF resizes `uint8` images (PIL, or torchvision for
    `uint8` tensors) in two separable passes, rounding and clipping to
    `[0, 255]` after each; this layer resizes in float in one pass and does
    not clip. With the same kernel the results differ by at most about one
    `uint8` step (`1 / 127.5`), except where bicubic overshoots `[0, 255]`
    next to sharp edges: there HF clips and this layer keeps the overshoot
    (values slightly outside `[-1, 1]`). Inputs already at `image_size`
    pass through the resize unchanged, so they match HF exactly.

    Eagerly, a list of images of different sizes is accepted and gives one
    batch. In `tf.data.Dataset.map`, map single images or batches of equal
    size; problems that are only known at run time (empty images,
    non-finite values) then raise `tf.errors.InvalidArgumentError`
    instead of `ValueError`, with the same message.

    NaFlex (native aspect ratio, variable patch count) is not done here:
    a NaFlex converter subclasses this layer and overrides `_convert`
    (checked images in, model inputs out); the checks, configuration and
    serialization stay shared.

    Args:
        image_size: int or `(height, width)`. Output size; `None` skips
            resizing.
        scale: float or per-channel tuple. Multiplies the resized image.
        offset: float or per-channel tuple. Added after `scale`.
        interpolation: one of `"bilinear"`, `"bicubic"`, `"nearest"`,
            `"lanczos3"`, `"lanczos5"`.
        antialias: bool. Antialias when downsampling.
        crop_to_aspect_ratio: bool. Centre-crop to the output aspect ratio
            before resizing (not what SigLIP's pipelines do).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        images: `(height, width, 3)` or `(batch, height, width, 3)` pixel
            values in `[0, 255]`, any real dtype; eagerly also a list of
            `(height, width, 3)` images.

    Returns:
        float `(image_size, image_size, 3)` or `(batch, image_size,
        image_size, 3)`, in `[-1, 1]` (up to bicubic overshoot).

    Example:
    >>> converter = SigLIP2ImageConverter(image_size=224)
    >>> images = np.random.randint(0, 256, (2, 300, 400, 3), "uint8")
    >>> tuple(converter(images).shape)
    (2, 224, 224, 3)
    """

    backbone_cls = SigLIP2Backbone

    def __init__(
        self,
        image_size,
        scale=1.0 / 127.5,
        offset=-1.0,
        interpolation: str = "bicubic",
        antialias: bool = True,
        crop_to_aspect_ratio: bool = False,
        **kwargs,
    ):
        if isinstance(image_size, int) and not isinstance(image_size, bool):
            image_size = (image_size, image_size)
        if image_size is not None:
            image_size = tuple(image_size)
            if len(image_size) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0
                for s in image_size
            ):
                raise ValueError(
                    "`image_size` must be a positive int or a pair of "
                    f"positive ints; got {image_size!r}."
                )
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {INTERPOLATIONS}; got "
                f"{interpolation!r}."
            )
        data_format = kwargs.pop("data_format", "channels_last")
        if data_format != "channels_last":
            raise ValueError(
                "SigLIP2ImageConverter works on channels-last images; got "
                f"data_format={data_format!r}."
            )
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=interpolation,
            antialias=antialias,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            data_format="channels_last",
            **kwargs,
        )

    def _convert(self, images):
        """Resizes and rescales checked float images (rank 3 or 4)."""
        return super()._call_python(images)

    def _call_python(self, inputs):
        if in_tf_function():
            images = _check_images_tf(inputs)
            return self._convert(tf.cast(images, self.compute_dtype))
        if isinstance(inputs, (list, tuple)):
            images = [np.asarray(keras.ops.convert_to_numpy(x)) for x in inputs]
            if len({x.shape for x in images}) > 1:
                return ops.stack([self._call_python(image) for image in images])
            inputs = np.stack(images) if images else np.asarray(images)
        images = _check_images_numpy(keras.ops.convert_to_numpy(inputs))
        return self._convert(images.astype(self.compute_dtype))


def _describe(shape) -> str:
    return f"shape {tuple(shape)}"


def _check_static_shape(shape) -> None:
    """Rank, channels and (when known) spatial size; raises `ValueError`."""
    if shape.rank is not None and shape.rank not in (3, 4):
        raise ValueError(
            "Images must have shape (height, width, 3) or (batch, height, "
            f"width, 3); got {_describe(shape)}."
        )
    if shape.rank is None:
        return
    if shape[-1] is not None and shape[-1] != 3:
        raise ValueError(
            f"Images must have 3 (RGB) channels; got {shape[-1]} channels "
            f"in {_describe(shape)}."
        )
    if any(side == 0 for side in shape[-3:-1]):
        raise ValueError(
            f"Images must not be empty; got {_describe(shape)} (zero "
            "height or width)."
        )


def _check_images_numpy(images: np.ndarray) -> np.ndarray:
    """Checks concrete images; returns them unchanged."""
    if images.dtype.kind not in "uif":
        raise ValueError(
            f"Images must hold real numbers; got dtype {images.dtype} in "
            f"{_describe(images.shape)}."
        )
    _check_static_shape(tf.TensorShape(images.shape))
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        count = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
        raise ValueError(
            f"Images must be finite; got {count} NaN or infinite values in "
            f"{_describe(images.shape)}."
        )
    return images


def _check_images_tf(images):
    """Checks symbolic images in `tf.data`; returns them unchanged."""
    images = tf.convert_to_tensor(images)
    if not (images.dtype.is_integer or images.dtype.is_floating):
        raise ValueError(
            f"Images must hold real numbers; got dtype {images.dtype.name} "
            f"in {_describe(images.shape)}."
        )
    _check_static_shape(images.shape)
    spatial = tf.shape(images)[-3:-1]
    assert_size = tf.debugging.assert_positive(
        spatial,
        message="Images must not be empty (zero height or width)",
    )
    with tf.control_dependencies([assert_size]):
        images = tf.identity(images)
    if images.dtype.is_floating:
        images = tf.debugging.check_numerics(
            images, "Images must be finite; got NaN or infinite values"
        )
    return images
