"""The command line: `python -m keras_siglip2 demo`."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROW = re.compile(r"^(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)$")
TEACHER_ROW = "teacher of D (curated)"
STAGE_ROWS = (
    TEACHER_ROW,
    "init (random)",
    "A (32 px)",
    "B (32 px)",
    "B NaFlex (16 patches)",
    "B NaFlex (36 patches)",
    "B NaFlex (64 patches)",
    "C NaFlex (16 patches)",
    "C NaFlex (36 patches)",
    "C NaFlex (64 patches)",
    "C (32 px)",
    "D (32 px)",
    "D control, no selection (32 px)",
)
METRICS = (
    "zero_shot/top1",
    "retrieval/image_to_text/R@1",
    "retrieval/image_to_text/R@5",
    "retrieval/text_to_image/R@1",
    "retrieval/text_to_image/R@5",
    "referring/accuracy@0.5",
    "dense_probe/mIoU",
)


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
        [
            "demo",
            "--output_dir",
            str(output_dir),
            "--steps",
            "16",
            "--demo_eval_examples",
            "8",
            "--demo_decoder_steps",
            "4",
        ],
        env,
        tmp_path,
        timeout=900,
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


def _plan(stdout: str) -> dict[str, tuple[int, int]]:
    match = re.search(r"^== Recipe: .* stages (.*) ==$", stdout, re.M)
    assert match is not None
    return {
        name: (int(start), int(end))
        for name, start, end in re.findall(
            r"(\w) \[(\d+), (\d+)\)", match.group(1)
        )
    }


def test_demo_runs_every_stage_with_finite_decreasing_loss(demo):
    stdout, output_dir = demo
    plan = _plan(stdout)
    # 16 steps in 16 one-step segments: A to 80%, B to 90%, the NaFlex C
    # stretched x3.75 (plus half-batch steps), D 10% of the steps (2
    # segments) with 2x super-batches.
    assert list(plan) == ["A", "B", "C", "D"]
    assert plan["A"] == (0, 12) and plan["B"] == (12, 14)
    assert plan["C"][0] == 14 and plan["C"][1] >= 14 + round(2 * 3.75)
    assert plan["D"] == (plan["C"][1], plan["C"][1] + 2)
    match = re.search(r"^stage A loss: first (\S+) last (\S+)$", stdout, re.M)
    assert match is not None
    first, last = float(match.group(1)), float(match.group(2))
    assert math.isfinite(first) and math.isfinite(last) and last < first
    for stage in "ABC":
        assert re.search(rf"^stage {stage} decoder_loss: ", stdout, re.M)
    for name in ("local_to_global_loss", "masked_prediction_loss"):
        assert re.search(rf"^stage B {name}: ", stdout, re.M)
    assert re.search(r"^stage D learnability: ", stdout, re.M)
    assert (output_dir / "checkpoints" / "LATEST").read_text() == (
        f"step_{plan['D'][1]:09d}"
    )
    assert (output_dir / "teacher.keras").is_file()


def _printed_table(stdout: str) -> dict[str, list[float]]:
    """The final per-stage table: {row name: [values]}."""
    # The title line's tail, the header and the rule come first.
    lines = stdout.split("== Metrics per stage")[1].splitlines()[3:]
    rows = {}
    for line in lines:
        cells = re.match(r"^(.*?)((?:\s+(?:[\d.]+|n/a)){7})$", line)
        if cells is None:
            break
        rows[cells.group(1).rstrip()] = [
            float("nan") if v == "n/a" else float(v)
            for v in cells.group(2).split()
        ]
    return rows


def test_demo_prints_and_writes_metrics_per_stage(demo):
    stdout, output_dir = demo
    printed = _printed_table(stdout)
    assert list(printed) == list(STAGE_ROWS)
    document = json.loads((output_dir / "results.json").read_text())
    results = document["results"]
    assert list(results) == list(STAGE_ROWS)
    assert document["metadata"]["steps"] == 16
    # The teacher is wider than the referring decoder reads: no referring.
    teacher = results[TEACHER_ROW]
    assert not any(key.startswith("referring/") for key in teacher)
    referring = METRICS.index("referring/accuracy@0.5")
    assert math.isnan(printed[TEACHER_ROW][referring])
    assert teacher["retrieval/num_captions"] == 3 * 8
    for row in STAGE_ROWS:
        metrics = results[row]
        values = [metrics.get(key, float("nan")) for key in METRICS]
        present = [v for v in values if not math.isnan(v)]
        assert all(0.0 <= v <= 1.0 for v in present), (row, values)
        np.testing.assert_allclose(printed[row], values, atol=5e-4)
        if row == TEACHER_ROW:
            continue
        for direction in ("image_to_text", "text_to_image"):
            assert (
                metrics[f"retrieval/{direction}/R@1"]
                <= metrics[f"retrieval/{direction}/R@5"]
            )
        assert metrics["zero_shot/num_classes"] == 80
        assert metrics["zero_shot/num_examples"] == 8
        # 3 captions per test image; every image has 1-4 referring
        # expressions, the decoder trains on 2x as many images.
        assert metrics["retrieval/num_captions"] == 3 * 8
        assert 8 <= metrics["referring/num_test"] <= 4 * 8
        assert 16 <= metrics["referring/num_train"] <= 4 * 16
        assert math.isfinite(metrics["referring/train_loss_last"])
        assert metrics["dense_probe/num_classes"] == 10
    # The NaFlex rows see more patches at longer sequence lengths; the
    # Stage B model in NaFlex form sees the same patches as Stage C's.
    for stage in "BC":
        patches = [
            results[f"{stage} NaFlex ({n} patches)"][
                "dense_probe/num_test_patches"
            ]
            for n in (16, 36, 64)
        ]
        assert patches[0] < patches[1] < patches[2] <= 64 * 8
    # Stage D's control trains as many steps as Stage D, on random halves.
    plan = _plan(stdout)
    steps = plan["D"][1] - plan["D"][0]
    assert re.search(
        rf"^control: {steps} steps of 32 random examples per super-batch",
        stdout,
        re.M,
    )
    fixed = results["A (32 px)"]["dense_probe/num_test_patches"]
    assert fixed == 16 * 8


def test_demo_writes_per_step_losses_that_average_to_the_logs(demo):
    stdout, output_dir = demo
    plan = _plan(stdout)
    curves = json.loads((output_dir / "losses.json").read_text())["recipe"]
    steps = [step for step, _ in curves["loss"]]
    assert steps == list(range(plan["D"][1]))
    # Keras logs each segment's mean; here segments are one step long, so
    # the last logged value of a stage is its last step's loss.
    for stage, name in (("A", "sigmoid_loss"), ("B", "masked_prediction_loss")):
        match = re.search(
            rf"^stage {stage} {name}: first (\S+) last (\S+)$", stdout, re.M
        )
        values = dict(map(tuple, curves[name]))
        first_step, last_step = plan[stage][0], plan[stage][1] - 1
        assert values[first_step] == pytest.approx(
            float(match.group(1)), abs=1e-4
        )
        assert values[last_step] == pytest.approx(
            float(match.group(2)), abs=1e-4
        )


def test_demo_writes_plots(demo):
    import matplotlib.image

    stdout, output_dir = demo
    for name in ("loss_curves.png", "naflex_grids.png"):
        path = output_dir / name
        assert f"wrote {path}" in stdout
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
        # Not a blank canvas: many distinct colours.
        colours = np.unique(image[..., :3].reshape(-1, 3), axis=0)
        assert len(colours) > 100, name
    match = re.search(r"loss_curves.png \((.*)\)$", stdout, re.M)
    assert set(match.group(1).split(", ")) == {
        "loss",
        "sigmoid_loss",
        "decoder_loss",
        "local_to_global_loss",
        "masked_prediction_loss",
    }
    # NaFlex grids printed for the three aspect ratios: the patch count
    # fits the length and the grid keeps the aspect ratio.
    grids = re.findall(r"^(\d+)x(\d+) px -> patch grids (.*)$", stdout, re.M)
    assert len(grids) == 3
    for height, width, text in grids:
        for rows, cols, length in re.findall(
            r"(\d+)x(\d+) \(length (\d+)\)", text
        ):
            rows, cols, length = int(rows), int(cols), int(length)
            assert rows * cols <= length
            ratio = int(width) / int(height)
            assert abs(math.log(cols / rows / ratio)) < math.log(2)


def test_demo_diagnostics_read_the_demo_outputs(demo):
    """benchmarks/demo_diagnostics.py on the demo's saved models."""
    _, output_dir = demo
    script = os.path.join(
        os.path.dirname(__file__), "..", "benchmarks", "demo_diagnostics.py"
    )
    completed = subprocess.run(
        [
            sys.executable,
            script,
            "--run",
            str(output_dir),
            "--test_images",
            "16",
            "--super_batches",
            "3",
            "--super_batch",
            "32",
            "--probe_train_images",
            "48",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = {}
    for line in completed.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    for name in ("Stage C student", "final (D) student"):
        top1, colour, shape = rows[name]
        # A hit on the class is a hit on its colour and on its shape.
        assert 0 <= top1 <= min(colour, shape) and max(colour, shape) <= 1
    assert rows["chance"] == [0.0125, 0.1, 0.125]
    probes = {k: v for k, v in rows.items() if k.startswith("probe: ")}
    assert set(probes) == {
        "probe: raw pixels",
        "probe: random-init student",
        "probe: teacher (teacher.keras)",
        "probe: Stage C student",
        "probe: final (D) student",
        "probe: chance",
    }
    assert probes.pop("probe: chance") == [0.1, 0.125]
    for colour, shape in probes.values():
        assert 0 <= colour <= 1 and 0 <= shape <= 1
    mismatched, kept = rows["mismatched"]
    # 96 pairs drawn at 0.5 (standard deviation 0.051); half are kept.
    assert 0.3 <= mismatched <= 0.7 and 0 <= kept <= 1
    assert 0 <= rows["non-English"][0] <= 0.3


def test_demo_help_documents_sizes_steps_and_output(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    completed = _run(["demo", "--help"], env, tmp_path)
    text = completed.stdout + completed.stderr
    for needle in (
        "--output_dir",
        "--steps",
        "--batch_size",
        "--demo_eval_examples",
        "--demo_decoder_steps",
        "width",
        "32 px images in 8 px patches",
        "loss_curves.png",
        "naflex_grids.png",
    ):
        assert needle in text, needle


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


def test_smooth_is_a_trailing_moving_average():
    from keras_siglip2.demo_plots import smooth

    values = np.random.default_rng(0).normal(size=23)
    for window in (1, 4, 30):
        expected = [
            np.mean(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        np.testing.assert_allclose(smooth(values, window), expected)
    with pytest.raises(ValueError, match="window"):
        smooth(values, 0)


def test_patch_grid_image_rebuilds_the_image_from_naflex_patches():
    from keras_siglip2.data.naflex import naflex_preprocess
    from keras_siglip2.demo_plots import patch_grid_image

    # 16 x 24 px with 8 px patches is 2 x 3 = 6 patches: no resize.
    image = np.random.default_rng(1).integers(0, 256, (16, 24, 3))
    inputs = naflex_preprocess(image.astype(np.uint8), 8, 10)
    inputs = {key: np.asarray(value) for key, value in inputs.items()}
    np.testing.assert_array_equal(inputs["spatial_shapes"], [2, 3])
    np.testing.assert_allclose(
        patch_grid_image(inputs, 8), image / 255.0, atol=1e-6
    )


def test_format_stage_table_prints_missing_metrics_as_na():
    from keras_siglip2.__main__ import format_stage_table

    table = format_stage_table(
        {
            "A (32 px)": {"zero_shot/top1": 0.25, "dense_probe/mIoU": 0.5},
            "C NaFlex (16 patches)": {"zero_shot/top1": float("nan")},
        }
    ).splitlines()
    assert table[0].split() == [
        "model",
        "0-shot",
        "I>T@1",
        "I>T@5",
        "T>I@1",
        "T>I@5",
        "ref@.5",
        "mIoU",
    ]
    assert table[2].split() == ["A", "(32", "px)", "0.250"] + ["n/a"] * 5 + [
        "0.500"
    ]
    assert table[3].split()[4:] == ["n/a"] * 7


@pytest.mark.parametrize("naflex", [False, True])
def test_caching_encoder_gives_the_encoder_inputs_once_per_image(naflex):
    from keras_siglip2.__main__ import _CachingEncoder
    from keras_siglip2.data.generated import generated_examples
    from keras_siglip2.eval import BackboneEncoder
    from keras_siglip2.models import SigLIP2Backbone
    from keras_siglip2.models import SigLIP2TextEncoder
    from keras_siglip2.models import SigLIP2VisionEncoder

    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=16,
            patch_size=4,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=16,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=10,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=16,
            max_sequence_length=6,
        ),
        naflex=naflex,
    )
    images = [
        e["image"]
        for e in generated_examples("test", 0, 3, side_range=(12, 40))
    ]
    length = 20 if naflex else None
    expected = BackboneEncoder(backbone, max_num_patches=length).image_inputs(
        images
    )
    encoder = _CachingEncoder(backbone, max_num_patches=length)
    for _ in range(2):
        got = encoder.image_inputs(images[::-1])
        if naflex:
            for key in expected:
                np.testing.assert_allclose(
                    got[key], expected[key][::-1], atol=1e-5
                )
        else:
            np.testing.assert_allclose(got, expected[::-1], atol=1e-6)
    assert len(encoder._inputs) == 3
