"""NaFlex vs fixed resolution at the same token count (B/16, 256 tokens).

Times, interleaved after warm-up, the same B/16 vision tower on
- fixed-resolution 256 x 256 images (16 x 16 = 256 patches, the position
  table added as is), and
- NaFlex inputs of 256 patches with mixed aspect ratios (16x16, 8x32,
  12x21, ...; the position table resized per example inside the jitted
  call, padded tokens masked in every attention and the MAP head),
and, as a peer, HF transformers' `Siglip2VisionModel` on the same NaFlex
batch. The per-example position-table resize is also timed alone
(vectorised over the batch: one `(batch, 256, 256) @ (256, 768)` matmul).

    python benchmarks/naflex_vs_fixed.py --repeats 5   # 6 min, loaded
    python benchmarks/naflex_vs_fixed.py --batch 4 --repeats 3

Prints a Markdown section to paste into benchmarks/RESULTS.md.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

GRIDS = [(16, 16), (8, 32), (12, 21), (32, 8), (10, 25), (20, 12), (15, 17)]


def naflex_batch(batch: int, length: int, patch_size: int, seed: int = 0):
    """Random NaFlex inputs: grids cycle through `GRIDS` (all fit)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grids = np.array([GRIDS[i % len(GRIDS)] for i in range(batch)], "int32")
    counts = grids.prod(-1)
    patches = rng.uniform(-1, 1, (batch, length, patch_size**2 * 3))
    mask = np.arange(length)[None, :] < counts[:, None]
    patches = np.where(mask[..., None], patches, 0.0).astype("float32")
    return {
        "patches": patches,
        "patch_mask": mask.astype("int32"),
        "spatial_shapes": grids,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args()

    import jax
    import numpy as np

    from keras_siglip2.models.configs import get_config
    from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

    load_before = _common.load_average()
    config = get_config("base_patch16_256").vision
    length = (config["image_size"] // config["patch_size"]) ** 2
    encoder = SigLIP2VisionEncoder(**config)
    size = config["image_size"]
    encoder.build((args.batch, size, size, 3))
    variables = [v.value for v in encoder.trainable_variables]

    @jax.jit
    def forward(variables, inputs):
        outputs, _ = encoder.stateless_call(variables, [], inputs)
        return outputs["pooled_output"]

    @jax.jit
    def posemb(spatial_shapes):
        return encoder.position_embedding.resize_per_example(
            spatial_shapes, length
        )

    images = np.random.default_rng(0).uniform(
        -1, 1, (args.batch, size, size, 3)
    )
    images = images.astype("float32")
    naflex = naflex_batch(args.batch, length, config["patch_size"])

    runners = {
        "fixed (ours)": lambda: forward(variables, images).block_until_ready(),
        "naflex (ours)": lambda: forward(variables, naflex).block_until_ready(),
        "posemb resize only": lambda: posemb(
            naflex["spatial_shapes"]
        ).block_until_ready(),
    }
    if not args.no_hf:
        runners["naflex (HF)"] = _hf_runner(config, naflex)
    timed = _common.interleaved(runners, repeats=args.repeats)

    print("\n## NaFlex vs fixed resolution at equal token count\n")
    print(
        f"`python benchmarks/naflex_vs_fixed.py {' '.join(sys.argv[1:])}` "
        f"(B/16 vision tower, {length} tokens, batch {args.batch}; NaFlex "
        f"grids {', '.join(f'{h}x{w}' for h, w in GRIDS[: args.batch])}; "
        f"{args.repeats} interleaved rounds, medians).\n"
    )
    print(f"Machine: {_common.machine_header()}")
    print(f"Load average at start: {load_before}.\n")
    print("| input | median s/batch | img/s | vs fixed (paired) |")
    print("|---|---:|---:|---:|")
    fixed = timed["fixed (ours)"]["times"]
    for name, result in timed.items():
        paired = _common.statistics.median(
            f / t for f, t in zip(fixed, result["times"])
        )
        print(
            f"| {name} | {result['median']:.4f} | "
            f"{args.batch / result['median']:.2f} | {paired:.2f}x |"
        )
    print(f"\nLoad average at end: {_common.load_average()}.")


def _hf_runner(config, naflex):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    hf_config = transformers.Siglip2VisionConfig(
        hidden_size=config["hidden_dim"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_heads"],
        intermediate_size=config["intermediate_dim"],
        patch_size=config["patch_size"],
        num_patches=(config["image_size"] // config["patch_size"]) ** 2,
    )
    hf_config._attn_implementation = "sdpa"
    model = transformers.Siglip2VisionModel(hf_config).eval()
    pixels = torch.from_numpy(naflex["patches"])
    mask = torch.from_numpy(naflex["patch_mask"])
    shapes = torch.from_numpy(naflex["spatial_shapes"]).long()

    def run():
        with torch.inference_mode():
            return model(
                pixel_values=pixels,
                pixel_attention_mask=mask,
                spatial_shapes=shapes,
            ).pooler_output

    return run


if __name__ == "__main__":
    main()
