"""Shared pieces of the speed benchmarks: machine info, matmul peak,
analytic FLOP counts, interleaved timing and per-process peak RSS.

Not a public module; the scripts next to it import it as `_common`.
"""

import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")


# --- Machine ---------------------------------------------------------------


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (or the platform string)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The SIMD flags that matter for fp32/bf16 GEMMs, as one string."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                line.split(":", 1)[1].split()
                for line in f
                if line.startswith("flags")
            )
    except (OSError, StopIteration):
        return "?"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(flag for flag in wanted if flag in flags) or "none"


def load_average() -> str:
    """`uptime`-style 1/5/15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> str:
    """Versions of every framework the benchmarks touch."""
    import jax
    import keras
    import keras_hub
    import torch
    import transformers

    return (
        f"jax {jax.__version__}, keras {keras.__version__}, keras-hub "
        f"{keras_hub.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}"
    )


def machine_header() -> str:
    """One paragraph for RESULTS.md: date, CPU, cores, flags, load."""
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{cpu_model()}, {os.cpu_count()} CPU cores ({cpu_flags()}), "
        f"load average {load_average()}; {versions()}."
    )


# --- Matmul peak ------------------------------------------------------------


def _best_rate(fn, flops: float, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best


def matmul_peak(shapes, repeats: int = 5) -> dict:
    """Measures fp32 GEMM throughput (FLOP/s) with jax, numpy and torch.

    Args:
        shapes: list of `(m, k, n)` GEMM shapes; a square 2048 one is added.
        repeats: timed calls per shape and library; the best is kept.

    Returns:
        dict with `"jax"`, `"numpy"`, `"torch"`: the best FLOP/s of each
        library over all shapes, `"per_shape"`: `{(m, k, n): {lib: rate}}`,
        and `"peak"`: the maximum over libraries and shapes.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    shapes = list(shapes) + [(2048, 2048, 2048)]
    rng = np.random.default_rng(0)
    per_shape = {}
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2.0 * m * k * n
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        matmul = jax.jit(jnp.matmul)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls = {
            "jax": lambda: matmul(ja, jb).block_until_ready(),  # noqa: B023
            "numpy": lambda: a @ b,  # noqa: B023
            "torch": lambda: ta @ tb,  # noqa: B023
        }
        per_shape[(m, k, n)] = {
            lib: _best_rate(call, flops, repeats) for lib, call in calls.items()
        }
    result = {
        lib: max(rates[lib] for rates in per_shape.values())
        for lib in ("jax", "numpy", "torch")
    }
    result["per_shape"] = per_shape
    result["peak"] = max(result[lib] for lib in ("jax", "numpy", "torch"))
    return result


def gemm_runner(m: int, k: int, n: int):
    """`(fn, flops)`: one jitted fp32 `(m, k) @ (k, n)` GEMM, the
    interleaved reference for the MFU under the same load."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((m, k), "float32")
    b = jnp.ones((k, n), "float32")
    matmul = jax.jit(jnp.matmul)
    return (lambda: matmul(a, b).block_until_ready()), 2.0 * m * k * n


# --- Analytic FLOPs ---------------------------------------------------------


def encoder_block_flops(length: int, dim: int, mlp: int, kv_length=None):
    """Multiply-add FLOPs (2 per MAC) of one pre-LN block on one example.

    Counts the four projections, `QK^T`, `AV` and the MLP. With
    `kv_length` (the MAP head's probe), the queries are `length` long and
    keys/values `kv_length` long. Elementwise ops are left out, as usual
    for MFU.
    """
    kv = length if kv_length is None else kv_length
    projections = 2 * dim * dim * (2 * length + 2 * kv)
    attention = 2 * 2 * length * kv * dim
    return projections + attention + 2 * 2 * length * dim * mlp


def vision_flops(config: dict, length: int | None = None) -> float:
    """Forward FLOPs per image of `SigLIP2VisionEncoder(**config)`.

    Args:
        config: vision keyword arguments (`image_size`, `patch_size`,
            `hidden_dim`, `num_layers`, `intermediate_dim`, `use_head`).
        length: token count; defaults to the square grid's.
    """
    d, f = config["hidden_dim"], config["intermediate_dim"]
    p = config["patch_size"]
    n = length or (config["image_size"] // p) ** 2
    flops = 2 * n * p * p * 3 * d
    flops += config["num_layers"] * encoder_block_flops(n, d, f)
    if config.get("use_head", True):
        flops += encoder_block_flops(1, d, f, kv_length=n)
    return float(flops)


def text_flops(config: dict, length: int | None = None) -> float:
    """Forward FLOPs per sequence of `SigLIP2TextEncoder(**config)` (the
    embedding lookup is free; the head projects one token)."""
    d, f = config["hidden_dim"], config["intermediate_dim"]
    n = length or config["max_sequence_length"]
    flops = config["num_layers"] * encoder_block_flops(n, d, f)
    flops += 2 * d * config.get("projection_dim", d)
    return float(flops)


def xla_flops(jitted, *args) -> float:
    """FLOPs XLA's cost analysis reports for `jitted(*args)`."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis["flops"])


# --- Timing -----------------------------------------------------------------


def interleaved(runners: dict, repeats: int, warmup: int = 2) -> dict:
    """Times peers round-robin (A, B, C, A, B, C, ...) and takes medians.

    Args:
        runners: `{name: fn}`; each `fn()` runs one batch to completion.
        repeats: timed rounds.
        warmup: untimed calls of each runner first (compiles, caches).

    Returns:
        `{name: {"median": s, "min": s, "times": [s, ...]}}`.
    """
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median": statistics.median(t),
            "min": min(t),
            "times": t,
        }
        for name, t in times.items()
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (`VmHWM`, which
    `reset_peak_rss` can reset; `ru_maxrss` elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Resets the peak RSS to the current RSS (Linux `clear_refs` 5).

    Returns:
        Whether the reset worked; if not, later peaks include earlier ones.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_in_subprocess(script: str, args: list[str]) -> dict:
    """Runs `python script *args` and parses its `PEAK_RSS_MIB` lines.

    Peak RSS is per process, so each peer is measured alone. The worker
    prints `PEAK_RSS_MIB <phase> <MiB>` lines.

    Returns:
        `{phase: MiB}`.
    """
    out = subprocess.run(
        [sys.executable, script, *args],
        env=dict(os.environ),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = {}
    for line in out.splitlines():
        if line.startswith("PEAK_RSS_MIB "):
            _, phase, value = line.split()
            result[phase] = float(value)
    if not result:
        raise RuntimeError(
            f"No PEAK_RSS_MIB line in the output of {args}:\n{out}"
        )
    return result


def fmt_rate(x: float) -> str:
    """GFLOP/s with one decimal."""
    return f"{x / 1e9:.1f}"
