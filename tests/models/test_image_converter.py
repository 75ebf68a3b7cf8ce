"""`SigLIP2ImageConverter` against HF's `SiglipImageProcessor`.

NaFlex mode against `naflex_preprocess` (itself tested against HF), and
presets against keras-hub's own converter.

Without torchvision (as here) `SiglipImageProcessor` is the PIL backend
(`SiglipImageProcessorPil`), used directly below. PIL resizes `uint8`
images in two separable passes and rounds to `uint8` after each; with
non-negative weights (bilinear) each rounding moves a value by at most half
a step, so ours (float, one pass) is within one `uint8` step
(`1 / 127.5` after scaling) of HF. Bicubic has negative lobes: the first
rounding error is amplified by at most the kernel's absolute weight sum
(under 1.2 for Keys' a = -0.5), so the bound is 0.5 * 1.2 + 0.5 = 1.1
steps, provided no value overshoots [0, 255] (PIL clips there, we do not:
see the last test of this group).
"""

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub_models import tiny_keras_hub_siglip
from transformers import SiglipImageProcessorPil
from transformers.image_utils import PILImageResampling

from keras_siglip2.data.naflex import naflex_preprocess
from keras_siglip2.data.naflex import naflex_preprocess_batch
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

STEP = 1.0 / 127.5


