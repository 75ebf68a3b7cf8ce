"""Stage B: EMA teacher, self-distillation losses and masking, on every
backend."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from distribution_subprocess import run_code

from keras_siglip2.data.augment import add_self_distillation_views
from keras_siglip2.losses.distillation import local_to_global_loss
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.stage_b import StageBModel
from keras_siglip2.training.stage_b import UniformCollapseMonitor
from keras_siglip2.training.stage_b import apply_mask_token
from keras_siglip2.training.stage_b import ema_momentum_at
from keras_siglip2.training.stage_b import random_patch_mask
from keras_siglip2.training.stage_b import self_distillation_weights
from keras_siglip2.training.stage_b import teacher_temperature_at
from training.test_stage_a import _dataset
from training.test_stage_a import _stage_a

START_STEP = 1
# Schedules from the switch (step k = iterations - START_STEP): momentum
# cosine 0.5 -> 0.9 over 2 steps, teacher temperature 0.04 -> 0.07 over 2.
SCHEDULES = dict(
    ema_momentum=0.5,
    final_ema_momentum=0.9,
    ema_momentum_steps=2,
    warmup_teacher_temperature=0.04,
    teacher_temperature=0.07,
    teacher_temperature_warmup_steps=2,
)


def _momentum(k):
    """DINO's `cosine_scheduler(base, final, ...)` value at step k."""
    k = min(max(k, 0), 2)
    return 0.9 + 0.5 * (0.5 - 0.9) * (1 + np.cos(np.pi * k / 2))


def _temperature(k):
    """DINO's linear teacher-temperature warm-up (`np.linspace`)."""
    return float(np.interp(k, [0, 2], [0.04, 0.07]))


def _stage_b(**kwargs):
    stage_a = _stage_a()
    kwargs = {
        **SCHEDULES,
        "distillation_start_step": START_STEP,
        **kwargs,
    }
    return StageBModel(
        stage_a.backbone,
        stage_a.decoder,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        num_prototypes=32,
        num_patch_prototypes=24,
        seed=1,
        **kwargs,
    )


def _dataset_b(n=16):
    return add_self_distillation_views(_dataset(n=n), 16, 8, seed=3)


def _weights(model):
    """Student and teacher weights (image tower and heads) as numpy."""
    return [
        [np.array(w) for w in layer.weights]
        for layer in (
            model.backbone.vision_encoder,
            model.global_head,
            model.patch_head,
            model.teacher_encoder,
            model.teacher_global_head,
            model.teacher_patch_head,
        )
    ]


def _split(weights):
    student = sum(weights[:3], [])
    teacher = sum(weights[3:], [])
    return student, teacher


def _run(model):
    """Three one-batch `fit` calls (the teacher switches in at the second)
    then one epoch of two batches; returns what the tests check, as plain
    data. Every call reuses one compiled train step."""
    model.compile(optimizer=siglip2_optimizer(total_steps=8, warmup_steps=0))
    data = _dataset_b()
    snapshots = [_weights(model)]
    flags, logs = [int(model.teacher_initialized.numpy())], []
    temperatures = []
    for batch in (data.take(1), data.skip(1), data.take(1)):
        history = model.fit(batch, verbose=0).history
        logs.append({k: v[-1] for k, v in history.items()})
        snapshots.append(_weights(model))
        flags.append(int(model.teacher_initialized.numpy()))
        temperatures.append(float(model.current_teacher_temperature.numpy()))
    students, teachers = zip(*[_split(s) for s in snapshots])

    def max_error(expected, got):
        return max(float(np.abs(e - g).max()) for e, g in zip(expected, got))

    # The steps at iterations 1 and 2 are distillation steps 0 and 1.
    m0, m1 = _momentum(0), _momentum(1)
    history = model.fit(data, verbose=0).history
    temperatures.append(float(model.current_teacher_temperature.numpy()))
    student, teacher = _split(_weights(model))
    return {
        "backend": keras.backend.backend(),
        "flags": flags,
        "logs": [{k: float(v) for k, v in log.items()} for log in logs],
        "history": {k: float(v[-1]) for k, v in history.items()},
        # Before the switch the teacher keeps its construction copy.
        "before_switch_error": max_error(teachers[0], teachers[1]),
        # At the switch it copies the student, then takes an EMA step.
        "switch_error": max_error(
            [m0 * a + (1 - m0) * b for a, b in zip(students[1], students[2])],
            teachers[2],
        ),
        "ema_error": max_error(
            [m1 * a + (1 - m1) * b for a, b in zip(teachers[2], students[3])],
            teachers[3],
        ),
        "temperatures": temperatures,
        "student_moved": max_error(students[1], students[3]),
        "teacher_lag": max_error(student, teacher),
        "mask_token_norm": float(np.linalg.norm(np.array(model.mask_token))),
        "teacher_trainable": [
            v.path
            for v in model.trainable_variables
            if v.path.startswith("teacher")
        ],
    }


