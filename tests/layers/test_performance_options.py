"""Performance options: rematerialisation (`remat=True`: same outputs and
gradients, the backward pass recomputes the blocks) and the memory-lean
row-chunked initializer of the text embedding table."""

import re

import jax
import numpy as np
import pytest

from keras_siglip2.layers import RowChunkedRandomNormal
from keras_siglip2.layers import TransformerEncoderBlock
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

REMAT = re.compile(r"\b(remat\w*|checkpoint)\[")


def _loss_and_grads(layer, x, select=lambda y: y):
    variables = [v.value for v in layer.trainable_variables]

    def loss(variables):
        outputs, _ = layer.stateless_call(variables, [], x)
        return (select(outputs) ** 2).sum()

    return loss, variables


def _copy_weights(source, target):
    for src, dst in zip(source.weights, target.weights, strict=True):
        dst.assign(src.value)


def test_remat_block_matches_reference_and_plain_gradients(
    sizes, randomize, reference
):
    shape = (sizes.batch, sizes.length, sizes.hidden)
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    plain = TransformerEncoderBlock(
        sizes.hidden, sizes.heads, sizes.intermediate
    )
    remat = TransformerEncoderBlock(
        sizes.hidden, sizes.heads, sizes.intermediate, remat=True
    )
    plain.build(shape)
    remat.build(shape)
    randomize(plain)
    _copy_weights(plain, remat)
    np.testing.assert_allclose(
        remat(x),
        reference.encoder_block(plain, x.astype("float64")),
        rtol=1e-5,
        atol=1e-5,
    )
    (plain_fn, plain_vars), (remat_fn, remat_vars) = (
        _loss_and_grads(plain, x),
        _loss_and_grads(remat, x),
    )
    plain_loss, plain_grads = jax.value_and_grad(plain_fn)(plain_vars)
    remat_loss, remat_grads = jax.value_and_grad(remat_fn)(remat_vars)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    for got, want in zip(remat_grads, plain_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The block is wrapped in a rematerialisation primitive (`remat2` or
    # `checkpoint`, by JAX version), so its backward pass recomputes it.
    assert REMAT.search(str(jax.make_jaxpr(remat_fn)(remat_vars)))
    assert not REMAT.search(str(jax.make_jaxpr(plain_fn)(plain_vars)))


@pytest.mark.parametrize("remat", [False, True])
def test_remat_round_trips_through_config(remat):
    block = TransformerEncoderBlock(8, 2, 16, remat=remat)
    assert (
        TransformerEncoderBlock.from_config(block.get_config()).remat is remat
    )
    text = SigLIP2TextEncoder(11, 8, 1, 2, 16, remat=remat)
    restored = SigLIP2TextEncoder.from_config(text.get_config())
    assert restored.remat is remat
    assert all(layer.remat is remat for layer in restored.encoder_layers)


def test_remat_vision_encoder_recomputes_and_keeps_gradients():
    config = dict(
        image_size=32,
        patch_size=4,
        hidden_dim=16,
        num_layers=4,
        num_heads=2,
        intermediate_dim=64,
    )
    x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3))
    x = x.astype("float32")
    plain = SigLIP2VisionEncoder(**config)
    remat = SigLIP2VisionEncoder(**config, remat=True)
    plain.build(x.shape)
    remat.build(x.shape)
    _copy_weights(plain, remat)

    def pooled(outputs):
        return outputs["pooled_output"]

    results, matmuls = [], []
    for encoder in (plain, remat):
        loss, variables = _loss_and_grads(encoder, x, pooled)
        grad_jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables))
        matmuls.append(grad_jaxpr.count("dot_general["))
        results.append(jax.jit(jax.value_and_grad(loss))(variables))
    (plain_loss, plain_grads), (remat_loss, remat_grads) = results
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    for got, want in zip(remat_grads, plain_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Each of the 4 blocks has 8 matmuls (q, k, v, logits, values, out,
    # 2 MLP); the backward pass recomputes all whose outputs it needs,
    # i.e. all but the last MLP matmul.
    assert matmuls[1] == matmuls[0] + 4 * 7, matmuls


def test_row_chunked_normal_statistics_and_seeding():
    init = RowChunkedRandomNormal(0.5, rows_per_chunk=300, seed=3)
    table = np.asarray(init((1000, 64), dtype="float32"))
    assert table.shape == (1000, 64) and table.dtype == np.float32
    # 64k draws: the mean and std are within a few standard errors.
    assert abs(table.mean()) < 0.01
    assert abs(table.std() - 0.5) < 0.01
    # Blocks (rows 0-299, 300-599, ...) are independent draws, not copies.
    assert not np.allclose(table[:300], table[300:600])
    assert (
        np.abs(np.corrcoef(table[:300].ravel(), table[300:600].ravel()))[0, 1]
        < 0.05
    )
    np.testing.assert_array_equal(table, init((1000, 64), dtype="float32"))
    restored = RowChunkedRandomNormal.from_config(init.get_config())
    np.testing.assert_array_equal(table, restored((1000, 64), "float32"))
    with pytest.raises(ValueError, match="rows_per_chunk"):
        RowChunkedRandomNormal(0.5, rows_per_chunk=0)


def test_text_encoder_embedding_uses_row_chunked_init():
    text = SigLIP2TextEncoder(40000, 8, 1, 2, 16)
    text.build((1, 4))
    init = text.token_embedding.embeddings_initializer
    assert isinstance(init, RowChunkedRandomNormal)
    table = np.asarray(text.token_embedding.embeddings.value)
    assert abs(table.std() - 8**-0.5) < 0.01
    # 40000 rows span three 16384-row blocks, each drawn independently.
    assert not np.allclose(table[:100], table[16384:16484])


# Runs in a fresh process: XLA:CPU keeps the remat barriers only with its
# `cse_barrier_expander` pass disabled, a process-wide flag.
_REMAT_MEMORY_SCRIPT = """
import json, os
os.environ["KERAS_BACKEND"] = "jax"
import jax
import numpy as np
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

x = np.zeros((64, 32, 32, 3), "float32")
temps = {}
for remat in (False, True):
    encoder = SigLIP2VisionEncoder(
        image_size=32, patch_size=4, hidden_dim=32, num_layers=6,
        num_heads=2, intermediate_dim=128, remat=remat,
    )
    encoder.build(x.shape)
    variables = [v.value for v in encoder.trainable_variables]

    def loss(variables):
        outputs, _ = encoder.stateless_call(variables, [], x)
        return outputs["pooled_output"].sum()

    compiled = jax.jit(jax.grad(loss)).lower(variables).compile()
    temps[str(remat)] = compiled.memory_analysis().temp_size_in_bytes
print(json.dumps(temps))
"""


def test_remat_saves_compiled_memory_when_xla_keeps_its_barriers():
    """The oracle is XLA's own buffer assignment of the compiled gradient:
    with the barriers kept, the rematerialised encoder needs a fraction of
    the temporary memory (only block inputs are saved for the backward
    pass). (Without the flag, XLA:CPU 0.10 merges the recomputation back
    and saves nothing; `benchmarks/remat_memory.py` measures both.)"""
    import json
    import os
    import subprocess
    import sys

    flags = os.environ.get("XLA_FLAGS", "")
    flags += " --xla_disable_hlo_passes=cse_barrier_expander"
    completed = subprocess.run(
        [sys.executable, "-c", _REMAT_MEMORY_SCRIPT],
        env={**os.environ, "XLA_FLAGS": flags},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    temps = json.loads(completed.stdout.strip().splitlines()[-1])
    print(temps)
    assert temps["True"] < 0.5 * temps["False"], temps
