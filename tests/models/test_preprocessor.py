"""`SigLIP2Preprocessor`: eager and `tf.data`, feeding a tiny backbone.

Presets: keras-hub's `SigLIPPreprocessor` and `SigLIPBackbone` (saved with
their own `save_to_preset`) are the oracles; preset names go through
keras-hub's `get_file`, replaced by a local copy.
"""

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece_fixture as fixture
import tensorflow as tf
from keras_hub.src.utils import preset_utils
from keras_hub_models import tiny_keras_hub_siglip

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.preprocessor import SigLIP2Preprocessor
from keras_siglip2.models.presets import get_preset
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import SigLIPTokenizer
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

TEXTS = ["A red circle.", "ein blauer Kreis", "красный квадрат", "🐶 狗"]


@pytest.fixture(scope="module")
def proto():
    return fixture.train_gemma_like()


@pytest.fixture(scope="module")
def preprocessor(proto):
    return SigLIP2Preprocessor(
        SigLIP2Tokenizer(proto=proto), SigLIP2ImageConverter(image_size=16)
    )


def _images(count=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 30, 20, 3)).astype(np.uint8)


def test_eager_outputs(preprocessor):
    images = _images()
    outputs = preprocessor({"images": images, "prompts": TEXTS})
    assert set(outputs) == {"images", "token_ids"}
    assert tuple(outputs["images"].shape) == (4, 16, 16, 3)
    assert tuple(outputs["token_ids"].shape) == (4, 64)
    assert keras.backend.standardize_dtype(outputs["images"].dtype) == (
        "float32"
    )
    assert keras.backend.standardize_dtype(outputs["token_ids"].dtype) == (
        "int32"
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs["token_ids"]),
        preprocessor.tokenizer(TEXTS),
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["images"]),
        keras.ops.convert_to_numpy(preprocessor.image_converter(images)),
    )


def test_tf_data_batched_and_unbatched_match_eager(preprocessor):
    images = _images()
    eager = preprocessor({"images": images, "prompts": TEXTS})
    dataset = tf.data.Dataset.from_tensor_slices(
        {"images": images, "prompts": TEXTS}
    )
    batched = next(iter(dataset.batch(4).map(preprocessor)))
    single = next(iter(dataset.map(preprocessor).batch(4)))
    for outputs in (batched, single):
        np.testing.assert_array_equal(
            outputs["token_ids"].numpy(),
            keras.ops.convert_to_numpy(eager["token_ids"]),
        )
        np.testing.assert_allclose(
            outputs["images"].numpy(),
            keras.ops.convert_to_numpy(eager["images"]),
            atol=1e-5,
        )


def test_text_key_alias_and_partial_inputs(preprocessor):
    with_text = preprocessor({"text": TEXTS})
    with_prompts = preprocessor({"prompts": TEXTS})
    assert set(with_text) == {"token_ids"}
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(with_text["token_ids"]),
        keras.ops.convert_to_numpy(with_prompts["token_ids"]),
    )
    only_images = preprocessor({"images": _images(2)})
    assert set(only_images) == {"images"}
    one = preprocessor({"images": _images(1)[0], "prompts": "a dog"})
    assert tuple(one["images"].shape) == (16, 16, 3)
    assert tuple(one["token_ids"].shape) == (64,)


def test_labels_and_sample_weights_pass_through(preprocessor):
    x, y, sample_weight = preprocessor(
        {"prompts": TEXTS}, y=np.arange(4), sample_weight=np.ones(4)
    )
    assert set(x) == {"token_ids"}
    np.testing.assert_array_equal(y, np.arange(4))
    np.testing.assert_array_equal(sample_weight, np.ones(4))


def _tiny_backbone(vocabulary_size):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=vocabulary_size,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=64,
    )
    return SigLIP2Backbone(vision, text)


def test_feeds_backbone_end_to_end(preprocessor):
    backbone = _tiny_backbone(preprocessor.tokenizer.vocabulary_size())
    images = _images()
    eager = backbone(preprocessor({"images": images, "prompts": TEXTS}))
    logits = keras.ops.convert_to_numpy(eager)
    assert logits.shape == (4, 4) and np.isfinite(logits).all()
    dataset = (
        tf.data.Dataset.from_tensor_slices({"images": images, "prompts": TEXTS})
        .batch(4)
        .map(preprocessor)
    )
    batch = {k: v.numpy() for k, v in next(iter(dataset)).items()}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(batch)), logits, atol=1e-4
    )


