"""Size configs: names, parsing, and parameter counts vs HF transformers."""

import contextlib
import functools
import math

import keras
import pytest
import torch
from transformers import SiglipTextConfig
from transformers import SiglipTextModel
from transformers import SiglipVisionConfig
from transformers import SiglipVisionModel

from keras_siglip2.models import SigLIP2TextEncoder
from keras_siglip2.models import SigLIP2VisionEncoder
from keras_siglip2.models.configs import config_names
from keras_siglip2.models.configs import get_config

SIZES = ("base", "large", "so400m", "giant")


def test_config_names():
    names = config_names()
    assert len(names) == len(set(names)) == 4 * 3 * 4
    expected = {
        f"{size}_patch{patch}_{resolution}"
        for size in SIZES
        for patch in (14, 16, 32)
        for resolution in (224, 256, 384, 512)
    }
    assert set(names) == expected
    for name in names:
        get_config(name)


def test_get_config_so400m():
    config = get_config("so400m_patch14_384")
    assert config.vision == dict(
        hidden_dim=1152,
        num_layers=27,
        intermediate_dim=4304,
        num_heads=16,
        image_size=384,
        patch_size=14,
    )
    assert config.text == dict(
        hidden_dim=1152,
        num_layers=27,
        intermediate_dim=4304,
        num_heads=16,
        vocabulary_size=256_000,
        max_sequence_length=64,
        projection_dim=1152,
    )


def test_giant_pairs_a_g_image_tower_with_an_so400m_text_tower():
    config = get_config("giant_patch16_256")
    assert config.vision["hidden_dim"] == 1536
    assert config.vision["num_layers"] == 40
    so400m_text = get_config("so400m_patch16_256").text
    assert config.text == dict(so400m_text, projection_dim=1536)


@pytest.mark.parametrize(
    "alias,name",
    [
        ("b_patch16_224", "base_patch16_224"),
        ("l_patch16_384", "large_patch16_384"),
        ("g_patch16_512", "giant_patch16_512"),
        ("SO400M_Patch14_224", "so400m_patch14_224"),
    ],
)
def test_aliases(alias, name):
    assert get_config(alias) == get_config(name)


def test_text_overrides():
    config = get_config("b_patch16_224", vocabulary_size=32_000)
    assert config.text["vocabulary_size"] == 32_000
    config = get_config("b_patch16_224", max_sequence_length=16)
    assert config.text["max_sequence_length"] == 16


@pytest.mark.parametrize(
    "name",
    [
        "huge_patch14_224",
        "base_patch15_224",
        "base_patch16_300",
        "base_16_224",
        "base_patch16",
        "base_patch16_224_extra",
        "base_patchx_224",
        "",
    ],
)
def test_unknown_names_raise(name):
    with pytest.raises(ValueError, match="config name"):
        get_config(name)


@contextlib.contextmanager
def _abstract_weights():
    """Builds layers with shaped but never-initialised variables."""
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        # The variables stay registered for deferred initialisation; drop
        # them so that no later scope allocates them (giant: ~7 GB).
        keras.backend.clear_session(free_memory=False)


def _count(weights):
    return sum(math.prod(w.shape) for w in weights)


@functools.cache
def _keras_counts(name):
    config = get_config(name)
    size = config.vision["image_size"]
    with _abstract_weights():
        vision = SigLIP2VisionEncoder(**config.vision)
        vision.build((None, size, size, 3))
        text = SigLIP2TextEncoder(**config.text)
        text.build((None, config.text["max_sequence_length"]))
        counts = dict(
            vision=_count(vision.weights),
            vision_trunk=_count(vision.weights) - _count(vision.head.weights),
            text=_count(text.weights),
        )
    return counts


def _hf_counts(name):
    config = get_config(name)
    vision, text = config.vision, config.text
    with torch.device("meta"):
        vision_model = SiglipVisionModel(
            SiglipVisionConfig(
                hidden_size=vision["hidden_dim"],
                intermediate_size=vision["intermediate_dim"],
                num_hidden_layers=vision["num_layers"],
                num_attention_heads=vision["num_heads"],
                image_size=vision["image_size"],
                patch_size=vision["patch_size"],
            )
        )
        text_model = SiglipTextModel(
            SiglipTextConfig(
                vocab_size=text["vocabulary_size"],
                max_position_embeddings=text["max_sequence_length"],
                projection_size=text["projection_dim"],
                hidden_size=text["hidden_dim"],
                intermediate_size=text["intermediate_dim"],
                num_hidden_layers=text["num_layers"],
                num_attention_heads=text["num_heads"],
            )
        )
    return dict(
        vision=sum(p.numel() for p in vision_model.parameters()),
        text=sum(p.numel() for p in text_model.parameters()),
    )


@pytest.mark.parametrize(
    "name",
    [f"{size}_patch16_256" for size in SIZES]
    + [f"{size}_patch14_224" for size in SIZES]
    + ["so400m_patch14_384", "base_patch16_224"],
)
def test_parameter_counts_match_transformers(name):
    ours = _keras_counts(name)
    hf = _hf_counts(name)
    assert ours["vision"] == hf["vision"]
    assert ours["text"] == hf["text"]


# The image-tower trunk (patch and position embeddings, blocks, final norm;
# no MAP head) against the paper's names: ViT-B 86M, L 303M, So400m 400M,
# g 1B. Exact equality with transformers above is the real check. The
# So400m and g names are rounded: their architectures (1152/27/4304/16 and
# 1536/40/6144/16, as released) have ~413M and ~1.13B trunk parameters.
@pytest.mark.parametrize(
    "name,published,rtol",
    [
        ("base_patch16_224", 86e6, 0.02),
        ("large_patch16_256", 303e6, 0.02),
        ("so400m_patch14_384", 400e6, 0.05),
        ("giant_patch16_256", 1e9, 0.15),
    ],
)
def test_trunk_sizes_match_the_paper(name, published, rtol):
    trunk = _keras_counts(name)["vision_trunk"]
    assert abs(trunk - published) <= rtol * published, trunk
