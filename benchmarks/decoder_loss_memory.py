"""Peak memory of the LocCa decoder loss: plain versus chunked.

Compiles loss + gradients (w.r.t. the decoder's final states and the
output-head kernel and bias) of `keras_siglip2.losses.decoder_loss` with
and without chunking, at the Gemma vocabulary (256k), and reads XLA's
compiled memory analysis (temporary bytes; nothing is executed). The plain
form materialises `(batch, length, vocabulary)` logits and their gradient;
the chunked form one `(chunk, vocabulary)` block at a time.

    python benchmarks/decoder_loss_memory.py --batch 16 --length 64 \
        --dim 768 --vocab 256000 --chunks 128,256,512

Prints a Markdown table; paste it into benchmarks/RESULTS.md.
"""

import argparse
import datetime
import os
import platform

os.environ.setdefault("KERAS_BACKEND", "jax")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=256_000)
    parser.add_argument("--chunks", default="128,256,512")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import keras

    from keras_siglip2.losses.decoder import decoder_loss

    b, n, d, v = args.batch, args.length, args.dim, args.vocab
    shapes = (
        jax.ShapeDtypeStruct((b, n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((v,), jnp.float32),
        jax.ShapeDtypeStruct((b, n), jnp.int32),
        jax.ShapeDtypeStruct((b, n), jnp.float32),
    )

    def temp_mib(chunk_size):
        def loss(hidden, kernel, bias, targets, weights):
            return decoder_loss(
                hidden, kernel, bias, targets, weights, chunk_size=chunk_size
            )

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        analysis = step.lower(*shapes).compile().memory_analysis()
        return analysis.temp_size_in_bytes / 2**20

    logits_mib = b * n * v * 4 / 2**20
    print(
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPU cores, jax {jax.__version__}, keras "
        f"{keras.__version__}; batch {b}, length {n}, dim {d}, vocabulary "
        f"{v}; logits alone {logits_mib:.0f} MiB"
    )
    print()
    print("| form | tokens per chunk | temp memory (MiB) | vs plain |")
    print("|---|---:|---:|---:|")
    plain = temp_mib(None)
    print(f"| plain | {b * n} | {plain:.0f} | 1.0x |")
    for chunk in (int(c) for c in args.chunks.split(",")):
        chunked = temp_mib(chunk)
        print(
            f"| chunked | {chunk} | {chunked:.0f} | "
            f"{plain / max(chunked, 1e-9):.1f}x less |"
        )


if __name__ == "__main__":
    main()
