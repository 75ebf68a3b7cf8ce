"""Training-step throughput and MFU of `SigLIP2Backbone`, tiny to B/16,
with and without rematerialisation.

One step is `backbone.train_on_batch` (Keras' jitted train step: both
towers forward and backward, the sigmoid loss, and the paper's optimizer,
AdamW with global-norm clipping) on random images and token ids. FLOPs
are counted analytically as 3x the forward (forward + backward) and
checked against XLA's cost analysis of the jitted loss gradient. The
configs are timed interleaved with an fp32 reference GEMM, so the MFU is
against the matmul rate under the same load. Peak RSS of B/16 with and
without `remat=True` is measured each in its own subprocess. On JAX's
CPU backend remat saves memory only with
`XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander` in the
environment (XLA:CPU otherwise drops the remat barriers; see
`benchmarks/remat_memory.py`).

    python benchmarks/train_step.py            # B/16 compiles take minutes
    python benchmarks/train_step.py --configs tiny,small --repeats 2

Prints a Markdown section to paste into benchmarks/RESULTS.md.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

# ViT-Ti / S / B widths at patch 16; the text tower has the same width.
SIZES = {
    "tiny": dict(hidden_dim=192, num_layers=12, num_heads=3),
    "small": dict(hidden_dim=384, num_layers=12, num_heads=6),
    "base": dict(hidden_dim=768, num_layers=12, num_heads=12),
}


def _tower_configs(size: str, args):
    width = SIZES[size]
    common = dict(width, intermediate_dim=4 * width["hidden_dim"])
    vision = dict(common, image_size=args.image_size, patch_size=16)
    text = dict(
        common,
        vocabulary_size=args.vocab,
        max_sequence_length=args.length,
        projection_dim=width["hidden_dim"],
    )
    return vision, text


def build(size: str, args, remat: bool = False):
    """`(backbone, batch)` compiled with the paper's optimizer."""
    import numpy as np

    from keras_siglip2.models.backbone import SigLIP2Backbone
    from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
    from keras_siglip2.training.optimizer import siglip2_optimizer

    vision, text = _tower_configs(size, args)
    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(**vision, remat=remat),
        SigLIP2TextEncoder(**text, remat=remat),
    )
    backbone.compile(optimizer=siglip2_optimizer(total_steps=1000))
    rng = np.random.default_rng(0)
    size_px = args.image_size
    batch = {
        "images": rng.uniform(-1, 1, (args.batch, size_px, size_px, 3)).astype(
            "float32"
        ),
        "token_ids": rng.integers(
            0, args.vocab, (args.batch, args.length)
        ).astype("int32"),
    }
    return backbone, batch


def step_flops(size: str, args) -> float:
    """Analytic FLOPs of one training step (3x forward, both towers)."""
    vision, text = _tower_configs(size, args)
    forward = _common.vision_flops(vision) + _common.text_flops(text)
    dim = vision["hidden_dim"]
    forward += 2 * dim  # the logits, per image-text pair, negligible
    return 3.0 * forward * args.batch


def xla_step_flops(backbone, batch) -> float:
    """XLA's FLOP count of loss + gradients (no optimizer)."""
    import jax

    from keras_siglip2.losses.sigmoid import sigmoid_loss

    trainable = [v.value for v in backbone.trainable_variables]
    non_trainable = [v.value for v in backbone.non_trainable_variables]

    def loss(trainable):
        logits, _ = backbone.stateless_call(trainable, non_trainable, batch)
        return sigmoid_loss(logits)

    return _common.xla_flops(jax.jit(jax.grad(loss)), trainable)


