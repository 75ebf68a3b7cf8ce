"""keras-hub presets: keras-hub's `SigLIPBackbone` is the oracle.

A random tiny keras-hub model is saved with its own `save_to_preset`,
loaded by `SigLIP2Backbone.from_preset`, and both run on the same inputs;
our weights then go back out as a keras-hub preset. Preset names are
routed to keras-hub's loader, which is replaced here so that nothing is
downloaded.
"""

import json
import os
import re
import subprocess
import sys

import h5py
import keras
import keras_hub
import numpy as np
import pytest

from keras_siglip2.convert.hf import save_hf_checkpoint
from keras_siglip2.convert.keras_hub import save_keras_hub_preset
from keras_siglip2.convert.keras_hub import to_keras_hub_backbone
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.presets import get_preset
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

TOLERANCE = 1e-6
IMAGE_SIZE = 14  # patch 4: a 3 x 3 grid and 2 leftover pixels
LENGTH = 5
VOCABULARY = 23


def _keras_hub_backbone(seed=0, **vision_kwargs):
    keras.utils.set_random_seed(seed)
    vision = keras_hub.models.SigLIPVisionEncoder(
        **{
            "patch_size": 4,
            "hidden_dim": 12,
            "num_layers": 2,
            "num_heads": 3,
            "intermediate_dim": 20,
            "image_shape": (IMAGE_SIZE, IMAGE_SIZE, 3),
            **vision_kwargs,
        }
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=VOCABULARY,
        embedding_dim=8,
        hidden_dim=8,
        num_layers=2,
        num_heads=2,
        intermediate_dim=12,
        max_sequence_length=LENGTH,
        projection_dim=12,
    )
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        if variable.path.endswith("position_ids"):
            continue
        scale = 1.0 if len(variable.shape) == 0 else 0.4
        variable.assign(rng.normal(0.0, scale, variable.shape))
    return backbone


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3))
    token_ids = rng.integers(0, VOCABULARY, (3, LENGTH))
    return {
        "images": images.astype("float32"),
        "token_ids": token_ids.astype("int32"),
    }


def _assert_same_outputs(keras_hub_backbone, backbone, inputs):
    theirs = keras_hub_backbone(inputs)
    images, token_ids = inputs["images"], inputs["token_ids"]
    pairs = [
        (
            keras_hub_backbone.get_vision_embeddings(images),
            backbone.get_vision_embeddings(images),
        ),
        (
            keras_hub_backbone.get_text_embeddings(token_ids),
            backbone.get_text_embeddings(token_ids),
        ),
        (theirs["vision_logits"], backbone(inputs)),
    ]
    assert np.std(np.asarray(theirs["vision_logits"])) > 1e-2
    for expected, actual in pairs:
        np.testing.assert_allclose(
            np.asarray(actual), np.asarray(expected), atol=TOLERANCE
        )


@pytest.fixture(scope="module")
def keras_hub_preset(tmp_path_factory):
    keras_hub_backbone = _keras_hub_backbone()
    path = tmp_path_factory.mktemp("keras_hub_preset")
    keras_hub_backbone.save_to_preset(str(path))
    return keras_hub_backbone, path


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- keras-hub -> ours -> keras-hub -------------------------------------------


def test_preset_from_keras_hub_directory(keras_hub_preset):
    keras_hub_backbone, path = keras_hub_preset
    backbone = SigLIP2Backbone.from_preset(path)
    assert isinstance(backbone, SigLIP2Backbone)
    assert backbone.vision_encoder.image_size == IMAGE_SIZE
    assert backbone.text_encoder.projection_dim == 12
    _assert_same_outputs(keras_hub_backbone, backbone, _inputs())


def test_preset_round_trip_through_keras_hub(keras_hub_preset, tmp_path):
    _, path = keras_hub_preset
    backbone = SigLIP2Backbone.from_preset(str(path))
    save_keras_hub_preset(backbone, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["registered_name"] == "keras_hub>SigLIPBackbone"
    theirs = keras_hub.models.SigLIPBackbone.from_preset(str(tmp_path / "out"))
    _assert_same_outputs(theirs, backbone, _inputs(1))
    _assert_same_weights(
        backbone, SigLIP2Backbone.from_preset(tmp_path / "out")
    )


def test_preset_our_save_to_preset_round_trips(keras_hub_preset, tmp_path):
    _, path = keras_hub_preset
    backbone = SigLIP2Backbone.from_preset(path)
    backbone.save_to_preset(str(tmp_path / "ours"))
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["registered_name"] == "keras_siglip2>SigLIP2Backbone"
    _assert_same_weights(
        backbone, SigLIP2Backbone.from_preset(tmp_path / "ours")
    )


def test_preset_our_naflex_save_to_preset_round_trips(tmp_path):
    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=8,
            patch_size=4,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=12,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=11,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=12,
            max_sequence_length=4,
        ),
        naflex=True,
    )
    backbone.save_to_preset(str(tmp_path))
    loaded = SigLIP2Backbone.from_preset(tmp_path)
    assert loaded.naflex
    _assert_same_weights(backbone, loaded)