def test_config_round_trip(preprocessor, tmp_path):
    config = keras.saving.serialize_keras_object(preprocessor)
    assert config["registered_name"] == "keras_siglip2>SigLIP2Preprocessor"
    preprocessor.tokenizer.save_assets(str(tmp_path))
    restored = keras.saving.deserialize_keras_object(config)
    restored.tokenizer.load_assets(str(tmp_path))
    assert isinstance(restored.tokenizer, SigLIP2Tokenizer)
    assert restored.image_converter.image_size == (16, 16)
    inputs = {"images": _images(2), "prompts": TEXTS[:2]}
    expected = preprocessor(inputs)
    for key, value in restored(inputs).items():
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(value),
            keras.ops.convert_to_numpy(expected[key]),
        )


@pytest.mark.parametrize(
    "inputs, error, match",
    [
        (["a"], TypeError, "dict"),
        ({"images": None, "captions": ["a"]}, ValueError, "captions"),
        ({"prompts": ["a"], "text": ["a"]}, ValueError, "not both"),
        ({}, ValueError, "empty dict"),
    ],
)
def test_bad_inputs(preprocessor, inputs, error, match):
    with pytest.raises(error, match=match):
        preprocessor(inputs)


def test_texts_without_tokenizer_are_rejected():
    preprocessor = SigLIP2Preprocessor(
        image_converter=SigLIP2ImageConverter(image_size=16)
    )
    with pytest.raises(ValueError, match="no tokenizer"):
        preprocessor({"prompts": ["a"]})


# --- NaFlex -------------------------------------------------------------------


def _tiny_naflex_backbone(vocabulary_size):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=4,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=vocabulary_size,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=64,
    )
    return SigLIP2Backbone(vision, text, naflex=True)


def _mixed_images():
    rng = np.random.default_rng(3)
    sizes = [(30, 12), (9, 40), (16, 16), (50, 50)]
    return [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in sizes]


def test_naflex_feeds_naflex_backbone_end_to_end(proto):
    converter = SigLIP2ImageConverter(
        naflex=True, patch_size=4, max_num_patches=20
    )
    preprocessor = SigLIP2Preprocessor(SigLIP2Tokenizer(proto=proto), converter)
    images = _mixed_images()
    inputs = preprocessor({"images": images, "prompts": TEXTS})
    assert set(inputs) == {
        "patches",
        "patch_mask",
        "spatial_shapes",
        "token_ids",
    }
    expected = converter(images)
    for key in ("patches", "patch_mask", "spatial_shapes"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(inputs[key]),
            keras.ops.convert_to_numpy(expected[key]),
        )
    backbone = _tiny_naflex_backbone(preprocessor.tokenizer.vocabulary_size())
    logits = keras.ops.convert_to_numpy(backbone(inputs))
    assert logits.shape == (4, 4) and np.isfinite(logits).all()
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(zip(images, TEXTS)),
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.uint8),
            tf.TensorSpec((), tf.string),
        ),
    ).map(lambda image, text: {"images": image, "prompts": text})
    for batched in (
        dataset.map(preprocessor).batch(4),
        dataset.ragged_batch(4).map(preprocessor),
    ):
        batch = {k: v.numpy() for k, v in next(iter(batched)).items()}
        # tf.data runs the resize in a traced graph, whose kernels may round
        # differently from eager ones; logits near -10 then differ by a few
        # float32 ulps, hence a relative tolerance.
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(backbone(batch)),
            logits,
            rtol=1e-5,
            atol=1e-5,
        )


# --- Presets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5_proto():
    return fixture.train_t5_like()


def test_from_keras_hub_siglip_preprocessor_preset(t5_proto, tmp_path):
    theirs = keras_hub.models.SigLIPPreprocessor(
        keras_hub.tokenizers.SigLIPTokenizer(proto=t5_proto, add_eos=True),
        keras_hub.layers.SigLIPImageConverter(
            image_size=(12, 12),
            scale=[1 / 127.5] * 3,
            offset=[-1.0] * 3,
            interpolation="bicubic",
            antialias=True,
            crop_to_aspect_ratio=False,
        ),
        sequence_length=10,
    )
    theirs.save_to_preset(str(tmp_path))
    ours = SigLIP2Preprocessor.from_preset(str(tmp_path))
    assert isinstance(ours.tokenizer, SigLIPTokenizer)
    assert ours.sequence_length == 10
    # keras-hub resizes uint8 images in uint8 (rounding); ours in float.
    inputs = {
        "images": _images().astype("float32"),
        "prompts": ["A red circle.", "two  Dogs, left!", "x", ""],
    }
    expected = theirs(inputs)
    outputs = ours(inputs)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs["token_ids"]),
        keras.ops.convert_to_numpy(expected["token_ids"]),
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs["images"]),
        keras.ops.convert_to_numpy(expected["images"]),
        atol=1e-6,
    )