def _check_run(report):
    assert report["flags"] == [0, 0, 1, 1]
    assert report["before_switch_error"] == 0.0
    assert report["student_moved"] > 1e-4
    # teacher = m * teacher + (1 - m) * student after each step, and
    # nothing else (no gradient) moves it.
    assert report["switch_error"] < 1e-6
    assert report["ema_error"] < 1e-6
    # Temperature of the last step of each fit: iterations 0 (before the
    # switch, counted as 0), 1, 2 and 4 -> distillation steps 0, 0, 1, 3.
    np.testing.assert_allclose(
        report["temperatures"],
        [_temperature(k) for k in (0, 0, 1, 3)],
        rtol=1e-6,
    )
    assert report["teacher_trainable"] == []
    # The EMA teacher lags behind the student.
    assert report["teacher_lag"] > 1e-4
    assert report["mask_token_norm"] > 0.0
    weights = self_distillation_weights("So400m")
    for log, active in zip(report["logs"], (0, 1, 1)):
        expected = log["sigmoid_loss"] + log["decoder_loss"]
        expected += active * (
            weights[0] * log["local_to_global_loss"]
            + weights[1] * log["masked_prediction_loss"]
        )
        np.testing.assert_allclose(log["loss"], expected, rtol=1e-5)
    history = report["history"]
    assert set(history) >= {
        "loss",
        "sigmoid_loss",
        "decoder_loss",
        "local_to_global_loss",
        "masked_prediction_loss",
    }
    assert all(np.isfinite(v) for v in history.values())


@pytest.fixture(scope="module")
def jax_run():
    return _run(_stage_b())


def test_stage_b_switch_ema_and_fit_on_jax(jax_run):
    assert jax_run["backend"] == "jax"
    _check_run(jax_run)


def test_schedules_match_dino_reference():
    # DINO (utils.cosine_scheduler): final + 0.5 * (base - final) *
    # (1 + cos(pi * i / n)); teacher temperature: np.linspace warm-up,
    # then constant.
    n = 7
    reference = 1.0 + 0.5 * (0.996 - 1.0) * (
        1 + np.cos(np.pi * np.arange(n + 3) / n)
    )
    reference[n:] = 1.0
    got = [float(ema_momentum_at(k, 0.996, 1.0, n)) for k in range(n + 3)]
    np.testing.assert_allclose(got, reference, rtol=0, atol=3e-7)
    assert float(ema_momentum_at(-3, 0.996, 1.0, n)) == pytest.approx(0.996)
    assert float(ema_momentum_at(5, 0.99, 1.0, 0)) == pytest.approx(0.99)
    warm = 4
    reference = np.concatenate(
        [np.linspace(0.04, 0.07, warm + 1), np.full(3, 0.07)]
    )
    got = [float(teacher_temperature_at(k, 0.07, 0.04, warm)) for k in range(8)]
    np.testing.assert_allclose(got, reference, rtol=1e-6)
    assert float(teacher_temperature_at(3, 0.07, 0.04, 0)) == pytest.approx(
        0.07
    )


def test_size_weights():
    assert self_distillation_weights("B") == (0.25, 0.0625)
    assert self_distillation_weights("l") == (0.5, 0.125)
    assert self_distillation_weights("So400m") == (1.0, 0.25)
    assert self_distillation_weights("giant") == (0.5, 0.125)
    with pytest.raises(ValueError, match="Unknown model size"):
        self_distillation_weights("xl")


def test_masking_replaces_exactly_half_the_patches_by_the_mask_token():
    seed = keras.random.SeedGenerator(0)
    tokens = np.random.default_rng(0).normal(size=(6, 16, 4)).astype("f")
    token = np.arange(4, dtype="float32") + 10.0
    masks = [np.asarray(random_patch_mask(6, 16, 0.5, seed)) for _ in "ab"]
    np.testing.assert_array_equal(masks[0].sum(-1), 8)
    assert not np.array_equal(masks[0], masks[1])
    masked = np.asarray(apply_mask_token(tokens, masks[0], token))
    np.testing.assert_array_equal(masked[masks[0]], np.tile(token, (48, 1)))
    np.testing.assert_array_equal(masked[~masks[0]], tokens[~masks[0]])


