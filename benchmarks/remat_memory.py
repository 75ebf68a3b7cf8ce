"""Does `remat=True` save memory in a training step? Vision encoder, JAX.

Compiles one gradient step of `SigLIP2VisionEncoder` (`jax.value_and_grad`
of the mean pooled output over `stateless_call`, w.r.t. all trainable
weights) with `remat=False` and `remat=True`, each in its own fresh
subprocess, and reports per variant:

- peak RSS delta: the process's peak resident set during the steps minus
  its RSS just before them (the peak is reset first, so compilation does
  not count),
- XLA temp: `compiled.memory_analysis().temp_size_in_bytes`,
- dot ops and `opt-barrier`s in the optimised HLO (`compiled.as_text()`)
  and `optimization_barrier`s in the lowered StableHLO: `jax.checkpoint`
  emits one barrier per rematerialised block; a remat that survives
  compilation shows up as extra (recomputed) dots,
- seconds per step (median over `--repeats` steps after one warm-up).

XLA:CPU's `cse_barrier_expander` pass removes the optimisation barriers,
after which CSE merges the recomputation back into the forward pass, so on
CPU `remat=True` is a no-op unless that pass is disabled:
`--keep-remat-barriers` adds
`--xla_disable_hlo_passes=cse_barrier_expander` to `XLA_FLAGS` of both
subprocesses.

    python benchmarks/remat_memory.py --batch 48
    python benchmarks/remat_memory.py --batch 48 --keep-remat-barriers

Prints a Markdown table; paste it into benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

KEEP_BARRIERS_FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"


def _config(args: argparse.Namespace) -> dict:
    return dict(
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_dim=args.width,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_dim=args.mlp or 4 * args.width,
    )


def worker(args: argparse.Namespace, remat: bool, out_path: str) -> None:
    """Compiles and runs the step; prints RSS lines, writes the rest.

    Prints `PEAK_RSS_MIB before|step <MiB>` (for
    `_common.rss_in_subprocess`) and writes the compile-time counts and
    timings as JSON to `out_path`.
    """
    import jax
    import numpy as np
    from keras import ops

    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

    size = args.image_size
    encoder = SigLIP2VisionEncoder(**_config(args), remat=remat)
    encoder.build((args.batch, size, size, 3))
    trainable = [v.value for v in encoder.trainable_variables]
    non_trainable = [v.value for v in encoder.non_trainable_variables]
    rng = np.random.default_rng(0)
    images = jax.numpy.asarray(
        rng.uniform(-1, 1, (args.batch, size, size, 3)).astype("float32")
    )

    def loss(trainable, images):
        outputs, _ = encoder.stateless_call(
            trainable, non_trainable, images, training=True
        )
        return ops.mean(outputs["pooled_output"])

    lowered = jax.jit(jax.value_and_grad(loss)).lower(trainable, images)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    hlo = compiled.as_text()
    result = {
        "stablehlo_barriers": lowered.as_text().count("optimization_barrier"),
        "hlo_barriers": hlo.count("opt-barrier("),
        "dots": len(re.findall(r"\bdot\(", hlo)),
        "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "compile_s": compile_s,
    }

    reset = _common.reset_peak_rss()
    before = _common.peak_rss_mib()
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        jax.block_until_ready(compiled(trainable, images))
        times.append(time.perf_counter() - start)
    result["step_s"] = statistics.median(times[1:])
    result["rss_reset"] = reset
    with open(out_path, "w") as f:
        json.dump(result, f)
    print(f"PEAK_RSS_MIB before {before:.1f}")
    print(f"PEAK_RSS_MIB step {_common.peak_rss_mib():.1f}")


def measure(remat: bool, argv: list[str]) -> dict:
    """Runs `worker` in a fresh subprocess; returns its numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        rss = _common.rss_in_subprocess(
            os.path.abspath(__file__),
            [*argv, "--worker", "1" if remat else "0", out_path],
        )
        with open(out_path) as f:
            result = json.load(f)
    result["rss_delta_mib"] = rss["step"] - rss["before"]
    result["rss_before_mib"] = rss["before"]
    return result


def activation_estimate_mib(args: argparse.Namespace) -> float:
    """Rough fp32 activations kept for the backward pass without remat:
    ~10 `(tokens, width)`, 3 `(tokens, mlp)` and 2 `(heads, tokens,
    tokens)` tensors per block and example."""
    tokens = (args.image_size // args.patch_size) ** 2
    mlp = args.mlp or 4 * args.width
    per_block = (
        10 * tokens * args.width
        + 3 * tokens * mlp
        + 2 * args.heads * tokens * tokens
    )
    return 4.0 * per_block * args.layers * args.batch / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:]),
    )
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument(
        "--mlp", type=int, default=0, help="MLP width (0: 4 x width)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed steps (median)"
    )
    parser.add_argument(
        "--keep-remat-barriers",
        action="store_true",
        help=f"run the subprocesses with XLA_FLAGS+={KEEP_BARRIERS_FLAG}",
    )
    parser.add_argument(
        "--worker", nargs=2, metavar=("REMAT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(args, args.worker[0] == "1", args.worker[1])
        return

    if args.keep_remat_barriers:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} {KEEP_BARRIERS_FLAG}".strip()
    header = _common.machine_header()
    argv = sys.argv[1:]
    results = {remat: measure(remat, argv) for remat in (False, True)}

    tokens = (args.image_size // args.patch_size) ** 2
    print("\n## Rematerialisation: memory of a training step\n")
    print(
        f"`python benchmarks/remat_memory.py {' '.join(argv)}` "
        f"(vision encoder {_config(args)}, {tokens} tokens, batch "
        f"{args.batch}; `jax.value_and_grad` of the mean pooled output; "
        f"each variant in a fresh subprocess; XLA_FLAGS="
        f"`{os.environ.get('XLA_FLAGS', '')}`; activations without remat "
        f"roughly {activation_estimate_mib(args):.0f} MiB).\n"
    )
    print(f"Machine (at start): {header}\n")
    print(
        "| remat | peak RSS delta (MiB) | XLA temp (MiB) | dot ops | "
        "opt-barriers (StableHLO / HLO) | s/step |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for remat, r in results.items():
        print(
            f"| {'yes' if remat else 'no'} | {r['rss_delta_mib']:.0f} | "
            f"{r['temp_mib']:.0f} | {r['dots']} | "
            f"{r['stablehlo_barriers']} / {r['hlo_barriers']} | "
            f"{r['step_s']:.2f} |"
        )
    if not all(r["rss_reset"] for r in results.values()):
        print("\nPeak RSS could not be reset: deltas include compilation.")
    print(f"\nLoad average at end: {_common.load_average()}.")


if __name__ == "__main__":
    main()
