"""`save_hf_checkpoint`: transformers loads what we write, and back.

transformers (torch) is the oracle: a random-init backbone of ours is
written with `save_hf_checkpoint`, loaded with `AutoModel.from_pretrained`
and both run on the same inputs; `load_hf_checkpoint` then reads the same
directory back bit for bit.
"""

import json

import keras
import numpy as np
import pytest
import torch
import transformers

from keras_siglip2.convert.hf import hf_weight_entries
from keras_siglip2.convert.hf import load_hf_checkpoint
from keras_siglip2.convert.hf import save_hf_checkpoint
from keras_siglip2.convert.safetensors_io import read_safetensors
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

TOLERANCE = 1e-5

VISION = dict(
    image_size=20,
    patch_size=6,
    hidden_dim=24,
    num_layers=2,
    num_heads=3,
    intermediate_dim=40,
)
TEXT = dict(
    vocabulary_size=41,
    hidden_dim=16,
    num_layers=1,
    num_heads=2,
    intermediate_dim=28,
    max_sequence_length=7,
    projection_dim=24,
)


def _spread_weights(backbone, seed=0):
    """Random-init weights are near zero; spread them so all matter."""
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        scale = 1.0 if len(variable.shape) == 0 else 0.3
        variable.assign(
            rng.normal(0.0, scale, variable.shape).astype(variable.dtype)
        )


def _backbone(naflex, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(**VISION),
        SigLIP2TextEncoder(**TEXT),
        naflex=naflex,
    )
    _spread_weights(backbone, seed)
    return backbone


@pytest.fixture(scope="module", params=[False, True], ids=["siglip", "naflex"])
def exported(request, tmp_path_factory):
    backbone = _backbone(naflex=request.param)
    path = tmp_path_factory.mktemp("hf_export")
    save_hf_checkpoint(backbone, path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return backbone, model, path


def _token_ids(seed=0):
    rng = np.random.default_rng(seed)
    shape = (3, TEXT["max_sequence_length"])
    return rng.integers(0, TEXT["vocabulary_size"], shape).astype("int32")


def _fixed_inputs(seed=0):
    rng = np.random.default_rng(seed)
    size = VISION["image_size"]
    images = rng.uniform(-1, 1, (2, size, size, 3)).astype("float32")
    return {"images": images, "token_ids": _token_ids(seed)}


def _naflex_inputs(seed=0):
    rng = np.random.default_rng(seed)
    grids = np.array([[2, 5], [3, 3], [1, 4]], "int32")
    length = 10
    patch_dim = VISION["patch_size"] ** 2 * 3
    patches = rng.uniform(-1, 1, (3, length, patch_dim)).astype("float32")
    mask = (np.arange(length)[None] < grids.prod(-1)[:, None]).astype("int32")
    return {
        "patches": patches,
        "patch_mask": mask,
        "spatial_shapes": grids,
        "token_ids": _token_ids(seed),
    }


def test_convert_hf_export_config(exported):
    backbone, model, path = exported
    config = json.loads((path / "config.json").read_text())
    expected = "siglip2" if backbone.naflex else "siglip"
    assert config["model_type"] == expected
    assert model.config.model_type == expected
    vision_config = model.config.vision_config
    assert vision_config.hidden_size == VISION["hidden_dim"]
    assert vision_config.num_attention_heads == VISION["num_heads"]
    assert model.config.text_config.projection_size == TEXT["projection_dim"]
    if backbone.naflex:
        assert vision_config.num_patches == 9
        assert isinstance(model, transformers.Siglip2Model)
    else:
        assert vision_config.image_size == VISION["image_size"]
        assert isinstance(model, transformers.SiglipModel)


def test_convert_hf_export_matches_transformers(exported):
    backbone, model, _ = exported
    if backbone.naflex:
        inputs = _naflex_inputs()
        torch_inputs = dict(
            pixel_values=torch.tensor(inputs["patches"]),
            pixel_attention_mask=torch.tensor(inputs["patch_mask"]),
            spatial_shapes=torch.tensor(inputs["spatial_shapes"]).long(),
        )
        images = {k: v for k, v in inputs.items() if k != "token_ids"}
    else:
        inputs = _fixed_inputs()
        pixel_values = torch.tensor(inputs["images"]).permute(0, 3, 1, 2)
        torch_inputs = dict(pixel_values=pixel_values)
        images = inputs["images"]
    input_ids = torch.tensor(inputs["token_ids"]).long()
    with torch.no_grad():
        hf_image = model.vision_model(**torch_inputs).pooler_output.numpy()
        hf_text = model.text_model(input_ids=input_ids).pooler_output.numpy()
        hf_logits = model(
            input_ids=input_ids, **torch_inputs
        ).logits_per_image.numpy()
    ours_image = np.asarray(backbone.get_vision_embeddings(images))
    ours_text = np.asarray(backbone.get_text_embeddings(inputs["token_ids"]))
    ours_logits = np.asarray(backbone(inputs))
    assert np.std(hf_logits) > 1e-2
    np.testing.assert_allclose(ours_image, hf_image, atol=TOLERANCE)
    np.testing.assert_allclose(ours_text, hf_text, atol=TOLERANCE)
    np.testing.assert_allclose(ours_logits, hf_logits, atol=TOLERANCE)


def test_convert_hf_round_trip_is_exact(exported):
    backbone, _, path = exported
    reloaded = load_hf_checkpoint(path)
    assert reloaded.naflex == backbone.naflex
    for ours, back in zip(backbone.weights, reloaded.weights):
        assert ours.path == back.path
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(back))


def test_convert_hf_export_writes_every_entry_once(exported):
    backbone, _, path = exported
    tensors = read_safetensors(path / "model.safetensors")
    keys = [entry.key for entry in hf_weight_entries(backbone)]
    assert sorted(tensors) == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_convert_hf_export_progress(tmp_path):
    backbone = _backbone(naflex=False)
    calls = []
    save_hf_checkpoint(backbone, tmp_path, progress=lambda *a: calls.append(a))
    total = len(hf_weight_entries(backbone))
    assert calls[-1] == (total, total) and len(calls) == total
    calls.clear()
    load_hf_checkpoint(tmp_path, progress=lambda *a: calls.append(a))
    assert calls[-1] == (total, total)


def test_convert_hf_wrong_dtype_is_named(tmp_path):
    from keras_siglip2.convert.safetensors_io import write_safetensors

    save_hf_checkpoint(_backbone(naflex=False), tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = {k: np.array(v) for k, v in read_safetensors(weights).items()}
    key = "text_model.head.bias"
    tensors[key] = tensors[key].astype("int32")
    write_safetensors(weights, tensors)
    with pytest.raises(ValueError, match=f"{key}: dtype int32"):
        load_hf_checkpoint(tmp_path)
