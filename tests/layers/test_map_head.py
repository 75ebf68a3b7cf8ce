"""MAPHead vs numpy: a probe attends to the tokens, then y + MLP(LN(y))."""

import keras
import numpy as np
import pytest

from keras_siglip2.layers import MAPHead

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def head(sizes, randomize):
    head = MAPHead(sizes.hidden, sizes.heads, sizes.intermediate)
    head.build((None, sizes.length, sizes.hidden))
    return randomize(head)


@pytest.fixture
def tokens(sizes):
    rng = np.random.default_rng(1)
    shape = (sizes.batch, sizes.length, sizes.hidden)
    return rng.normal(size=shape).astype("float32")


def test_matches_numpy_reference(head, reference, tokens, sizes):
    out = np.asarray(head(tokens))
    assert out.shape == (sizes.batch, sizes.hidden)
    assert head.compute_output_shape(tokens.shape) == out.shape
    np.testing.assert_allclose(
        out, reference.map_head(head, tokens.astype("float64")), **TOL
    )


def test_probe_is_one_learned_query(head, sizes):
    assert tuple(head.probe.shape) == (1, 1, sizes.hidden)
    assert head.probe.trainable


def test_with_key_padding_mask(head, reference, tokens, sizes):
    mask = np.arange(sizes.length)[None, :] < np.array([[2], [sizes.length]])
    out = np.asarray(head(tokens, attention_mask=mask))
    expected = reference.map_head(head, tokens.astype("float64"), mask)
    np.testing.assert_allclose(out, expected, **TOL)
    unmasked = reference.map_head(head, tokens.astype("float64"))
    assert np.abs(out[0] - unmasked[0]).max() > 1e-3
    np.testing.assert_allclose(out[1], unmasked[1], **TOL)


def test_padded_tokens_are_not_pooled(head, tokens, sizes):
    mask = np.arange(sizes.length)[None, :] < np.array([[1], [3]])
    changed = tokens.copy()
    changed[~mask] = -30.0
    np.testing.assert_allclose(
        head(tokens, attention_mask=mask),
        head(changed, attention_mask=mask),
        rtol=0,
        atol=1e-6,
    )


def test_symbolic_call(sizes):
    head = MAPHead(sizes.hidden, sizes.heads, sizes.intermediate)
    x = keras.Input((sizes.length, sizes.hidden))
    mask = keras.Input((sizes.length,), dtype="bool")
    assert head(x).shape == (None, sizes.hidden)
    assert head(x, attention_mask=mask).shape == (None, sizes.hidden)
