"""`SigLIP2Backbone`: logits math, embeddings, fit, serialization, bad input."""

import math

import keras
import numpy as np
import pytest

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder


def _backbone(**kwargs):
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=20,
        hidden_dim=12,
        num_layers=1,
        num_heads=3,
        intermediate_dim=16,
        max_sequence_length=6,
        projection_dim=8,
    )
    return SigLIP2Backbone(vision, text, **kwargs)


def _inputs(num_images=3, num_texts=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(-1, 1, (num_images, 16, 16, 3)).astype("float32"),
        "token_ids": rng.integers(0, 20, (num_texts, 6)).astype("int32"),
    }


def test_initial_logit_scale_and_bias():
    backbone = _backbone()
    logits = backbone.contrastive_logits
    assert float(logits.logit_scale) == pytest.approx(math.log(10.0))
    assert float(logits.logit_bias) == pytest.approx(-10.0)


def test_logits_match_numpy_reference():
    backbone = _backbone()
    x = _inputs()
    img = np.asarray(backbone.get_vision_embeddings(x["images"]), "float64")
    txt = np.asarray(backbone.get_text_embeddings(x["token_ids"]), "float64")
    assert img.shape == (3, 8) and txt.shape == (4, 8)
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    expected = img @ txt.T * 10.0 - 10.0
    np.testing.assert_allclose(np.asarray(backbone(x)), expected, atol=1e-5)


def test_from_config_name_builds_the_named_architecture():
    # Variables stay uninitialised (no memory); clear them afterwards so a
    # later training step does not initialise them.
    with keras.StatelessScope(initialize_variables=False):
        backbone = SigLIP2Backbone.from_config_name(
            "b_patch32_224", vocabulary_size=100, max_sequence_length=8
        )
    keras.utils.clear_session()
    vision = backbone.vision_encoder
    assert (vision.hidden_dim, vision.num_layers, vision.patch_size) == (
        768,
        12,
        32,
    )
    assert backbone.text_encoder.vocabulary_size == 100
    assert backbone.input["images"].shape == (None, 224, 224, 3)


def test_fit_trains_with_the_default_sigmoid_loss():
    backbone = _backbone()
    backbone.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = _inputs(num_images=4, num_texts=4)
    before = [np.array(w) for w in backbone.trainable_weights]
    history = backbone.fit(x, batch_size=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = backbone.trainable_weights
    assert any(not np.allclose(a, np.array(b)) for a, b in zip(before, after))


def test_keras_file_round_trip(tmp_path):
    backbone = _backbone()
    x = _inputs()
    path = tmp_path / "backbone.keras"
    backbone.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, SigLIP2Backbone)
    for name in ("vision_encoder", "text_encoder"):
        assert (
            getattr(restored, name).get_config()
            == getattr(backbone, name).get_config()
        )
    np.testing.assert_allclose(
        np.asarray(restored(x)), np.asarray(backbone(x)), atol=1e-6
    )


@pytest.mark.parametrize(
    "shape", [(2, 16, 16), (2, 16, 16, 1), (2, 16, 16, 4), (2, 15, 16, 3)]
)
def test_bad_image_shape_names_the_shape(shape):
    backbone = _backbone()
    with pytest.raises(ValueError, match=r"images.*must have shape"):
        backbone.get_vision_embeddings(np.zeros(shape, "float32"))


def test_out_of_vocabulary_ids_are_rejected():
    backbone = _backbone()
    ids = np.full((2, 6), 20, "int32")
    with pytest.raises(ValueError, match=r"\[0, 20\).*\[20, 20\]"):
        backbone.get_text_embeddings(ids)
    with pytest.raises(ValueError, match="\\[0, 20\\)"):
        backbone.get_text_embeddings(-np.ones((2, 6), "int32"))


def test_float_token_ids_are_rejected():
    backbone = _backbone()
    with pytest.raises(ValueError, match="integers"):
        backbone.get_text_embeddings(np.zeros((2, 6), "float32"))


def test_too_long_text_is_rejected():
    backbone = _backbone()
    with pytest.raises(ValueError, match="length <= 6"):
        backbone.get_text_embeddings(np.zeros((2, 7), "int32"))


def test_mismatched_projection_is_rejected():
    vision = SigLIP2VisionEncoder(16, 8, 8, 1, 2, 16)
    text = SigLIP2TextEncoder(20, 12, 1, 3, 16, 6, projection_dim=12)
    with pytest.raises(ValueError, match="projection_dim"):
        SigLIP2Backbone(vision, text)
