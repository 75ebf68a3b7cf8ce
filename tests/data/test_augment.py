"""Stage B views: random resized crops, flips, determinism, tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.data.augment import add_self_distillation_views
from keras_siglip2.data.augment import random_resized_crops
from keras_siglip2.data.augment import self_distillation_views


def _coordinate_image(size=16):
    """Channel 0 is the row, channel 1 the column, both in [0, 1]; a
    bilinear crop then reads its own box off its corners."""
    grid = np.linspace(0.0, 1.0, size, dtype="float32")
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1)


def test_shapes_dtype_and_value_range():
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3))
    images = images.astype("float32")
    views = self_distillation_views(images, [1, 2], 16, 8, num_local_crops=8)
    assert views["global_view"].shape == (2, 16, 16, 3)
    assert views["local_crops"].shape == (2, 8, 8, 8, 3)
    single = self_distillation_views(images[0], [1, 2], 16, 8)
    assert single["global_view"].shape == (16, 16, 3)
    assert single["local_crops"].shape == (8, 8, 8, 3)
    for view in (*views.values(), *single.values()):
        assert view.dtype == tf.float32
        assert -1.0 <= float(tf.reduce_min(view))
        assert float(tf.reduce_max(view)) <= 1.0


def test_same_seed_same_views_other_seed_other_views():
    image = _coordinate_image()
    a = random_resized_crops(image, [3, 4], 8, 8)
    b = random_resized_crops(image, [3, 4], 8, 8)
    c = random_resized_crops(image, [3, 5], 8, 8)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(a.numpy(), c.numpy())


def test_full_crop_is_the_image_and_flip_mirrors_it():
    image = _coordinate_image()
    args = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = random_resized_crops(
        image, [0, 0], 2, 16, flip_probability=0.0, **args
    )
    flipped = random_resized_crops(
        image, [0, 0], 2, 16, flip_probability=1.0, **args
    )
    np.testing.assert_allclose(same.numpy(), np.stack([image] * 2), atol=1e-6)
    np.testing.assert_allclose(
        flipped.numpy(), np.stack([image[:, ::-1]] * 2), atol=1e-6
    )


@pytest.mark.parametrize("scale", [(0.05, 0.4), (0.4, 1.0)])
def test_crop_boxes_follow_scale_and_aspect_ratio(scale):
    image = _coordinate_image()
    crops = random_resized_crops(
        image, [7, 8], 64, 8, scale=scale, flip_probability=0.0
    ).numpy()
    top, bottom = crops[:, 0, 0, 0], crops[:, -1, 0, 0]
    left, right = crops[:, 0, 0, 1], crops[:, 0, -1, 1]
    height, width = bottom - top, right - left
    assert (top >= -1e-6).all() and (bottom <= 1 + 1e-6).all()
    assert (left >= -1e-6).all() and (right <= 1 + 1e-6).all()
    # Sides clip at the image, so only unclipped crops keep the exact area.
    unclipped = (height < 1 - 1e-5) & (width < 1 - 1e-5)
    area = (height * width)[unclipped]
    assert unclipped.sum() > 32
    assert (area >= scale[0] - 1e-4).all() and (area <= scale[1] + 1e-4).all()
    aspect = (width / height)[unclipped]
    assert (aspect >= 0.75 - 1e-3).all() and (aspect <= 4 / 3 + 1e-3).all()


def test_dataset_views_depend_on_seed_and_position_only():
    images = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 3))
    images = images.astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(
        {"images": images, "token_ids": np.arange(4)}
    )
    mapped = add_self_distillation_views(dataset, 16, 8, seed=5)
    first = list(mapped.as_numpy_iterator())
    second = list(mapped.as_numpy_iterator())
    for index, (a, b) in enumerate(zip(first, second)):
        assert set(a) == {"images", "token_ids", "global_view", "local_crops"}
        np.testing.assert_array_equal(a["images"], images[index])
        np.testing.assert_array_equal(a["local_crops"], b["local_crops"])
        direct = self_distillation_views(images[index], [5, index], 16, 8)
        np.testing.assert_allclose(
            a["global_view"], direct["global_view"].numpy(), atol=1e-6
        )
    batched = add_self_distillation_views(dataset.batch(2), 16, 8, seed=5)
    assert next(iter(batched))["local_crops"].shape == (2, 8, 8, 8, 3)
