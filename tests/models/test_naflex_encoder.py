"""NaFlex vision encoder: masking, equivalences, compilation, bad input,
and the fixed-resolution adaptation helpers."""

import jax
import keras
import numpy as np
import pytest
import torch

from keras_siglip2.layers.patch_embedding import patchify
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.resolution import pi_resize_patch_kernel
from keras_siglip2.models.resolution import with_image_size
from keras_siglip2.models.resolution import with_patch_size
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

PATCH = 4
GRID = 4


def _backbone(naflex=True, image_size=PATCH * GRID, patch_size=PATCH):
    keras.utils.set_random_seed(0)
    vision = SigLIP2VisionEncoder(
        image_size=image_size,
        patch_size=patch_size,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=24,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=30,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=24,
        max_sequence_length=5,
    )
    return SigLIP2Backbone(vision, text, naflex=naflex)


@pytest.fixture(scope="module")
def backbone():
    return _backbone()


def _batch(grids, length, seed=0, pad_value=0.0):
    rng = np.random.default_rng(seed)
    grids = np.array(grids, "int32")
    counts = grids.prod(-1)
    mask = (np.arange(length)[None] < counts[:, None]).astype("int32")
    patches = rng.uniform(-1, 1, (len(grids), length, PATCH * PATCH * 3))
    patches = np.where(mask[..., None] == 1, patches, pad_value)
    return {
        "patches": patches.astype("float32"),
        "patch_mask": mask,
        "spatial_shapes": grids,
    }


def test_naflex_padding_never_influences_outputs(backbone):
    grids = [(2, 5), (3, 3), (1, 12)]
    clean = _batch(grids, 12, pad_value=0.0)
    noisy = _batch(grids, 12, pad_value=123.0)
    a = backbone.get_vision_embeddings(clean)
    b = backbone.get_vision_embeddings(noisy)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The real tokens' sequence outputs are untouched too.
    seq_a = backbone.vision_encoder(clean)["sequence_output"]
    seq_b = backbone.vision_encoder(noisy)["sequence_output"]
    mask = clean["patch_mask"].astype(bool)
    np.testing.assert_array_equal(
        np.asarray(seq_a)[mask], np.asarray(seq_b)[mask]
    )


def test_naflex_extra_padding_does_not_change_embeddings(backbone):
    short = _batch([(2, 3), (3, 2)], 6)
    long = {
        "patches": np.pad(short["patches"], ((0, 0), (0, 10), (0, 0))),
        "patch_mask": np.pad(short["patch_mask"], ((0, 0), (0, 10))),
        "spatial_shapes": short["spatial_shapes"],
    }
    np.testing.assert_allclose(
        np.asarray(backbone.get_vision_embeddings(short)),
        np.asarray(backbone.get_vision_embeddings(long)),
        atol=1e-5,
    )


def test_naflex_native_grid_equals_fixed_resolution(backbone):
    """A full square grid at the table's size is the fixed-res model."""
    fixed = _backbone(naflex=False)
    fixed.set_weights(backbone.get_weights())
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3))
    images = images.astype("float32")
    naflex_inputs = {
        "patches": np.asarray(patchify(images, PATCH)),
        "patch_mask": np.ones((2, GRID * GRID), "int32"),
        "spatial_shapes": np.full((2, 2), GRID, "int32"),
    }
    np.testing.assert_allclose(
        np.asarray(backbone.get_vision_embeddings(naflex_inputs)),
        np.asarray(fixed.get_vision_embeddings(images)),
        atol=1e-5,
    )


def test_naflex_position_table_matches_torch_resize(backbone):
    """Per-example resize == torch antialiased bilinear on the table."""
    layer = backbone.vision_encoder.position_embedding
    shapes = np.array([[2, 3], [4, 4], [5, 2], [7, 2]], "int32")
    resized = np.asarray(layer.resize_per_example(shapes, 16))
    table = np.asarray(layer.embeddings).reshape(GRID, GRID, -1)
    table = torch.tensor(table).permute(2, 0, 1)[None]
    for i, (h, w) in enumerate(shapes):
        expected = (
            torch.nn.functional.interpolate(
                table, size=(int(h), int(w)), mode="bilinear", antialias=True
            )[0]
            .permute(1, 2, 0)
            .reshape(h * w, -1)
        )
        np.testing.assert_allclose(
            resized[i, : h * w], expected.numpy(), atol=1e-6
        )
        # Padding positions carry the (0, 0) embedding, as in HF.
        np.testing.assert_allclose(
            resized[i, h * w :],
            np.broadcast_to(expected[0].numpy(), resized[i, h * w :].shape),
            atol=1e-6,
        )


