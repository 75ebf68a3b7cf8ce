"""Decoder cross-entropy (plain and chunked) vs a float64 numpy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keras_siglip2.losses.decoder import decoder_loss


def _reference(hidden, kernel, bias, targets, weights):
    """Loss and analytic gradients in float64."""
    h = hidden.astype("float64").reshape(-1, hidden.shape[-1])
    logits = h @ kernel.astype("float64") + bias.astype("float64")
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    t = targets.reshape(-1)
    w = weights.reshape(-1).astype("float64")
    total = max(w.sum(), 1.0)
    ce = -np.log(probs[np.arange(len(t)), t])
    loss = (ce * w).sum() / total
    d_logits = probs.copy()
    d_logits[np.arange(len(t)), t] -= 1.0
    d_logits *= (w / total)[:, None]
    grad_hidden = (d_logits @ kernel.T).reshape(hidden.shape)
    grad_kernel = h.T @ d_logits
    grad_bias = d_logits.sum(0)
    return loss, grad_hidden, grad_kernel, grad_bias


def _inputs(batch=3, length=5, dim=8, vocab=37, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(batch, length, dim)).astype("float32")
    kernel = rng.normal(size=(dim, vocab)).astype("float32")
    bias = rng.normal(size=(vocab,)).astype("float32")
    targets = rng.integers(0, vocab, (batch, length)).astype("int32")
    weights = (rng.random((batch, length)) < 0.7).astype("float32")
    return hidden, kernel, bias, targets, weights


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7, 15, 64])
def test_decoder_loss_and_gradients_match_reference(chunk_size):
    hidden, kernel, bias, targets, weights = _inputs()
    expected = _reference(hidden, kernel, bias, targets, weights)

    def loss_fn(h, k, b):
        return decoder_loss(h, k, b, targets, weights, chunk_size=chunk_size)

    loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(
        jnp.asarray(hidden), jnp.asarray(kernel), jnp.asarray(bias)
    )
    np.testing.assert_allclose(float(loss), expected[0], rtol=1e-6)
    for ours, reference in zip(grads, expected[1:]):
        np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-6)


def test_chunked_equals_plain_under_jit():
    hidden, kernel, bias, targets, weights = _inputs(4, 16, 8, 300, seed=1)
    plain = jax.jit(lambda h: decoder_loss(h, kernel, bias, targets, weights))
    chunked = jax.jit(
        lambda h: decoder_loss(h, kernel, bias, targets, weights, chunk_size=10)
    )
    np.testing.assert_allclose(
        float(plain(hidden)), float(chunked(hidden)), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(jax.grad(plain)(hidden)),
        np.asarray(jax.grad(chunked)(hidden)),
        atol=1e-7,
    )


def test_zero_weights_give_zero_loss():
    hidden, kernel, bias, targets, _ = _inputs()
    weights = np.zeros(targets.shape, "float32")
    assert float(decoder_loss(hidden, kernel, bias, targets, weights)) == 0.0


def test_mismatched_shapes_are_rejected():
    hidden, kernel, bias, targets, weights = _inputs()
    with pytest.raises(ValueError, match="targets"):
        decoder_loss(hidden, kernel, bias, targets[:, :-1], weights)
