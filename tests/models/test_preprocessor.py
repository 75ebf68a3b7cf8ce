"""`SigLIP2Preprocessor`: eager and `tf.data`, feeding a tiny backbone."""

import keras
import numpy as np
import pytest
import sentencepiece_fixture as fixture
import tensorflow as tf

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.preprocessor import SigLIP2Preprocessor
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
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
