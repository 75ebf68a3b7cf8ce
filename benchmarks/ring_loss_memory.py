"""Per-device memory of the sigmoid loss: ring versus all-gather.

Compiles loss + gradients (w.r.t. both embeddings, `t'` and `b`) for three
forms of the same loss on a data-parallel mesh and reads XLA's compiled
memory analysis (nothing is executed, so large batches are cheap):

- `xla`: `global_sigmoid_loss` under `jit` with batch-sharded inputs; XLA
  partitions the `(B, B)` logits into `(B / n, B)` row slices.
- `all_gather`: big_vision's legacy data-parallel form under `shard_map`;
  each device gathers all texts and computes its `(B / n, B)` logits.
- `ring`: `ring_sigmoid_loss`; texts travel the device ring and each device
  holds one `(B / n, B / n)` block at a time.

Runs on `n` virtual CPU devices unless real accelerators are present:

    python benchmarks/ring_loss_memory.py --devices 8 --dim 1152 \
        --batches 4096,8192,16384,32768 --local-batch 512

Prints two Markdown tables (MiB per device): the global batch grown on `n`
devices, and the device count grown at a fixed per-device batch (where the
ring's memory stays flat and the all-gather form's grows with `n`).
"""

import argparse
import datetime
import os
import platform
import sys


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--batches", default="4096,8192,16384,32768")
    parser.add_argument("--local-batch", type=int, default=512)
    return parser.parse_args()


def _all_gather_loss_fn(mesh, axis_name, global_batch):
    """big_vision's `_deprecated_contrastive.sigmoid_loss` form."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec

    rows = PartitionSpec(axis_name)

    def local(images, texts, scale, bias):
        local_batch = images.shape[0]
        all_texts = jax.lax.all_gather(texts, axis_name, tiled=True)
        logits = scale * (images @ all_texts.T) + bias
        offset = jax.lax.axis_index(axis_name) * local_batch
        columns = jnp.arange(all_texts.shape[0])[None, :]
        positive = columns == offset + jnp.arange(local_batch)[:, None]
        signs = jnp.where(positive, 1.0, -1.0)
        loss = -jax.nn.log_sigmoid(signs * logits).sum()
        return jax.lax.psum(loss, axis_name) / global_batch

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rows, rows, PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec(),
    )

    def normalize(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def loss(image_embeddings, text_embeddings, logit_scale, logit_bias):
        return sharded(
            normalize(image_embeddings),
            normalize(text_embeddings),
            jnp.exp(logit_scale),
            logit_bias,
        )

    return loss


def measure(num_devices: int, dim: int, batches: list[int]) -> list[dict]:
    """Compiles each loss form and returns its per-device memory stats."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec

    from keras_siglip2.losses.ring import global_sigmoid_loss
    from keras_siglip2.losses.ring import ring_sigmoid_loss

    devices = np.array(jax.devices()[:num_devices])
    mesh = Mesh(devices, ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    scalar = NamedSharding(mesh, PartitionSpec())
    results = []
    for batch in batches:
        forms = {
            "xla": global_sigmoid_loss,
            "all_gather": _all_gather_loss_fn(mesh, "batch", batch),
            "ring": lambda *a: ring_sigmoid_loss(*a, mesh=mesh),
        }
        embeddings = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
        scalar_arg = jax.ShapeDtypeStruct((), jnp.float32)
        row = {"batch": batch, "dim": dim, "devices": num_devices}
        for name, loss in forms.items():
            step = jax.jit(
                jax.value_and_grad(loss, argnums=(0, 1, 2, 3)),
                in_shardings=(rows, rows, scalar, scalar),
            )
            compiled = step.lower(
                embeddings, embeddings, scalar_arg, scalar_arg
            ).compile()
            stats = compiled.memory_analysis()
            row[f"{name}_temp"] = stats.temp_size_in_bytes
            row[f"{name}_io"] = (
                stats.argument_size_in_bytes + stats.output_size_in_bytes
            )
        results.append(row)
    return results


def to_markdown(results: list[dict]) -> str:
    mib = 2.0**20
    lines = [
        "| global batch B | devices n | per device | logits slice (B/n x B) | "
        "XLA-sharded temp | all-gather temp | ring temp | ring saving |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        local = row["batch"] // row["devices"]
        slice_mib = local * row["batch"] * 4 / mib
        saving = row["all_gather_temp"] / max(row["ring_temp"], 1)
        lines.append(
            f"| {row['batch']} | {row['devices']} | {local} | "
            f"{slice_mib:.1f} MiB | "
            f"{row['xla_temp'] / mib:.1f} MiB | "
            f"{row['all_gather_temp'] / mib:.1f} MiB | "
            f"{row['ring_temp'] / mib:.1f} MiB | {saving:.1f}x |"
        )
    return "\n".join(lines)


def main():
    args = _parse_args()
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    if "jax" in sys.modules:
        raise RuntimeError("Run this script in a fresh process.")
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + flag
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax

    batches = [int(b) for b in args.batches.split(",")]
    results = measure(args.devices, args.dim, batches)
    scaling = []
    num_devices = 2
    while num_devices <= args.devices:
        scaling += measure(
            num_devices, args.dim, [args.local_batch * num_devices]
        )
        num_devices *= 2
    print(
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPU cores, jax {jax.__version__}, "
        f"{args.devices} x {jax.devices()[0].platform} devices, "
        f"dim {args.dim}, float32, loss + gradients"
    )
    print(f"\nGlobal batch grows on {args.devices} devices:\n")
    print(to_markdown(results))
    print(f"\nDevices grow at {args.local_batch} examples per device:\n")
    print(to_markdown(scaling))


if __name__ == "__main__":
    main()
