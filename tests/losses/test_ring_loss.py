"""Ring sigmoid loss: equal to the plain loss and gradients on 8 devices.

Oracle: the loss written in float64 numpy from the paper's formula. The
8-device and other-backend checks run this file as a script in a
subprocess (the `worker_*` functions) and assert on the JSON it prints.
"""

import json
import sys

import keras
import numpy as np
import pytest
from distribution_subprocess import run_script

from keras_siglip2.losses.ring import global_sigmoid_loss
from keras_siglip2.losses.ring import ring_sigmoid_loss
from keras_siglip2.losses.sigmoid import sigmoid_loss

NUM_DEVICES = 8
LOGIT_SCALE, LOGIT_BIAS = np.log(10.0), -10.0


def numpy_loss(images, texts, logit_scale, logit_bias):
    """`-1/B sum_i sum_j log sigmoid(l_ij z_ij)` in float64."""
    x = np.asarray(images, "float64")
    y = np.asarray(texts, "float64")
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    logits = np.exp(logit_scale) * x @ y.T + logit_bias
    signs = 2.0 * np.eye(len(x)) - 1.0
    return np.logaddexp(0.0, -signs * logits).sum(-1).mean()


def embeddings(batch, dim=16, seed=0):
    """Image and text embeddings whose positive pairs are similar."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, dim)).astype("float32")
    texts = (images + rng.normal(size=(batch, dim))).astype("float32")
    return images, texts


# === Worker sections (run in the subprocess) ===


def _max_error(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def worker_jax():
    """Loss and gradients on 8 devices, errors and memory."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec

    from keras_siglip2 import distribution as dist_lib

    devices = np.array(jax.devices())
    meshes = {
        "8": Mesh(devices, ("batch",)),
        "2x4": Mesh(devices.reshape(2, 4), ("batch", "model")),
    }
    plain = jax.jit(jax.value_and_grad(global_sigmoid_loss, (0, 1, 2, 3)))
    out = {"devices": len(devices), "cases": {}}
    for mesh_name, mesh in meshes.items():
        for batch in (64, 8):
            images, texts = embeddings(batch)
            scalars = (jnp.float32(LOGIT_SCALE), jnp.float32(LOGIT_BIAS))
            args = (images, texts) + scalars
            # Inputs already split over the batch axis, as in training.
            rows = NamedSharding(mesh, PartitionSpec("batch"))
            sharded = (
                jax.device_put(images, rows),
                jax.device_put(texts, rows),
            ) + scalars
            ring = jax.jit(
                jax.value_and_grad(
                    lambda *a, mesh=mesh: ring_sigmoid_loss(*a, mesh=mesh),
                    (0, 1, 2, 3),
                )
            )
            loss, grads = ring(*sharded)
            plain_loss, plain_grads = plain(*args)
            out["cases"][f"{mesh_name} batch {batch}"] = {
                "loss": float(loss),
                "plain_loss": float(plain_loss),
                "numpy_loss": float(numpy_loss(images, texts, *args[2:])),
                "grad_errors": [
                    _max_error(a, b) for a, b in zip(grads, plain_grads)
                ],
                "grad_scales": [
                    float(np.max(np.abs(np.asarray(b)))) for b in plain_grads
                ],
                "grad_sharding": str(grads[0].sharding.spec),
            }

    # With a keras.distribution set, the ring uses its mesh and batch axis.
    images, texts = embeddings(64)
    dist_lib.configure_distribution("fsdp", mesh_shape=(4, 2))
    try:
        loss = ring_sigmoid_loss(images, texts, LOGIT_SCALE, LOGIT_BIAS)
        hlo = (
            jax.jit(lambda x, y: ring_sigmoid_loss(x, y, 0.0, 0.0))
            .lower(images, texts)
            .as_text()
        )
        out["keras_distribution"] = {
            "loss": float(loss),
            "numpy_loss": float(
                numpy_loss(images, texts, LOGIT_SCALE, LOGIT_BIAS)
            ),
            "uses_ring": "collective_permute" in hlo,
        }
    finally:
        keras.distribution.set_distribution(None)

    # mixed_bfloat16: bfloat16 embeddings, float32 loss and logits.
    images, texts = embeddings(64)
    bf16 = (jnp.asarray(images, "bfloat16"), jnp.asarray(texts, "bfloat16"))
    scalars = (jnp.float32(LOGIT_SCALE), jnp.float32(LOGIT_BIAS))
    ring = jax.jit(
        jax.value_and_grad(
            lambda *a: ring_sigmoid_loss(*a, mesh=meshes["8"]), (0, 1)
        )
    )
    loss, grads = ring(*bf16, *scalars)
    plain_loss, plain_grads = plain(*bf16, *scalars)
    out["bfloat16"] = {
        "loss_dtype": str(loss.dtype),
        "grad_dtype": str(grads[0].dtype),
        "loss_error": abs(float(loss) - float(plain_loss)),
        "numpy_loss_error": abs(
            float(loss)
            - numpy_loss(
                np.asarray(bf16[0], "float32"),
                np.asarray(bf16[1], "float32"),
                LOGIT_SCALE,
                LOGIT_BIAS,
            )
        ),
        "grad_error": _max_error(
            np.asarray(grads[0], "float32"),
            np.asarray(plain_grads[0], "float32"),
        ),
        "grad_scale": float(np.max(np.abs(np.asarray(plain_grads[0])))),
    }

    try:
        images, texts = embeddings(12)
        ring_sigmoid_loss(images, texts, 0.0, 0.0, mesh=meshes["8"])
        out["indivisible_error"] = None
    except ValueError as error:
        out["indivisible_error"] = str(error)

    # Memory: per-device buffers of loss + gradients at B = 2048.
    batch, dim = 2048, 64
    rows = NamedSharding(meshes["8"], PartitionSpec("batch"))
    scalar = NamedSharding(meshes["8"], PartitionSpec())
    shapes = (jax.ShapeDtypeStruct((batch, dim), jnp.float32),) * 2 + (
        jax.ShapeDtypeStruct((), jnp.float32),
    ) * 2
    memory = {}
    for name, loss_fn in (
        ("plain", global_sigmoid_loss),
        ("ring", lambda *a: ring_sigmoid_loss(*a, mesh=meshes["8"])),
    ):
        compiled = (
            jax.jit(
                jax.value_and_grad(loss_fn, (0, 1, 2, 3)),
                in_shardings=(rows, rows, scalar, scalar),
            )
            .lower(*shapes)
            .compile()
        )
        memory[name] = {
            "temp_bytes": compiled.memory_analysis().temp_size_in_bytes,
            # A (B / 8, B) logit slice in the per-device program.
            "has_logits_slice": f"f32[{batch // 8},{batch}]"
            in compiled.as_text(),
        }
    out["memory"] = memory
    return out


