"""Runs the guides end to end, offline, as a user would."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDES = Path(__file__).resolve().parents[1] / "guides"


def _run_guide(name: str, timeout: int = 600, **env_overrides) -> str:
    env = dict(os.environ, KERAS_BACKEND="jax", **env_overrides)
    # The guides show how to use real presets through this variable; the
    # tests run them offline.
    env.pop("SIGLIP2_PRESET", None)
    result = subprocess.run(
        [sys.executable, str(GUIDES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _table(out: str) -> dict[tuple[str, str], float]:
    """`{(task, metric): value}` from `format_table` output."""
    rows = re.findall(r"^(\S+)\s+(\S+)\s+(-?[0-9.]+)$", out, re.M)
    return {(task, metric): float(value) for task, metric, value in rows}


def test_naflex_guide():
    out = _run_guide("naflex.py")
    # Grids keep the aspect ratio and fill the sequence as well as possible.
    assert "wide 120x900 at length 128: resized to 64x480, grid 4x30" in out
    assert "tall 1000x150 at length 576: resized to 960x144, grid 60x9" in out
    assert "length 576: patches (2, 576, 768)" in out
    assert "image-text logits:" in out


def test_getting_started_guide():
    out = _run_guide("getting_started.py")
    assert "siglip2_base_patch16_224: SigLIP 2 B/16 at 224 px" in out
    assert "offline: wrote a tiny random preset" in out
    # Backbone weights and preprocessing both came from the preset.
    for name in ("config.json", "model.weights.h5", "tokenizer.json"):
        assert f"'{name}'" in out
    assert "image tower: 32 px, patch 8" in out
    assert "embeddings: images (2, 32), texts (3, 32)" in out
    # Two images against three prompts, each a probability.
    scores = re.findall(r"^image of '.*': (.*)$", out, re.M)
    assert len(scores) == 2
    for line in scores:
        values = [float(v) for v in re.findall(r"' ([0-9.e+-]+)", line)]
        assert len(values) == 3 and all(0 < v < 1 for v in values)
    assert "zero-shot over 80 classes" in out
    assert "'en/top1'" in out and "'zh/top1'" in out
    table = _table(out)
    assert table[("zero_shot", "num_classes")] == 80
    assert table[("retrieval", "num_captions")] == 24
    for key in ("image_to_text/R@1", "text_to_image/R@5"):
        assert 0 <= table[("retrieval", key)] <= 1


def test_fine_tuning_guide():
    out = _run_guide("fine_tuning.py", SIGLIP2_GUIDE_STEPS="50")
    assert "'images': ((32, 32, 32, 3), 'float32')" in out
    assert "'token_ids': ((32, 16), 'int32')" in out
    losses = re.search(r"^sigmoid loss per epoch: (.*)$", out, re.M)
    losses = [float(v) for v in losses.group(1).split(", ")]
    assert len(losses) == 5 and losses[-1] < losses[0]
    blind = math.log(32) - 31 * math.log(31 / 32)
    assert f"best loss of an input-blind model: {blind:.4f}" in out
    table = _table(out)
    for when in ("before", "after"):
        assert 0 <= table[(f"zero_shot/{when}", "top1")] <= 1
        assert 0 <= table[(f"retrieval/{when}", "image_to_text/R@5")] <= 1
    assert "image tower unchanged: True; text tower changed: True" in out
    assert "reloaded SigLIP2Backbone: max logit difference 0.0" in out


_CONVERSIONS = (
    "HF -> keras",
    "keras -> HF",
    "keras -> big_vision -> keras",
    "keras-hub -> keras",
    "keras -> keras-hub",
    "CLI big_vision -> .keras",
)


def _differences(out: str) -> dict[str, float]:
    found = re.findall(
        r"^(.+?): (?:\w+, )?max abs difference (\S+)$", out, re.M
    )
    return {name: float(value) for name, value in found}


def test_converting_checkpoints_guide():
    out = _run_guide("converting_checkpoints.py")
    differences = _differences(out)
    assert sorted(differences) == sorted(_CONVERSIONS)
    for name, value in differences.items():
        assert value < 1e-5, (name, value)
    assert "keras -> HF: SiglipModel" in out
    assert "keras -> keras-hub: SigLIPBackbone" in out
    assert "params/img/MAPHead_0/LayerNorm_0/bias (32,)" in out
    # `summary` of the CLI-converted file.
    assert "image tower: 32 px, patch 8, width 32, 2 layers" in out
    assert re.search(r"total\s+54,018$", out, re.M)


def test_converting_checkpoints_guide_without_transformers(tmp_path):
    # A module that fails to import, as if transformers were not installed.
    (tmp_path / "transformers.py").write_text(
        'raise ImportError("transformers is hidden by the test")\n'
    )
    pythonpath = os.pathsep.join(
        p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p
    )
    out = _run_guide("converting_checkpoints.py", PYTHONPATH=pythonpath)
    assert "HF: skipped, `transformers` and `torch` are not installed" in out
    assert sorted(_differences(out)) == sorted(_CONVERSIONS[2:])


@pytest.mark.slow
def test_full_recipe_guide():
    # About 75 s of CPU time: five XLA programs (stages A, B, C at a new
    # resolution, D, and the evaluation encoders).
    out = _run_guide("full_recipe.py", timeout=900)
    assert "A               [0, 976,500)            80.0%" in out
    assert "B       [976,500, 1,159,600)            15.0%" in out
    assert "C     [1,159,600, 1,220,700)             5.0%" in out
    assert "tiny plan: A [0, 4), B [4, 6), C [6, 8), D [8, 10)" in out
    # The first fit stops after step 6; the second resumes there.
    events = re.findall(r"^(stage \w done: .*|stopped; .*)$", out, re.M)
    assert events == [
        "stage A done: 16 px (fixed)",
        "stage B done: 16 px (fixed)",
        "stopped; latest checkpoint: step_000000006",
        # Resumed from B's final checkpoint: B is reported again first.
        "stage B done: 16 px (fixed)",
        "stage C done: 20 px (fixed)",
        "stage D done: 20 px (fixed)",
    ]
    losses = dict(re.findall(r"^stage (\w): (.*)$", out, re.M))
    assert "masked_prediction_loss" in losses["B"]
    assert "learnability" in losses["D"]
    for stage in "ABCD":
        for value in re.findall(r" ([-0-9.]+)(?:,|$)", losses[stage]):
            assert math.isfinite(float(value)), (stage, losses[stage])
    table = _table(out)
    assert table[("zero_shot", "num_classes")] == 80
    assert "after the recipe (20 px)" in out
    assert "saved final.keras: SigLIP2Backbone" in out
