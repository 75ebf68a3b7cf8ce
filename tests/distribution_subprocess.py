"""Runs a script in a fresh Python process on virtual CPU devices.

XLA creates `--xla_force_host_platform_device_count` CPU devices only if the
flag is set before JAX starts, and the Keras backend is fixed at import, so
multi-device and other-backend checks run in a subprocess that prints its
results as JSON on its last line of output.
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
        [sys.executable, os.path.abspath(script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed with code "
            f"{result.returncode}:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-6000:]}"
        )
    if not json_output:
        return result
    return json.loads(result.stdout.strip().splitlines()[-1])
