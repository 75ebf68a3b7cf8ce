"""Training stages under `keras.distribution` on 8 virtual CPU devices.

- Stage B (custom train step, EMA teacher) and Stage D (ACID selection)
  under data parallelism and FSDP: one `fit` step gives the loss and
  updated weights (student and teacher) of a single device, and FSDP
  shards every large weight, teacher and heads included.
- The ring sigmoid loss in a train step (`ring_loss=True`, Stage A's
  option, inherited by Stage B): under data parallelism the step equals
  the one-device step with the plain loss, and its program passes the
  text embeddings around the ring.

The oracle is the same model trained on one device. The distributed runs
happen in a subprocess (XLA creates the virtual devices only if
`XLA_FLAGS` is set before JAX starts): this file runs as a script there
(the `worker` function) and the tests assert on the JSON it prints.
"""

import json
import re

import keras
import numpy as np
import pytest
from distribution_subprocess import run_script
from test_distribution import BATCH
from test_distribution import tiny_stage_a
from test_distribution import tiny_stage_a_batch

from keras_siglip2 import SigLIP2Backbone
from keras_siglip2 import SigLIP2TextEncoder
from keras_siglip2 import SigLIP2VisionEncoder
from keras_siglip2 import distribution as dist_lib
from keras_siglip2.training.stage_b import StageBModel
from keras_siglip2.training.stage_d import StageDModel

NUM_DEVICES = 8
NUM_CROPS = 2

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution shards JAX arrays",
)


def tiny_stage_b(**kwargs):
    stage_a = tiny_stage_a()
    # Distillation from the first step (the teacher copies the student
    # in-step) and a fast EMA, so one step moves the teacher.
    model = StageBModel(
        stage_a.backbone,
        stage_a.decoder,
        ema_momentum=0.5,
        distillation_start_step=0,
        head_hidden_dim=16,
        head_bottleneck_dim=8,
        num_prototypes=32,
        num_patch_prototypes=24,
        # DINO's sharp teacher (0.04) would amplify rounding 25 times.
        teacher_temperature=0.1,
        seed=1,
        **kwargs,
    )
    # At DINO's init (std 0.02) the tiny heads' bottleneck outputs and
    # prototypes are near zero and their L2 normalisations turn float32
    # rounding into gradient errors above 1e-5; unit-variance weights
    # keep the step well posed.
    rng = np.random.default_rng(3)
    for head in (model.global_head, model.patch_head):
        for layer in head.dense_layers + [head.bottleneck]:
            fan_in = layer.kernel.shape[0]
            layer.kernel.assign(
                rng.normal(size=layer.kernel.shape) / np.sqrt(fan_in)
            )
        head.prototypes.assign(rng.normal(size=head.prototypes.shape))
    return model


def tiny_stage_b_batch():
    rng = np.random.default_rng(2)
    crops = rng.uniform(-1, 1, (BATCH, NUM_CROPS, 8, 8, 3))
    return dict(
        tiny_stage_a_batch(),
        global_view=rng.uniform(-1, 1, (BATCH, 16, 16, 3)).astype("float32"),
        local_crops=crops.astype("float32"),
    )


def _backbone(width, name):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=8,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        name=f"{name}_vision_encoder",
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=32,
        hidden_dim=width,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=8,
        name=f"{name}_text_encoder",
    )
    return SigLIP2Backbone(vision, text, name=name)


def tiny_stage_d():
    # A wider teacher than student, as in the paper.
    return StageDModel(
        _backbone(16, "student"), _backbone(24, "teacher"), filter_ratio=0.5
    )


def tiny_stage_d_batch():
    batch = tiny_stage_a_batch()
    return {key: batch[key] for key in ("images", "token_ids")}


# === Worker sections (run in the subprocess) ===


def _fit_one_step(model, x):
    # SGD: the weight change is the gradient times 0.5 (Adam's first step
    # would amplify float noise in near-zero gradients; see
    # test_distribution).
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    history = model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return {key: float(values[0]) for key, values in history.history.items()}


def _sharding(model):
    """Per weight: path, spec, total bytes and one device's bytes."""
    report = []
    for weight in model.weights:
        value = weight.value
        report.append(
            {
                "path": weight.path,
                "spec": [
                    None if axis is None else str(axis)
                    for axis in value.sharding.spec
                ],
                "total_bytes": int(value.nbytes),
                "shard_bytes": int(value.addressable_shards[0].data.nbytes),
                "num_devices": len(value.sharding.device_set),
            }
        )
    return report


