"""Augmented views for Stage B: one global view and local crops per image.

Random resized crops (area fraction and aspect ratio sampled per crop, as
in Inception/DINO) with random horizontal flips, written with stateless
TensorFlow ops so a `(seed, example index)` pair always gives the same
views, inside `tf.data` or eagerly. The image-text and decoder losses keep
their own (unaugmented) images; these views are extra inputs.
"""

import math

import tensorflow as tf

# DINO's crop scales (fraction of the image area).
GLOBAL_SCALE = (0.4, 1.0)
LOCAL_SCALE = (0.05, 0.4)
ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crops(
    images,
    seed,
    num_crops: int,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = ASPECT_RATIO,
    flip_probability: float = 0.5,
):
    """Random resized crops with random horizontal flips.

    Each crop covers a fraction of the image area drawn uniformly from
    `scale` with a width/height ratio drawn log-uniformly from `ratio`
    (a side that would exceed the image is clipped to it, instead of
    torchvision's resampling loop), at a uniform position; it is resized
    bilinearly to `size x size` and flipped with `flip_probability`.

    Args:
        images: float `(height, width, channels)` or `(batch, height,
            width, channels)`.
        seed: int `(2,)` stateless seed.
        num_crops: int. Crops per image.
        size: int. Output side in pixels.
        scale: `(min, max)` area fractions, in (0, 1].
        ratio: `(min, max)` width/height aspect ratios.
        flip_probability: float. Probability of a horizontal flip.

    Returns:
        `images.dtype` `(num_crops, size, size, channels)`, or
        `(batch, num_crops, size, size, channels)` for batched input.
    """
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(
            f"`scale` must satisfy 0 < min <= max <= 1; got {scale}."
        )
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"`ratio` must satisfy 0 < min <= max; got {ratio}.")
    images = tf.convert_to_tensor(images)
    if images.shape.rank not in (3, 4):
        raise ValueError(
            "`images` must have shape (height, width, channels) or (batch, "
            f"height, width, channels); got shape {images.shape}."
        )
    unbatched = images.shape.rank == 3
    if unbatched:
        images = images[None]
    shape = tf.shape(images)
    batch_size = shape[0]
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    channels = images.shape[-1]
    count = batch_size * num_crops
    seeds = tf.random.experimental.stateless_split(
        tf.cast(seed, tf.int64), num=5
    )

    def uniform(index, low=0.0, high=1.0):
        return tf.random.stateless_uniform(
            [count], seeds[index], minval=low, maxval=high
        )

    area = uniform(0, scale[0], scale[1]) * height * width
    aspect = tf.exp(uniform(1, math.log(ratio[0]), math.log(ratio[1])))
    crop_h = tf.minimum(tf.sqrt(area / aspect), height) / height
    crop_w = tf.minimum(tf.sqrt(area * aspect), width) / width
    top = uniform(2) * (1.0 - crop_h)
    left = uniform(3) * (1.0 - crop_w)
    boxes = tf.stack([top, left, top + crop_h, left + crop_w], axis=-1)
    box_indices = tf.repeat(tf.range(batch_size), num_crops)
    crops = tf.image.crop_and_resize(
        tf.cast(images, tf.float32), boxes, box_indices, (size, size)
    )
    flip = uniform(4) < flip_probability
    crops = tf.where(flip[:, None, None, None], crops[:, :, ::-1], crops)
    crops = tf.reshape(
        tf.cast(crops, images.dtype),
        [batch_size, num_crops, size, size, channels],
    )
    return crops[0] if unbatched else crops


def self_distillation_views(
    images,
    seed,
    global_size: int,
    local_size: int,
    num_local_crops: int = 8,
    global_scale: tuple[float, float] = GLOBAL_SCALE,
    local_scale: tuple[float, float] = LOCAL_SCALE,
    flip_probability: float = 0.5,
):
    """The teacher's global view and the student's local crops.

    Args:
        images: float `(height, width, 3)` or `(batch, height, width, 3)`
            in `[-1, 1]`.
        seed: int `(2,)` stateless seed.
        global_size: int. Side of the global view (the encoder's
            `image_size`).
        local_size: int. Side of the local crops; a multiple of the patch
            size (DINO uses 96 for 224 global views).
        num_local_crops: int. Local crops per image (8 in the paper).
        global_scale: area fractions of the global view.
        local_scale: area fractions of the local crops.
        flip_probability: float.

    Returns:
        dict with `"global_view"`: `(…, global_size, global_size, 3)` and
        `"local_crops"`: `(…, num_local_crops, local_size, local_size, 3)`,
        `…` being the batch axis if `images` has one.
    """
    global_seed, local_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    )
    global_view = random_resized_crops(
        images,
        global_seed,
        1,
        global_size,
        scale=global_scale,
        flip_probability=flip_probability,
    )
    local_crops = random_resized_crops(
        images,
        local_seed,
        num_local_crops,
        local_size,
        scale=local_scale,
        flip_probability=flip_probability,
    )
    return {
        "global_view": global_view[..., 0, :, :, :],
        "local_crops": local_crops,
    }


def add_self_distillation_views(
    dataset: tf.data.Dataset,
    global_size: int,
    local_size: int,
    num_local_crops: int = 8,
    seed: int = 0,
    image_key: str = "images",
    start_index: int = 0,
    **kwargs,
) -> tf.data.Dataset:
    """Adds `"global_view"` and `"local_crops"` to every element.

    The views of element `i` depend only on `(seed, i)`, so a dataset that
    is replayed (or resumed at the same position) gives the same views.
    Works on batched or unbatched datasets of dicts.

    Args:
        dataset: a `tf.data.Dataset` of dicts holding `image_key`.
        global_size: int. Side of the global view.
        local_size: int. Side of the local crops.
        num_local_crops: int. Local crops per image.
        seed: int. Base seed.
        image_key: str. Key of the source images.
        start_index: int. Index of the first element, when the dataset
            resumes a stream part-way (the views follow the index).
        **kwargs: `self_distillation_views` arguments (scales, flips).

    Returns:
        The mapped dataset.
    """

    def add_views(index, example):
        views = self_distillation_views(
            example[image_key],
            tf.stack([tf.constant(seed, tf.int64), index]),
            global_size,
            local_size,
            num_local_crops=num_local_crops,
            **kwargs,
        )
        return {**example, **views}

    return dataset.enumerate(start=start_index).map(
        add_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
