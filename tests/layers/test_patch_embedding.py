"""Patch embedding: conv form, dense form and a numpy reference agree."""

import keras
import numpy as np
import pytest

from keras_siglip2.layers import PatchEmbedding
from keras_siglip2.layers import patchify

ATOL = 1e-5


def _reference_embedding(images, kernel, bias):
    """Loops over whole patches; `kernel` is `(p, p, channels, hidden)`."""
    p = kernel.shape[0]
    batch, height, width, _ = images.shape
    grid_h, grid_w = height // p, width // p
    out = np.zeros((batch, grid_h * grid_w, kernel.shape[-1]))
    for b in range(batch):
        for i in range(grid_h):
            for j in range(grid_w):
                patch = images[b, i * p : (i + 1) * p, j * p : (j + 1) * p]
                out[b, i * grid_w + j] = (
                    np.einsum("xyc,xycd->d", patch, kernel) + bias
                )
    return out


def _hf_patchify(image, p):
    """HF `Siglip2ImageProcessor`'s `convert_image_to_patches` on one
    `(channels, height, width)` image whose sides are multiples of `p`."""
    channels, height, width = image.shape
    grid_h, grid_w = height // p, width // p
    x = image.reshape(channels, grid_h, p, grid_w, p)
    x = x.transpose(1, 3, 2, 4, 0)
    return x.reshape(grid_h * grid_w, p * p * channels)


def _layer_with_random_weights(randomize, hidden_dim, patch_size):
    layer = PatchEmbedding(hidden_dim, patch_size)
    layer.build((None, None, None, 3))
    return randomize(layer, scale=0.2)


@pytest.mark.parametrize(
    "height,width,patch_size",
    [(8, 12, 4), (14, 11, 4), (5, 9, 4)],
)
def test_conv_dense_and_reference_agree(height, width, patch_size, randomize):
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, height, width, 3)).astype("float32")
    layer = _layer_with_random_weights(randomize, 8, patch_size)
    kernel = np.asarray(layer.kernel.value, "float64")
    bias = np.asarray(layer.bias.value, "float64")

    conv = np.asarray(layer(images))
    dense = np.asarray(layer.embed_patches(patchify(images, patch_size)))
    expected = _reference_embedding(images.astype("float64"), kernel, bias)

    num_patches = (height // patch_size) * (width // patch_size)
    assert conv.shape == (2, num_patches, 8)
    assert layer.compute_output_shape(images.shape) == conv.shape
    np.testing.assert_allclose(conv, dense, rtol=0, atol=ATOL)
    np.testing.assert_allclose(conv, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(dense, expected, rtol=0, atol=ATOL)


def test_leftover_pixels_are_ignored(randomize):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(1, 10, 11, 3)).astype("float32")
    layer = _layer_with_random_weights(randomize, 8, 4)
    changed = images.copy()
    changed[:, 8:] = 100.0
    changed[:, :, 8:] = -100.0
    np.testing.assert_array_equal(layer(images), layer(changed))
    np.testing.assert_array_equal(patchify(images, 4), patchify(changed, 4))


@pytest.mark.parametrize(
    "height,width,patch_size,channels",
    [(8, 12, 4, 3), (6, 4, 2, 3), (12, 9, 3, 1), (10, 15, 5, 4)],
)
def test_patchify_matches_hf_order(height, width, patch_size, channels):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, height, width, channels)).astype("float32")
    ours = np.asarray(patchify(images, patch_size))
    for b in range(2):
        expected = _hf_patchify(images[b].transpose(2, 0, 1), patch_size)
        np.testing.assert_array_equal(ours[b], expected)


def test_patchify_crops_like_a_valid_convolution():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(1, 13, 10, 3)).astype("float32")
    ours = np.asarray(patchify(images, 4))
    expected = _hf_patchify(images[0, :12, :8].transpose(2, 0, 1), 4)
    assert ours.shape == (1, 6, 48)
    np.testing.assert_array_equal(ours[0], expected)


def test_patchify_needs_static_spatial_shape():
    with pytest.raises(ValueError, match="static height and width"):
        patchify(keras.KerasTensor((None, None, 8, 3)), 4)


def test_dynamic_compute_output_shape():
    layer = PatchEmbedding(8, 4)
    assert layer.compute_output_shape((2, None, None, 3)) == (2, None, 8)