def test_initialize_teacher_copies_the_student():
    model = _stage_b()
    table = model.backbone.vision_encoder.position_embedding.embeddings
    table.assign(table + 0.5)
    model.initialize_teacher()
    assert int(model.teacher_initialized.numpy()) == 1
    student = {
        v.path: np.asarray(v)
        for layer in (
            model.backbone.vision_encoder,
            model.global_head,
            model.patch_head,
        )
        for v in layer.weights
    }
    teacher = [
        v
        for layer in (
            model.teacher_encoder,
            model.teacher_global_head,
            model.teacher_patch_head,
        )
        for v in layer.weights
    ]
    assert len(teacher) == len(student)
    for variable in teacher:
        # Same place in the same architecture: "teacher_x/..." <- "x/...".
        source = variable.path[len("teacher_") :]
        np.testing.assert_array_equal(np.asarray(variable), student[source])


def test_bad_crops_and_config():
    model = _stage_b()
    batch = dict(next(iter(_dataset_b(n=2))))
    batch["local_crops"] = tf.zeros((2, 8, 6, 6, 3))
    with pytest.raises(ValueError, match="whole number"):
        model(batch)
    with pytest.raises(ValueError, match="mask_ratio"):
        _stage_b(mask_ratio=1.5)
    with pytest.raises(ValueError, match="final_ema_momentum"):
        _stage_b(final_ema_momentum=1.5)
    with pytest.raises(ValueError, match="warmup_teacher_temperature"):
        _stage_b(warmup_teacher_temperature=0.0)


def test_save_and_load_keep_teacher_centres_and_switch(tmp_path):
    model = _stage_b()
    teacher_kernel = model.teacher_encoder.patch_embedding.kernel
    teacher_kernel.assign(teacher_kernel + 1.0)
    model.global_center.assign(np.linspace(0, 1, 32))
    model.initialize_teacher()
    model.save(tmp_path / "stage_b.keras")
    restored = keras.models.load_model(tmp_path / "stage_b.keras")
    assert isinstance(restored, StageBModel)
    config, restored_config = model.get_config(), restored.get_config()
    for key in (
        "num_prototypes",
        "ema_momentum",
        "final_ema_momentum",
        "ema_momentum_steps",
        "warmup_teacher_temperature",
        "teacher_temperature_warmup_steps",
        "distillation_start_step",
    ):
        assert restored_config[key] == config[key]
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]
    for saved, loaded in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))


_BACKEND_CODE = """
import json
from training.test_stage_b import _run, _stage_b
print("RESULT " + json.dumps(_run(_stage_b())))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_stage_b_switch_ema_and_fit_on_other_backends(backend):
    report = run_code(_BACKEND_CODE, backend=backend)
    assert report["backend"] == backend
    _check_run(report)


def test_uniform_collapse_monitor_warns_once_after_patience():
    # The premise: a teacher whose centred logits are constant gives a
    # uniform target, and the student's best answer costs ln K.
    k = 256
    constant = np.full((3, k), 0.7, "float32")
    loss = local_to_global_loss(
        np.zeros((3, 2, k), "float32"), constant, np.zeros(k, "float32")
    )
    np.testing.assert_allclose(float(loss), np.log(k), rtol=1e-5)

    monitor = UniformCollapseMonitor(k, 128, patience=2)
    epochs = [
        # At initialisation both losses are near ln K for a while.
        {"local_to_global_loss": 5.54, "masked_prediction_loss": 4.85},
        {"local_to_global_loss": 4.50, "masked_prediction_loss": 3.10},
        {"local_to_global_loss": 5.538, "masked_prediction_loss": 3.00},
        {"local_to_global_loss": 5.539, "masked_prediction_loss": 2.90},
        {"local_to_global_loss": 5.540, "masked_prediction_loss": 2.80},
        {"loss": 1.0},
    ]
    caught = []
    for epoch, logs in enumerate(epochs):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            monitor.on_epoch_end(epoch, logs)
        caught.append([str(r.message) for r in records])
    assert caught[:3] == [[], [], []]
    assert len(caught[3]) == 1
    assert "local_to_global_loss" in caught[3][0]
    assert f"{np.log(k):.4f}" in caught[3][0]
    assert "teacher_temperature" in caught[3][0]
    # Once per loss; a healthy masked-prediction loss never warns.
    assert caught[4:] == [[], []]
    # A loss far above ln K (a peaked teacher the student does not match
    # yet, as in the first steps) is not a collapse.
    far_above = UniformCollapseMonitor(32, 16, patience=2)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        for epoch in range(4):
            far_above.on_epoch_end(
                epoch,
                {"local_to_global_loss": 8.8, "masked_prediction_loss": 6.0},
            )
    assert records == []
    with pytest.raises(ValueError, match="num_prototypes"):
        UniformCollapseMonitor(1, 128)
    with pytest.raises(ValueError, match="patience"):
        UniformCollapseMonitor(256, 128, patience=0)