def worker_other_backend():
    """The fallback to the plain loss, with gradients, on this backend."""
    images, texts = embeddings(16)
    loss = ring_sigmoid_loss(images, texts, LOGIT_SCALE, LOGIT_BIAS)
    out = {
        "backend": keras.backend.backend(),
        "loss": float(keras.ops.convert_to_numpy(loss)),
        "numpy_loss": float(numpy_loss(images, texts, LOGIT_SCALE, LOGIT_BIAS)),
    }
    if keras.backend.backend() == "torch":
        import torch

        x = torch.tensor(images, requires_grad=True)
        ring_sigmoid_loss(x, texts, LOGIT_SCALE, LOGIT_BIAS).backward()
        out["grad_finite"] = bool(torch.isfinite(x.grad).all())
        out["grad_norm"] = float(x.grad.norm())
    return out


# === Multi-device and other-backend tests ===


@pytest.fixture(scope="module")
def worker():
    return run_script(__file__, "jax", num_devices=NUM_DEVICES)


def test_ring_loss_equals_plain_loss_on_8_devices(worker):
    assert worker["devices"] == NUM_DEVICES
    assert len(worker["cases"]) == 4
    for name, case in worker["cases"].items():
        assert abs(case["loss"] - case["plain_loss"]) <= 1e-5, name
        assert abs(case["loss"] - case["numpy_loss"]) <= 1e-4, name


