"""MultiHeadAttention vs a numpy softmax attention with a head split."""

import keras
import numpy as np
import pytest

from keras_siglip2.layers import MultiHeadAttention

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def layer(sizes, randomize):
    layer = MultiHeadAttention(sizes.heads, sizes.hidden)
    layer.build((None, None, sizes.hidden), (None, None, sizes.hidden))
    return randomize(layer)


def _inputs(batch, length, hidden, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, hidden)).astype("float32")


def _key_mask(lengths, max_length):
    return np.arange(max_length)[None, :] < np.asarray(lengths)[:, None]


def test_kernel_layout(layer, sizes):
    head_dim = sizes.hidden // sizes.heads
    for dense in (layer.query_dense, layer.key_dense, layer.value_dense):
        assert tuple(dense.kernel.shape) == (
            sizes.hidden,
            sizes.heads,
            head_dim,
        )
        assert tuple(dense.bias.shape) == (sizes.heads, head_dim)
    assert tuple(layer.output_dense.kernel.shape) == (
        sizes.heads,
        head_dim,
        sizes.hidden,
    )


def test_self_attention(layer, reference, sizes):
    x = _inputs(sizes.batch, sizes.length, sizes.hidden, seed=1)
    out = np.asarray(layer(x))
    expected = reference.attention(layer, x.astype("float64"), x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, expected, **TOL)


def test_cross_attention(layer, reference, sizes):
    query = _inputs(sizes.batch, 3, sizes.hidden, seed=2)
    value = _inputs(sizes.batch, sizes.length, sizes.hidden, seed=3)
    out = np.asarray(layer(query, value))
    expected = reference.attention(layer, query.astype("float64"), value)
    assert out.shape == (sizes.batch, 3, sizes.hidden)
    assert layer.compute_output_shape(query.shape, value.shape) == out.shape
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize("mask_dtype", ["bool", "int32"])
def test_key_padding_mask(layer, reference, sizes, mask_dtype):
    query = _inputs(sizes.batch, 3, sizes.hidden, seed=4)
    value = _inputs(sizes.batch, sizes.length, sizes.hidden, seed=5)
    mask = _key_mask([2, sizes.length], sizes.length)
    out = np.asarray(
        layer(query, value, attention_mask=mask.astype(mask_dtype))
    )
    expected = reference.attention(layer, query.astype("float64"), value, mask)
    np.testing.assert_allclose(out, expected, **TOL)
    # The mask matters: without it the first example differs.
    unmasked = reference.attention(layer, query.astype("float64"), value)
    assert np.abs(out[0] - unmasked[0]).max() > 1e-3


def test_masked_keys_do_not_change_the_output(layer, sizes):
    query = _inputs(sizes.batch, 3, sizes.hidden, seed=6)
    value = _inputs(sizes.batch, sizes.length, sizes.hidden, seed=7)
    mask = _key_mask([3, 1], sizes.length)
    changed = value.copy()
    changed[~mask] = 1e3 * _inputs(1, 1, 1, seed=8)[0, 0, 0]
    np.testing.assert_allclose(
        layer(query, value, attention_mask=mask),
        layer(query, changed, attention_mask=mask),
        rtol=0,
        atol=1e-6,
    )


def test_broadcast_mask(layer, reference, sizes):
    x = _inputs(sizes.batch, sizes.length, sizes.hidden, seed=9)
    causal = np.tril(np.ones((sizes.length, sizes.length), bool))
    mask = np.broadcast_to(causal, (sizes.batch, 1) + causal.shape)
    out = np.asarray(layer(x, x, attention_mask=mask))
    expected = reference.attention(layer, x.astype("float64"), x, mask)
    np.testing.assert_allclose(out, expected, **TOL)


def test_hidden_dim_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(num_heads=3, hidden_dim=8)


def test_in_a_functional_model(layer, reference, sizes):
    query = keras.Input((3, sizes.hidden))
    value = keras.Input((sizes.length, sizes.hidden))
    model = keras.Model([query, value], layer(query, value))
    q = _inputs(sizes.batch, 3, sizes.hidden, seed=10)
    v = _inputs(sizes.batch, sizes.length, sizes.hidden, seed=11)
    np.testing.assert_allclose(
        model.predict_on_batch([q, v]),
        reference.attention(layer, q.astype("float64"), v),
        **TOL,
    )
