"""Tests of `keras_siglip2.distribution`.

Multi-device checks need 8 virtual CPU devices, which XLA only creates if
`XLA_FLAGS` is set before JAX starts: the `worker` fixture runs this file
as a script in a subprocess (the `worker_*` functions) and the tests assert
on the JSON it prints.
"""

import json
import math
import re

import keras
import numpy as np
import pytest
from distribution_subprocess import run_script

from keras_siglip2 import SigLIP2Backbone
from keras_siglip2 import SigLIP2TextEncoder
from keras_siglip2 import SigLIP2VisionEncoder
from keras_siglip2 import distribution as dist_lib
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.training.stage_a import StageAModel

NUM_DEVICES = 8
BATCH = 16
MESHES = [("data_parallel", (8, 1)), ("fsdp", (2, 4)), ("fsdp", (1, 8))]
FAKE_DEVICES = [f"device:{i}" for i in range(NUM_DEVICES)]

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution shards JAX arrays",
)


def tiny_backbone(dtype=None):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        dtype=dtype,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=32,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
        dtype=dtype,
    )
    return SigLIP2Backbone(vision, text, dtype=dtype)


def tiny_batch():
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(-1, 1, (BATCH, 16, 16, 3)).astype("float32"),
        "token_ids": rng.integers(0, 32, (BATCH, 8)).astype("int32"),
    }


DECODER_VOCAB, DECODER_LENGTH = 40, 6


def tiny_stage_a(naflex=False):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=32,
        hidden_dim=8,
        num_layers=2,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=8,
        projection_dim=16,
    )
    backbone = SigLIP2Backbone(vision, text, naflex=naflex)
    decoder = locca_decoder_for(backbone, DECODER_VOCAB, DECODER_LENGTH)
    return StageAModel(backbone, decoder)


def tiny_stage_a_batch():
    rng = np.random.default_rng(1)
    targets = rng.integers(1, DECODER_VOCAB, (BATCH, DECODER_LENGTH))
    return dict(
        tiny_batch(),
        decoder_inputs=np.pad(targets[:, :-1], ((0, 0), (1, 0))).astype(
            "int32"
        ),
        decoder_targets=targets.astype("int32"),
        decoder_loss_weights=np.ones((BATCH, DECODER_LENGTH), "float32"),
        parallel=np.arange(BATCH) % 2 == 0,
    )


def traced_dtype(model, x) -> str:
    """Dtype of `model(x)`, from a JAX trace (no compilation)."""
    import jax

    return str(jax.eval_shape(lambda: model(x)).dtype)


def fake_mesh(shape):
    devices = np.arange(math.prod(shape)).astype(str).tolist()
    return dist_lib.get_device_mesh(shape, devices=devices)


# === Worker sections (run in the subprocess) ===


def _fit_one_step(model, x):
    # SGD: the weight change is the gradient times 0.5. Adam's first step
    # is about +-lr for any gradient, so it would amplify float noise in
    # near-zero gradients past the tolerance.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    history = model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"][0]


def _sharding_report(model):
    """Per weight: spec, total bytes, bytes of one device's shard."""
    report = {}
    for weight in model.weights:
        value = weight.value
        shard = value.addressable_shards[0].data
        report[weight.path] = {
            "spec": [
                None if axis is None else str(axis)
                for axis in value.sharding.spec
            ],
            "total_bytes": int(value.nbytes),
            "shard_bytes": int(shard.nbytes),
            "num_devices": len(value.sharding.device_set),
        }
    return report


