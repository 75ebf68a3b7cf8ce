"""Runs `guides/distributed_training.py` on 8 virtual CPU devices."""

import os
import re

from distribution_subprocess import ROOT
from distribution_subprocess import run_script


def test_distribution_guide_runs_on_8_devices():
    script = os.path.join(ROOT, "guides", "distributed_training.py")
    out = run_script(script, num_devices=8, json_output=False).stdout
    assert "devices: 8" in out
    # Data parallel and FSDP train the same model to the same loss.
    losses = dict(
        re.findall(
            r"(data_parallel \(8, 1\)|fsdp \(2, 4\)): loss "
            r"([0-9.]+)\n",
            out,
        )
    )
    assert losses["data_parallel (8, 1)"] == losses["fsdp (2, 4)"]
    assert (
        "attention/query/kernel: (32, 2, 16) split as P('model', None, None)"
        " -> (8, 2, 16) per device" in out
    )
    assert "match no layout key (add a rule): my_projection/kernel" in out
    assert "my_projection covered" in out
    assert "fsdp (2, 4) with the ring loss: loss" in out
