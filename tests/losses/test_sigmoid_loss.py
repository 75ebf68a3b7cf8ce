"""The pairwise sigmoid loss vs float64 numpy, extreme logits included."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from keras_siglip2 import SigmoidLoss
from keras_siglip2 import sigmoid_loss


def _signs(labels):
    return 2.0 * np.asarray(labels, "float64") - 1.0


def _reference_loss(logits, labels):
    """`-mean_i sum_j log sigmoid(l_ij z_ij)`, `log sigmoid(x) =
    -log(1 + exp(-x))` evaluated stably in float64."""
    x = _signs(labels) * np.asarray(logits, "float64")
    return np.mean(np.sum(np.logaddexp(0.0, -x), axis=1))


def _reference_grad(logits, labels):
    """d/dz_ij of the loss: `-l_ij sigmoid(-l_ij z_ij) / num_images`."""
    signs = _signs(labels)
    x = signs * np.asarray(logits, "float64")
    sigmoid_neg = np.exp(-np.logaddexp(0.0, x))
    return -signs * sigmoid_neg / x.shape[0]


def _random_logits(shape, seed, scale=5.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape) - 5.0).astype("float32")


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_default_labels_are_the_identity(batch):
    logits = _random_logits((batch, batch), seed=batch)
    np.testing.assert_allclose(
        sigmoid_loss(logits),
        _reference_loss(logits, np.eye(batch)),
        rtol=1e-6,
    )


def test_is_summed_over_texts_and_averaged_over_images():
    # All-zero logits: every pair costs log 2.
    loss = sigmoid_loss(np.zeros((4, 6), "float32"), np.zeros((4, 6)))
    np.testing.assert_allclose(loss, 6 * np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5), (6, 2)])
def test_non_square_with_explicit_labels(shape):
    rng = np.random.default_rng(7)
    logits = _random_logits(shape, seed=8)
    labels = rng.integers(0, 2, shape)
    expected = _reference_loss(logits, labels)
    np.testing.assert_allclose(
        sigmoid_loss(logits, labels), expected, rtol=1e-6
    )
    bool_labels = labels.astype(bool)
    np.testing.assert_allclose(
        sigmoid_loss(logits, bool_labels), expected, rtol=1e-6
    )


def test_non_square_with_default_labels_raises():
    with pytest.raises(ValueError, match=r"square .*\(2, 3\)"):
        sigmoid_loss(np.zeros((2, 3), "float32"))


def test_logits_must_be_a_matrix():
    with pytest.raises(ValueError, match="num_images, num_texts"):
        sigmoid_loss(np.zeros((2, 2, 2), "float32"))


def test_gradient_matches_analytic():
    logits = _random_logits((4, 4), seed=9)
    labels = np.eye(4)
    grad = jax.grad(lambda z: sigmoid_loss(z, labels))(jnp.asarray(logits))
    np.testing.assert_allclose(
        grad, _reference_grad(logits, labels), rtol=1e-5, atol=1e-7
    )


def test_extreme_logits_are_finite():
    # Right and wrong pairs at |z| = 1e4: a naive log(sigmoid(x)) gives
    # log(0) = -inf for the wrong ones, and its gradient NaN.
    logits = np.array(
        [[1e4, -1e4, 1e4], [-1e4, -1e4, 1e4], [1e4, 1e4, 1e4]], "float32"
    )
    labels = np.eye(3)
    expected = _reference_loss(logits, labels)
    assert expected > 1e4
    loss = sigmoid_loss(logits)
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)

    grad = np.asarray(jax.grad(sigmoid_loss)(jnp.asarray(logits)))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(
        grad, _reference_grad(logits, labels), rtol=1e-6, atol=1e-12
    )


def test_half_precision_logits_are_computed_in_float32():
    logits = _random_logits((3, 3), seed=10)
    loss = sigmoid_loss(jnp.asarray(logits, "bfloat16"))
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    rounded = np.asarray(jnp.asarray(logits, "bfloat16"), "float64")
    np.testing.assert_allclose(
        loss, _reference_loss(rounded, np.eye(3)), rtol=1e-6
    )


def test_loss_class():
    rng = np.random.default_rng(11)
    logits = _random_logits((3, 4), seed=12)
    labels = rng.integers(0, 2, (3, 4)).astype("float32")
    loss = SigmoidLoss()
    assert loss.name == "sigmoid_loss"
    np.testing.assert_allclose(
        loss(labels, logits), _reference_loss(logits, labels), rtol=1e-6
    )


def test_loss_class_config_round_trip():
    loss = SigmoidLoss(name="siglip")
    restored = SigmoidLoss.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    deserialized = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(deserialized, SigmoidLoss)


def test_loss_class_rejects_sample_weight():
    logits = np.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match="sample_weight"):
        SigmoidLoss()(np.eye(2), logits, sample_weight=np.ones(2))
