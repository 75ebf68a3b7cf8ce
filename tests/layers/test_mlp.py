"""MlpBlock vs a numpy Dense -> tanh-GELU -> Dense."""

import math

import numpy as np

from keras_siglip2.layers import MlpBlock


def _built_layer(sizes, randomize, seed=0):
    layer = MlpBlock(sizes.hidden, sizes.intermediate)
    layer.build((None, sizes.length, sizes.hidden))
    return randomize(layer, seed=seed)


def test_matches_numpy_reference(reference, randomize, sizes):
    layer = _built_layer(sizes, randomize)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(sizes.batch, sizes.length, sizes.hidden))
    out = np.asarray(layer(x.astype("float32")))
    assert out.shape == x.shape
    assert layer.compute_output_shape(x.shape) == x.shape
    np.testing.assert_allclose(
        out, reference.mlp(layer, x), rtol=1e-5, atol=1e-5
    )


def test_uses_the_tanh_gelu(reference, randomize, sizes):
    layer = _built_layer(sizes, randomize)
    x = np.random.default_rng(1).normal(size=(3, sizes.hidden))
    out = np.asarray(layer(x.astype("float32")))
    erf_gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / 2**0.5)))
    fc1, fc2 = layer.fc1, layer.fc2
    hidden = x @ np.asarray(fc1.kernel.value) + np.asarray(fc1.bias.value)
    with_erf = erf_gelu(hidden) @ np.asarray(fc2.kernel.value)
    with_erf += np.asarray(fc2.bias.value)
    # The exact GELU is distinguishable at this tolerance; the tanh one
    # matches.
    assert np.abs(out - with_erf).max() > 1e-4
    np.testing.assert_allclose(
        out, reference.mlp(layer, x), rtol=1e-5, atol=1e-5
    )


def test_works_on_any_leading_shape(reference, randomize, sizes):
    layer = _built_layer(sizes, randomize, seed=2)
    x = np.random.default_rng(3).normal(size=(2, 3, 4, sizes.hidden))
    out = np.asarray(layer(x.astype("float32")))
    assert out.shape == x.shape
    np.testing.assert_allclose(
        out, reference.mlp(layer, x), rtol=1e-5, atol=1e-5
    )
