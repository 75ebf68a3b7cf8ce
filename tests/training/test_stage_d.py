"""Stage D (ACID): learnability selection on planted data, and `fit`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from distribution_subprocess import run_code

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training.stage_d import StageDModel
from keras_siglip2.training.stage_d import num_kept
from keras_siglip2.training.stage_d import stage_d_optimizer
from keras_siglip2.training.stage_d import super_batch_size

TEXT_LENGTH = 4
VOCABULARY = 16


def _backbone(width, image_size=16, patch_size=8, seed=0, vocabulary=None):
    keras.utils.set_random_seed(seed)
    vision = SigLIP2VisionEncoder(
        image_size=image_size,
        patch_size=patch_size,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        use_head=False,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=vocabulary or VOCABULARY,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=TEXT_LENGTH,
    )
    return SigLIP2Backbone(vision, text)


def _constructed_backbone(width, text_table):
    """A backbone whose embeddings are set by construction.

    All transformer weights are zero, so blocks pass tokens through. The
    image is one 16-px patch whose embedding is its first `width` red
    pixels (row-major); the text embedding is the row of `text_table`
    for the last token. After the final LayerNorm, image `i` and text `j`
    are aligned exactly when `text_table[j]` equals image `i`'s pixels.
    """
    backbone = _backbone(width, patch_size=16)
    vision, text = backbone.vision_encoder, backbone.text_encoder
    for layer in vision.encoder_layers + text.encoder_layers:
        for weight in layer.weights:
            weight.assign(np.zeros(weight.shape, "float32"))
    kernel = np.zeros(vision.patch_embedding.kernel.shape, "float32")
    for k in range(width):
        kernel[k // 16, k % 16, 0, k] = 1.0
    vision.patch_embedding.kernel.assign(kernel)
    vision.position_embedding.embeddings.assign(np.zeros((1, width)))
    text.token_embedding.embeddings.assign(text_table[:, :width])
    text.position_embedding.assign(np.zeros((TEXT_LENGTH, width)))
    text.head.kernel.assign(np.eye(width, dtype="float32"))
    return backbone


def _planted(seed=0, width=32, teacher_width=48):
    """Twelve pairs: 4 easy (both models align them), 4 noisy (the caption
    matches neither model), 4 learnable (only the teacher aligns them)."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["easy", "noisy", "learnable"] * 4)[rng.permutation(12)]
    pixels = rng.normal(size=(12, teacher_width)).astype("float32")
    captions = rng.normal(size=(12, teacher_width)).astype("float32")
    unlearned = rng.normal(size=(12, teacher_width)).astype("float32")
    teacher_table = np.where((kinds != "noisy")[:, None], pixels, captions)
    student_table = np.where(
        (kinds == "easy")[:, None],
        pixels,
        np.where((kinds == "noisy")[:, None], captions, unlearned),
    )
    red = np.zeros((12, 16 * 16), "float32")
    red[:, :teacher_width] = pixels
    images = np.zeros((12, 16, 16, 3), "float32")
    images[..., 0] = red.reshape(12, 16, 16)
    token_ids = np.zeros((12, TEXT_LENGTH), "int32")
    token_ids[:, -1] = np.arange(12)
    pad = np.zeros((VOCABULARY - 12, teacher_width), "float32")
    student = _constructed_backbone(width, np.concatenate([student_table, pad]))
    teacher = _constructed_backbone(
        teacher_width, np.concatenate([teacher_table, pad])
    )
    batch = {"images": images, "token_ids": token_ids}
    rows = {
        "student": _row_losses(pixels[:, :width], student_table[:, :width]),
        "teacher": _row_losses(pixels, teacher_table),
    }
    return kinds, batch, student, teacher, rows


