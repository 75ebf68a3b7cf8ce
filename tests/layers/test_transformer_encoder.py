"""TransformerEncoderBlock vs a numpy pre-LN block."""

import keras
import numpy as np
import pytest

from keras_siglip2.layers import TransformerEncoderBlock

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def block(sizes, randomize):
    block = TransformerEncoderBlock(
        sizes.hidden, sizes.heads, sizes.intermediate, dropout=0.5
    )
    block.build((None, sizes.length, sizes.hidden))
    return randomize(block)


@pytest.fixture
def tokens(sizes):
    rng = np.random.default_rng(1)
    shape = (sizes.batch, sizes.length, sizes.hidden)
    return rng.normal(size=shape).astype("float32")


def test_matches_numpy_reference(block, reference, tokens):
    out = np.asarray(block(tokens))
    assert out.shape == tokens.shape
    assert block.compute_output_shape(tokens.shape) == tokens.shape
    np.testing.assert_allclose(
        out, reference.encoder_block(block, tokens.astype("float64")), **TOL
    )


def test_layer_norm_epsilon_is_used(sizes, randomize, reference, tokens):
    block = TransformerEncoderBlock(
        sizes.hidden, sizes.heads, sizes.intermediate, layer_norm_epsilon=1e-6
    )
    block.build(tokens.shape)
    assert block.layer_norm_1.epsilon == block.layer_norm_2.epsilon == 1e-6
    randomize(block)
    # Near-constant tokens make the epsilon matter.
    flat = (1e-3 * tokens).astype("float32")
    np.testing.assert_allclose(
        block(flat),
        reference.encoder_block(block, flat.astype("float64")),
        **TOL,
    )


def test_with_key_padding_mask(block, reference, tokens, sizes):
    mask = np.arange(sizes.length)[None, :] < np.array([[3], [sizes.length]])
    out = np.asarray(block(tokens, attention_mask=mask))
    expected = reference.encoder_block(block, tokens.astype("float64"), mask)
    np.testing.assert_allclose(out, expected, **TOL)
    unmasked = reference.encoder_block(block, tokens.astype("float64"))
    assert np.abs(out[0] - unmasked[0]).max() > 1e-3


def test_padded_tokens_do_not_change_real_tokens(block, tokens, sizes):
    mask = np.arange(sizes.length)[None, :] < np.array([[2], [3]])
    changed = tokens.copy()
    changed[~mask] = 50.0
    out = np.asarray(block(tokens, attention_mask=mask))
    out_changed = np.asarray(block(changed, attention_mask=mask))
    np.testing.assert_allclose(out[mask], out_changed[mask], rtol=0, atol=1e-6)
    assert np.abs(out[~mask] - out_changed[~mask]).max() > 1.0


def test_dropout_is_off_at_inference(block, reference, tokens):
    assert block.dropout == 0.5
    expected = reference.encoder_block(block, tokens.astype("float64"))
    np.testing.assert_allclose(block(tokens, training=False), expected, **TOL)


def test_symbolic_call(sizes):
    block = TransformerEncoderBlock(
        sizes.hidden, sizes.heads, sizes.intermediate
    )
    x = keras.Input((sizes.length, sizes.hidden))
    mask = keras.Input((sizes.length,), dtype="bool")
    assert block(x).shape == (None, sizes.length, sizes.hidden)
    assert block(x, attention_mask=mask).shape == (
        None,
        sizes.length,
        sizes.hidden,
    )
