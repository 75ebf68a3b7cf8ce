"""HF transformers `Siglip2Model` (NaFlex) parity on ragged batches.

transformers (torch) is the oracle: a random-init `Siglip2Model` saved
with `save_pretrained` is loaded by ours and both encode the same padded
patch batches, mixing aspect ratios and fill levels.
"""

import numpy as np
import pytest
import torch
from hf_models import random_hf_model

from keras_siglip2.convert.hf import load_hf_checkpoint

TOLERANCE = 1e-5

CONFIGS = {
    "patch4_grid4": dict(
        vision=dict(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_patches=16,
            patch_size=4,
        ),
        text=dict(
            vocab_size=61,
            hidden_size=24,
            intermediate_size=30,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=12,
        ),
        length=24,
        # Grids (h, w): wide, tall, full, a single patch, upsampled.
        grids=[(2, 9), (11, 2), (4, 6), (1, 1), (5, 4)],
    ),
    "patch2_grid5": dict(
        vision=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_patches=25,
            patch_size=2,
        ),
        text=dict(
            vocab_size=97,
            hidden_size=40,
            intermediate_size=56,
            num_hidden_layers=2,
            num_attention_heads=5,
            max_position_embeddings=16,
            projection_size=32,
        ),
        length=30,
        grids=[(5, 6), (1, 30), (30, 1), (3, 3)],
    ),
    "patch6_grid3": dict(
        vision=dict(
            hidden_size=36,
            intermediate_size=50,
            num_hidden_layers=1,
            num_attention_heads=6,
            num_patches=9,
            patch_size=6,
        ),
        text=dict(
            vocab_size=45,
            hidden_size=36,
            intermediate_size=50,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=8,
        ),
        length=12,
        grids=[(3, 4), (2, 2), (1, 7), (6, 2), (2, 5)],
    ),
}


def _make_model(config, seed=0):
    return random_hf_model(True, config["vision"], config["text"], seed)


def _ragged_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    patch = config["vision"]["patch_size"]
    length = config["length"]
    grids = np.array(config["grids"], "int32")
    counts = grids.prod(-1)
    assert counts.max() == length, "one image must fill every patch"
    patches = rng.uniform(-1, 1, (len(grids), length, patch * patch * 3))
    mask = (np.arange(length)[None] < counts[:, None]).astype("int32")
    # Garbage in the padding: it must not matter.
    patches = np.where(mask[..., None] == 1, patches, 7.0)
    return {
        "patches": patches.astype("float32"),
        "patch_mask": mask,
        "spatial_shapes": grids,
    }


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def naflex_checkpoint(request, tmp_path_factory):
    config = CONFIGS[request.param]
    model = _make_model(config)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return config, model, load_hf_checkpoint(path)


def test_naflex_parity_siglip2_model(naflex_checkpoint):
    config, model, backbone = naflex_checkpoint
    assert backbone.naflex
    inputs = _ragged_batch(config)
    rng = np.random.default_rng(1)
    text = config["text"]
    token_ids = rng.integers(
        0, text["vocab_size"], (3, text["max_position_embeddings"])
    ).astype("int32")
    torch_inputs = dict(
        pixel_values=torch.tensor(inputs["patches"]),
        pixel_attention_mask=torch.tensor(inputs["patch_mask"]),
        spatial_shapes=torch.tensor(inputs["spatial_shapes"]).long(),
    )
    with torch.no_grad():
        hf_image = model.vision_model(**torch_inputs).pooler_output.numpy()
        hf_text = model.text_model(
            input_ids=torch.tensor(token_ids).long()
        ).pooler_output.numpy()
        hf_logits = model(
            input_ids=torch.tensor(token_ids).long(), **torch_inputs
        ).logits_per_image.numpy()
    ours_image = np.asarray(backbone.get_vision_embeddings(inputs))
    ours_text = np.asarray(backbone.get_text_embeddings(token_ids))
    ours_logits = np.asarray(backbone({**inputs, "token_ids": token_ids}))
    assert np.std(hf_logits) > 1e-2
    np.testing.assert_allclose(ours_image, hf_image, atol=TOLERANCE)
    np.testing.assert_allclose(ours_text, hf_text, atol=TOLERANCE)
    np.testing.assert_allclose(ours_logits, hf_logits, atol=TOLERANCE)


def test_naflex_parity_per_example_equals_batched(naflex_checkpoint):
    """Each example alone (its own length) matches its row in the batch."""
    config, model, backbone = naflex_checkpoint
    inputs = _ragged_batch(config)
    batched = np.asarray(backbone.get_vision_embeddings(inputs))
    # Two examples (a wide and a tall one) keep eager compiles few.
    for i in (0, 1):
        n = int(np.prod(inputs["spatial_shapes"][i]))
        single = {
            "patches": inputs["patches"][i : i + 1, :n],
            "patch_mask": inputs["patch_mask"][i : i + 1, :n],
            "spatial_shapes": inputs["spatial_shapes"][i : i + 1],
        }
        alone = np.asarray(backbone.get_vision_embeddings(single))
        np.testing.assert_allclose(alone[0], batched[i], atol=TOLERANCE)