def _row_losses(image_vectors, text_vectors):
    """The constructed models' per-example sigmoid losses, in numpy:
    LayerNorm, L2 normalisation, `10 * cos - 10` (the initial scale and
    bias), then each image's row of the loss."""

    def embed(x):
        x = x - x.mean(-1, keepdims=True)
        x = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    logits = 10.0 * embed(image_vectors) @ embed(text_vectors).T - 10.0
    signs = 2 * np.eye(len(logits)) - 1
    return np.logaddexp(0, -signs * logits).sum(-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_selection_keeps_the_learnable_examples(seed):
    kinds, batch, student, teacher, rows = _planted(seed)
    student_rows, teacher_rows = rows["student"], rows["teacher"]
    # The planted groups: easy low for both, noisy high for both,
    # learnable high for the student and low for the teacher.
    assert student_rows[kinds == "easy"].max() < 1.0
    assert teacher_rows[kinds == "easy"].max() < 1.0
    assert student_rows[kinds == "noisy"].min() > 3.0
    assert teacher_rows[kinds == "noisy"].min() > 3.0
    assert student_rows[kinds == "learnable"].min() > 3.0
    assert teacher_rows[kinds == "learnable"].max() < 1.0

    model = StageDModel(student, teacher, filter_ratio=2 / 3)
    scores, selected = model.select(batch)
    np.testing.assert_allclose(
        np.asarray(scores), student_rows - teacher_rows, rtol=1e-4, atol=1e-4
    )
    selected = np.asarray(selected)
    assert len(selected) == 4
    assert set(kinds[selected]) == {"learnable"}
    outputs = model(batch)
    np.testing.assert_array_equal(np.asarray(outputs["selected"]), selected)
    assert outputs["logits"].shape == (4, 4)


def test_filter_ratio_is_the_fraction_discarded():
    assert num_kept(64, 0.5) == 32
    assert num_kept(128, 0.75) == 32
    assert super_batch_size(32, 0.5) == 64
    assert super_batch_size(32, 0.75) == 128
    assert num_kept(3, 0.9) == 1
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match="filter_ratio"):
            num_kept(8, ratio)


def test_optimizer_has_no_weight_decay():
    optimizer = stage_d_optimizer(total_steps=10, warmup_steps=0)
    assert optimizer.weight_decay == 0.0
    np.testing.assert_allclose(float(optimizer.learning_rate), 1e-5)
    with pytest.raises(ValueError, match="weight decay"):
        stage_d_optimizer(total_steps=10, weight_decay=1e-4)


def test_bad_teacher():
    student = _backbone(16)
    with pytest.raises(ValueError, match="vocabulary_size"):
        StageDModel(student, _backbone(16, vocabulary=VOCABULARY + 1))
    with pytest.raises(ValueError, match="filter_ratio"):
        StageDModel(student, _backbone(16), filter_ratio=1.0)
    with pytest.raises(TypeError, match="SigLIP2Backbone"):
        StageDModel(student, student.vision_encoder)


def _random_super_batches(n=16, batch_size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, 16, 16, 3)).astype("float32")
    token_ids = rng.integers(1, VOCABULARY, (n, TEXT_LENGTH)).astype("int32")
    return tf.data.Dataset.from_tensor_slices(
        {"images": images, "token_ids": token_ids}
    ).batch(batch_size)


def _fit(traces=None):
    """Fits a Stage D model (the teacher is wider and works at 24 px);
    returns plain data for the tests."""

    class Counting(StageDModel):
        def select(self, inputs):
            if traces is not None:
                traces.append(1)
            return super().select(inputs)

    student = _backbone(16, seed=1)
    teacher = _backbone(24, image_size=24, seed=2)
    model = Counting(student, teacher, filter_ratio=0.5)
    model.compile(
        optimizer=stage_d_optimizer(total_steps=4, learning_rate=1e-3)
    )
    student_before = [np.array(w) for w in student.weights]
    teacher_before = [np.array(w) for w in teacher.weights]
    data = _random_super_batches()
    model.fit(data.take(1), verbose=0)
    first = len(traces or [])
    history = model.fit(data, epochs=2, verbose=0).history
    return {
        "backend": keras.backend.backend(),
        "traces_after_first_step": first,
        "traces": len(traces or []),
        "history": {k: float(v[-1]) for k, v in history.items()},
        "student_moved": min(
            float(np.abs(a - np.asarray(b)).max())
            for a, b in zip(student_before, student.weights)
        ),
        "teacher_moved": max(
            float(np.abs(a - np.asarray(b)).max())
            for a, b in zip(teacher_before, teacher.weights)
        ),
        "teacher_trainable": len(model.trainable_weights)
        - len(student.trainable_weights),
    }


def _check_fit(report):
    history = report["history"]
    assert set(history) >= {
        "loss",
        "sigmoid_loss",
        "learnability",
        "super_batch_learnability",
    }
    assert all(np.isfinite(v) for v in history.values())
    # Kept examples are the most learnable half.
    assert history["learnability"] >= history["super_batch_learnability"]
    assert report["student_moved"] > 0.0
    assert report["teacher_moved"] == 0.0
    assert report["teacher_trainable"] == 0


def test_stage_d_fit_compiles_one_step_on_jax():
    traces = []
    report = _fit(traces)
    _check_fit(report)
    # Selection has static shapes: later steps reuse the first trace.
    assert report["traces"] == report["traces_after_first_step"]


_BACKEND_CODE = """
import json
from training.test_stage_d import _fit
print("RESULT " + json.dumps(_fit()))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_stage_d_fit_on_other_backends(backend):
    report = run_code(_BACKEND_CODE, backend=backend)
    assert report["backend"] == backend
    _check_fit(report)