def _collective_permutes(model, x, distribution):
    """Collective permutes in the lowered `train_step` of `model` on the
    distributed batch: the ring's `ppermute`s, and nothing else emits one
    before XLA partitions the program."""
    import jax

    state = tuple(
        [variable.value for variable in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    data = {
        key: jax.device_put(
            value, distribution.get_data_layout(value.shape).backend_layout
        )
        for key, value in x.items()
    }
    with distribution.scope():
        # A new function each call: `jit` caches the trace of a bound
        # method across `ring_loss` values.
        text = (
            jax.jit(lambda state, data: model.train_step(state, data))
            .lower(state, (data,))
            .as_text()
        )
    return text.count("collective_permute")


def _ring_evidence(model, x, distribution):
    """Permutes in the step with the ring loss, and with the plain loss."""
    if not model.ring_loss:
        return {}
    counts = {"ring": _collective_permutes(model, x, distribution)}
    model.ring_loss = False
    try:
        counts["plain"] = _collective_permutes(model, x, distribution)
    finally:
        model.ring_loss = True
    return {"collective_permutes": counts}


def _compare(build, x, runs, teacher_prefix=None, inspect=None):
    """One `fit` step on one device, then under each distribution of `runs`.

    Args:
        build: returns a fresh model; takes the keyword arguments of a run.
        x: the batch dict.
        runs: `(strategy, mesh_shape, build_kwargs)` tuples.
        teacher_prefix: path prefix of the EMA teacher's weights, if any.
        inspect: optional `fn(model, x, distribution) -> dict`, called on
            each run's model after its step.

    Returns:
        dict: the one-device logs and, per run, its logs, the largest
        weight error relative to the one-device weights
        (`|w - w_ref| / (1 + |w_ref|)`), layout-map validation and
        shardings.
    """
    keras.utils.set_random_seed(0)
    reference = build()
    initial = reference.get_weights()
    reference_logs = _fit_one_step(reference, x)
    reference_weights = reference.get_weights()
    paths = [weight.path for weight in reference.weights]
    is_teacher = [
        teacher_prefix is not None and path.startswith(teacher_prefix)
        for path in paths
    ]
    changes = [
        float(np.max(np.abs(a - b))) for a, b in zip(initial, reference_weights)
    ]
    out = {
        "reference_logs": reference_logs,
        "weights_changed": max(changes),
        "teacher_changed": max(
            [c for c, t in zip(changes, is_teacher) if t], default=0.0
        ),
        "runs": {},
    }
    for strategy, shape, kwargs in runs:
        distribution = dist_lib.configure_distribution(
            strategy, mesh_shape=shape, global_batch_size=BATCH
        )
        try:
            model = build(**kwargs)
            result = {"validation_error": None}
            if strategy == "fsdp":
                try:
                    dist_lib.validate_layout_map(
                        model,
                        dist_lib.get_layout_map(distribution.device_mesh),
                    )
                except ValueError as error:
                    result["validation_error"] = str(error)
            model.set_weights(initial)
            result["logs"] = _fit_one_step(model, x)
            errors = [
                float(np.max(np.abs(a - b) / (1.0 + np.abs(b))))
                for a, b in zip(model.get_weights(), reference_weights)
            ]
            result["weight_error"] = max(errors)
            result["worst_weight"] = paths[int(np.argmax(errors))]
            result["teacher_error"] = max(
                [e for e, t in zip(errors, is_teacher) if t], default=0.0
            )
            result["sharding"] = _sharding(model)
            if inspect is not None:
                result.update(inspect(model, x, distribution))
        finally:
            keras.distribution.set_distribution(None)
        name = f"{strategy} {shape}" + (" ring" if kwargs else "")
        out["runs"][name] = result
    return out


def worker():
    import jax

    return {
        "devices": len(jax.devices()),
        # `ring_loss` is Stage A's option, which Stage B inherits: the
        # data-parallel step computes the sigmoid loss around the ring of
        # 8 devices, the one-device reference from the global logits.
        "stage_b": _compare(
            tiny_stage_b,
            tiny_stage_b_batch(),
            [
                ("data_parallel", (8, 1), {"ring_loss": True}),
                ("fsdp", (2, 4), {}),
            ],
            teacher_prefix="teacher_",
            inspect=_ring_evidence,
        ),
        "stage_d": _compare(
            tiny_stage_d,
            tiny_stage_d_batch(),
            [("data_parallel", (8, 1), {}), ("fsdp", (2, 4), {})],
            teacher_prefix="teacher_",
        ),
    }


# === Tests ===

STAGE_B_RUNS = [("data_parallel (8, 1) ring", 1), ("fsdp (2, 4)", 4)]
STAGE_D_RUNS = [("data_parallel (8, 1)", 1), ("fsdp (2, 4)", 4)]
# float32 rounding of a loss of ~20 summed in another order over devices.
LOSS_TOLERANCE = dict(rtol=1e-6, atol=1e-5)


@pytest.fixture(scope="module")
def results():
    return run_script(__file__, num_devices=NUM_DEVICES)


def _check_step(result, run):
    """The distributed step equals the one-device step."""
    logs = result["runs"][run]["logs"]
    assert set(logs) == set(result["reference_logs"])
    for key, value in result["reference_logs"].items():
        np.testing.assert_allclose(
            logs[key], value, err_msg=f"{run}: {key}", **LOSS_TOLERANCE
        )
    error = result["runs"][run]["weight_error"]
    assert error <= 1e-5, (run, error, result["runs"][run]["worst_weight"])
    # The step moved the weights, so the comparison means something.
    assert result["weights_changed"] > 1e-3


def _check_sharding(run, model_devices, must_shard):
    """Every weight lives on all devices; FSDP splits it by its rule."""
    assert run["validation_error"] is None
    rules = dict(dist_lib.LAYOUT_RULES)
    by_path = {}
    sharded_bytes = total_bytes = device_bytes = 0
    for info in run["sharding"]:
        path = info["path"]
        by_path[path] = info
        assert info["num_devices"] == NUM_DEVICES, path
        total_bytes += info["total_bytes"]
        device_bytes += info["shard_bytes"]
        if model_devices == 1:
            assert info["shard_bytes"] == info["total_bytes"], path
            continue
        (key,) = [k for k in rules if re.fullmatch(k, path)]
        assert info["spec"] == list(rules[key]), path
        if "model" in info["spec"]:
            sharded_bytes += info["total_bytes"]
            assert info["shard_bytes"] * model_devices == info["total_bytes"]
    if model_devices > 1:
        for path in must_shard:
            assert "model" in by_path[path]["spec"], path
        assert sharded_bytes > 0.5 * total_bytes
        replicated = total_bytes - sharded_bytes
        assert device_bytes == sharded_bytes // model_devices + replicated
    else:
        assert device_bytes == total_bytes


def test_distribution_runs_on_8_devices(results):
    assert results["devices"] == NUM_DEVICES


def test_distribution_ring_loss_step_equals_plain_step(results):
    # 8 data-parallel devices with the ring loss; one device with the
    # plain loss of the global logits.
    result = results["stage_b"]
    assert "sigmoid_loss" in result["reference_logs"]
    # Each loss term, the total and every weight.
    _check_step(result, "data_parallel (8, 1) ring")


def test_distribution_ring_loss_runs_the_ring(results):
    run = results["stage_b"]["runs"]["data_parallel (8, 1) ring"]
    counts = run["collective_permutes"]
    # The same model's step without the ring has no permute at all.
    assert counts["plain"] == 0
    # Forward and backward ring loops, and the backward's last hop.
    assert counts["ring"] >= 3


@pytest.mark.parametrize("run, model_devices", STAGE_B_RUNS)
def test_distribution_stage_b_step_matches_single_device(
    results, run, model_devices
):
    result = results["stage_b"]
    _check_step(result, run)
    # The teacher moved in the step (copied from the student, then one
    # EMA update), and moved the same way.
    assert result["teacher_changed"] > 1e-3
    assert result["runs"][run]["teacher_error"] <= 1e-5


@pytest.mark.parametrize("run, model_devices", STAGE_B_RUNS)
def test_distribution_stage_b_weights_are_sharded(results, run, model_devices):
    _check_sharding(
        results["stage_b"]["runs"][run],
        model_devices,
        must_shard=[
            f"{prefix}{path}"
            for prefix in ("", "teacher_")
            for path in (
                "vision_encoder/encoderblock_0/attention/query/kernel",
                "global_head/dense_0/kernel",
                "global_head/bottleneck/kernel",
                "global_head/prototypes",
                "patch_head/prototypes",
            )
        ]
        + [
            "locca_decoder/decoderblock_0/cross_attn/query/kernel",
            "locca_decoder/image_projection/kernel",
            "locca_decoder/head/kernel",
        ],
    )


@pytest.mark.parametrize("run, model_devices", STAGE_D_RUNS)
def test_distribution_stage_d_step_matches_single_device(
    results, run, model_devices
):
    result = results["stage_d"]
    _check_step(result, run)
    # The frozen teacher does not move.
    assert result["teacher_changed"] == 0.0
    assert result["runs"][run]["teacher_error"] == 0.0


@pytest.mark.parametrize("run, model_devices", STAGE_D_RUNS)
def test_distribution_stage_d_weights_are_sharded(results, run, model_devices):
    _check_sharding(
        results["stage_d"]["runs"][run],
        model_devices,
        must_shard=[
            f"{role}_{path}"
            for role in ("student", "teacher")
            for path in (
                "vision_encoder/encoderblock_0/mlp/Dense_0/kernel",
                "text_encoder/Embed_0/embeddings",
                "text_encoder/head/kernel",
            )
        ],
    )


if __name__ == "__main__":
    print(json.dumps(worker()))
