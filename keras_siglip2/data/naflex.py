"""NaFlex preprocessing: native aspect ratio, variable sequence length.

Each image is resized, keeping its aspect ratio as closely as possible, so
that both sides are multiples of the patch size and the patch count fits
the sequence length; then it is scaled to `[-1, 1]`, cut into flattened
patches (row-major, each patch in `(row, column, channel)` order) and
padded to the sequence length with a validity mask.

The output size is found by the same bisection over a scale factor as HF's
`Siglip2ImageProcessor` and big_vision's NaFlex ops, so patch grids agree
exactly. Resizing is antialiased bilinear (`tf.image.resize`), the kernel
of HF's float path (`torch` `interpolate(antialias=True)`); TF computes the
weights in float32, so pixels agree with HF to ~2e-5 in [-1, 1], and to
about one grey level with HF's PIL processor, which rounds to 8 bits.

Everything works eagerly on numpy and inside `tf.data.Dataset.map`.
"""

import numpy as np
import tensorflow as tf

SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)
_SCALE_MIN = 1e-6
_SCALE_MAX = 100.0
_EPSILON = 1e-5


def naflex_image_size(height, width, patch_size: int, max_num_patches: int):
    """Target `(height, width)` for an image, both multiples of the patch.

    Bisects the scale `s` in `[1e-6, 100]` until the interval is below
    1e-5, keeping the largest `s` whose size `max(p, ceil(s * side / p) * p)`
    per side gives at most `max_num_patches` patches.

    Args:
        height: int or scalar int tensor. Image height in pixels.
        width: int or scalar int tensor. Image width in pixels.
        patch_size: int.
        max_num_patches: int. Sequence length.

    Returns:
        `(target_height, target_width)` as int32 scalar tensors.
    """
    if max_num_patches < 1:
        raise ValueError(
            f"`max_num_patches` must be >= 1; got {max_num_patches}."
        )
    height = tf.cast(height, tf.float64)
    width = tf.cast(width, tf.float64)
    p = tf.constant(patch_size, tf.float64)

    def scaled(scale, side):
        return tf.maximum(p, tf.math.ceil(side * scale / p) * p)

    def body(low, high):
        scale = (low + high) / 2
        patches = (scaled(scale, height) / p) * (scaled(scale, width) / p)
        fits = patches <= max_num_patches
        return tf.where(fits, scale, low), tf.where(fits, high, scale)

    low, _ = tf.while_loop(
        lambda low, high: high - low >= _EPSILON,
        body,
        (
            tf.constant(_SCALE_MIN, tf.float64),
            tf.constant(_SCALE_MAX, tf.float64),
        ),
    )
    return (
        tf.cast(scaled(low, height), tf.int32),
        tf.cast(scaled(low, width), tf.int32),
    )


def naflex_preprocess(
    image,
    patch_size: int,
    max_num_patches: int,
    value_range: tuple[float, float] = (0.0, 255.0),
    antialias: bool = True,
):
    """NaFlex inputs for one image.

    Args:
        image: `(height, width, 3)` uint8 or float image (tensor or numpy)
            with values in `value_range`.
        patch_size: int.
        max_num_patches: int. Sequence length.
        value_range: `(low, high)` of the input values; mapped to `[-1, 1]`.
        antialias: bool. Antialias when shrinking.

    Returns:
        dict with `"patches"`: float32 `(max_num_patches, p * p * 3)`,
        `"patch_mask"`: int32 `(max_num_patches,)` (1 for real patches, a
        prefix) and `"spatial_shapes"`: int32 `(2,)` patch-grid rows and
        columns.
    """
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3 or image.shape[-1] != 3:
        raise ValueError(
            "NaFlex expects a (height, width, 3) image; got shape "
            f"{tuple(image.shape)}."
        )
    if max_num_patches < 1:
        raise ValueError(
            f"`max_num_patches` must be >= 1; got {max_num_patches}."
        )
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    tf.debugging.assert_positive(
        shape[:2], message="NaFlex image has a zero-size side"
    )
    tf.debugging.assert_all_finite(image, "NaFlex image has non-finite values")
    target_h, target_w = naflex_image_size(
        shape[0], shape[1], patch_size, max_num_patches
    )
    image = tf.image.resize(
        image, (target_h, target_w), method="bilinear", antialias=antialias
    )
    low, high = value_range
    image = (image - low) * (2.0 / (high - low)) - 1.0
    grid_h, grid_w = target_h // patch_size, target_w // patch_size
    patches = tf.reshape(image, (grid_h, patch_size, grid_w, patch_size, 3))
    patches = tf.transpose(patches, (0, 2, 1, 3, 4))
    patches = tf.reshape(patches, (grid_h * grid_w, patch_size**2 * 3))
    num_patches = grid_h * grid_w
    patches = tf.pad(patches, [[0, max_num_patches - num_patches], [0, 0]])
    patches = tf.ensure_shape(patches, (max_num_patches, patch_size**2 * 3))
    mask = tf.cast(tf.range(max_num_patches) < num_patches, tf.int32)
    return {
        "patches": patches,
        "patch_mask": mask,
        "spatial_shapes": tf.stack([grid_h, grid_w]),
    }