def test_preset_our_dtype_reaches_both_towers(keras_hub_preset, monkeypatch):
    """Each encoder stores its own dtype; `dtype=` must override all."""
    _, path = keras_hub_preset
    seen = []

    def capture(config, **kwargs):
        seen.append(config)
        raise ValueError("captured")

    backbone = SigLIP2Backbone.from_preset(path, load_weights=False)
    preset = path.parent / "ours_for_dtype"
    backbone.save_to_preset(str(preset))
    monkeypatch.setattr(keras.saving, "deserialize_keras_object", capture)
    with pytest.raises(ValueError, match="captured"):
        SigLIP2Backbone.from_preset(preset, dtype="bfloat16")
    config = seen[0]["config"]
    dtypes = [config["dtype"]] + [
        config[key]["config"]["dtype"]
        for key in ("vision_encoder", "text_encoder")
    ]
    assert dtypes == ["bfloat16"] * 3


def test_preset_load_weights_false(keras_hub_preset):
    _, path = keras_hub_preset
    backbone = SigLIP2Backbone.from_preset(path, load_weights=False)
    assert backbone.vision_encoder.num_layers == 2
    assert backbone.text_encoder.vocabulary_size == VOCABULARY


def test_preset_from_hf_directory(keras_hub_preset, tmp_path):
    _, path = keras_hub_preset
    backbone = SigLIP2Backbone.from_preset(path)
    save_hf_checkpoint(backbone, tmp_path)
    _assert_same_weights(backbone, SigLIP2Backbone.from_preset(tmp_path))


# --- Preset names (keras-hub's download replaced) -----------------------------


def test_preset_name_routes_to_keras_hub(keras_hub_preset, monkeypatch):
    keras_hub_backbone, _ = keras_hub_preset
    calls = []

    def fake_from_preset(preset, load_weights=True, **kwargs):
        calls.append((preset, load_weights))
        return keras_hub_backbone

    monkeypatch.setattr(
        keras_hub.models.Backbone, "from_preset", fake_from_preset
    )
    backbone = SigLIP2Backbone.from_preset("siglip2_base_patch16_224")
    handle = get_preset("siglip2_base_patch16_224").kaggle_handle
    assert calls == [(handle, True)]
    _assert_same_outputs(keras_hub_backbone, backbone, _inputs(2))


def test_preset_handle_of_another_model_is_refused(monkeypatch):
    def fake_from_preset(preset, load_weights=True, **kwargs):
        return keras.Model()

    monkeypatch.setattr(
        keras_hub.models.Backbone, "from_preset", fake_from_preset
    )
    with pytest.raises(ValueError, match="not SigLIP"):
        SigLIP2Backbone.from_preset("kaggle://keras/bert/keras/bert_tiny")


def test_preset_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="Did you mean.*siglip2_base_patch16"):
        SigLIP2Backbone.from_preset("siglip2_base_patch16_225")


def test_preset_missing_directory_path(tmp_path):
    with pytest.raises(ValueError, match="no such preset directory"):
        SigLIP2Backbone.from_preset(str(tmp_path / "nowhere"))


# --- Bad preset directories ---------------------------------------------------


@pytest.fixture()
def preset_copy(keras_hub_preset, tmp_path):
    _, path = keras_hub_preset
    for name in ("config.json", "model.weights.h5", "metadata.json"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    return tmp_path


def test_preset_missing_config(preset_copy):
    (preset_copy / "config.json").unlink()
    with pytest.raises(ValueError, match="no `config.json`"):
        SigLIP2Backbone.from_preset(preset_copy)


def test_preset_missing_weights(preset_copy):
    (preset_copy / "model.weights.h5").unlink()
    with pytest.raises(ValueError, match="no `model.weights.h5`"):
        SigLIP2Backbone.from_preset(preset_copy)


def test_preset_truncated_weights(preset_copy):
    weights = preset_copy / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(ValueError, match="model.weights.h5: not a readable"):
        SigLIP2Backbone.from_preset(preset_copy)


def test_preset_wrong_dtype_is_named(preset_copy):
    with h5py.File(preset_copy / "model.weights.h5", "r+") as f:
        name = "layers/sig_lip_head/vars/1"
        del f[name]
        f[name] = np.int32(3)
    with pytest.raises(ValueError, match=r"sig_lip_head/vars/1 \(int32\)"):
        SigLIP2Backbone.from_preset(preset_copy)


def test_preset_mismatched_config_and_weights(preset_copy):
    config_path = preset_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["config"]["text_encoder"]["config"]["intermediate_dim"] = 13
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot load the preset"):
        SigLIP2Backbone.from_preset(preset_copy)


def test_preset_of_another_class_is_refused(preset_copy):
    config_path = preset_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["registered_name"] = "keras_hub>BertBackbone"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="BertBackbone"):
        SigLIP2Backbone.from_preset(preset_copy)


