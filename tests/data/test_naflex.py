"""NaFlex preprocessing against HF's `Siglip2ImageProcessor` logic.

Oracles: transformers' NaFlex size search, patchify and padding
(`image_processing_pil_siglip2`), its full PIL-backend processor, and
`torch.nn.functional.interpolate(antialias=True)`, the kernel the
torchvision processor uses on float images (torchvision itself cannot be
installed beside the CPU torch wheel here).

Known kernel differences, so tested with the tolerance they imply:
- `tf.image.resize` computes the same triangle-filter weights in float32
  with its own sample arithmetic; on 0-255 inputs the result differs from
  torch's by up to ~1.5e-5 after scaling to [-1, 1] (0.002 grey levels),
  so the float comparison uses 5e-5 rather than 1e-5;
- the PIL processor resizes 8-bit images with PIL's fixed-point bilinear
  filter and rounds to uint8, i.e. up to about one grey level (1/127.5 in
  [-1, 1]) from an exact float resize;
- torch 2.13's antialiased bilinear is wrong when an output side is 1
  (it ignores the other axis's resize), so those sizes are left out of the
  float comparison.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch
from transformers.models.siglip2 import image_processing_pil_siglip2 as hf

from keras_siglip2.data.naflex import SEQUENCE_LENGTHS
from keras_siglip2.data.naflex import naflex_batches
from keras_siglip2.data.naflex import naflex_image_size
from keras_siglip2.data.naflex import naflex_preprocess
from keras_siglip2.data.naflex import naflex_preprocess_batch


def _random_sizes(count, seed):
    """(height, width) pairs from 1 x 1000 to 1000 x 1, all aspect ratios."""
    rng = np.random.default_rng(seed)
    sizes = [(1, 1000), (1000, 1), (1, 1), (1000, 1000), (16, 16)]
    while len(sizes) < count:
        long_side = int(rng.integers(1, 1001))
        short_side = int(np.clip(long_side * rng.uniform(0, 1), 1, 1000))
        sizes.append(
            (long_side, short_side)
            if rng.random() < 0.5
            else (short_side, long_side)
        )
    return sizes


@pytest.mark.parametrize("patch_size", [14, 16])
def test_naflex_grid_sizes_match_hf(patch_size):
    sizes = _random_sizes(220, seed=patch_size)
    for index, (height, width) in enumerate(sizes):
        length = SEQUENCE_LENGTHS[index % len(SEQUENCE_LENGTHS)]
        expected = hf.get_image_size_for_max_num_patches(
            height, width, patch_size, length
        )
        ours = naflex_image_size(height, width, patch_size, length)
        assert tuple(int(v) for v in ours) == tuple(expected), (
            height,
            width,
            length,
        )


def _hf_float_reference(image, patch_size, length):
    """HF's float pipeline: torch antialiased resize, scale, patchify, pad."""
    height, width = hf.get_image_size_for_max_num_patches(
        image.shape[0], image.shape[1], patch_size, length
    )
    resized = torch.nn.functional.interpolate(
        torch.tensor(image).permute(2, 0, 1)[None],
        size=(height, width),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0].numpy()
    scaled = resized / 127.5 - 1.0
    patches = hf.convert_image_to_patches(scaled, patch_size)
    patches, mask = hf.pad_along_first_dim(patches, length)
    grid = (height // patch_size, width // patch_size)
    return patches, mask, grid


def test_naflex_pixels_match_hf_float_pipeline():
    rng = np.random.default_rng(0)
    sizes = [(37, 91), (200, 13), (5, 5), (64, 64), (300, 41), (7, 120)]
    for height, width in sizes:
        for length in (16, 64, 256):
            image = rng.uniform(0, 255, (height, width, 3))
            image = image.astype("float32")
            patches, mask, grid = _hf_float_reference(image, 8, length)
            if min(grid) == 1:
                continue  # torch's size-1 antialias bug, see module doc.
            ours = naflex_preprocess(image, 8, length)
            np.testing.assert_allclose(
                ours["patches"].numpy(), patches, atol=5e-5
            )
            np.testing.assert_array_equal(ours["patch_mask"].numpy(), mask)
            assert tuple(ours["spatial_shapes"].numpy()) == grid


def test_naflex_matches_hf_processor_on_200_sizes():
    """Grids and masks exactly, pixels to the processor's 8-bit rounding."""
    processor = hf.Siglip2ImageProcessorPil(patch_size=16)
    rng = np.random.default_rng(1)
    sizes = _random_sizes(200, seed=3)
    for index, (height, width) in enumerate(sizes):
        # Small canvases keep the sweep fast; the size search is tested
        # on the full range above.
        height, width = max(1, height // 4), max(1, width // 4)
        length = SEQUENCE_LENGTHS[index % 2]
        image = rng.integers(0, 256, (height, width, 3)).astype("uint8")
        expected = processor(
            [image],
            max_num_patches=length,
            return_tensors="np",
            input_data_format="channels_last",
        )
        ours = naflex_preprocess_batch([image], 16, length)
        np.testing.assert_array_equal(
            ours["spatial_shapes"], expected["spatial_shapes"]
        )
        np.testing.assert_array_equal(
            ours["patch_mask"], expected["pixel_attention_mask"]
        )
        difference = np.abs(ours["patches"] - expected["pixel_values"])
        assert difference.max() <= 2.0 / 127.5 + 1e-6, (height, width)
        assert difference.mean() <= 0.5 / 127.5, (height, width)


def test_naflex_exact_when_no_resize_is_needed():
    """An image already at its target size is only scaled and patchified."""
    processor = hf.Siglip2ImageProcessorPil(patch_size=16)
    image = np.random.default_rng(2).integers(0, 256, (64, 128, 3))
    image = image.astype("uint8")
    expected = processor(
        [image],
        max_num_patches=32,
        return_tensors="np",
        input_data_format="channels_last",
    )
    ours = naflex_preprocess_batch([image], 16, 32)
    np.testing.assert_allclose(
        ours["patches"], expected["pixel_values"], atol=1e-5
    )


def test_naflex_in_tf_data():
    images = [
        np.full((30, 70, 3), 255, "uint8"),
        np.zeros((90, 20, 3), "uint8"),
    ]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
    )
    dataset = dataset.map(lambda image: naflex_preprocess(image, 10, 24))
    batch = next(iter(dataset.batch(2)))
    assert batch["patches"].shape == (2, 24, 300)
    eager = naflex_preprocess_batch(images, 10, 24)
    for key in eager:
        np.testing.assert_allclose(batch[key].numpy(), eager[key], atol=1e-6)
    np.testing.assert_allclose(eager["patches"][0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(eager["patches"][1, 0], -1.0, atol=1e-6)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 5, 3)), "zero-size"),
        (np.zeros((5, 5, 4)), r"expected shape \(height, width, 3\)"),
        (np.full((5, 5, 3), np.nan), "non-finite"),
    ],
)
def test_naflex_bad_images(image, message):
    with pytest.raises(ValueError, match=message):
        naflex_preprocess_batch([np.zeros((4, 4, 3)), image], 2, 8)


def test_naflex_bad_sequence_length():
    with pytest.raises(ValueError, match="max_num_patches"):
        naflex_preprocess_batch([np.zeros((4, 4, 3))], 2, 0)


def test_naflex_batches_one_length_per_batch():
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (int(h), int(w), 3)).astype("uint8")
        for h, w in rng.integers(4, 60, (7, 2))
    ]
    batches = list(
        naflex_batches(images, 4, batch_size=3, sequence_lengths=(8, 16))
    )
    assert [len(b["patches"]) for b in batches] == [3, 3, 1]
    for batch in batches:
        length = batch["patches"].shape[1]
        assert length in (8, 16)
        counts = batch["spatial_shapes"].prod(-1)
        assert (counts <= length).all()
        np.testing.assert_array_equal(batch["patch_mask"].sum(-1), counts)