def worker_train():
    """One `fit` step on one device, then under each mesh of `MESHES`."""
    import jax

    x = tiny_batch()
    keras.utils.set_random_seed(0)
    reference = tiny_backbone()
    initial = reference.get_weights()
    reference_loss = _fit_one_step(reference, x)
    reference_weights = reference.get_weights()
    out = {"devices": len(jax.devices()), "meshes": {}}
    for strategy, shape in MESHES:
        distribution = dist_lib.configure_distribution(
            strategy, mesh_shape=shape, global_batch_size=BATCH
        )
        try:
            model = tiny_backbone()
            if strategy == "fsdp":
                dist_lib.validate_layout_map(
                    model, dist_lib.get_layout_map(distribution.device_mesh)
                )
            model.set_weights(initial)
            loss = _fit_one_step(model, x)
            weight_error = max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(model.get_weights(), reference_weights)
            )
            out["meshes"][f"{strategy} {shape}"] = {
                "loss": loss,
                "reference_loss": reference_loss,
                "weight_error": weight_error,
                "weights_changed": max(
                    float(np.max(np.abs(a - b)))
                    for a, b in zip(initial, reference_weights)
                ),
                "sharding": _sharding_report(model),
            }
        finally:
            keras.distribution.set_distribution(None)

    dist_lib.configure_distribution("fsdp", mesh_shape=(2, 4))
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_backbone()
        model.set_weights(initial)
        loss = _fit_one_step(model, x)
        bf16_logits = keras.ops.zeros((4, 4), "bfloat16")
        out["mixed_bfloat16"] = {
            "loss": loss,
            "reference_loss": reference_loss,
            "logits_dtype": traced_dtype(model, x),
            "loss_dtype": str(model.compute_loss(y_pred=bf16_logits).dtype),
            "variable_dtypes": sorted({w.dtype for w in model.weights}),
            "sharding": _sharding_report(model),
        }
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
        keras.distribution.set_distribution(None)
    return out


def _abstract_weights(size, vocabulary_size):
    """Weights of a full-size model, created without allocating values."""
    from keras_siglip2.layers.contrastive_logits import ContrastiveLogits
    from keras_siglip2.models.configs import get_config
    from keras_siglip2.models.locca_decoder import LocCaDecoder
    from keras_siglip2.training.stage_b import ProjectionHead

    config = get_config(
        f"{size}_patch14_384" if size != "base" else "base_patch16_224",
        vocabulary_size=vocabulary_size,
    )
    size_px = config.vision["image_size"]
    with keras.StatelessScope(initialize_variables=False):
        vision = SigLIP2VisionEncoder(**config.vision)
        vision.build((None, size_px, size_px, 3))
        text = SigLIP2TextEncoder(**config.text)
        text.build((None, config.text["max_sequence_length"]))
        logits = ContrastiveLogits(name="contrastive_logits")
        logits.build((None, 1), (None, 1))
        # LocCa: half the text depth; text vocabulary + 1000 location bins
        # + 4 task/mask tokens.
        decoder = LocCaDecoder(
            vocabulary_size=vocabulary_size + 1004,
            hidden_dim=config.text["hidden_dim"],
            num_layers=config.text["num_layers"] // 2,
            num_heads=config.text["num_heads"],
            intermediate_dim=config.text["intermediate_dim"],
            max_sequence_length=64,
            image_dim=config.vision["hidden_dim"],
        )
        decoder.build((None, 64))
        # Stage B's projection heads at DINO / iBOT sizes.
        global_head = ProjectionHead(num_prototypes=65536, name="global_head")
        patch_head = ProjectionHead(num_prototypes=8192, name="patch_head")
        for head in (global_head, patch_head):
            head.build((None, config.vision["hidden_dim"]))
    return (
        vision.weights
        + text.weights
        + logits.weights
        + decoder.weights
        + global_head.weights
        + patch_head.weights
    )


def worker_all_sizes():
    """Validates the layout map for every size and model-axis size."""
    from keras_siglip2.models.configs import SIZES

    out = {}
    for size in SIZES:
        for vocabulary_size in (256_000, 32_000):
            weights = _abstract_weights(size, vocabulary_size)
            key = f"{size} vocab {vocabulary_size}"
            out[key] = {"num_weights": len(weights), "errors": {}}
            for model_devices in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                mesh = fake_mesh((1, model_devices))
                try:
                    dist_lib.validate_layout_map(
                        weights, dist_lib.get_layout_map(mesh)
                    )
                except ValueError as error:
                    out[key]["errors"][model_devices] = str(error)
    return out


# === Multi-device tests ===


@pytest.fixture(scope="module")
def worker():
    return run_script(__file__, num_devices=NUM_DEVICES)


@pytest.fixture(scope="module")
def trained(worker):
    return worker["train"]


@pytest.mark.parametrize("strategy, shape", MESHES)
def test_distribution_step_matches_single_device(trained, strategy, shape):
    assert trained["devices"] == NUM_DEVICES
    result = trained["meshes"][f"{strategy} {tuple(shape)}"]
    assert abs(result["loss"] - result["reference_loss"]) <= 1e-5
    assert result["weight_error"] <= 1e-5
    # The step moved the weights, so the comparison means something.
    assert result["weights_changed"] > 1e-3


