"""Smoke runs of benchmark scripts that have no other test.

Tiny settings only: they check that the script runs and prints its
table, not the numbers (benchmarks/RESULTS.md reports those).
"""

import os
import re
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def test_shape_supervised_prints_a_row_per_quarter():
    completed = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCHMARKS, "shape_supervised.py"),
            "--steps",
            "8",
            "--batch_size",
            "8",
            "--target",
            "colour",
            "--test_images",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, KERAS_BACKEND="jax"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "chance 0.100" in completed.stdout
    rows = re.findall(
        r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
        completed.stdout,
        re.M,
    )
    assert [int(r[0]) for r in rows] == [2, 4, 6, 8]
    for _, loss, train, test in rows:
        assert float(loss) > 0
        assert 0 <= float(train) <= 1 and 0 <= float(test) <= 1