def _check_image(index: int, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"Image {index}: expected shape (height, width, 3); got "
            f"{image.shape}."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"Image {index}: zero-size image {image.shape}.")
    if not np.isfinite(image).all():
        raise ValueError(f"Image {index}: has non-finite values.")


# One TF graph per image dtype and settings, generalised over image sizes:
# eager TF ops cost ~0.1 s per image, the traced function a few ms.
_traced_naflex_preprocess = tf.function(
    naflex_preprocess, reduce_retracing=True
)


def naflex_preprocess_batch(
    images,
    patch_size: int,
    max_num_patches: int,
    value_range: tuple[float, float] = (0.0, 255.0),
    antialias: bool = True,
) -> dict[str, np.ndarray]:
    """NaFlex inputs for a list of images of any sizes (eager, numpy).

    Args:
        images: iterable of `(height, width, 3)` arrays.
        patch_size: int.
        max_num_patches: int. Sequence length.
        value_range: `(low, high)` of the input values.
        antialias: bool.

    Returns:
        dict of numpy arrays: `"patches"` float32
        `(batch, max_num_patches, p * p * 3)`, `"patch_mask"` int32
        `(batch, max_num_patches)`, `"spatial_shapes"` int32 `(batch, 2)`.

    Raises:
        ValueError: naming the image with a wrong shape, a zero-size side
            or non-finite values.
    """
    outputs = []
    for index, image in enumerate(images):
        image = np.asarray(image)
        _check_image(index, image)
        outputs.append(
            _traced_naflex_preprocess(
                image, patch_size, max_num_patches, value_range, antialias
            )
        )
    if not outputs:
        raise ValueError("`images` is empty.")
    return {
        key: np.stack([output[key].numpy() for output in outputs])
        for key in outputs[0]
    }


def naflex_batches(
    images,
    patch_size: int,
    batch_size: int,
    sequence_lengths=SEQUENCE_LENGTHS,
    seed: int | None = None,
    value_range: tuple[float, float] = (0.0, 255.0),
):
    """Yields NaFlex batches, one sequence length per batch.

    Each batch draws its sequence length uniformly from `sequence_lengths`
    (as in the NaFlex training stage), so every batch has a static shape
    and a jitted model compiles once per distinct length.

    Args:
        images: iterable of `(height, width, 3)` arrays.
        patch_size: int.
        batch_size: int. The last batch may be smaller.
        sequence_lengths: the lengths to draw from; any subset of
            `SEQUENCE_LENGTHS` or other positive ints.
        seed: optional seed of the length draws.
        value_range: `(low, high)` of the input values.

    Yields:
        dicts as from `naflex_preprocess_batch`.
    """
    lengths = [int(length) for length in sequence_lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(
            f"`sequence_lengths` must be positive ints; got {lengths}."
        )
    rng = np.random.default_rng(seed)
    pending = []
    for image in images:
        pending.append(image)
        if len(pending) == batch_size:
            length = lengths[rng.integers(len(lengths))]
            yield naflex_preprocess_batch(
                pending, patch_size, length, value_range
            )
            pending = []
    if pending:
        length = lengths[rng.integers(len(lengths))]
        yield naflex_preprocess_batch(pending, patch_size, length, value_range)