def test_preset_unsafe_config_is_refused(preset_copy):
    lambda_layer = keras.saving.serialize_keras_object(
        keras.layers.Lambda(lambda x: x)
    )
    config_path = preset_copy / "config.json"
    config = json.loads(config_path.read_text())
    config["config"]["text_encoder"] = lambda_layer
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="safe_mode"):
        SigLIP2Backbone.from_preset(preset_copy, load_weights=False)


def test_preset_keras_hub_epsilon_is_checked(tmp_path):
    keras_hub_backbone = _keras_hub_backbone(layer_norm_epsilon=1e-5)
    keras_hub_backbone.save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match="final LayerNorm"):
        SigLIP2Backbone.from_preset(tmp_path)


def test_preset_keras_hub_activation_is_checked(tmp_path):
    keras_hub_backbone = _keras_hub_backbone(intermediate_activation="relu")
    keras_hub_backbone.save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match="intermediate_activation"):
        SigLIP2Backbone.from_preset(tmp_path)


def test_preset_naflex_export_is_refused():
    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=8,
            patch_size=4,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=12,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=11,
            hidden_dim=8,
            num_layers=1,
            num_heads=2,
            intermediate_dim=12,
            max_sequence_length=4,
        ),
        naflex=True,
    )
    with pytest.raises(ValueError, match="no NaFlex mode"):
        to_keras_hub_backbone(backbone)


# --- Command line -------------------------------------------------------------


def _cli(args, cwd):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "keras_siglip2", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize(
    "target_format, name",
    [
        ("keras", "model.keras"),
        ("keras", "preset"),
        ("hf", "hf"),
        ("keras_hub", "keras_hub"),
        ("big_vision", "model.npz"),
    ],
)
def test_convert_checkpoint_round_trips(
    keras_hub_preset, target_format, name, tmp_path
):
    from keras_siglip2.__main__ import convert_checkpoint
    from keras_siglip2.__main__ import load_checkpoint

    _, path = keras_hub_preset
    target = str(tmp_path / name)
    backbone = convert_checkpoint(
        "keras_hub", target_format, str(path), target, verbose=False
    )
    _assert_same_weights(backbone, load_checkpoint(target_format, target))


def test_convert_summary_of_preset_name_downloads_nothing(monkeypatch):
    from keras_siglip2.__main__ import summarize

    def no_download(*args, **kwargs):
        raise AssertionError("summary must not download")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", no_download)
    text = summarize("siglip2_base_patch16_224")
    assert "not downloaded" in text
    total = get_preset("siglip2_base_patch16_224").params
    assert re.search(rf"total\s+{total:,}$", text, re.M)


def test_convert_cli_big_vision_to_hf(keras_hub_preset, tmp_path):
    from keras_siglip2.convert.big_vision import big_vision_weight_entries
    from keras_siglip2.convert.big_vision import save_big_vision_npz
    from keras_siglip2.convert.hf import load_hf_checkpoint

    _, path = keras_hub_preset
    backbone = SigLIP2Backbone.from_preset(path)
    save_big_vision_npz(backbone, tmp_path / "tiny.npz")
    completed = _cli(
        ["convert", "--from", "big_vision", "--to", "hf", "tiny.npz", "hf"],
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    total = len(big_vision_weight_entries(backbone))
    assert f"{total}/{total}" in completed.stdout  # the progress bar
    _assert_same_weights(backbone, load_hf_checkpoint(tmp_path / "hf"))


def test_convert_summary_of_checkpoint(keras_hub_preset):
    from keras_siglip2.__main__ import summarize

    _, path = keras_hub_preset
    text = summarize(str(path))
    backbone = SigLIP2Backbone.from_preset(path)
    image = backbone.vision_encoder.count_params()
    assert re.search(rf"image tower\s+{image:,}$", text, re.M)
    assert re.search(rf"total\s+{backbone.count_params():,}$", text, re.M)
    assert "patch 4, width 12, 2 layers, 3 heads, MLP 20" in text
    assert "vocabulary 23, 5 tokens, width 8" in text


def test_convert_cli_reports_bad_input(tmp_path):
    completed = _cli(["summary", "siglip2_base_patch16_22"], tmp_path)
    assert completed.returncode == 1
    assert "Did you mean: siglip2_base_patch16_224" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_convert_corrupt_keras_file_is_named(tmp_path):
    from keras_siglip2.__main__ import load_checkpoint

    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="broken.keras"):
        load_checkpoint("keras", str(path))