@pytest.mark.parametrize("strategy, shape", MESHES)
def test_distribution_weights_are_sharded(trained, strategy, shape):
    sharding = trained["meshes"][f"{strategy} {tuple(shape)}"]["sharding"]
    model_devices = shape[1]
    rules = dict(dist_lib.LAYOUT_RULES)
    sharded_bytes = total_bytes = device_bytes = 0
    for path, info in sharding.items():
        assert info["num_devices"] == NUM_DEVICES, path
        total_bytes += info["total_bytes"]
        device_bytes += info["shard_bytes"]
        is_sharded = "model" in info["spec"] and model_devices > 1
        if is_sharded:
            sharded_bytes += info["total_bytes"]
            assert info["shard_bytes"] * model_devices == info["total_bytes"], (
                path
            )
        else:
            assert info["shard_bytes"] == info["total_bytes"], path
        if strategy == "fsdp":
            (key,) = [k for k in rules if re.fullmatch(k, path)]
            assert info["spec"] == list(rules[key]), path
    if strategy == "data_parallel":
        assert device_bytes == total_bytes
    else:
        # All but biases, LayerNorms, the probe and the two scalars split.
        assert sharded_bytes > 0.85 * total_bytes
        replicated = total_bytes - sharded_bytes
        assert device_bytes == sharded_bytes // model_devices + replicated


def test_distribution_mixed_bfloat16_fsdp_step(trained):
    result = trained["mixed_bfloat16"]
    assert np.isfinite(result["loss"])
    # bf16 compute: close to the float32 loss, not equal.
    assert abs(result["loss"] - result["reference_loss"]) < 0.1
    assert result["loss_dtype"] == "float32"
    assert result["logits_dtype"] == "float32"
    assert result["variable_dtypes"] == ["float32"]
    sharded = [
        path
        for path, info in result["sharding"].items()
        if "model" in info["spec"]
    ]
    assert any(path.endswith("query/kernel") for path in sharded)


@pytest.fixture(scope="module")
def all_sizes(worker):
    return worker["all_sizes"]


def test_distribution_layout_map_covers_every_size(all_sizes):
    for key, result in all_sizes.items():
        assert result["num_weights"] > 100, key
        # Every width is a multiple of 128 and both vocabularies (32k,
        # 256k) of 256: all sizes split up to 128 ways.
        failing = sorted(int(n) for n in result["errors"])
        if key.startswith(("base", "large")):
            assert failing == [], (key, result["errors"])
        else:
            # The So400m width (also g's text tower) 1152 = 128 x 9.
            assert failing == [256], (key, result["errors"])
            assert "1152 of shape" in result["errors"]["256"]
            assert "256-way 'model' axis" in result["errors"]["256"]


# === Single-process tests ===


def test_distribution_mesh_shape_must_use_every_device():
    with pytest.raises(ValueError, match=r"3 x 2 = 6 devices.*8 devices"):
        dist_lib.get_device_mesh((3, 2), devices=FAKE_DEVICES)
    with pytest.raises(ValueError, match="two positive ints"):
        dist_lib.get_device_mesh((8,), devices=FAKE_DEVICES)
    mesh = dist_lib.get_device_mesh((2, 4), devices=FAKE_DEVICES)
    assert mesh.axis_names == ("batch", "model")
    assert tuple(mesh.shape) == (2, 4)


def test_distribution_batch_must_split_over_batch_axis():
    with pytest.raises(ValueError, match=r"batch size 12 .* 8-way 'batch'"):
        dist_lib.configure_distribution(
            "data_parallel",
            mesh_shape=(8, 1),
            global_batch_size=12,
            devices=FAKE_DEVICES,
            set_global=False,
        )
    with pytest.raises(ValueError, match=r"batch size 3 .* 2-way"):
        dist_lib.configure_distribution(
            "fsdp",
            mesh_shape=(2, 4),
            global_batch_size=3,
            devices=FAKE_DEVICES,
            set_global=False,
        )