def _noise(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


def _smooth(height, width):
    """Low-frequency image in [27, 227]: bicubic does not overshoot."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = [127 + 100 * np.sin(3 * x + 2 * y + c) for c in range(3)]
    return np.round(np.stack(image, -1)).astype(np.uint8)


def _hf(image, size, resample):
    processor = SiglipImageProcessorPil(
        size={"height": size, "width": size}, resample=resample
    )
    pixels = processor(image, return_tensors="np")["pixel_values"][0]
    return pixels.transpose(1, 2, 0)


def _ours(image, size, **kwargs):
    return np.asarray(SigLIP2ImageConverter(image_size=size, **kwargs)(image))


def test_defaults_are_hf_siglip_defaults():
    hf = SiglipImageProcessorPil()
    assert hf.resample == PILImageResampling.BICUBIC
    assert hf.do_rescale and hf.do_normalize
    assert list(hf.image_mean) == list(hf.image_std) == [0.5, 0.5, 0.5]
    converter = SigLIP2ImageConverter(image_size=224)
    assert converter.interpolation == "bicubic" and converter.antialias
    assert not converter.crop_to_aspect_ratio
    # (x * rescale - mean) / std == x / 127.5 - 1.
    scale = hf.rescale_factor / hf.image_std[0]
    assert converter.scale == pytest.approx(scale)
    assert converter.offset == pytest.approx(-hf.image_mean[0] / 0.5)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_identity_size_matches_hf_exactly(interpolation):
    resample = getattr(PILImageResampling, interpolation.upper())
    image = _noise(32, 32)
    ours = _ours(image, 32, interpolation=interpolation)
    np.testing.assert_allclose(ours, _hf(image, 32, resample), atol=1e-6)
    np.testing.assert_allclose(ours, image / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "height, width, size",
    [(97, 61, 32), (200, 300, 48), (40, 50, 64), (31, 31, 64)],
)
def test_bilinear_within_one_uint8_step_of_hf(height, width, size):
    image = _noise(height, width)
    hf = _hf(image, size, PILImageResampling.BILINEAR)
    diff = np.abs(_ours(image, size, interpolation="bilinear") - hf)
    assert diff.max() <= STEP * 1.001
    # Rounding errors are spread evenly, not biased.
    assert diff.mean() <= 0.35 * STEP


@pytest.mark.parametrize(
    "height, width, size", [(97, 61, 32), (200, 300, 48), (40, 50, 64)]
)
def test_bicubic_within_bound_of_hf_without_overshoot(height, width, size):
    image = _smooth(height, width)
    hf = _hf(image, size, PILImageResampling.BICUBIC)
    diff = np.abs(_ours(image, size) - hf)
    assert diff.max() <= 1.1 * STEP
    assert diff.mean() <= 0.35 * STEP


def test_bicubic_overshoot_is_kept_where_hf_clips():
    """Documented difference: upsampling noise with bicubic overshoots
    [0, 255]; HF (uint8) clips, this layer keeps the float values."""
    image = _noise(20, 20)
    hf = _hf(image, 64, PILImageResampling.BICUBIC)
    ours = _ours(image, 64)
    assert hf.min() >= -1 and hf.max() <= 1
    assert ours.min() < -1 or ours.max() > 1
    inside = (ours > -1) & (ours < 1)
    assert np.median(np.abs(ours - hf)[inside]) <= STEP


def test_big_vision_resize_is_bilinear_without_antialias():
    """big_vision: `resize(size)` = `tf.image.resize` bilinear, no
    antialias, on the image; then `value_range(-1, 1)`."""
    image = _noise(97, 61)
    expected = tf.image.resize(image, (32, 32), antialias=False).numpy()
    expected = -1 + expected * 2 / 255
    ours = _ours(image, 32, interpolation="bilinear", antialias=False)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_tf_data_matches_eager():
    images = np.stack([_noise(50, 40, seed=i) for i in range(4)])
    converter = SigLIP2ImageConverter(image_size=24)
    eager = np.asarray(converter(images))
    assert eager.shape == (4, 24, 24, 3) and eager.dtype == np.float32
    dataset = tf.data.Dataset.from_tensor_slices(images)
    single = np.stack([x.numpy() for x in dataset.map(converter)])
    batched = next(iter(dataset.batch(4).map(converter))).numpy()
    # JAX and TF implement the same resampling kernels.
    np.testing.assert_allclose(single, eager, atol=1e-5)
    np.testing.assert_allclose(batched, eager, atol=1e-5)


def test_input_forms_agree():
    image = _noise(30, 20)
    converter = SigLIP2ImageConverter(image_size=(16, 12))
    expected = np.asarray(converter(image[None]))
    assert expected.shape == (1, 16, 12, 3)
    np.testing.assert_allclose(converter(image), expected[0], atol=1e-6)
    as_float = converter(image.astype("float64")[None])
    np.testing.assert_allclose(as_float, expected, atol=1e-6)
    np.testing.assert_allclose(converter(tf.constant(image[None])), expected)
    mixed = converter([image, _noise(10, 70)])
    assert mixed.shape == (2, 16, 12, 3)
    np.testing.assert_allclose(mixed[:1], expected, atol=1e-6)


def test_config_round_trip():
    converter = SigLIP2ImageConverter(
        image_size=20, interpolation="bilinear", antialias=False
    )
    restored = SigLIP2ImageConverter.from_config(converter.get_config())
    assert restored.get_config() == converter.get_config()
    image = _noise(33, 21)
    np.testing.assert_array_equal(restored(image), converter(image))


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 0, 5, 3), "uint8"), r"empty.*\(2, 0, 5, 3\)"),
        (np.zeros((4, 4, 4), "uint8"), r"3 \(RGB\) channels.*\(4, 4, 4\)"),
        (np.zeros((4, 4, 1), "uint8"), r"got 1 channels"),
        (np.zeros((4, 4), "uint8"), r"shape \(height, width, 3\)"),
        (np.full((4, 4, 3), np.nan, "float32"), r"finite.*48 NaN"),
        (np.full((1, 4, 4, 3), np.inf), r"finite.*\(1, 4, 4, 3\)"),
        (np.zeros((4, 4, 3), bool), "real numbers"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        SigLIP2ImageConverter(image_size=8)(images)


def test_bad_images_in_tf_data():
    converter = SigLIP2ImageConverter(image_size=8)
    grey = tf.data.Dataset.from_tensor_slices(np.zeros((2, 4, 4, 1)))
    with pytest.raises(ValueError, match="got 1 channels"):
        grey.map(converter)
    nan = tf.data.Dataset.from_tensor_slices(np.full((1, 4, 4, 3), np.nan))
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        list(nan.map(converter))
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((0, 3, 3), "uint8")]),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty"):
        list(ragged.map(converter))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": (8, 8, 3)}, "image_size"),
        ({"image_size": 8, "interpolation": "area"}, "interpolation"),
        ({"image_size": 8, "data_format": "channels_first"}, "channels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SigLIP2ImageConverter(**kwargs)


# --- NaFlex -------------------------------------------------------------------
# `naflex_preprocess` is tested against HF's `Siglip2ImageProcessor` in
# tests/data/test_naflex.py; the converter must give exactly its outputs.


def _naflex(**kwargs):
    return SigLIP2ImageConverter(
        naflex=True, **{"patch_size": 4, "max_num_patches": 16, **kwargs}
    )


def _naflex_images():
    return [_noise(10, 30, seed=1), _noise(17, 9, seed=2), _noise(3, 3)]


def _numpy(outputs):
    return {key: np.asarray(value) for key, value in outputs.items()}


def test_naflex_is_naflex_preprocess_exactly():
    images = _naflex_images()
    ours = _numpy(_naflex()(images))
    expected = naflex_preprocess_batch(images, 4, 16)
    assert set(ours) == {"patches", "patch_mask", "spatial_shapes"}
    for key in expected:
        assert ours[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(ours[key], expected[key])
    one = _numpy(_naflex()(images[1]))
    for key, value in naflex_preprocess(images[1], 4, 16).items():
        np.testing.assert_array_equal(one[key], value.numpy())
    # Float images in [0, 1]: the value range follows scale and offset.
    floats = [image / 255.0 for image in images]
    in_unit = _numpy(_naflex(scale=2.0, offset=-1.0)(floats))
    expected = naflex_preprocess_batch(floats, 4, 16, value_range=(0, 1))
    np.testing.assert_array_equal(in_unit["patches"], expected["patches"])


def test_naflex_shapes_dtypes_and_mask():
    outputs = _numpy(_naflex()(_naflex_images()))
    assert outputs["patches"].shape == (3, 16, 4 * 4 * 3)
    assert outputs["patches"].dtype == np.float32
    assert outputs["patch_mask"].dtype == np.int32
    assert outputs["spatial_shapes"].dtype == np.int32
    grids = outputs["spatial_shapes"]
    # Wide, tall and square images keep their aspect ratio.
    assert grids[0, 1] > grids[0, 0] and grids[1, 0] > grids[1, 1]
    assert grids[2, 0] == grids[2, 1]
    counts = grids.prod(-1)
    assert (counts <= 16).all()
    for row, count in enumerate(counts):
        assert outputs["patch_mask"][row].tolist() == [1] * count + [0] * (
            16 - count
        )
        assert (outputs["patches"][row, count:] == 0).all()
        real = outputs["patches"][row, :count]
        assert real.min() >= -1 - 1e-6 and real.max() <= 1 + 1e-6


def test_naflex_input_forms_agree():
    image = _noise(12, 20)
    converter = _naflex()
    expected = _numpy(converter([image, image]))
    for batch in (np.stack([image, image]), (image, image)):
        for key, value in _numpy(converter(batch)).items():
            np.testing.assert_array_equal(value, expected[key])
    one = _numpy(converter(image.astype("float32")))
    np.testing.assert_array_equal(one["patches"], expected["patches"][0])


def test_naflex_in_tf_data_matches_eager():
    images = _naflex_images()
    converter = _naflex()
    eager = _numpy(converter(images))
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(images),
        output_signature=tf.TensorSpec((None, None, 3), tf.uint8),
    )
    single = next(iter(dataset.map(converter).batch(3)))
    ragged = next(iter(dataset.ragged_batch(3).map(converter)))
    # The same graph; run by tf.data's threads, the resize kernel may round
    # the last bit differently (seen once in ~700 runs: 2.4e-6 on values
    # in [-1, 1]), so pixels are compared to float32 rounding.
    for outputs in (single, ragged):
        for key, value in eager.items():
            np.testing.assert_allclose(
                outputs[key].numpy(), value, rtol=0, atol=1e-5
            )
    same_size = tf.data.Dataset.from_tensors(np.stack([images[0]] * 2))
    dense = next(iter(same_size.map(converter)))
    np.testing.assert_allclose(
        dense["patches"].numpy()[1], eager["patches"][0], rtol=0, atol=1e-5
    )


def test_naflex_config_round_trip():
    converter = _naflex(max_num_patches=9, antialias=False)
    config = converter.get_config()
    assert config["naflex"] and config["patch_size"] == 4
    assert config["interpolation"] == "bilinear"
    restored = SigLIP2ImageConverter.from_config(config)
    assert restored.get_config() == config
    image = _noise(21, 13)
    for key, value in _numpy(converter(image)).items():
        np.testing.assert_array_equal(np.asarray(restored(image)[key]), value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_num_patches": 0}, "max_num_patches"),
        ({"patch_size": None}, "patch_size"),
        ({"image_size": 16}, "image_size"),
        ({"interpolation": "bicubic"}, "bilinear"),
        ({"crop_to_aspect_ratio": True}, "aspect ratio"),
        ({"scale": (0.1, 0.1, 0.1)}, "scalar `scale`"),
        ({"scale": 0.0}, "non-zero"),
    ],
)
def test_naflex_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _naflex(**kwargs)


def test_naflex_settings_without_naflex_are_refused():
    with pytest.raises(ValueError, match="naflex=True"):
        SigLIP2ImageConverter(image_size=8, patch_size=4)


def test_naflex_bad_images_are_named():
    converter = _naflex()
    with pytest.raises(ValueError, match=r"Image 1: .*empty"):
        converter([_noise(4, 4), np.zeros((0, 4, 3), "uint8")])
    with pytest.raises(ValueError, match=r"Image 0: .*finite"):
        converter([np.full((4, 4, 3), np.nan)])
    with pytest.raises(ValueError, match=r"got 1 channels"):
        converter(np.zeros((4, 4, 1)))


# --- Presets ------------------------------------------------------------------


def _keras_hub_converter(**kwargs):
    return keras_hub.layers.SigLIPImageConverter(
        **{
            "image_size": (20, 16),
            "scale": [1 / 127.5, 1 / 100.0, 1 / 60.0],
            "offset": [-1.0, -0.5, -2.0],
            "interpolation": "bilinear",
            "antialias": True,
            "crop_to_aspect_ratio": False,
            **kwargs,
        }
    )


def test_from_keras_hub_converter_preset(tmp_path):
    theirs = _keras_hub_converter()
    theirs.save_to_preset(str(tmp_path))
    ours = SigLIP2ImageConverter.from_preset(str(tmp_path))
    assert ours.image_size == (20, 16) and ours.interpolation == "bilinear"
    # keras-hub resizes uint8 images in uint8 (rounding); ours in float.
    image = _noise(33, 47)[None].astype("float32")
    np.testing.assert_allclose(
        np.asarray(ours(image)), np.asarray(theirs(image)), atol=1e-6
    )
    bigger = SigLIP2ImageConverter.from_preset(tmp_path, image_size=24)
    assert np.asarray(bigger(image)).shape == (1, 24, 24, 3)


def test_from_keras_hub_backbone_config(tmp_path):
    tiny_keras_hub_siglip(12, 10, 4).save_to_preset(str(tmp_path))
    config = SigLIP2ImageConverter.from_preset(tmp_path).get_config()
    expected = SigLIP2ImageConverter(image_size=12).get_config()
    config.pop("name"), expected.pop("name")
    assert config == expected


def test_from_our_naflex_backbone_and_our_converter(tmp_path):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=4,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=8,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=10,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=8,
        max_sequence_length=4,
    )
    SigLIP2Backbone(vision, text, naflex=True).save_to_preset(str(tmp_path))
    converter = SigLIP2ImageConverter.from_preset(tmp_path)
    assert converter.naflex and converter.patch_size == 4
    assert converter.max_num_patches == 16
    saved = _naflex(max_num_patches=7, antialias=False)
    saved.save_to_preset(str(tmp_path))
    loaded = SigLIP2ImageConverter.from_preset(tmp_path)
    assert loaded.get_config() == saved.get_config()


def test_bad_converter_presets(tmp_path):
    with pytest.raises(ValueError, match="no `image_converter.json`"):
        SigLIP2ImageConverter.from_preset(tmp_path)
    (tmp_path / "image_converter.json").write_text(
        '{"registered_name": "keras_hub>ResNetImageConverter", "config": {}}'
    )
    with pytest.raises(ValueError, match="ResNetImageConverter"):
        SigLIP2ImageConverter.from_preset(tmp_path)
    _keras_hub_converter(interpolation="area").save_to_preset(str(tmp_path))
    with pytest.raises(ValueError, match=r"image_converter\.json.*area"):
        SigLIP2ImageConverter.from_preset(tmp_path)
    with pytest.raises(ValueError, match="Did you mean"):
        SigLIP2ImageConverter.from_preset("siglip2_base_patch16_22")


def test_from_hf_checkpoint_config(tmp_path):
    from transformers import Siglip2Config
    from transformers import SiglipConfig

    SiglipConfig(vision_config={"image_size": 32}).save_pretrained(
        tmp_path / "siglip"
    )
    fixed = SigLIP2ImageConverter.from_preset(tmp_path / "siglip")
    assert fixed.image_size == (32, 32) and not fixed.naflex
    Siglip2Config(
        vision_config={"patch_size": 8, "num_patches": 64}
    ).save_pretrained(tmp_path / "siglip2")
    naflex = SigLIP2ImageConverter.from_preset(tmp_path / "siglip2")
    assert naflex.naflex and naflex.patch_size == 8
    assert naflex.max_num_patches == 64