def rss_worker(size: str, remat: bool, args):
    backbone, batch = build(size, args, remat=remat)
    for _ in range(3):
        backbone.train_on_batch(batch)
    print(f"PEAK_RSS_MIB total {_common.peak_rss_mib():.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,small,base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument(
        "--check-flops",
        action="store_true",
        help="also compile loss + gradients alone for XLA's FLOP count",
    )
    parser.add_argument("--rss-worker", nargs=2, metavar=("SIZE", "REMAT"))
    args = parser.parse_args()
    if args.rss_worker:
        size, remat = args.rss_worker
        rss_worker(size, remat == "1", args)
        return

    sizes = args.configs.split(",")
    for size in sizes:
        if size not in SIZES:
            raise ValueError(f"Unknown config {size!r}; expected {SIZES}.")
    load_before = _common.load_average()
    variants = [(size, False) for size in sizes]
    if not args.no_remat:
        variants.append((sizes[-1], True))
    models, flop_lines = {}, []
    for size, remat in variants:
        backbone, batch = build(size, args, remat=remat)
        models[(size, remat)] = (backbone, batch)
        if args.check_flops and not remat:
            counted = xla_step_flops(backbone, batch)
            analytic = step_flops(size, args)
            flop_lines.append(
                f"- {size}: analytic {analytic / 1e9:.1f} GFLOP per step, "
                f"XLA (loss + gradients) {counted / 1e9:.1f} "
                f"({counted / analytic:.3f}x)"
            )
    # The reference is the B/16 MLP GEMM at this batch for every config:
    # small widths cannot reach the machine's matmul peak.
    width = SIZES["base"]["hidden_dim"]
    tokens = args.batch * (args.image_size // 16) ** 2
    gemm, gemm_flops = _common.gemm_runner(tokens, width, 4 * width)
    runners = {
        key: (lambda m=m: m[0].train_on_batch(m[1]))
        for key, m in models.items()
    }
    runners["gemm"] = gemm
    timed = _common.interleaved(runners, repeats=args.repeats, warmup=1)

    rss = {}
    if not args.no_rss:
        for remat in (False, True) if not args.no_remat else (False,):
            rss[(sizes[-1], remat)] = _common.rss_in_subprocess(
                os.path.abspath(__file__),
                [
                    *sys.argv[1:],
                    "--rss-worker",
                    sizes[-1],
                    "1" if remat else "0",
                ],
            )["total"]

    print("\n## Training step: throughput and MFU\n")
    print(
        f"`python benchmarks/train_step.py {' '.join(sys.argv[1:])}` "
        f"(batch {args.batch} image-text pairs, {args.image_size} px, patch "
        f"16, text {args.length} tokens, vocabulary {args.vocab}; AdamW "
        f"step via `train_on_batch`; {args.repeats} interleaved rounds, "
        "medians).\n"
    )
    print(f"Machine: {_common.machine_header()}")
    print(f"Load average at start: {load_before}.\n")
    print(
        f"Reference GEMM ({tokens}x{width} @ {width}x{4 * width}, jax fp32) "
        f"median {_common.fmt_rate(gemm_flops / timed['gemm']['median'])} "
        f"GFLOP/s, best {_common.fmt_rate(gemm_flops / timed['gemm']['min'])}"
        ". MFU (same load): per round, step FLOP/s over the GEMM's FLOP/s in "
        "the same round, median.\n"
    )
    print(
        "| config | remat | median s/step | pairs/s | GFLOP/s | "
        "MFU (same load) | peak RSS (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for key in models:
        size, remat = key
        result = timed[key]
        flops = step_flops(size, args)
        same_load = _common.statistics.median(
            flops / t / (gemm_flops / g)
            for t, g in zip(result["times"], timed["gemm"]["times"])
        )
        mem = rss.get(key)
        print(
            f"| {size} | {'yes' if remat else 'no'} | "
            f"{result['median']:.2f} | {args.batch / result['median']:.2f} | "
            f"{_common.fmt_rate(flops / result['median'])} | "
            f"{same_load:.2f} | {f'{mem:.0f}' if mem else '-'} |"
        )
    print(f"\nLoad average at end: {_common.load_average()}.")
    if flop_lines:
        print("\nFLOP counts (per step):")
        print("\n".join(flop_lines))


if __name__ == "__main__":
    main()
