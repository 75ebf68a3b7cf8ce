"""The command line: `python -m keras_siglip2 demo`."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

ROW = re.compile(r"^(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)$")


def _block(width: int, mlp: int) -> int:
    """Pre-LN block: two LayerNorms, q/k/v/out projections and the MLP."""
    return 2 * 2 * width + 4 * (width * width + width) + _mlp(width, mlp)


def _mlp(width: int, mlp: int) -> int:
    return width * mlp + mlp + mlp * width + width


def _vision(width, layers, mlp, patch, image_size) -> int:
    grid = image_size // patch
    patch_embedding = patch * patch * 3 * width + width
    map_head = width + 4 * (width * width + width) + 2 * width
    return (
        patch_embedding
        + grid * grid * width
        + layers * _block(width, mlp)
        + 2 * width
        + map_head
        + _mlp(width, mlp)
    )


def _text(width, layers, mlp, vocabulary, length, projection) -> int:
    return (
        vocabulary * width
        + length * width
        + layers * _block(width, mlp)
        + 2 * width
        + width * projection
        + projection
    )


SIZES = {
    "base": (768, 12, 3072),
    "large": (1024, 24, 4096),
    "so400m": (1152, 27, 4304),
    "giant": (1536, 40, 6144),
}


def _expected_row(name: str) -> tuple[int, int, int]:
    size, patch, resolution = name.split("_")
    text_size = "so400m" if size == "giant" else size
    image = _vision(*SIZES[size], int(patch[5:]), int(resolution))
    text = _text(*SIZES[text_size], 256_000, 64, SIZES[size][0])
    return image, text, image + text + 2


def _run(args, env, cwd, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "keras_siglip2", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Runs the demo once, without KERAS_BACKEND, so JAX must be chosen."""
    tmp_path = tmp_path_factory.mktemp("demo")
    output_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    completed = _run(
        ["demo", "--output_dir", str(output_dir), "--steps", "16"],
        env,
        tmp_path,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout, output_dir


def test_demo_defaults_to_jax(demo):
    stdout, _ = demo
    assert "backend jax)" in stdout.splitlines()[0]


def test_demo_prints_shapes_and_tiny_param_counts(demo):
    stdout, _ = demo
    assert "image embeddings: (4, 64)" in stdout
    assert "text embeddings: (6, 64)" in stdout
    assert "logits (images x texts): (4, 6)" in stdout
    image = _vision(64, 2, 256, 8, 32)
    text = _text(64, 2, 256, 1000, 16, 64)
    assert (
        f"parameters: image tower {image:,}, text tower {text:,}, "
        f"total {image + text + 2:,}"
    ) in stdout


def test_demo_runs_the_recipe_with_finite_decreasing_loss(demo):
    stdout, output_dir = demo
    assert "stages A [0, 12), B [12, 14), C [14, 16)" in stdout
    match = re.search(r"^stage A loss: first (\S+) last (\S+)$", stdout, re.M)
    assert match is not None
    first, last = float(match.group(1)), float(match.group(2))
    assert math.isfinite(first) and math.isfinite(last) and last < first
    for stage in "ABC":
        assert re.search(rf"^stage {stage} decoder_loss: ", stdout, re.M)
    assert (output_dir / "checkpoints" / "LATEST").read_text() == (
        "step_000000016"
    )


def test_demo_writes_real_metrics(demo):
    _, output_dir = demo
    results = json.loads((output_dir / "results.json").read_text())
    results = results.get("results", results)
    assert 0.0 <= results["zero_shot"]["top1"] <= 1.0
    assert results["zero_shot"]["num_classes"] == 80
    assert 0.0 <= results["retrieval"]["image_to_text/R@10"] <= 1.0
    assert 0.0 <= results["dense_probe"]["mIoU"] <= 1.0


def test_demo_saves_and_reloads(demo):
    stdout, output_dir = demo
    assert (output_dir / "backbone.keras").is_file()
    match = re.search(
        r"max abs difference of logits after reload: (\S+)", stdout
    )
    assert match is not None
    assert float(match.group(1)) <= 1e-6


def test_demo_architecture_table(demo):
    stdout, _ = demo
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            counts = (int(g.replace(",", "")) for g in match.groups()[1:])
            rows[match.group(1)] = tuple(counts)
    names = [
        "base_patch16_256",
        "large_patch16_256",
        "so400m_patch16_256",
        "giant_patch16_256",
        "so400m_patch14_384",
    ]
    assert sorted(rows) == sorted(names)
    for name in names:
        assert rows[name] == _expected_row(name), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["frobnicate"], "Unknown command 'frobnicate'; expected one of: demo"),
        ([], "Expected one command (demo, convert, summary"),
    ],
)
def test_bad_command_exits_non_zero(args, message, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    completed = _run(args, env, tmp_path)
    assert completed.returncode != 0
    assert message in completed.stderr
