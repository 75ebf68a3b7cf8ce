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

from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training import checkpoint as ckpt
from keras_siglip2.training.recipe import RecipeConfig
from keras_siglip2.training.recipe import RecipeSchedule
from keras_siglip2.training.recipe import SigLIP2Recipe
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
    # NaFlex: Stage C from 90%, remaining schedule stretched x3.75 (plus
    # the half-batch steps, see test_stage_c.py).
    assert _plan(naflex=True, naflex_half_batch_at_longest=False) == [
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
    with pytest.raises(ValueError, match="Stage fractions"):
        RecipeConfig(
            total_examples=100,
            batch_size=4,
            naflex=True,
            self_distillation_start=0.95,
            naflex_start=0.9,
        )
    with pytest.raises(ValueError, match="naflex_start=1.5"):
        RecipeConfig(total_examples=100, batch_size=4, naflex_start=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        RecipeConfig(total_examples=2, batch_size=4)
    with pytest.raises(ValueError, match="even batch_size"):
        RecipeConfig(total_examples=100, batch_size=5, naflex=True)
    with pytest.raises(ValueError, match="filter_ratio"):
        RecipeConfig(total_examples=100, batch_size=4, filter_ratio=1.0)
    with pytest.raises(ValueError, match="final_ema_momentum"):
        RecipeConfig(total_examples=100, batch_size=4, final_ema_momentum=2)
    with pytest.raises(ValueError, match="Unknown model size"):
        RecipeConfig(total_examples=100, batch_size=4, size="huge")


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
    # A flipped byte inside an array still unzips; the manifest catches it.
    data = bytearray((latest / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (latest / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        ckpt.read_checkpoint(latest)
    (latest / "weights.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        ckpt.read_checkpoint(latest)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="dense")], name="m"
    )
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    ckpt.save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    real_savez = np.savez

    def disk_full(file, **arrays):
        # Half of the archive reaches the disk, then ENOSPC.
        real_savez(file, **arrays)
        file.truncate(file.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(tmp_path, model, optimizer, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "LATEST",
        "step_000000001",
    ]
    state, _, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state == {"step": 1}
    # A checkpoint directory without its manifest (as a copy interrupted
    # by hand would leave) is not valid.
    (tmp_path / "step_000000001" / "manifest.json").unlink()
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        ckpt.latest_checkpoint(tmp_path)


def _run(args, timeout=900, backend="jax"):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**_ENV, "KERAS_BACKEND": backend},
    )


@pytest.mark.slow
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
    assert killed_at < "step_000000010"

    resumed = _run([str(interrupted), str(tmp_path / "resumed.npz")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stages = _compare(tmp_path / "ref.npz", tmp_path / "resumed.npz")
    # Stages A-D ran (D with a teacher); the resumed run reported the
    # stages it finished.
    assert list(stages[0]) == ["A:fixed", "B:fixed", "C:fixed", "D:fixed"]
    assert "D:fixed" in stages[1]
    assert list(stages[1]) == list(stages[0][-len(stages[1]) :])
    # Stage C changed the resolution (16 -> 20 px: 5 x 5 patches).
    with np.load(tmp_path / "ref.npz") as a:
        table = [k for k in a.files if k.endswith("pos_embedding/embeddings")]
        assert a[table[0]].shape == (25, 16)


def _compare(first, second):
    """Asserts equal weights; returns both runs' reported stages."""
    with np.load(first) as a, np.load(second) as b:
        assert a.files == b.files
        for name in a.files:
            if name != "__stages__":
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        return a["__stages__"], b["__stages__"]


@pytest.mark.slow
def test_naflex_recipe_resumes_mid_stage_c_through_stage_d(tmp_path):
    reference = _run(
        [str(tmp_path / "ref"), str(tmp_path / "ref.npz"), "naflex"]
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Stop in the NaFlex Stage C (steps 6-11) at step 8, between the two
    # half-batch steps of batch 7, and resume. (Step 7 is no checkpoint:
    # the run goes on to the next one, 8.)
    resumed = _run(
        [
            str(tmp_path / "staged"),
            str(tmp_path / "staged.npz"),
            "naflex",
            "stop=7",
        ]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    stages = _compare(tmp_path / "ref.npz", tmp_path / "staged.npz")
    expected = ["A:fixed", "B:fixed", "C:naflex", "D:fixed"]
    assert list(stages[0]) == list(stages[1]) == expected


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_recipe_runs_and_resumes_bit_exact_on_other_backends(backend, tmp_path):
    """A to D with `fit` on TensorFlow and PyTorch; a run stopped after
    Stage B and resumed in the same process ends with the same weights
    as one that ran straight through."""
    reference = _run(
        [str(tmp_path / "ref"), str(tmp_path / "ref.npz")], backend=backend
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    staged = _run(
        [str(tmp_path / "staged"), str(tmp_path / "staged.npz"), "stop=6"],
        backend=backend,
    )
    assert staged.returncode == 0, staged.stderr[-3000:]
    stages = _compare(tmp_path / "ref.npz", tmp_path / "staged.npz")
    expected = ["A:fixed", "B:fixed", "C:fixed", "D:fixed"]
    assert list(stages[0]) == expected
    # The resumed `fit` first reports the stage its checkpoint ended.
    assert list(stages[1]) == expected[:2] + expected[1:]
    with np.load(tmp_path / "ref.npz") as weights:
        assert all(
            np.isfinite(weights[k]).all()
            for k in weights.files
            if k != "__stages__"
        )


@pytest.fixture(scope="module")
def tokenizer():
    proto = train_demo_sentencepiece(vocab_size=600, num_examples=100)
    return SigLIP2Tokenizer(proto=proto, sequence_length=8)


def _backbone(vocabulary_size, width=8, image_size=16, sequence_length=8):
    vision = SigLIP2VisionEncoder(
        image_size=image_size,
        patch_size=4,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=vocabulary_size,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=sequence_length,
    )
    return SigLIP2Backbone(vision, text)


def _tiny_config(**overrides):
    return RecipeConfig(
        **{
            "total_examples": 32,
            "batch_size": 4,
            "checkpoint_every": 2,
            "image_size": 16,
            "decoder_length": 12,
            "num_location_bins": 8,
            "num_local_crops": 2,
            "local_crop_size": 8,
            "head_hidden_dim": 8,
            "head_bottleneck_dim": 4,
            "num_prototypes": 8,
            "num_patch_prototypes": 8,
            **overrides,
        }
    )


def _no_examples(start):
    raise AssertionError("bad input must fail before reading any data")


def test_recipe_refuses_a_checkpoint_of_another_config(tokenizer, tmp_path):
    vocabulary = tokenizer.vocabulary_size()
    recipe = SigLIP2Recipe(
        _tiny_config(), _backbone(vocabulary), tokenizer, _no_examples
    )
    other = SigLIP2Recipe(
        _tiny_config(learning_rate=3e-4),
        _backbone(vocabulary),
        tokenizer,
        _no_examples,
    )
    model = other._stage_a_model(other._initial_backbone)
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    state = {"step": 2, "stage": "A", "config": other.config_json()}
    ckpt.save_checkpoint(tmp_path, model, optimizer, state)
    with pytest.raises(ValueError, match=r"another config.*learning_rate"):
        recipe.fit(tmp_path, verbose=0)
    ckpt.save_checkpoint(tmp_path, model, optimizer, {"step": 2})
    with pytest.raises(ValueError, match="holds no recipe config"):
        recipe.fit(tmp_path, verbose=0)
    # Nothing trained: the checkpoint is still the one written here.
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000000002"]


def test_recipe_rejects_bad_inputs_before_training(tokenizer):
    vocabulary = tokenizer.vocabulary_size()
    with_d = _tiny_config(distillation_examples=16)
    with pytest.raises(ValueError, match="needs a `teacher`"):
        SigLIP2Recipe(with_d, _backbone(vocabulary), tokenizer, _no_examples)
    # A teacher must read the same token ids.
    with pytest.raises(ValueError, match="vocabulary_size"):
        SigLIP2Recipe(
            with_d,
            _backbone(vocabulary),
            tokenizer,
            _no_examples,
            teacher=_backbone(vocabulary + 1, width=12),
        )
    with pytest.raises(ValueError, match="max_sequence_length"):
        SigLIP2Recipe(
            with_d,
            _backbone(vocabulary),
            tokenizer,
            _no_examples,
            teacher=_backbone(vocabulary, width=12, sequence_length=9),
        )
    with pytest.raises(
        TypeError, match="The teacher must be a `SigLIP2Backbone`"
    ):
        SigLIP2Recipe(
            with_d,
            _backbone(vocabulary),
            tokenizer,
            _no_examples,
            teacher=_backbone(vocabulary).vision_encoder,
        )
    with pytest.raises(ValueError, match="takes 16-px images"):
        SigLIP2Recipe(
            _tiny_config(image_size=32),
            _backbone(vocabulary),
            tokenizer,
            _no_examples,
        )
    with pytest.raises(ValueError, match="encoder embeds only"):
        SigLIP2Recipe(
            _tiny_config(), _backbone(vocabulary - 1), tokenizer, _no_examples
        )
    with pytest.raises(ValueError, match="whole number of 4-px patches"):
        SigLIP2Recipe(
            _tiny_config(local_crop_size=6),
            _backbone(vocabulary),
            tokenizer,
            _no_examples,
        )
    # Stage C at 8-px patches: the 12-px crops no longer fit.
    with pytest.raises(ValueError, match="whole number of 8-px patches"):
        SigLIP2Recipe(
            _tiny_config(local_crop_size=12, stage_c_patch_size=8),
            _backbone(vocabulary),
            tokenizer,
            _no_examples,
        )
    recipe = SigLIP2Recipe(
        _tiny_config(), _backbone(vocabulary), tokenizer, _no_examples
    )
    for bad in (-1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="stop_after_steps"):
            recipe.fit("unused_checkpoint_dir", stop_after_steps=bad)


def test_recipe_ring_loss_reaches_the_stage_models(tokenizer):
    vocabulary = tokenizer.vocabulary_size()
    recipe = SigLIP2Recipe(
        _tiny_config(ring_loss=True),
        _backbone(vocabulary),
        tokenizer,
        _no_examples,
    )
    backbone = recipe._initial_backbone
    assert recipe._stage_a_model(backbone).ring_loss is True
    assert recipe._stage_b_model(backbone).ring_loss is True
    plain = SigLIP2Recipe(
        _tiny_config(), _backbone(vocabulary), tokenizer, _no_examples
    )
    assert plain._stage_a_model(plain._initial_backbone).ring_loss is False


def test_recipe_accepts_a_checkpoint_without_a_newer_default_field(
    tokenizer, tmp_path
):
    vocabulary = tokenizer.vocabulary_size()
    recipe = SigLIP2Recipe(
        _tiny_config(), _backbone(vocabulary), tokenizer, _no_examples
    )
    older = {k: v for k, v in recipe.config_json().items() if k != "ring_loss"}
    recipe._check_checkpoint({"config": older}, tmp_path)  # no error
    ring = SigLIP2Recipe(
        _tiny_config(ring_loss=True),
        _backbone(vocabulary),
        tokenizer,
        _no_examples,
    )
    with pytest.raises(ValueError, match=r"ring_loss: False \(checkpoint\)"):
        ring._check_checkpoint({"config": older}, tmp_path)


def test_stage_batches_are_each_stage_s_inputs(tokenizer):
    """`stage_batches` gives the stream `fit` trains a stage on: Stage A
    and B batches at the training resolution (B with its extra views),
    Stage D super-batches at the resized Stage C resolution, starting at
    the stage's data position."""
    from keras_siglip2.data.generated import generated_dataset

    vocabulary = tokenizer.vocabulary_size()
    config = _tiny_config(
        distillation_examples=16,
        stage_c_image_size=24,
        resolution_change_start=0.9,
    )
    starts = []

    def examples(start):
        starts.append(start)
        return generated_dataset(
            "train", seed=0, start=start, side_range=(16, 32)
        )

    recipe = SigLIP2Recipe(
        config,
        _backbone(vocabulary),
        tokenizer,
        examples,
        teacher=_backbone(vocabulary, width=12),
    )
    plan = {stage.name: stage for stage in recipe.plan}
    assert list(plan) == ["A", "B", "C", "D"]
    a = next(iter(recipe.stage_batches("A")))
    assert tuple(a["images"].shape) == (4, 16, 16, 3)
    assert tuple(a["decoder_inputs"].shape) == (4, 12)
    b = next(iter(recipe.stage_batches("B")))
    assert tuple(b["local_crops"].shape) == (4, 2, 8, 8, 3)
    d = next(iter(recipe.stage_batches("D")))
    # Super-batches of 2 x 4 at the resized 24 px, image-text only.
    assert tuple(d["images"].shape) == (8, 24, 24, 3)
    assert sorted(d) == ["images", "token_ids"]
    assert starts == [
        0,
        4 * plan["B"].start_step,
        4 * plan["D"].start_step,
    ]
    with pytest.raises(ValueError, match=r"'E' is not in this recipe's plan"):
        recipe.stage_batches("E")
    # Stage D's optimizer as `fit` builds it: the distillation learning
    # rate from the first step, no weight decay.
    optimizer = recipe.stage_optimizer("D")
    optimizer.build(_backbone(vocabulary).trainable_variables)
    assert float(optimizer.learning_rate) == pytest.approx(
        config.distillation_learning_rate
    )
    assert optimizer.weight_decay == 0.0
    with pytest.raises(ValueError, match=r"'E' is not in this recipe's plan"):
        recipe.stage_optimizer("E")


def test_recipe_refuses_a_stage_b_checkpoint_of_another_width(
    tokenizer, tmp_path
):
    """A checkpoint whose student and EMA teacher have another embedding
    width than the backbone given now (the config alone does not name
    the width) fails before any step, naming the teacher's variables."""
    vocabulary = tokenizer.vocabulary_size()
    config = _tiny_config()
    writer = SigLIP2Recipe(
        config, _backbone(vocabulary), tokenizer, _no_examples
    )
    model = writer.stage_b_model
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    b_start = next(s for s in writer.plan if s.name == "B").start_step
    state = {"step": b_start, "stage": "B", "config": writer.config_json()}
    ckpt.save_checkpoint(tmp_path, model, optimizer, state)
    reader = SigLIP2Recipe(
        config, _backbone(vocabulary, width=12), tokenizer, _no_examples
    )
    with pytest.raises(
        ValueError,
        match=r"does not match the model: .*teacher_vision_encoder.*\(8",
    ):
        reader.fit(tmp_path, verbose=0)
