"""HF transformers `SiglipModel` checkpoints: parity and bad input.

transformers (torch) is the independent oracle: a random-init model is
saved with `save_pretrained`, loaded by ours, and both run on the same
inputs.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from hf_models import random_hf_model

from keras_siglip2.convert.hf import load_hf_checkpoint
from keras_siglip2.convert.safetensors_io import read_safetensors
from keras_siglip2.convert.safetensors_io import write_safetensors

TOLERANCE = 1e-5

# Width, heads, depth, patch/image size (incl. sizes that leave leftover
# pixels: 30 // 7 and 37 // 6), vocab, text length and projection vary.
CONFIGS = {
    "odd_sizes": dict(
        vision=dict(
            hidden_size=24,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=3,
            image_size=30,
            patch_size=7,
        ),
        text=dict(
            vocab_size=53,
            hidden_size=32,
            intermediate_size=45,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=9,
            projection_size=24,
        ),
    ),
    "deeper": dict(
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=37,
            patch_size=6,
        ),
        text=dict(
            vocab_size=101,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=8,
            max_position_embeddings=16,
        ),
    ),
    "wide_heads": dict(
        vision=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=6,
            image_size=32,
            patch_size=16,
        ),
        text=dict(
            vocab_size=300,
            hidden_size=40,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=5,
            max_position_embeddings=64,
            projection_size=48,
        ),
    ),
}


def _make_hf_model(config, seed=0):
    return random_hf_model(False, config["vision"], config["text"], seed)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    config = CONFIGS[request.param]
    model = _make_hf_model(config)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return config, model, path


def _inputs(config, batch_images=3, batch_texts=4, seed=0):
    rng = np.random.default_rng(seed)
    size = config["vision"]["image_size"]
    images = rng.uniform(-1, 1, (batch_images, size, size, 3))
    text = config["text"]
    token_ids = rng.integers(
        0,
        text["vocab_size"],
        (batch_texts, text["max_position_embeddings"]),
    )
    return images.astype("float32"), token_ids.astype("int32")


def test_parity_siglip_model(checkpoint):
    config, model, path = checkpoint
    backbone = load_hf_checkpoint(path)
    images, token_ids = _inputs(config)
    with torch.no_grad():
        pixel_values = torch.tensor(images).permute(0, 3, 1, 2)
        input_ids = torch.tensor(token_ids, dtype=torch.long)
        hf_image = model.vision_model(pixel_values=pixel_values).pooler_output
        hf_text = model.text_model(input_ids=input_ids).pooler_output
        hf_logits = model(
            pixel_values=pixel_values, input_ids=input_ids
        ).logits_per_image
    ours_image = np.asarray(backbone.get_vision_embeddings(images))
    ours_text = np.asarray(backbone.get_text_embeddings(token_ids))
    ours_logits = np.asarray(
        backbone({"images": images, "token_ids": token_ids})
    )
    assert ours_logits.shape == (3, 4)
    # Non-trivial outputs, so agreement means something.
    assert np.std(hf_logits.numpy()) > 1e-2
    np.testing.assert_allclose(ours_image, hf_image.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(ours_text, hf_text.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(ours_logits, hf_logits.numpy(), atol=TOLERANCE)


def test_parity_loaded_config(checkpoint):
    config, _, path = checkpoint
    backbone = load_hf_checkpoint(path)
    vision, text = backbone.vision_encoder, backbone.text_encoder
    assert vision.hidden_dim == config["vision"]["hidden_size"]
    assert vision.num_layers == config["vision"]["num_hidden_layers"]
    assert vision.patch_size == config["vision"]["patch_size"]
    assert text.vocabulary_size == config["text"]["vocab_size"]
    assert (
        text.max_sequence_length == (config["text"]["max_position_embeddings"])
    )


def test_parity_bfloat16_checkpoint(tmp_path):
    config = CONFIGS["odd_sizes"]
    model = _make_hf_model(config)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    backbone = load_hf_checkpoint(tmp_path)
    images, token_ids = _inputs(config)
    with torch.no_grad():
        hf_logits = model.float()(
            pixel_values=torch.tensor(images).permute(0, 3, 1, 2),
            input_ids=torch.tensor(token_ids, dtype=torch.long),
        ).logits_per_image.numpy()
    ours = np.asarray(backbone({"images": images, "token_ids": token_ids}))
    np.testing.assert_allclose(ours, hf_logits, atol=TOLERANCE)


# --- Bad input -------------------------------------------------------------


@pytest.fixture()
def small_checkpoint(tmp_path):
    config = CONFIGS["odd_sizes"]
    _make_hf_model(config).save_pretrained(tmp_path)
    return tmp_path


def _rewrite(path, edit):
    tensors = {k: np.array(v) for k, v in read_safetensors(path).items()}
    edit(tensors)
    write_safetensors(path, tensors)


def test_missing_tensor_is_named(small_checkpoint):
    key = "vision_model.encoder.layers.1.mlp.fc2.bias"
    _rewrite(small_checkpoint / "model.safetensors", lambda t: t.pop(key))
    with pytest.raises(ValueError, match="missing tensors.*mlp.fc2.bias"):
        load_hf_checkpoint(small_checkpoint)


def test_unexpected_tensor_is_named(small_checkpoint):
    def edit(tensors):
        tensors["text_model.extra.weight"] = np.zeros((2,), "float32")

    _rewrite(small_checkpoint / "model.safetensors", edit)
    with pytest.raises(ValueError, match="unexpected.*text_model.extra"):
        load_hf_checkpoint(small_checkpoint)


def test_misshaped_tensor_is_named(small_checkpoint):
    key = "text_model.head.weight"

    def edit(tensors):
        tensors[key] = np.zeros((5, 7), "float32")

    _rewrite(small_checkpoint / "model.safetensors", edit)
    with pytest.raises(ValueError, match=r"text_model.head.weight: shape"):
        load_hf_checkpoint(small_checkpoint)


def test_unknown_model_type(small_checkpoint):
    config_path = small_checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "clip"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Unknown `model_type` 'clip'"):
        load_hf_checkpoint(small_checkpoint)


def test_corrupt_safetensors(small_checkpoint):
    weights = small_checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt safetensors"):
        load_hf_checkpoint(small_checkpoint)


def test_pickle_checkpoint_is_refused(small_checkpoint):
    (small_checkpoint / "model.safetensors").unlink()
    (small_checkpoint / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        load_hf_checkpoint(small_checkpoint)


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        load_hf_checkpoint(tmp_path / "nowhere")


def test_failed_load_assigns_nothing(small_checkpoint, tmp_path):
    """A bad tensor late in the list must not leave earlier ones loaded."""
    from keras_siglip2.convert.hf import assign_hf_weights
    from keras_siglip2.convert.hf import backbone_from_hf_config

    config = json.loads((small_checkpoint / "config.json").read_text())
    backbone = backbone_from_hf_config(config)
    before = [np.array(w) for w in backbone.get_weights()]
    tensors = dict(read_safetensors(small_checkpoint / "model.safetensors"))
    tensors["logit_bias"] = np.zeros((3,), "float32")
    with pytest.raises(ValueError, match="logit_bias"):
        assign_hf_weights(backbone, tensors)
    after = backbone.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_sharded_checkpoint(tmp_path):
    config = CONFIGS["odd_sizes"]
    model = _make_hf_model(config)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    one = load_hf_checkpoint(tmp_path / "one")
    sharded = load_hf_checkpoint(tmp_path / "sharded")
    for a, b in zip(one.get_weights(), sharded.get_weights()):
        np.testing.assert_array_equal(a, b)
    shutil.rmtree(tmp_path / "one")