def test_naflex_compiles_once_per_sequence_length(backbone):
    encoder = backbone.vision_encoder
    traces = []
    original = encoder.call

    def counting_call(*args, **kwargs):
        traces.append(1)
        return original(*args, **kwargs)

    encoder.call = counting_call
    try:
        token_ids = np.zeros((2, 5), "int32")
        lengths = [8, 12, 8, 16, 12, 8, 16]
        for step, length in enumerate(lengths):
            inputs = _batch([(2, 4), (1, 8)], length, seed=step)
            backbone.predict_on_batch({**inputs, "token_ids": token_ids})
    finally:
        encoder.call = original
    assert len(traces) == len(set(lengths))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda x: x.update(spatial_shapes=np.array([[2, 3], [3, 5]])),
            "h \\* w <= 12",
        ),
        (
            lambda x: x.update(spatial_shapes=np.array([[2, 3], [0, 2]])),
            "h, w >= 1",
        ),
        (
            lambda x: x.update(spatial_shapes=np.array([[2, 2], [3, 3]])),
            "examples \\[0\\] disagree",
        ),
        (
            lambda x: x.update(patches=np.zeros((2, 12, 47), "float32")),
            "`patches` must have shape",
        ),
        (lambda x: x.pop("patch_mask"), "miss \\['patch_mask'\\]"),
    ],
)
def test_naflex_bad_inputs(backbone, edit, message):
    inputs = _batch([(2, 3), (3, 3)], 12)
    edit(inputs)
    with pytest.raises(ValueError, match=message):
        backbone.get_vision_embeddings(inputs)


@pytest.mark.parametrize("new_patch", [6, 8, 10])
def test_pi_resize_preserves_patch_embeddings(new_patch):
    """<PI(w), resize(x)> == <w, x> when upsampling (FlexiViT)."""
    rng = np.random.default_rng(new_patch)
    kernel = rng.normal(size=(PATCH, PATCH, 3, 7)).astype("float32")
    new_kernel = pi_resize_patch_kernel(kernel, new_patch)
    assert new_kernel.shape == (new_patch, new_patch, 3, 7)
    for _ in range(5):
        x = rng.normal(size=(PATCH, PATCH, 3)).astype("float32")
        upsampled = np.asarray(
            jax.image.resize(x, (new_patch, new_patch, 3), "bilinear")
        )
        np.testing.assert_allclose(
            np.einsum("hwc,hwcd->d", upsampled, new_kernel),
            np.einsum("hwc,hwcd->d", x, kernel),
            atol=1e-4,
        )


def test_with_image_size_resizes_position_table():
    fixed = _backbone(naflex=False)
    bigger = with_image_size(fixed, 24)
    assert bigger.vision_encoder.grid_size == 6
    table = np.asarray(fixed.vision_encoder.position_embedding.embeddings)
    table = torch.tensor(table.reshape(GRID, GRID, -1)).permute(2, 0, 1)
    expected = (
        torch.nn.functional.interpolate(
            table[None], size=(6, 6), mode="bilinear", antialias=True
        )[0]
        .permute(1, 2, 0)
        .reshape(36, -1)
    )
    np.testing.assert_allclose(
        np.asarray(bigger.vision_encoder.position_embedding.embeddings),
        expected.numpy(),
        atol=1e-6,
    )
    token_ids = np.ones((2, 5), "int32")
    np.testing.assert_array_equal(
        np.asarray(bigger.get_text_embeddings(token_ids)),
        np.asarray(fixed.get_text_embeddings(token_ids)),
    )
    images = np.zeros((2, 24, 24, 3), "float32")
    assert bigger({"images": images, "token_ids": token_ids}).shape == (2, 2)


def test_with_patch_size_keeps_embeddings_of_upsampled_patches():
    fixed = _backbone(naflex=False)
    new = with_patch_size(fixed, 8, image_size=32)
    old_patch = fixed.vision_encoder.patch_embedding
    new_patch = new.vision_encoder.patch_embedding
    images = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3))
    images = images.astype("float32")
    upsampled = np.asarray(jax.image.resize(images, (1, 32, 32, 3), "bilinear"))
    # Each 8x8 patch of the upsampled image is not exactly the resize of
    # the 4x4 patch (bilinear crosses patch borders), so compare a
    # per-patch upsample instead.
    patches = np.asarray(patchify(images, PATCH)).reshape(-1, 4, 4, 3)
    up = np.stack(
        [
            np.asarray(jax.image.resize(p, (8, 8, 3), "bilinear"))
            for p in patches
        ]
    )
    old = np.asarray(old_patch.embed_patches(patchify(images, PATCH)))[0]
    new_embed = np.asarray(new_patch.embed_patches(up.reshape(1, 16, -1)))[0]
    np.testing.assert_allclose(new_embed, old, atol=1e-4)
    assert upsampled.shape == (1, 32, 32, 3)
    assert new({"images": upsampled, "token_ids": np.ones((1, 5), "int32")})
