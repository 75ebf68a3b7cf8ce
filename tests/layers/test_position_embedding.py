"""PositionEmbedding2D: adding the table and resizing it like torch."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keras_siglip2.layers import PositionEmbedding2D

GRID_H, GRID_W = 3, 4


@pytest.fixture
def layer(sizes):
    layer = PositionEmbedding2D(GRID_H, GRID_W, sizes.hidden)
    layer.build((None, GRID_H * GRID_W, sizes.hidden))
    return layer


def _table(layer):
    return np.array(layer.embeddings.value)


def _torch_resize(layer, height, width):
    """HF's resize: table as `(1, D, grid_h, grid_w)`, antialiased bilinear,
    back to `(height * width, D)` row-major."""
    grid = _table(layer).reshape(GRID_H, GRID_W, -1)
    x = torch.from_numpy(grid).permute(2, 0, 1)[None]
    y = F.interpolate(
        x,
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return y[0].permute(1, 2, 0).reshape(height * width, -1).numpy()


def test_adds_the_table(layer, sizes):
    x = np.random.default_rng(1).normal(size=(2, GRID_H * GRID_W, sizes.hidden))
    x = x.astype("float32")
    out = np.asarray(layer(x))
    np.testing.assert_array_equal(out, x + _table(layer)[None])
    assert layer.compute_output_shape(x.shape) == x.shape


def test_wrong_number_of_patches_raises(layer, sizes):
    with pytest.raises(ValueError, match="3x4=12 patches; got 9"):
        layer(np.zeros((1, 9, sizes.hidden), "float32"))


def test_resize_eager_matches_torch(layer, sizes):
    out = np.asarray(layer.resize(5, 2))
    assert out.shape == (10, sizes.hidden)
    np.testing.assert_allclose(out, _torch_resize(layer, 5, 2), atol=1e-6)


def test_resize_to_own_grid_is_identity(layer):
    resize = jax.jit(layer.resize, static_argnums=(0, 1))
    np.testing.assert_allclose(
        resize(GRID_H, GRID_W), _table(layer), rtol=0, atol=1e-6
    )


# Output sides of 1 are left out: torch 2.13's antialiased CPU kernel is
# wrong for an output width of 1 (see tests/layers/test_interpolation.py).
@pytest.mark.parametrize("height,width", [(6, 8), (2, 2), (2, 7), (9, 3)])
def test_resize_matches_torch(layer, height, width):
    resize = jax.jit(layer.resize, static_argnums=(0, 1))
    np.testing.assert_allclose(
        resize(height, width),
        _torch_resize(layer, height, width),
        rtol=0,
        atol=1e-6,
    )


def test_resize_per_example_matches_torch(layer):
    spatial_shapes = np.array([[2, 3], [4, 2], [3, 3]])
    length = 9
    out = np.asarray(layer.resize_per_example(spatial_shapes, length))
    for b, (height, width) in enumerate(spatial_shapes):
        expected = _torch_resize(layer, height, width)
        np.testing.assert_allclose(
            out[b, : height * width], expected, rtol=0, atol=1e-6
        )
        # Padding repeats the resized grid's first cell, as HF does.
        np.testing.assert_allclose(
            out[b, height * width :],
            np.broadcast_to(expected[0], out[b, height * width :].shape),
            rtol=0,
            atol=1e-6,
        )
