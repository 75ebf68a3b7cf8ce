"""Forward throughput of the B/16 towers: ours vs HF transformers vs
keras-hub, on this CPU, in one run.

Builds the real `base_patch16_224` configs with random weights (vision:
224 px, 196 tokens, MAP head; text: vocabulary 256k, 64 tokens) for three
peers: `keras_siglip2` (JAX, `jax.jit` of `stateless_call`), HF
transformers (torch, `sdpa` attention, `inference_mode`) and keras-hub
0.32 `SigLIPVisionEncoder`/`SigLIPTextEncoder` (JAX, same jit). The peers
are timed interleaved (A, B, C, A, B, C, ...) after warm-up; medians are
reported. The fp32 matmul peak is measured in the same run (jax, numpy and
torch GEMMs of the towers' shapes and a square 2048 one) and MFU =
analytic FLOP/s / peak. Peak RSS of each peer is measured alone in a
subprocess (build + warm-up + timed calls).

    python benchmarks/forward.py --repeats 5     # 18 min, loaded 2 vCPUs
    python benchmarks/forward.py --quick         # 3 rounds, no RSS
    python benchmarks/forward.py --towers vision --peers ours,hf

Prints a Markdown section to paste into benchmarks/RESULTS.md.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

PEERS = ("ours", "hf", "keras_hub")
CONFIG_NAME = "base_patch16_224"


def _configs():
    from keras_siglip2.models.configs import get_config

    config = get_config(CONFIG_NAME)
    return config.vision, config.text


def _inputs(tower: str, batch: int, dtype: str = "float32"):
    import numpy as np

    vision, text = _configs()
    rng = np.random.default_rng(0)
    if tower == "vision":
        size = vision["image_size"]
        return rng.uniform(-1, 1, (batch, size, size, 3)).astype(dtype)
    length = text["max_sequence_length"]
    return rng.integers(0, text["vocabulary_size"], (batch, length)).astype(
        "int32"
    )


def _jit_keras(layer, select, dtype_in=None):
    """`fn(x)` running `layer` under `jax.jit(stateless_call)`."""
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, x):
        outputs, _ = layer.stateless_call(trainable, non_trainable, x)
        return select(outputs)

    def run(x):
        return forward(trainable, non_trainable, x).block_until_ready()

    run.jitted = forward
    run.args = (trainable, non_trainable)
    return run


def build_ours(tower: str, batch: int, dtype: str = "float32"):
    from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

    vision, text = _configs()
    if tower == "vision":
        layer = SigLIP2VisionEncoder(**vision, dtype=dtype)
        layer.build((batch, vision["image_size"], vision["image_size"], 3))
    else:
        layer = SigLIP2TextEncoder(**text, dtype=dtype)
        layer.build((batch, text["max_sequence_length"]))
    return _jit_keras(layer, lambda outputs: outputs["pooled_output"])


def build_keras_hub(tower: str, batch: int, dtype: str = "float32"):
    from keras_hub.models import SigLIPTextEncoder
    from keras_hub.models import SigLIPVisionEncoder

    vision, text = _configs()
    common = dict(
        hidden_dim=vision["hidden_dim"],
        num_layers=vision["num_layers"],
        num_heads=vision["num_heads"],
        intermediate_dim=vision["intermediate_dim"],
        dtype=dtype,
    )
    if tower == "vision":
        size = vision["image_size"]
        layer = SigLIPVisionEncoder(
            patch_size=vision["patch_size"],
            image_shape=(size, size, 3),
            **common,
        )
    else:
        layer = SigLIPTextEncoder(
            vocabulary_size=text["vocabulary_size"],
            embedding_dim=text["hidden_dim"],
            max_sequence_length=text["max_sequence_length"],
            projection_dim=text["projection_dim"],
            **common,
        )
    return _jit_keras(layer, lambda outputs: outputs)


def build_hf(tower: str, batch: int, dtype: str = "float32"):
    import numpy as np
    import torch
    import transformers

    torch_dtype = getattr(torch, dtype)
    vision, text = _configs()
    common = dict(
        hidden_size=vision["hidden_dim"],
        num_hidden_layers=vision["num_layers"],
        num_attention_heads=vision["num_heads"],
        intermediate_size=vision["intermediate_dim"],
    )
    if tower == "vision":
        config = transformers.SiglipVisionConfig(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            **common,
        )
        config._attn_implementation = "sdpa"
        model = transformers.SiglipVisionModel(config)
    else:
        config = transformers.SiglipTextConfig(
            vocab_size=text["vocabulary_size"],
            max_position_embeddings=text["max_sequence_length"],
            projection_size=text["projection_dim"],
            **common,
        )
        config._attn_implementation = "sdpa"
        model = transformers.SiglipTextModel(config)
    model = model.to(torch_dtype).eval()

    def run(x):
        x = torch.from_numpy(np.asarray(x))
        with torch.inference_mode():
            if tower == "vision":
                pixels = x.permute(0, 3, 1, 2).to(torch_dtype)
                return model(pixel_values=pixels).pooler_output
            return model(input_ids=x.long()).pooler_output

    return run


BUILDERS = {"ours": build_ours, "hf": build_hf, "keras_hub": build_keras_hub}


def rss_worker(peer: str, tower: str, batch: int, repeats: int, dtype: str):
    """Builds one peer, runs it, prints its peak RSS (subprocess mode).

    Prints `PEAK_RSS_MIB total <MiB>` (build + inference) and, where the
    peak can be reset after the build, `PEAK_RSS_MIB forward <MiB>` (the
    peak while compiling and running only).
    """
    if peer == "hf":
        import torch

        torch.set_num_threads(os.cpu_count())
    run = BUILDERS[peer](tower, batch, dtype)
    if hasattr(run, "args"):
        import jax

        jax.block_until_ready(run.args)
    build_peak = _common.peak_rss_mib()
    can_reset = _common.reset_peak_rss()
    x = _inputs(tower, batch, dtype)
    for _ in range(repeats + 1):
        run(x)
    forward_peak = _common.peak_rss_mib()
    print(f"PEAK_RSS_MIB total {max(build_peak, forward_peak):.1f}")
    if can_reset:
        print(f"PEAK_RSS_MIB forward {forward_peak:.1f}")


def check_flop_counts(runs: dict, batch: dict) -> list[str]:
    """Compares the analytic FLOP counts with XLA's cost analysis."""
    vision, text = _configs()
    lines = []
    for tower, run in runs.items():
        x = _inputs(tower, batch[tower])
        counted = _common.xla_flops(run.jitted, *run.args, x) / batch[tower]
        analytic = (
            _common.vision_flops(vision)
            if tower == "vision"
            else _common.text_flops(text)
        )
        lines.append(
            f"- {tower}: analytic {analytic / 1e9:.2f} GFLOP per example, "
            f"XLA cost analysis {counted / 1e9:.2f} "
            f"({counted / analytic:.3f}x; XLA also counts elementwise ops)"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--vision-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="3 repeats, no RSS"
    )
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rss-worker", nargs=2, metavar=("PEER", "TOWER"))
    args = parser.parse_args()
    batch = {"vision": args.vision_batch, "text": args.text_batch}

    if args.rss_worker:
        peer, tower = args.rss_worker
        rss_worker(peer, tower, batch[tower], 2, args.dtype)
        return

    import torch

    torch.set_num_threads(os.cpu_count())
    if args.quick:
        args.repeats, args.no_rss = 3, True
    towers = args.towers.split(",")
    peers = args.peers.split(",")
    for name in peers:
        if name not in PEERS:
            raise ValueError(f"Unknown peer {name!r}; expected {PEERS}.")
    vision, text = _configs()
    flops = {
        "vision": _common.vision_flops(vision),
        "text": _common.text_flops(text),
    }
    load_before = _common.load_average()

    n_img = batch["vision"] * (vision["image_size"] // 16) ** 2
    n_txt = batch["text"] * text["max_sequence_length"]
    d, f = vision["hidden_dim"], vision["intermediate_dim"]
    peak = _common.matmul_peak(
        [(n_img, d, f), (n_img, f, d), (n_img, d, d), (n_txt, d, f)]
    )

    gemm, gemm_flops = _common.gemm_runner(n_img, d, f)
    results, ours_runs = {}, {}
    for tower in towers:
        x = _inputs(tower, batch[tower], args.dtype)
        runs = {
            name: BUILDERS[name](tower, batch[tower], args.dtype)
            for name in peers
        }
        if "ours" in runs:
            ours_runs[tower] = runs["ours"]
        runners = {
            name: (lambda run=run, x=x: run(x)) for name, run in runs.items()
        }
        runners["gemm"] = gemm
        results[tower] = _common.interleaved(
            runners, repeats=args.repeats, warmup=args.warmup
        )
        del runs, runners

    rss = {}
    if not args.no_rss:
        for tower in towers:
            for name in peers:
                rss[(tower, name)] = _common.rss_in_subprocess(
                    os.path.abspath(__file__),
                    [
                        "--rss-worker",
                        name,
                        tower,
                        f"--{tower}-batch",
                        str(batch[tower]),
                        "--dtype",
                        args.dtype,
                    ],
                )
    flop_lines = check_flop_counts(ours_runs, batch) if ours_runs else []

    print(f"\n## Forward throughput, B/16 ({args.dtype})\n")
    print(
        f"`python benchmarks/forward.py {' '.join(sys.argv[1:])}`"
        f" (vision batch {batch['vision']} at 224 px, text batch "
        f"{batch['text']} x 64 tokens, vocabulary 256k; {args.repeats} "
        "interleaved rounds, medians).\n"
    )
    print(f"Machine: {_common.machine_header()}")
    print(f"Load average at start: {load_before}.\n")
    print(
        f"Matmul peak (fp32, best GEMM): jax {_common.fmt_rate(peak['jax'])}"
        f", numpy {_common.fmt_rate(peak['numpy'])}, torch "
        f"{_common.fmt_rate(peak['torch'])} GFLOP/s; MFU is against "
        f"{_common.fmt_rate(peak['peak'])} GFLOP/s.\n"
    )
    best_peak = max(
        peak["peak"],
        max(gemm_flops / r["gemm"]["min"] for r in results.values()),
    )
    print(
        f"Interleaved reference GEMM ({n_img}x{d} @ {d}x{f}, jax): "
        + ", ".join(
            f"{tower} rounds median "
            f"{_common.fmt_rate(gemm_flops / r['gemm']['median'])} GFLOP/s"
            for tower, r in results.items()
        )
        + f". Best peak seen: {_common.fmt_rate(best_peak)} GFLOP/s.\n"
    )
    print(
        "MFU (same load) = per round, model FLOP/s over the reference "
        "GEMM's FLOP/s in the same round, median over rounds. MFU (best) = "
        "best model FLOP/s over the best peak seen.\n"
    )
    unit = {"vision": "img/s", "text": "seq/s"}
    header = "| tower | peer | median s/batch | throughput | GFLOP/s |"
    header += " MFU (same load) | MFU (best) | vs HF | vs keras-hub |"
    header += " peak RSS total / forward (MiB) |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tower, timed in results.items():
        gemm_times = timed["gemm"]["times"]
        names = [name for name in timed if name != "gemm"]
        rates = {name: batch[tower] / timed[name]["median"] for name in names}
        for name in names:
            rate = rates[name]
            achieved = rate * flops[tower]
            same_load = _common.statistics.median(
                flops[tower] * batch[tower] / t / (gemm_flops / g)
                for t, g in zip(timed[name]["times"], gemm_times)
            )
            best = flops[tower] * batch[tower] / timed[name]["min"]
            vs_hf = f"{rate / rates['hf']:.2f}x" if "hf" in rates else "-"
            vs_kh = (
                f"{rate / rates['keras_hub']:.2f}x"
                if "keras_hub" in rates
                else "-"
            )
            mem = rss.get((tower, name), {})
            mem_text = " / ".join(
                f"{mem[k]:.0f}" for k in ("total", "forward") if k in mem
            )
            print(
                f"| {tower} | {name} | {timed[name]['median']:.3f} | "
                f"{rate:.2f} {unit[tower]} | {_common.fmt_rate(achieved)} | "
                f"{same_load:.2f} | {best / best_peak:.2f} | {vs_hf} | "
                f"{vs_kh} | {mem_text or '-'} |"
            )
    print(f"\nLoad average at end: {_common.load_average()}.")
    if flop_lines:
        print("\nFLOP counts:")
        print("\n".join(flop_lines))
    print("\nRatios, ours over peer (median of per-round paired ratios):")
    for tower, timed in results.items():
        if "ours" not in timed:
            continue
        for name in timed:
            if name in ("ours", "gemm"):
                continue
            ratio = _common.statistics.median(
                t / o
                for t, o in zip(timed[name]["times"], timed["ours"]["times"])
            )
            print(f"- {tower}: ours/{name} = {ratio:.2f}x")


if __name__ == "__main__":
    main()
