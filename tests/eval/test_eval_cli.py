"""`python -m keras_siglip2 eval` and the results table / JSON.

The command runs in a subprocess with tiny settings: once on the
generated dataset (every task), once on a JSONL file in the reader
format (zero-shot from class-name captions and retrieval; the tasks that
need more than the reader format are skipped with a reason), and with
a task the data cannot support (a usage error).
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import tiny_backbone

from keras_siglip2.data import generated
from keras_siglip2.data.readers import write_jsonl
from keras_siglip2.eval import report

TINY_FLAGS = [
    "--eval_num_examples=10",
    "--eval_num_train_examples=10",
    "--eval_decoder_steps=3",
    "--eval_probe_epochs=1",
    "--eval_location_bins=16",
    "--eval_batch_size=8",
]


def test_format_table_hand_written():
    results = {
        "retrieval": {"image_to_text/R@1": 0.5, "num_images": 1234},
        "dense_probe": {"IoU/text": float("nan"), "mIoU": np.float32(0.25)},
    }
    expected = "\n".join(
        [
            "results",
            "task         metric                value",
            "-----------  -----------------  --------",
            "retrieval    image_to_text/R@1    0.5000",
            "retrieval    num_images            1,234",
            "dense_probe  IoU/text                n/a",
            "dense_probe  mIoU                 0.2500",
        ]
    )
    assert report.format_table(results, title="results") == expected


def test_json_round_trip_keeps_nan_and_metadata(tmp_path):
    results = {
        "zero_shot": {"top1": np.float64(0.75), "num_examples": np.int64(8)},
        "dense_probe": {"IoU/text": math.nan},
    }
    path = tmp_path / "nested" / "results.json"
    report.write_json(results, path, {"model": "tiny", "seed": 0})
    raw = json.loads(path.read_text())
    assert raw["results"]["dense_probe"]["IoU/text"] is None
    assert raw["metadata"] == {"model": "tiny", "seed": 0}
    document = report.read_json(path)
    assert document["results"]["zero_shot"] == {
        "top1": 0.75,
        "num_examples": 8,
    }
    assert math.isnan(document["results"]["dense_probe"]["IoU/text"])


def test_json_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"version": 99, "results": {}}')
    with pytest.raises(ValueError, match="got version 99"):
        report.read_json(path)
    with pytest.raises(TypeError, match="numbers or strings"):
        report.results_to_json({"task": {"metric": [1, 2]}})


def _eval(args, cwd, timeout=300):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "keras_siglip2", "eval", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _rates(metrics):
    """The metrics that are fractions (not counts or losses)."""
    return {
        name: value
        for name, value in metrics.items()
        if not name.startswith(("num_", "train_loss"))
    }


def test_cli_on_generated_data(tmp_path):
    output = tmp_path / "out" / "results.json"
    completed = _eval([*TINY_FLAGS, f"--eval_output={output}"], tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    stdout = completed.stdout
    assert "backend jax)" in stdout.splitlines()[0]
    assert "== results ==" in stdout and f"wrote {output}" in stdout
    document = report.read_json(output)
    results = document["results"]
    assert sorted(results) == [
        "dense_probe",
        "referring",
        "retrieval",
        "zero_shot",
        "zero_shot_compositional",
    ]
    for language in generated.LANGUAGES:
        assert f"{language}/top1" in results["zero_shot"]
        assert f"zero_shot_compositional  {language}/top5" in stdout
    assert results["retrieval"]["num_captions"] == 30
    assert results["dense_probe"]["num_test_patches"] == 10 * 16
    for task, metrics in results.items():
        for name, value in _rates(metrics).items():
            assert math.isnan(value) or 0.0 <= value <= 1.0, (task, name)
    assert math.isfinite(results["referring"]["train_loss_last"])
    assert document["metadata"]["model"] == "tiny"
    assert document["metadata"]["decoder_steps"] == 3


def test_cli_on_jsonl_data(tmp_path):
    names = generated.zero_shot_class_names("en")
    rows = []
    for example in generated.generated_examples(
        "test", 0, 6, num_objects=(1, 1), num_captions=2
    ):
        example = dict(example)
        # Classification data: the first caption is the class name.
        example["captions"] = [names[example["label"]], *example["captions"]]
        del example["label"]
        rows.append(example)
    write_jsonl(rows, tmp_path / "data" / "test.jsonl")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    output = tmp_path / "results.json"
    completed = _eval(
        [
            *TINY_FLAGS,
            "--eval_data=data/test.jsonl",
            "--eval_class_names=classes.txt",
            f"--eval_output={output}",
        ],
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "skipped referring: needs --eval_train_data" in completed.stdout
    assert "skipped dense_probe: needs per-pixel class maps" in (
        completed.stdout
    )
    results = report.read_json(output)["results"]
    assert sorted(results) == ["retrieval", "zero_shot"]
    assert results["zero_shot"]["num_classes"] == len(names)
    assert results["retrieval"]["num_captions"] == 6 * 3
    for metrics in results.values():
        assert all(0.0 <= v <= 1.0 for v in _rates(metrics).values())


def test_cli_task_the_data_cannot_support_is_a_usage_error(tmp_path):
    completed = _eval(
        ["--eval_data=x.jsonl", "--eval_tasks=dense_probe"], tmp_path
    )
    assert completed.returncode != 0
    assert "dense_probe needs per-pixel class maps" in completed.stderr


def test_eval_takes_the_tokenizer_of_a_preset_directory(tmp_path):
    from absl import app

    from keras_siglip2.__main__ import _eval_tokenizer
    from keras_siglip2.data.vocabulary import train_demo_sentencepiece
    from keras_siglip2.models import SigLIP2Tokenizer

    proto = train_demo_sentencepiece(vocab_size=600, num_examples=100)
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=8)
    backbone = tiny_backbone(600, 8)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    with pytest.raises(app.UsageError, match="needs --eval_tokenizer"):
        _eval_tokenizer(str(preset), backbone)  # No tokenizer saved yet.
    tokenizer.save_to_preset(str(preset))
    loaded = _eval_tokenizer(str(preset), backbone)
    assert loaded.proto == proto
    texts = ["a red circle on the left", "ein blauer Kreis"]
    np.testing.assert_array_equal(loaded(texts), tokenizer(texts))
    with pytest.raises(app.UsageError, match="needs --eval_tokenizer"):
        _eval_tokenizer(str(tmp_path / "model.npz"), backbone)