def test_from_keras_hub_backbone_and_gemma_tokenizer(proto, tmp_path):
    """Backbone + tokenizer only: the image size and text length come from
    `config.json`; the result feeds the translated backbone, which agrees
    with keras-hub's."""
    theirs = tiny_keras_hub_siglip(12, 1000, 64)
    theirs.save_to_preset(str(tmp_path))
    keras_hub.tokenizers.GemmaTokenizer(proto=proto).save_to_preset(
        str(tmp_path)
    )
    preprocessor = SigLIP2Preprocessor.from_preset(tmp_path)
    assert isinstance(preprocessor.tokenizer, SigLIP2Tokenizer)
    assert preprocessor.image_converter.image_size == (12, 12)
    inputs = preprocessor({"images": _images(), "prompts": TEXTS})
    backbone = SigLIP2Backbone.from_preset(tmp_path)
    ours = keras.ops.convert_to_numpy(backbone(inputs))
    expected = theirs(inputs)["vision_logits"]
    np.testing.assert_allclose(
        ours, keras.ops.convert_to_numpy(expected), atol=1e-5
    )


@pytest.mark.parametrize("naflex", [False, True])
def test_our_save_to_preset_round_trips(proto, naflex, tmp_path):
    converter = (
        SigLIP2ImageConverter(naflex=True, patch_size=4, max_num_patches=12)
        if naflex
        else SigLIP2ImageConverter(image_size=10, interpolation="bilinear")
    )
    preprocessor = SigLIP2Preprocessor(
        SigLIP2Tokenizer(proto=proto, sequence_length=12), converter
    )
    preprocessor.save_to_preset(str(tmp_path))
    restored = SigLIP2Preprocessor.from_preset(str(tmp_path))
    assert restored.get_config() == preprocessor.get_config()
    inputs = {"images": _mixed_images()[:2], "prompts": TEXTS[:2]}
    if not naflex:
        inputs["images"] = _images(2)
    expected = preprocessor(inputs)
    for key, value in restored(inputs).items():
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(value),
            keras.ops.convert_to_numpy(expected[key]),
        )


def test_our_text_only_preset(proto, tmp_path):
    SigLIP2Preprocessor(SigLIP2Tokenizer(proto=proto)).save_to_preset(
        str(tmp_path)
    )
    restored = SigLIP2Preprocessor.from_preset(tmp_path)
    assert restored.image_converter is None
    assert tuple(restored({"prompts": TEXTS})["token_ids"].shape) == (4, 64)


def test_preset_name_downloads_through_keras_hub(proto, tmp_path, monkeypatch):
    keras_hub.tokenizers.GemmaTokenizer(proto=proto).save_to_preset(
        str(tmp_path)
    )
    SigLIP2ImageConverter(image_size=14).save_to_preset(str(tmp_path))
    handle = get_preset("siglip2_base_patch16_224").kaggle_handle
    requested = set()

    def get_file(preset, path):
        assert preset == handle
        requested.add(path)
        if not (tmp_path / path).is_file():
            raise FileNotFoundError(path)
        return str(tmp_path / path)

    monkeypatch.setattr(preset_utils, "get_file", get_file)
    preprocessor = SigLIP2Preprocessor.from_preset("siglip2_base_patch16_224")
    assert isinstance(preprocessor.tokenizer, SigLIP2Tokenizer)
    assert preprocessor.image_converter.image_size == (14, 14)
    assert "image_converter.json" in requested


def test_bad_presets(proto, tmp_path):
    with pytest.raises(ValueError, match="Did you mean"):
        SigLIP2Preprocessor.from_preset("siglip2_large_patch16_257")
    keras_hub.tokenizers.GemmaTokenizer(proto=proto).save_to_preset(
        str(tmp_path)
    )
    with pytest.raises(ValueError, match="no `image_converter.json`"):
        SigLIP2Preprocessor.from_preset(tmp_path)
    (tmp_path / "preprocessor.json").write_text(
        '{"registered_name": "keras_hub>GemmaCausalLMPreprocessor", '
        '"config": {}}'
    )
    with pytest.raises(ValueError, match="GemmaCausalLMPreprocessor"):
        SigLIP2Preprocessor.from_preset(tmp_path)
