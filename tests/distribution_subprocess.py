"""Runs Python in a fresh process: other backends, virtual CPU devices.

XLA creates `--xla_force_host_platform_device_count` CPU devices only if the
flag is set before JAX starts, and the Keras backend is fixed at import, so
multi-device and other-backend checks run in a subprocess that prints its
results as JSON (`run_script`: the last line of output; `run_code`: the
line starting with `RESULT `).
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(
    script: str,
    *args: str,
    num_devices: int = 8,
    backend: str = "jax",
    json_output: bool = True,
    timeout: int = 900,
):
    """Runs `python script *args` with `num_devices` virtual CPU devices.

    Args:
        script: path of the Python file.
        *args: its command-line arguments.
        num_devices: int. Virtual CPU devices XLA creates.
        backend: the `KERAS_BACKEND` of the process.
        json_output: bool. Parse the last line of stdout as JSON.
        timeout: seconds.

    Returns:
        The parsed JSON, or the `subprocess.CompletedProcess`.
    """
    result = _run(
        [os.path.abspath(script), *args], num_devices, backend, timeout
    )
    if not json_output:
        return result
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_code(
    code: str,
    *args: str,
    backend: str = "jax",
    num_devices: int = 1,
    timeout: int = 600,
):
    """Runs `python -c code *args`; gives its `RESULT {json}` line, parsed.

    `code` may import test modules (the tests folder is on the path) and
    must print exactly one line starting with `RESULT `.

    Args:
        code: Python source.
        *args: its `sys.argv[1:]`.
        backend: the `KERAS_BACKEND` of the process.
        num_devices: int. Virtual CPU devices XLA creates.
        timeout: seconds.

    Returns:
        The JSON after `RESULT `.
    """
    result = _run(["-c", code, *args], num_devices, backend, timeout)
    lines = [
        line.removeprefix("RESULT ")
        for line in result.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(lines) == 1, f"expected one RESULT line:\n{result.stdout}"
    return json.loads(lines[0])


def _run(argv, num_devices, backend, timeout):
    env = dict(os.environ)
    # Low LLVM optimisation: the tiny test programs compile several times
    # faster.
    env["XLA_FLAGS"] = " ".join(
        [
            env.get("XLA_FLAGS", ""),
            f"--xla_force_host_platform_device_count={num_devices}",
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        ]
    )
    env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, os.path.dirname(os.path.abspath(__file__))]
        + [p for p in [env.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [sys.executable, *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        shown = " ".join(argv) if argv[0] != "-c" else "python -c <code>"
        raise AssertionError(
            f"{shown} failed with code {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result
