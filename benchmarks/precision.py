"""bfloat16 inference and mixed_bfloat16 training vs float32: speed and
embedding difference (ours, JAX).

Inference: the B/16 vision tower (224 px, batch 8) and text tower (64
tokens, vocabulary 256k, batch 32) under the dtype policies `float32`,
`bfloat16` (weights and compute) and `mixed_bfloat16` (float32 weights,
bfloat16 compute), all with the same weights, timed interleaved. The
embedding difference is measured on the L2-normalised pooled embeddings
against float32: mean cosine similarity and max absolute difference.
Training: `train_on_batch` of a tiny (ViT-Ti width) backbone, float32 vs
mixed_bfloat16, interleaved.

bfloat16 speed depends on the CPU: with AVX-512-BF16/AMX the GEMMs run
natively; without (AVX2 only), XLA converts to float32 around the dots.

    python benchmarks/precision.py                 # 9 min, loaded 2 vCPUs
    python benchmarks/precision.py --towers vision --repeats 3

Prints a Markdown section to paste into benchmarks/RESULTS.md.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

POLICIES = ("float32", "bfloat16", "mixed_bfloat16")


def _encoder(tower: str, policy: str, batch: int):
    from keras_siglip2.models.configs import get_config
    from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

    config = get_config("base_patch16_224")
    if tower == "vision":
        size = config.vision["image_size"]
        encoder = SigLIP2VisionEncoder(**config.vision, dtype=policy)
        encoder.build((batch, size, size, 3))
    else:
        encoder = SigLIP2TextEncoder(**config.text, dtype=policy)
        encoder.build((batch, config.text["max_sequence_length"]))
    return encoder


def _inputs(tower: str, batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    if tower == "vision":
        return rng.uniform(-1, 1, (batch, 224, 224, 3)).astype("float32")
    return rng.integers(0, 256_000, (batch, 64)).astype("int32")


def _normalise(x):
    import numpy as np

    x = np.asarray(x, "float64")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def inference(tower: str, batch: int, repeats: int) -> list[str]:
    import jax
    import numpy as np

    x = _inputs(tower, batch)
    reference = None
    runners, outputs = {}, {}
    for policy in POLICIES:
        encoder = _encoder(tower, policy, batch)
        if reference is None:
            reference = encoder
        else:
            for src, dst in zip(
                reference.weights, encoder.weights, strict=True
            ):
                dst.assign(src.value)
        variables = [v.value for v in encoder.trainable_variables]

        @jax.jit
        def forward(variables, x, encoder=encoder):
            outputs, _ = encoder.stateless_call(variables, [], x)
            return outputs["pooled_output"]

        outputs[policy] = _normalise(
            np.asarray(forward(variables, x).astype("float32"))
        )
        runners[policy] = lambda f=forward, v=variables: f(
            v, x
        ).block_until_ready()
    timed = _common.interleaved(runners, repeats=repeats)
    unit = "img/s" if tower == "vision" else "seq/s"
    lines = []
    base = timed["float32"]["times"]
    for policy in POLICIES:
        cosine = (outputs[policy] * outputs["float32"]).sum(-1)
        diff = np.abs(outputs[policy] - outputs["float32"]).max()
        speedup = _common.statistics.median(
            b / t for b, t in zip(base, timed[policy]["times"])
        )
        lines.append(
            f"| {tower} | {policy} | {timed[policy]['median']:.3f} | "
            f"{batch / timed[policy]['median']:.2f} {unit} | "
            f"{speedup:.2f}x | {cosine.mean():.6f} (min {cosine.min():.6f})"
            f" | {diff:.2e} |"
        )
    return lines


def training(batch: int, repeats: int) -> list[str]:
    import numpy as np

    from keras_siglip2.models.backbone import SigLIP2Backbone
    from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
    from keras_siglip2.training.optimizer import siglip2_optimizer

    common = dict(
        hidden_dim=192, num_layers=12, num_heads=3, intermediate_dim=768
    )
    rng = np.random.default_rng(0)
    data = {
        "images": rng.uniform(-1, 1, (batch, 224, 224, 3)).astype("float32"),
        "token_ids": rng.integers(0, 32_000, (batch, 64)).astype("int32"),
    }
    runners, losses = {}, {}
    for policy in ("float32", "mixed_bfloat16"):
        backbone = SigLIP2Backbone(
            SigLIP2VisionEncoder(
                image_size=224, patch_size=16, dtype=policy, **common
            ),
            SigLIP2TextEncoder(vocabulary_size=32_000, dtype=policy, **common),
            dtype=policy,
        )
        backbone.compile(optimizer=siglip2_optimizer(total_steps=1000))
        losses[policy] = float(backbone.train_on_batch(data))
        runners[policy] = lambda b=backbone: b.train_on_batch(data)
    timed = _common.interleaved(runners, repeats=repeats, warmup=1)
    base = timed["float32"]["times"]
    lines = []
    for policy, result in timed.items():
        speedup = _common.statistics.median(
            b / t for b, t in zip(base, result["times"])
        )
        lines.append(
            f"| tiny train step | {policy} | {result['median']:.3f} | "
            f"{batch / result['median']:.2f} pairs/s | {speedup:.2f}x | "
            f"first-step loss {losses[policy]:.4f} | - |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--vision-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args()
    load_before = _common.load_average()
    batch = {"vision": args.vision_batch, "text": args.text_batch}
    lines = []
    for tower in args.towers.split(","):
        lines += inference(tower, batch[tower], args.repeats)
    if not args.no_train:
        lines += training(args.train_batch, args.repeats)

    print("\n## Lower precision: bfloat16 and mixed_bfloat16\n")
    print(
        f"`python benchmarks/precision.py {' '.join(sys.argv[1:])}` "
        f"(B/16 towers; vision batch {args.vision_batch}, text batch "
        f"{args.text_batch}; tiny train batch {args.train_batch}; "
        f"{args.repeats} interleaved rounds, medians; same weights).\n"
    )
    print(f"Machine: {_common.machine_header()}")
    print(f"Load average at start: {load_before}.\n")
    print(
        "| what | policy | median s/batch | throughput | speed vs float32 "
        "(paired) | cosine to float32 | max abs diff (normalised) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    print(f"\nLoad average at end: {_common.load_average()}.")


if __name__ == "__main__":
    main()
