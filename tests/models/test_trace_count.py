"""Compiled paths trace once per input shape: repeated calls with
same-shape inputs hit the jit caches (no retracing, no recompilation)."""

import jax
import keras
import numpy as np
import pytest

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

IMAGE = 8
LENGTH = 5


class _Counter:
    """Counts the Python executions (= traces) of an encoder's `call`."""

    def __init__(self, layer):
        self.layer = layer
        self.count = 0
        self.original = layer.call

    def __enter__(self):
        def counting_call(*args, **kwargs):
            self.count += 1
            return self.original(*args, **kwargs)

        self.layer.call = counting_call
        return self

    def __exit__(self, *exc):
        self.layer.call = self.original


def _encoders():
    vision = SigLIP2VisionEncoder(
        image_size=IMAGE,
        patch_size=4,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=11,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        intermediate_dim=16,
        max_sequence_length=LENGTH,
    )
    return vision, text


@pytest.fixture(scope="module")
def backbone():
    return SigLIP2Backbone(*_encoders())


def _inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(-1, 1, (batch, IMAGE, IMAGE, 3)).astype(
            "float32"
        ),
        "token_ids": rng.integers(0, 11, (batch, LENGTH)).astype("int32"),
    }


def test_predict_on_batch_traces_once_per_shape(backbone):
    with (
        _Counter(backbone.vision_encoder) as vision,
        _Counter(backbone.text_encoder) as text,
    ):
        for step in range(4):
            backbone.predict_on_batch(_inputs(2, seed=step))
        first = (vision.count, text.count)
        assert first == (1, 1)
        # A new batch size is a new shape: exactly one more trace each.
        for step in range(3):
            backbone.predict_on_batch(_inputs(3, seed=step))
        assert (vision.count, text.count) == (2, 2)


def test_train_on_batch_traces_once(backbone):
    backbone.compile(optimizer=keras.optimizers.SGD(1e-3))
    with _Counter(backbone.vision_encoder) as vision:
        losses = [
            backbone.train_on_batch(_inputs(2, seed=step)) for step in range(4)
        ]
    assert vision.count == 1
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_jitted_stateless_call_traces_once(tower):
    vision, text = _encoders()
    encoder = vision if tower == "vision" else text
    inputs = _inputs(2)["images" if tower == "vision" else "token_ids"]
    encoder.build(inputs.shape)
    variables = [v.value for v in encoder.trainable_variables]

    @jax.jit
    def forward(variables, x):
        return encoder.stateless_call(variables, [], x)[0]["pooled_output"]

    with _Counter(encoder) as counter:
        outputs = [forward(variables, inputs) for _ in range(5)]
        assert counter.count == 1
        forward(variables, inputs[:1])
        assert counter.count == 2
    eager = encoder(inputs)["pooled_output"]
    np.testing.assert_allclose(outputs[-1], eager, rtol=1e-5, atol=1e-6)
