"""DINO / iBOT self-distillation losses and ACID learnability vs numpy."""

import jax
import numpy as np
import pytest

from keras_siglip2.losses.distillation import distillation_cross_entropy
from keras_siglip2.losses.distillation import learnability_scores
from keras_siglip2.losses.distillation import local_to_global_loss
from keras_siglip2.losses.distillation import masked_patch_loss
from keras_siglip2.losses.distillation import per_example_sigmoid_loss
from keras_siglip2.losses.distillation import update_center

TS, TT = 0.1, 0.04


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_ce(student, teacher, center):
    """DINO's `H(softmax((t - c) / T_t), softmax(s / T_s))` in float64."""
    targets = _softmax((teacher.astype("float64") - center) / TT)
    return -(targets * _log_softmax(student.astype("float64") / TS)).sum(-1)


def _logits(shape, seed):
    # Cosine-score-like values, as a projection head produces.
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


def test_local_to_global_loss_matches_numpy():
    student = _logits((3, 8, 10), 0)
    teacher = _logits((3, 10), 1)
    center = _logits((10,), 2) * 0.1
    expected = np.mean(
        [
            _reference_ce(student[b, v], teacher[b], center)
            for b in range(3)
            for v in range(8)
        ]
    )
    got = local_to_global_loss(student, teacher, center, TS, TT)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_masked_patch_loss_averages_masked_patches_per_image():
    student = _logits((2, 6, 7), 3)
    teacher = _logits((2, 6, 7), 4)
    center = _logits((7,), 5) * 0.1
    mask = np.array([[1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0]], bool)
    per_image = [
        _reference_ce(student[b, mask[b]], teacher[b, mask[b]], center).mean()
        for b in range(2)
    ]
    got = masked_patch_loss(student, teacher, mask, center, TS, TT)
    np.testing.assert_allclose(float(got), np.mean(per_image), rtol=1e-5)


def test_unmasked_patches_do_not_change_the_loss():
    student = _logits((2, 4, 5), 6)
    teacher = _logits((2, 4, 5), 7)
    mask = np.array([[1, 1, 0, 0], [0, 1, 0, 1]], bool)
    changed = student.copy()
    changed[~mask] += 3.0
    center = np.zeros(5, "float32")
    np.testing.assert_allclose(
        float(masked_patch_loss(student, teacher, mask, center)),
        float(masked_patch_loss(changed, teacher, mask, center)),
        rtol=1e-6,
    )


def test_centring_update_and_its_effect_on_the_targets():
    teacher = _logits((4, 3, 6), 8)
    center = _logits((6,), 9)
    expected = 0.9 * center + 0.1 * teacher.reshape(-1, 6).mean(0)
    new_center = np.asarray(update_center(center, teacher, momentum=0.9))
    np.testing.assert_allclose(new_center, expected, rtol=1e-6)
    # The target depends on the teacher only through `teacher - center`.
    student = _logits((4, 6), 10)
    shift = np.linspace(-1, 1, 6).astype("float32")
    a = distillation_cross_entropy(student, teacher[:, 0], center, TS, TT)
    b = distillation_cross_entropy(
        student, teacher[:, 0] + shift, center + shift, TS, TT
    )
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_teacher_gets_no_gradient():
    student = _logits((2, 3, 5), 11)
    teacher = _logits((2, 5), 12)
    center = np.zeros(5, "float32")

    def loss(s, t):
        return local_to_global_loss(s, t, center)

    grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(student, teacher)
    assert np.abs(np.asarray(grad_s)).max() > 0
    np.testing.assert_array_equal(np.asarray(grad_t), 0.0)


def test_per_example_sigmoid_loss_rows_average_to_the_loss():
    logits = _logits((5, 5), 13) * 10 - 5
    signs = 2 * np.eye(5) - 1
    rows = np.logaddexp(0, -signs * logits.astype("float64")).sum(-1)
    got = np.asarray(per_example_sigmoid_loss(logits))
    np.testing.assert_allclose(got, rows, rtol=1e-5)


def _embeddings(groups, rng, width=256):
    """Unit image/text embeddings: aligned pairs where `groups` says so."""
    images = rng.normal(size=(len(groups), width))
    texts = np.where(
        np.array(groups)[:, None],
        images + 0.05 * rng.normal(size=images.shape),
        rng.normal(size=images.shape),
    )
    norm = np.linalg.norm
    return (
        images / norm(images, axis=-1, keepdims=True),
        texts / norm(texts, axis=-1, keepdims=True),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learnability_ranks_learnable_over_easy_and_noisy(seed):
    # easy: both models align the pair; noisy: neither does (the caption
    # does not match); learnable: the teacher aligns it, the student not.
    kinds = np.array(["easy", "noisy", "learnable"] * 4)
    rng = np.random.default_rng(seed)
    kinds = kinds[rng.permutation(len(kinds))]
    teacher_aligned = kinds != "noisy"
    student_aligned = kinds == "easy"

    def logits(aligned):
        images, texts = _embeddings(aligned, rng)
        return (10.0 * images @ texts.T - 5.0).astype("float32")

    scores = np.asarray(
        learnability_scores(logits(student_aligned), logits(teacher_aligned))
    )
    top = np.argsort(-scores)[:4]
    assert set(kinds[top]) == {"learnable"}
