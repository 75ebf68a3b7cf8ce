"""The recipe: stage plan, schedule, atomic checkpoints, kill -9 resume."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_siglip2.training import checkpoint as ckpt
from keras_siglip2.training.recipe import RecipeConfig
from keras_siglip2.training.recipe import RecipeSchedule
from keras_siglip2.training.recipe import stage_plan

SCRIPT = Path(__file__).with_name("recipe_script.py")
# Cheaper XLA compiles; both runs use the same flags, so bit-exactness
# between them still means something.
_ENV = dict(
    os.environ,
    KERAS_BACKEND="jax",
    XLA_FLAGS="--xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
)


def _plan(**overrides):
    config = RecipeConfig(
        **{
            "total_examples": 1000 * 32,
            "batch_size": 32,
            "checkpoint_every": 10,
            **overrides,
        }
    )
    return [(s.name, s.start_step, s.end_step) for s in stage_plan(config)]


def test_recipe_plan_follows_the_paper_fractions():
    assert _plan() == [("A", 0, 800), ("B", 800, 950), ("C", 950, 1000)]
    # NaFlex: Stage C from 90%, remaining schedule stretched x3.75.
    assert _plan(naflex=True) == [
        ("A", 0, 800),
        ("B", 800, 900),
        ("C", 900, 1280),
    ]
    # Stage D: examples / super-batch (2x the batch).
    assert _plan(distillation_examples=64 * 200)[-1] == ("D", 1000, 1200)


def test_recipe_schedule_matches_formula():
    schedule = RecipeSchedule(
        1e-3, total_steps=100, warmup_steps=10, stretch_from=90, stretch=4.0
    )

    def expected(step):
        virtual = min(step, 90) + max(step - 90, 0) / 4.0
        if virtual < 10:
            return 1e-3 * virtual / 10
        progress = min(max((virtual - 10) / 90, 0), 1)
        return 1e-3 * 0.5 * (1 + math.cos(math.pi * progress))

    for step in (0, 5, 10, 50, 89, 90, 94, 130):
        np.testing.assert_allclose(
            float(schedule(step)), expected(step), rtol=1e-5, atol=1e-9
        )


def test_recipe_config_rejects_bad_fractions():
    with pytest.raises(ValueError, match="Stage fractions"):
        RecipeConfig(
            total_examples=100,
            batch_size=4,
            self_distillation_start=0.99,
            resolution_change_start=0.9,
        )
    with pytest.raises(ValueError, match="batch_size"):
        RecipeConfig(total_examples=2, batch_size=4)


def test_checkpoints_are_atomic_and_pickle_free(tmp_path):
    def make():
        return keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(2, name="dense")],
            name="model",
        )

    model = make()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(
            tmp_path, model, optimizer, {"step": step, "stage": "A"}, keep=2
        )
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_000000002",
        "step_000000003",
    ]
    assert not list(tmp_path.glob(".tmp-*"))
    latest = ckpt.latest_checkpoint(tmp_path)
    state, weights, optimizer_state = ckpt.read_checkpoint(latest)
    assert state == {"step": 3, "stage": "A"}
    clone = make()
    ckpt.assign_weights(clone, weights)
    for a, b in zip(model.weights, clone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (latest / "weights.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        ckpt.read_checkpoint(latest)


def _run(args, timeout=900):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_ENV,
    )


def test_recipe_resumes_after_kill_minus_9_bit_exact(tmp_path):
    reference = _run([str(tmp_path / "ref"), str(tmp_path / "ref.npz")])
    assert reference.returncode == 0, reference.stderr[-3000:]

    # Start again, and kill -9 the process once it has written a
    # checkpoint in the middle of Stage A.
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(interrupted), str(tmp_path / "x")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_ENV,
    )
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        latest = interrupted / "LATEST"
        if latest.exists() and latest.read_text().strip() >= "step_000000004":
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it was killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = (interrupted / "LATEST").read_text().strip()
    assert killed_at < "step_000000008"

    resumed = _run([str(interrupted), str(tmp_path / "resumed.npz")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with (
        np.load(tmp_path / "ref.npz") as a,
        np.load(tmp_path / "resumed.npz") as b,
    ):
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # Stage C changed the resolution (16 -> 20 px: 5 x 5 patches).
    with np.load(tmp_path / "ref.npz") as a:
        table = [k for k in a.files if k.endswith("pos_embedding/embeddings")]
        assert a[table[0]].shape == (25, 16)
