"""`SigLIP2ImageConverter`: images to model inputs, fixed-res or NaFlex."""

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.tensor_utils import (
    convert_preprocessing_outputs_python,
)
from keras_hub.src.utils.tensor_utils import in_tf_function

from keras_siglip2.data.naflex import naflex_preprocess
from keras_siglip2.data.naflex import naflex_preprocess_batch
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.presets import PresetFiles

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos3", "lanczos5")


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2ImageConverter(ImageConverter):
    """Resizes RGB images and scales them to `[-1, 1]`; fixed-res or NaFlex.

    Fixed resolution (default): each image becomes `image_size`.

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

    NaFlex (`naflex=True`, with `patch_size` and `max_num_patches`): each
    image keeps its aspect ratio (as closely as a patch grid allows) and
    becomes at most `max_num_patches` flattened patches, padded to exactly
    `max_num_patches`, with a mask and its grid shape: the inputs of a
    `SigLIP2Backbone(naflex=True)`. This is
    `keras_siglip2.data.naflex.naflex_preprocess` (HF's
    `Siglip2ImageProcessor`: antialiased bilinear resize, so
    `interpolation` must be `"bilinear"`, its default in this mode), with
    the value range given by `scale` and `offset` (which must then be
    scalars). Images of different sizes can share a batch: eagerly as a
    list, in `tf.data` as a `tf.RaggedTensor` batch (`ragged_batch`), or
    map single images and `batch` the fixed-size results.

    Args:
        image_size: int or `(height, width)`. Output size; `None` skips
            resizing. Must be `None` with `naflex=True`.
        scale: float or per-channel tuple. Multiplies the resized image.
        offset: float or per-channel tuple. Added after `scale`.
        interpolation: one of `"bilinear"`, `"bicubic"`, `"nearest"`,
            `"lanczos3"`, `"lanczos5"`; `None` for the mode's default
            (`"bicubic"` fixed-res, `"bilinear"` NaFlex).
        antialias: bool. Antialias when downsampling.
        crop_to_aspect_ratio: bool. Centre-crop to the output aspect ratio
            before resizing (not what SigLIP's pipelines do).
        naflex: bool. NaFlex outputs instead of fixed-size images.
        patch_size: int. NaFlex patch side in pixels; NaFlex only.
        max_num_patches: int. NaFlex sequence length; NaFlex only.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        images: `(height, width, 3)` or `(batch, height, width, 3)` pixel
            values in `[0, 255]`, any real dtype; eagerly also a list of
            `(height, width, 3)` images; in NaFlex mode in `tf.data` also a
            ragged `(batch, None, None, 3)` batch.

    Returns:
        Fixed-res: float `(image_size, image_size, 3)` or `(batch,
        image_size, image_size, 3)`, in `[-1, 1]` (up to bicubic
        overshoot). NaFlex: a dict with `"patches"`: float `([batch,]
        max_num_patches, patch_size**2 * 3)`, `"patch_mask"`: int32
        `([batch,] max_num_patches)` (1 for real patches, a prefix) and
        `"spatial_shapes"`: int32 `([batch,] 2)` patch-grid rows and
        columns.

    Example:
    >>> converter = SigLIP2ImageConverter(image_size=224)
    >>> images = np.random.randint(0, 256, (2, 300, 400, 3), "uint8")
    >>> tuple(converter(images).shape)
    (2, 224, 224, 3)
    >>> naflex = SigLIP2ImageConverter(
    ...     naflex=True, patch_size=16, max_num_patches=256)
    >>> inputs = naflex([images[0], images[1, :100]])
    >>> tuple(inputs["patches"].shape), inputs["spatial_shapes"].tolist()
    ((2, 256, 768), [[14, 18], [8, 32]])
    """

    backbone_cls = SigLIP2Backbone

    def __init__(
        self,
        image_size=None,
        scale=1.0 / 127.5,
        offset=-1.0,
        interpolation: str | None = None,
        antialias: bool = True,
        crop_to_aspect_ratio: bool = False,
        naflex: bool = False,
        patch_size: int | None = None,
        max_num_patches: int | None = None,
        **kwargs,
    ):
        if interpolation is None:
            interpolation = "bilinear" if naflex else "bicubic"
        if naflex:
            _check_naflex_arguments(
                image_size,
                scale,
                offset,
                interpolation,
                crop_to_aspect_ratio,
                patch_size,
                max_num_patches,
                kwargs,
            )
        elif patch_size is not None or max_num_patches is not None:
            raise ValueError(
                "`patch_size` and `max_num_patches` are NaFlex settings; "
                "pass `naflex=True` (got patch_size="
                f"{patch_size!r}, max_num_patches={max_num_patches!r})."
            )
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
        self.naflex = bool(naflex)
        self.patch_size = patch_size
        self.max_num_patches = max_num_patches

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads the image converter of a preset directory, name or handle.

        See `load_image_converter`.

        Args:
            preset: string or path.
            **kwargs: constructor arguments that replace the preset's.

        Returns:
            A `SigLIP2ImageConverter`.
        """
        return load_image_converter(preset, **kwargs)

    def _convert(self, images):
        """Resizes and rescales checked float images (rank 3 or 4)."""
        return super()._call_python(images)

    @property
    def value_range(self) -> tuple[float, float]:
        """Input values that `scale` and `offset` map to `-1` and `1`."""
        return (
            (-1.0 - self.offset) / self.scale,
            (1.0 - self.offset) / self.scale,
        )

    def _naflex_one(self, image):
        return naflex_preprocess(
            image,
            self.patch_size,
            self.max_num_patches,
            value_range=self.value_range,
            antialias=self.antialias,
        )

    def _naflex_tf(self, images):
        """NaFlex in TensorFlow ops: one image, or a dense/ragged batch."""
        if isinstance(images, tf.RaggedTensor):
            if images.shape.rank != 4:
                raise ValueError(
                    "A ragged NaFlex batch must have shape (batch, height, "
                    f"width, 3); got shape {images.shape}."
                )
            return tf.map_fn(
                lambda image: self._naflex_one(
                    _check_images_tf(image.to_tensor())
                ),
                images,
                fn_output_signature=self._naflex_signature(),
            )
        images = _check_images_tf(images)
        if images.shape.rank == 3:
            return self._naflex_one(images)
        return tf.map_fn(
            self._naflex_one,
            images,
            fn_output_signature=self._naflex_signature(),
        )

    def _naflex_signature(self):
        length, dim = self.max_num_patches, self.patch_size**2 * 3
        return {
            "patches": tf.TensorSpec((length, dim), tf.float32),
            "patch_mask": tf.TensorSpec((length,), tf.int32),
            "spatial_shapes": tf.TensorSpec((2,), tf.int32),
        }

    def _naflex_python(self, inputs):
        if isinstance(inputs, (list, tuple)):
            images = [np.asarray(keras.ops.convert_to_numpy(x)) for x in inputs]
            batched = True
        else:
            images = np.asarray(keras.ops.convert_to_numpy(inputs))
            batched = images.ndim == 4
            images = list(images) if batched else [images]
        for index, image in enumerate(images):
            try:
                _check_images_numpy(image)
                if image.ndim != 3:
                    raise ValueError(
                        "NaFlex images must have shape (height, width, 3) "
                        f"each; got {_describe(image.shape)}."
                    )
            except ValueError as e:
                if not batched:
                    raise
                raise ValueError(f"Image {index}: {e}") from None
        outputs = naflex_preprocess_batch(
            images,
            self.patch_size,
            self.max_num_patches,
            value_range=self.value_range,
            antialias=self.antialias,
        )
        if not batched:
            outputs = {key: value[0] for key, value in outputs.items()}
        return outputs

    def _call_python(self, inputs):
        if self.naflex:
            if in_tf_function():
                outputs = self._naflex_tf(inputs)
                patches = tf.cast(outputs["patches"], self.compute_dtype)
                return {**outputs, "patches": patches}
            outputs = self._naflex_python(inputs)
            patches = outputs["patches"].astype(self.compute_dtype)
            return convert_preprocessing_outputs_python(
                {**outputs, "patches": patches}
            )
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

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "naflex": self.naflex,
                "patch_size": self.patch_size,
                "max_num_patches": self.max_num_patches,
            }
        )
        return config


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_naflex_arguments(
    image_size,
    scale,
    offset,
    interpolation,
    crop_to_aspect_ratio,
    patch_size,
    max_num_patches,
    kwargs,
) -> None:
    """Raises `ValueError` for settings that NaFlex cannot honour."""
    if not _positive_int(patch_size) or not _positive_int(max_num_patches):
        raise ValueError(
            "NaFlex needs positive int `patch_size` and `max_num_patches`; "
            f"got patch_size={patch_size!r}, "
            f"max_num_patches={max_num_patches!r}."
        )
    if image_size is not None:
        raise ValueError(
            "NaFlex picks each image's size from `patch_size` and "
            f"`max_num_patches`; `image_size` must be None, got "
            f"{image_size!r}."
        )
    if interpolation != "bilinear":
        raise ValueError(
            "NaFlex resizes with antialiased bilinear interpolation (as "
            "HF's Siglip2ImageProcessor); `interpolation` must be "
            f"'bilinear' or None, got {interpolation!r}."
        )
    if crop_to_aspect_ratio or kwargs.get("pad_to_aspect_ratio", False):
        raise ValueError(
            "NaFlex keeps the aspect ratio; `crop_to_aspect_ratio` and "
            "`pad_to_aspect_ratio` must be False."
        )
    for name, value in (("scale", scale), ("offset", offset)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ValueError(
                f"NaFlex needs a scalar `{name}` (one value range for all "
                f"channels); got {value!r}."
            )
    if scale == 0:
        raise ValueError("`scale` must be non-zero.")


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


# --- Presets ------------------------------------------------------------------

IMAGE_CONVERTER_FILE = "image_converter.json"
BACKBONE_FILE = "config.json"
_OURS = "keras_siglip2>SigLIP2ImageConverter"
_KERAS_HUB = "keras_hub>SigLIPImageConverter"
# The keras-hub converter arguments that ours has too.
_KERAS_HUB_KEYS = (
    "image_size",
    "scale",
    "offset",
    "interpolation",
    "antialias",
    "crop_to_aspect_ratio",
    "pad_to_aspect_ratio",
)
# HF NaFlex checkpoints set `num_patches`, the default sequence length.
_HF_NAFLEX_DEFAULT_PATCHES = 256


def _from_backbone_config(files: PresetFiles) -> dict | None:
    """Converter arguments from `config.json`: keras-hub, ours or HF."""
    value = files.json(BACKBONE_FILE, required=False)
    if value is None:
        return None
    registered = value.get("registered_name")
    vision = value.get("config", {}).get("vision_encoder", {}).get("config")
    if registered == "keras_hub>SigLIPBackbone" and isinstance(vision, dict):
        height, width, _ = vision["image_shape"]
        return {"image_size": (height, width)}
    if registered == "keras_siglip2>SigLIP2Backbone" and isinstance(
        vision, dict
    ):
        if value["config"].get("naflex", False):
            return {
                "naflex": True,
                "patch_size": vision["patch_size"],
                "max_num_patches": (
                    vision["image_size"] // vision["patch_size"]
                )
                ** 2,
            }
        return {"image_size": vision["image_size"]}
    vision = value.get("vision_config")
    if value.get("model_type") == "siglip2" and isinstance(vision, dict):
        return {
            "naflex": True,
            "patch_size": vision["patch_size"],
            "max_num_patches": vision.get(
                "num_patches", _HF_NAFLEX_DEFAULT_PATCHES
            ),
        }
    if value.get("model_type") == "siglip" and isinstance(vision, dict):
        return {"image_size": vision["image_size"]}
    return None


def load_image_converter(preset, **kwargs) -> SigLIP2ImageConverter:
    """Builds a `SigLIP2ImageConverter` for a preset.

    From `image_converter.json` when there is one (ours, or keras-hub's
    `SigLIPImageConverter`, whose size, scale, offset and resampling are
    kept), else from the image tower in `config.json`: keras-hub's
    `SigLIPBackbone` or HF `siglip` (fixed-res at the model's size, SigLIP
    scaling and resampling), our `SigLIP2Backbone` (fixed-res, or NaFlex
    with the position grid's patch count for `naflex=True`) or HF
    `siglip2` (NaFlex with its `num_patches`).

    Args:
        preset: a directory, a preset name or a `kaggle://`/`hf://` handle.
        **kwargs: constructor arguments that replace the preset's.

    Returns:
        A `SigLIP2ImageConverter`.

    Raises:
        ValueError: unknown names, a preset with neither file or with a
            converter class other than ours or keras-hub's SigLIP one, or
            arguments our converter refuses; the message names the file.
    """
    files = PresetFiles(preset)
    registered, config = files.registered_json(
        IMAGE_CONVERTER_FILE, required=False
    )
    source = IMAGE_CONVERTER_FILE
    if registered == _OURS:
        config = {**config, **kwargs}
    elif registered == _KERAS_HUB:
        config = {k: config[k] for k in _KERAS_HUB_KEYS if k in config}
        config.update(kwargs)
    elif registered is not None:
        raise ValueError(
            f"{files.name}: `{IMAGE_CONVERTER_FILE}` holds a "
            f"{registered!r}; expected {_OURS!r} or {_KERAS_HUB!r}."
        )
    else:
        source = BACKBONE_FILE
        try:
            config = _from_backbone_config(files)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{files.name}: cannot read the image size from "
                f"`{BACKBONE_FILE}` ({e!r})."
            ) from None
        if config is None:
            raise ValueError(
                f"{files.name}: no `{IMAGE_CONVERTER_FILE}`, and no SigLIP "
                f"image tower in a `{BACKBONE_FILE}` to size one from."
            )
        config.update(kwargs)
    try:
        return SigLIP2ImageConverter.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{files.name}: cannot build a SigLIP2ImageConverter from "
            f"`{source}`: {e}"
        ) from None
