"""Runs the guides end to end, offline, as a user would."""

import os
import subprocess
import sys
from pathlib import Path

GUIDES = Path(__file__).resolve().parents[1] / "guides"


def _run_guide(name: str, timeout: int = 600) -> str:
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run(
        [sys.executable, str(GUIDES / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_naflex_guide():
    out = _run_guide("naflex.py")
    # Grids keep the aspect ratio and fill the sequence as well as possible.
    assert "wide 120x900 at length 128: resized to 64x480, grid 4x30" in out
    assert "tall 1000x150 at length 576: resized to 960x144, grid 60x9" in out
    assert "length 576: patches (2, 576, 768)" in out
    assert "image-text logits:" in out