def test_ring_loss_gradients_equal_plain_gradients_on_8_devices(worker):
    for name, case in worker["cases"].items():
        # Gradients w.r.t. images, texts, t' and b.
        for error, scale in zip(case["grad_errors"], case["grad_scales"]):
            assert error <= 1e-5, (name, error, scale)
        assert "batch" in case["grad_sharding"], name


def test_ring_loss_uses_the_keras_distribution_mesh(worker):
    result = worker["keras_distribution"]
    assert result["uses_ring"]
    assert abs(result["loss"] - result["numpy_loss"]) <= 1e-4


def test_ring_loss_mixed_bfloat16_on_8_devices(worker):
    result = worker["bfloat16"]
    assert result["loss_dtype"] == "float32"
    assert result["grad_dtype"] == "bfloat16"
    # Computed in float32 from the bfloat16 embeddings, like the plain loss.
    assert result["loss_error"] <= 1e-5
    assert result["numpy_loss_error"] <= 1e-4
    # Both gradients are rounded to bfloat16: at most one unit in the last
    # place (2**-8 relative) apart.
    assert result["grad_scale"] > 1e-3
    assert result["grad_error"] <= 2**-8 * result["grad_scale"]


def test_ring_loss_indivisible_batch_is_an_error(worker):
    message = worker["indivisible_error"]
    assert message is not None
    assert "12" in message and "8 devices" in message


def test_ring_loss_never_holds_the_logits_slice(worker):
    memory = worker["memory"]
    assert memory["plain"]["has_logits_slice"]
    assert not memory["ring"]["has_logits_slice"]
    assert memory["ring"]["temp_bytes"] < memory["plain"]["temp_bytes"] / 2


def test_ring_loss_falls_back_on_torch():
    result = run_script(__file__, "other_backend", backend="torch")
    assert result["backend"] == "torch"
    assert abs(result["loss"] - result["numpy_loss"]) <= 1e-5
    assert result["grad_finite"] and result["grad_norm"] > 0


# === Single-device tests ===


def test_ring_loss_falls_back_on_one_device():
    images, texts = embeddings(8)
    expected = numpy_loss(images, texts, LOGIT_SCALE, LOGIT_BIAS)
    loss = ring_sigmoid_loss(images, texts, LOGIT_SCALE, LOGIT_BIAS)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    # Equal to the plain loss of the backbone's logits.
    x = images / np.linalg.norm(images, axis=-1, keepdims=True)
    y = texts / np.linalg.norm(texts, axis=-1, keepdims=True)
    logits = np.exp(LOGIT_SCALE) * x @ y.T + LOGIT_BIAS
    np.testing.assert_allclose(
        float(loss), float(sigmoid_loss(logits)), rtol=1e-6
    )


def test_ring_loss_bad_shapes_are_errors():
    images, texts = embeddings(8)
    with pytest.raises(ValueError, match=r"same shape.*\(8, 16\).*\(4, 16\)"):
        ring_sigmoid_loss(images, texts[:4], 0.0, 0.0)
    with pytest.raises(ValueError, match=r"\(batch, dim\); got shape \(8,\)"):
        ring_sigmoid_loss(images[:, 0], texts, 0.0, 0.0)


if __name__ == "__main__":
    sections = {"jax": worker_jax, "other_backend": worker_other_backend}
    print(json.dumps(sections[sys.argv[1]]()))