def test_distribution_bad_strategy_and_data_parallel_model_axis():
    with pytest.raises(ValueError, match="'zero3'"):
        dist_lib.configure_distribution("zero3", devices=FAKE_DEVICES)
    with pytest.raises(ValueError, match=r"model axis must be 1.*\(2, 4\)"):
        dist_lib.configure_distribution(
            "data_parallel",
            mesh_shape=(2, 4),
            devices=FAKE_DEVICES,
            set_global=False,
        )


def test_distribution_configure_returns_keras_distributions():
    data_parallel = dist_lib.configure_distribution(
        "data_parallel", devices=FAKE_DEVICES, set_global=False
    )
    assert isinstance(data_parallel, keras.distribution.DataParallel)
    assert data_parallel.device_mesh.shape == (8,)
    fsdp = dist_lib.configure_distribution(
        "fsdp", devices=FAKE_DEVICES, set_global=False
    )
    assert isinstance(fsdp, keras.distribution.ModelParallel)
    assert tuple(fsdp.device_mesh.shape) == (1, 8)
    assert fsdp.batch_dim_name == "batch"
    assert keras.distribution.distribution() is None


@pytest.fixture(scope="module")
def backbone():
    # Stage A holds a backbone and a LocCa decoder: one build covers both.
    return tiny_stage_a()


def test_distribution_layout_map_places_every_weight(backbone):
    layout_map = dist_lib.get_layout_map(fake_mesh((2, 4)))
    dist_lib.validate_layout_map(backbone, layout_map)
    for path in (
        "vision_encoder/encoderblock_0/attention/query/kernel",
        "text_encoder/Embed_0/embeddings",
        "vision_encoder/MAPHead_0/mlp/Dense_0/kernel",
        "locca_decoder/decoderblock_0/cross_attn/query/kernel",
        "locca_decoder/image_projection/kernel",
        "locca_decoder/head/kernel",
    ):
        assert "model" in layout_map[path].axes, path
    for path in ("contrastive_logits/t", "text_encoder/encoder_norm/gamma"):
        assert layout_map[path].axes == (), path


def test_distribution_layout_map_missing_weights_is_an_error(backbone):
    rules = [
        rule
        for rule in dist_lib.LAYOUT_RULES
        if "gamma" not in rule[0] and "Embed" not in rule[0]
    ]
    layout_map = dist_lib.get_layout_map(fake_mesh((2, 4)), rules=rules)
    with pytest.raises(ValueError, match="match no layout key") as error:
        dist_lib.validate_layout_map(backbone, layout_map)
    message = str(error.value)
    for path in (
        "text_encoder/Embed_0/embeddings",
        "vision_encoder/embedding/bias",
        "vision_encoder/encoder_norm/gamma",
    ):
        assert path in message


def test_distribution_layout_map_bad_fit_is_an_error(backbone):
    with pytest.raises(ValueError, match=r"dimension 16 .* 32-way 'model'"):
        dist_lib.validate_layout_map(
            backbone, dist_lib.get_layout_map(fake_mesh((1, 32)))
        )
    rules = [(r".*/kernel", ("model",)), (r".*", ())]
    with pytest.raises(ValueError, match="several layout keys"):
        dist_lib.validate_layout_map(
            backbone, dist_lib.get_layout_map(fake_mesh((2, 4)), rules=rules)
        )
    rules = [(r".*/kernel", ("model", None)), (r".*[^l]", ())]
    with pytest.raises(ValueError, match=r"query/kernel: layout"):
        dist_lib.validate_layout_map(
            backbone, dist_lib.get_layout_map(fake_mesh((2, 4)), rules=rules)
        )


def test_distribution_mixed_bfloat16_logits_are_float32():
    model = tiny_backbone(dtype="mixed_bfloat16")
    assert model.compute_dtype == "bfloat16"
    assert traced_dtype(model, tiny_batch()) == "float32"


def test_distribution_mixed_bfloat16_symbolic_logits_are_float32():
    model = tiny_backbone(dtype="mixed_bfloat16")
    assert model.outputs[0].dtype == "float32"


def test_distribution_layout_map_places_naflex_weights():
    model = tiny_stage_a(naflex=True)
    layout_map = dist_lib.get_layout_map(fake_mesh((2, 4)))
    dist_lib.validate_layout_map(model, layout_map)


if __name__ == "__main__":
    print(
        json.dumps({"train": worker_train(), "all_sizes": worker_all_sizes()})
    )
