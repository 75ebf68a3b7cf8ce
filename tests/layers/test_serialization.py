"""Every layer and encoder: config round trip and `.keras` round trip."""

import keras
import numpy as np
import pytest

from keras_siglip2.layers import ContrastiveLogits
from keras_siglip2.layers import MAPHead
from keras_siglip2.layers import MlpBlock
from keras_siglip2.layers import MultiHeadAttention
from keras_siglip2.layers import PatchEmbedding
from keras_siglip2.layers import PositionEmbedding2D
from keras_siglip2.layers import TransformerEncoderBlock
from keras_siglip2.models import SigLIP2TextEncoder
from keras_siglip2.models import SigLIP2VisionEncoder

BATCH, LENGTH, HIDDEN, HEADS, MLP = 2, 4, 8, 2, 16


def _float(*shape):
    return keras.Input(shape), lambda rng: rng.normal(
        size=(BATCH,) + shape
    ).astype("float32")


def _mask():
    def value(rng):
        return np.arange(LENGTH)[None, :] < np.array([[3], [LENGTH]])

    return keras.Input((LENGTH,), dtype="bool"), value


def _token_ids(length, vocabulary_size):
    def value(rng):
        return rng.integers(0, vocabulary_size, (BATCH, length), "int32")

    return keras.Input((length,), dtype="int32"), value


# name -> (layer factory, input factories, how the layer is called).
CASES = {
    "mlp": (
        lambda: MlpBlock(HIDDEN, MLP),
        lambda: [_float(LENGTH, HIDDEN)],
        lambda layer, x: layer(x),
    ),
    "attention": (
        lambda: MultiHeadAttention(HEADS, HIDDEN, kernel_initializer="zeros"),
        lambda: [_float(3, HIDDEN), _float(LENGTH, HIDDEN), _mask()],
        lambda layer, q, v, m: layer(q, v, attention_mask=m),
    ),
    "encoder_block": (
        lambda: TransformerEncoderBlock(
            HIDDEN, HEADS, MLP, layer_norm_epsilon=1e-5, dropout=0.1
        ),
        lambda: [_float(LENGTH, HIDDEN), _mask()],
        lambda layer, x, m: layer(x, attention_mask=m),
    ),
    "map_head": (
        lambda: MAPHead(HIDDEN, HEADS, MLP, layer_norm_epsilon=1e-5),
        lambda: [_float(LENGTH, HIDDEN), _mask()],
        lambda layer, x, m: layer(x, attention_mask=m),
    ),
    "patch_embedding": (
        lambda: PatchEmbedding(HIDDEN, 4),
        lambda: [_float(8, 12, 3)],
        lambda layer, x: layer(x),
    ),
    "position_embedding": (
        lambda: PositionEmbedding2D(3, 4, HIDDEN),
        lambda: [_float(12, HIDDEN)],
        lambda layer, x: layer(x),
    ),
    "contrastive_logits": (
        lambda: ContrastiveLogits(logit_scale_init=1.5, logit_bias_init=-3.0),
        lambda: [_float(HIDDEN), _float(HIDDEN)],
        lambda layer, x, y: layer(x, y),
    ),
    "vision_encoder": (
        lambda: SigLIP2VisionEncoder(
            image_size=8,
            patch_size=4,
            hidden_dim=HIDDEN,
            num_layers=2,
            num_heads=HEADS,
            intermediate_dim=MLP,
        ),
        lambda: [_float(8, 8, 3)],
        lambda layer, x: layer(x),
    ),
    "vision_encoder_without_head": (
        lambda: SigLIP2VisionEncoder(
            image_size=8,
            patch_size=4,
            hidden_dim=HIDDEN,
            num_layers=1,
            num_heads=HEADS,
            intermediate_dim=MLP,
            use_head=False,
        ),
        lambda: [_float(8, 8, 3)],
        lambda layer, x: layer(x),
    ),
    "text_encoder": (
        lambda: SigLIP2TextEncoder(
            vocabulary_size=10,
            hidden_dim=HIDDEN,
            num_layers=2,
            num_heads=HEADS,
            intermediate_dim=MLP,
            max_sequence_length=LENGTH,
            projection_dim=12,
        ),
        lambda: [_token_ids(LENGTH, 10)],
        lambda layer, *x: layer(*x),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_config_round_trip(name):
    layer = CASES[name][0]()
    config = layer.get_config()
    restored = type(layer).from_config(config)
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    # Through the registry too, as `.keras` loading does.
    deserialized = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(deserialized) is type(layer)
    assert deserialized.get_config() == config


def _to_numpy(outputs):
    if isinstance(outputs, dict):
        return {k: np.asarray(v) for k, v in outputs.items()}
    return np.asarray(outputs)


@pytest.mark.parametrize("name", list(CASES))
def test_keras_file_round_trip(name, tmp_path, randomize):
    make_layer, make_inputs, call = CASES[name]
    inputs, values = zip(*make_inputs())
    layer = make_layer()
    model = keras.Model(list(inputs), call(layer, *inputs))
    randomize(layer, seed=3)
    rng = np.random.default_rng(4)
    data = [value(rng) for value in values]
    expected = _to_numpy(model(data))

    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)

    restored_layer = restored.get_layer(layer.name)
    assert type(restored_layer) is type(layer)
    assert restored_layer.get_config() == layer.get_config()
    assert len(restored_layer.weights) == len(layer.weights)
    for saved, loaded in zip(layer.weights, restored_layer.weights):
        assert saved.path == loaded.path
        np.testing.assert_array_equal(saved.value, loaded.value)
    outputs = _to_numpy(restored(data))
    if isinstance(expected, dict):
        assert outputs.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(outputs[key], expected[key])
    else:
        np.testing.assert_array_equal(outputs, expected)
