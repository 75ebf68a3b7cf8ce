"""Antialiased bilinear resizing vs `jax.image.resize` and torch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keras_siglip2.layers import linear_interpolation_matrix
from keras_siglip2.layers import resize_grid

ATOL = 1e-6

# (in_size, out_size) of one axis: equal, shrinking, growing, to/from 1.
AXIS_PAIRS = [
    (1, 1),
    (1, 4),
    (2, 1),
    (3, 2),
    (16, 5),
    (27, 16),
    (2, 3),
    (16, 27),
]

# ((grid_h, grid_w), (height, width)).
GRID_PAIRS = [
    ((4, 6), (4, 6)),
    ((16, 16), (7, 5)),
    ((3, 4), (9, 11)),
    ((8, 3), (4, 9)),
    ((1, 1), (3, 2)),
    ((6, 5), (1, 3)),
    ((6, 5), (4, 1)),
    ((2, 9), (1, 1)),
]

# Each eager op recompiles for every new shape; one jit per pair is faster.
_jit_matrix = jax.jit(
    linear_interpolation_matrix,
    static_argnames=("in_size", "out_size", "max_out_size", "antialias"),
)
_jit_resize_grid = jax.jit(
    resize_grid, static_argnames=("height", "width", "antialias")
)


def _random_grid(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _jax_matrix(in_size, out_size, antialias):
    # Resizing the identity along axis 0 yields the interpolation matrix.
    eye = jnp.eye(in_size, dtype="float32")
    return np.asarray(
        jax.image.resize(
            eye, (out_size, in_size), "bilinear", antialias=antialias
        )
    )


def _torch_resize(grid, height, width):
    x = torch.from_numpy(grid).permute(2, 0, 1)[None]
    y = F.interpolate(
        x,
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("in_size,out_size", AXIS_PAIRS)
def test_matrix_matches_jax_image_resize(in_size, out_size):
    for antialias in (True, False):
        ours = _jit_matrix(
            in_size=in_size, out_size=out_size, antialias=antialias
        )
        expected = _jax_matrix(in_size, out_size, antialias)
        assert ours.shape == (out_size, in_size)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(np.sum(ours, axis=1), 1.0, rtol=0, atol=ATOL)


def test_antialias_widens_the_filter_only_when_shrinking():
    shrink = _jit_matrix(in_size=8, out_size=2, antialias=True)
    aliased = _jit_matrix(in_size=8, out_size=2, antialias=False)
    # A triangle of radius 4 (the scale) reaches 6 inputs; radius 1 only 2.
    np.testing.assert_array_equal(np.count_nonzero(shrink, axis=1), [6, 6])
    np.testing.assert_array_equal(np.count_nonzero(aliased, axis=1), [2, 2])
    np.testing.assert_array_equal(
        _jit_matrix(in_size=3, out_size=8, antialias=True),
        _jit_matrix(in_size=3, out_size=8, antialias=False),
    )


@pytest.mark.parametrize("in_hw,out_hw", GRID_PAIRS)
def test_resize_grid_matches_jax_image_resize(in_hw, out_hw):
    grid = _random_grid(in_hw + (3,))
    ours = _jit_resize_grid(grid, *out_hw, antialias=True)
    expected = jax.image.resize(grid, out_hw + (3,), "bilinear")
    assert ours.shape == out_hw + (3,)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "in_hw,out_hw", [((3, 4), (9, 11)), ((8, 3), (4, 9)), ((2, 9), (1, 1))]
)
def test_resize_grid_without_antialias_matches_jax(in_hw, out_hw):
    grid = _random_grid(in_hw + (3,))
    ours = _jit_resize_grid(grid, *out_hw, antialias=False)
    expected = jax.image.resize(
        grid, out_hw + (3,), "bilinear", antialias=False
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL)


# torch 2.13 on CPU mis-resizes the height when the output width is 1:
# arange(5) as (1, 1, 5, 1) resized to (3, 1) gives [0.43, 0.43, 0.43]
# instead of [0.43, 2.0, 3.57] (jax and PIL agree on the latter). Outputs
# with a side of 1 are therefore only compared against jax.
@pytest.mark.parametrize(
    "in_hw,out_hw", [p for p in GRID_PAIRS if min(p[1]) >= 2]
)
def test_resize_grid_matches_torch_interpolate(in_hw, out_hw):
    grid = _random_grid(in_hw + (3,), seed=1)
    ours = _jit_resize_grid(grid, *out_hw, antialias=True)
    expected = _torch_resize(grid, *out_hw)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ATOL)


def test_resize_grid_eager():
    grid = _random_grid((5, 7, 2), seed=2)
    ours = resize_grid(grid, 3, 9)
    np.testing.assert_allclose(
        ours, _torch_resize(grid, 3, 9), rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(
        ours,
        jax.image.resize(grid, (3, 9, 2), "bilinear"),
        rtol=0,
        atol=ATOL,
    )


def test_resize_grid_keeps_dtype():
    grid = jnp.asarray(_random_grid((4, 4, 2)), dtype="bfloat16")
    out = _jit_resize_grid(grid, 2, 2)
    assert out.dtype == jnp.bfloat16


def test_resize_grid_rejects_non_3d_grid():
    with pytest.raises(ValueError, match="grid_h, grid_w, channels"):
        resize_grid(np.zeros((1, 4, 4, 2), "float32"), 2, 2)


def test_padded_matrix_with_tensor_out_size():
    in_size, max_out_size = 7, 9
    for out_size in (1, 4, 7, 9):
        padded = linear_interpolation_matrix(
            in_size, jnp.asarray(out_size), max_out_size=max_out_size
        )
        static = _jit_matrix(in_size=in_size, out_size=out_size)
        expected = _jax_matrix(in_size, out_size, antialias=True)
        assert padded.shape == (max_out_size, in_size)
        np.testing.assert_allclose(padded[:out_size], static, rtol=0, atol=ATOL)
        np.testing.assert_allclose(
            padded[:out_size], expected, rtol=0, atol=ATOL
        )
        np.testing.assert_array_equal(padded[out_size:], 0.0)
        np.testing.assert_allclose(
            np.sum(padded[:out_size], axis=1), 1.0, rtol=0, atol=ATOL
        )


def test_padded_matrix_with_traced_out_size():
    max_out_size = 10

    @functools.partial(jax.jit, static_argnums=0)
    def padded(in_size, out_size):
        return linear_interpolation_matrix(
            in_size, out_size, max_out_size=max_out_size
        )

    for out_size in (1, 4, 10):
        ours = padded(16, jnp.asarray(out_size, "int32"))
        np.testing.assert_allclose(
            ours[:out_size],
            _jax_matrix(16, out_size, antialias=True),
            rtol=0,
            atol=ATOL,
        )
        np.testing.assert_array_equal(ours[out_size:], 0.0)


def test_matrix_argument_errors():
    with pytest.raises(TypeError, match="max_out_size"):
        linear_interpolation_matrix(4, jnp.asarray(2))
    with pytest.raises(ValueError, match="out_size"):
        linear_interpolation_matrix(4, 0)
