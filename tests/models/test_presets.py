"""The preset table: names, architectures and parameter counts.

Counts are checked against a closed-form count of the architecture and
against the metadata of the installed keras-hub, whose presets they are.
"""

import pytest
from keras_hub.src.models.siglip.siglip_presets import backbone_presets

from keras_siglip2.models.presets import PRESETS
from keras_siglip2.models.presets import get_preset
from keras_siglip2.models.presets import preset_names

SIGLIP2 = [
    "siglip2_base_patch16_224",
    "siglip2_base_patch16_256",
    "siglip2_base_patch32_256",
    "siglip2_base_patch16_384",
    "siglip2_large_patch16_256",
    "siglip2_large_patch16_384",
    "siglip2_large_patch16_512",
    "siglip2_giant_opt_patch16_256",
    "siglip2_giant_opt_patch16_384",
    "siglip2_so400m_patch14_224",
    "siglip2_so400m_patch14_384",
    "siglip2_so400m_patch16_256",
    "siglip2_so400m_patch16_384",
    "siglip2_so400m_patch16_512",
]
SIGLIP = [
    "siglip_base_patch16_224",
    "siglip_base_patch16_256",
    "siglip_base_patch16_384",
    "siglip_base_patch16_512",
    "siglip_large_patch16_256",
    "siglip_large_patch16_384",
    "siglip_so400m_patch14_224",
    "siglip_so400m_patch14_384",
    "siglip_so400m_patch16_256_i18n",
    "siglip_base_patch16_256_multilingual",
]


def _block(width, mlp):
    attention = 4 * (width * width + width)
    return 4 * width + attention + 2 * width * mlp + mlp + width


def _count(config):
    """Learned weights of a `SigLIP2Backbone`, in closed form."""
    v, t = config.vision, config.text
    width, mlp = v["hidden_dim"], v["intermediate_dim"]
    grid = v["image_size"] // v["patch_size"]
    vision = (
        v["patch_size"] ** 2 * 3 * width
        + width
        + grid * grid * width
        + v["num_layers"] * _block(width, mlp)
        + 2 * width
        + width  # MAP probe
        + 4 * (width * width + width)
        + 2 * width
        + 2 * width * mlp
        + mlp
        + width
    )
    text_width = t["hidden_dim"]
    text = (
        t["vocabulary_size"] * text_width
        + t["max_sequence_length"] * text_width
        + t["num_layers"] * _block(text_width, t["intermediate_dim"])
        + 2 * text_width
        + text_width * t["projection_dim"]
        + t["projection_dim"]
    )
    return vision + text + 2


def test_preset_names_cover_keras_hub_siglip():
    assert sorted(SIGLIP2) == preset_names("SigLIP 2")
    assert sorted(SIGLIP) == preset_names("SigLIP")
    assert preset_names("MedSigLIP") == ["medsiglip_900m_448"]
    assert len(preset_names()) == 25


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_params_match_architecture(name):
    preset = get_preset(name)
    assert preset.params == _count(preset.config)
    grid = preset.image_size // preset.patch_size
    position_ids = grid * grid + preset.max_sequence_length
    if preset.keras_hub_params != preset.params + position_ids:
        assert "keras-hub" in preset.note


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_metadata_matches_installed_keras_hub(name):
    preset = get_preset(name)
    theirs = backbone_presets[name]
    assert preset.kaggle_handle == theirs["kaggle_handle"]
    assert preset.keras_hub_params == theirs["metadata"]["params"]
    assert preset.model_card == theirs["metadata"]["model_card"]


def test_preset_giant_pairs_so400m_text_tower():
    config = get_preset("siglip2_giant_opt_patch16_384").config
    assert config.vision["hidden_dim"] == 1536
    assert config.text["hidden_dim"] == 1152
    assert config.text["projection_dim"] == 1536
    assert (
        "so400m text tower"
        in get_preset("siglip2_giant_opt_patch16_384").description
    )


def test_preset_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean: siglip2_so400m_patch"):
        get_preset("siglip2_so400m_patch14_385")


def test_preset_unknown_name_without_matches_lists_all():
    with pytest.raises(ValueError, match="Known presets: medsiglip_900m_448"):
        get_preset("bert_base_en")
