"""Stage A: sigmoid + LocCa decoder losses under `fit`, on every backend."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from distribution_subprocess import run_code

from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.locca import random_locca_sequence
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.stage_a import StageAModel

VOCAB = LocCaVocabulary(text_vocabulary_size=40, num_location_bins=16)
DECODER_LENGTH = 12


def _stage_a(naflex=False, chunk_size=None):
    keras.utils.set_random_seed(0)
    vision = SigLIP2VisionEncoder(
        image_size=16,
        patch_size=4,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=24,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=VOCAB.text_vocabulary_size,
        hidden_dim=12,
        num_layers=2,
        num_heads=2,
        intermediate_dim=24,
        max_sequence_length=8,
        projection_dim=16,
    )
    backbone = SigLIP2Backbone(vision, text, naflex=naflex)
    decoder = locca_decoder_for(backbone, VOCAB.size, DECODER_LENGTH)
    return StageAModel(backbone, decoder, decoder_chunk_size=chunk_size)


def _dataset(n=16, batch_size=8, naflex=False, seed=0):
    rng = np.random.default_rng(seed)
    captions = np.zeros((n, 8), "int32")
    captions[:, :5] = rng.integers(4, VOCAB.text_vocabulary_size, (n, 5))
    captions[:, 5] = 1
    regions = np.roll(captions, 1, axis=0)
    boxes = np.sort(rng.uniform(0, 1, (n, 4)), axis=-1).astype("float32")
    images = rng.uniform(-1, 1, (n, 16, 16, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(
        (images, captions, regions, boxes)
    )

    def to_inputs(index, example):
        image, caption, region, box = example
        sequence = random_locca_sequence(
            tf.stack([index, index + 99]),
            caption,
            region,
            box,
            VOCAB,
            DECODER_LENGTH,
        )
        del sequence["task"]
        if naflex:
            patches = tf.reshape(image, (4, 4, 4, 4, 3))
            patches = tf.transpose(patches, (0, 2, 1, 3, 4))
            vision = {
                "patches": tf.reshape(patches, (16, 48)),
                "patch_mask": tf.ones((16,), tf.int32),
                "spatial_shapes": tf.constant([4, 4]),
            }
        else:
            vision = {"images": image}
        return {**vision, "token_ids": caption, **sequence}

    return data.enumerate().map(to_inputs).batch(batch_size)


def _numpy_losses(model, batch):
    """Sigmoid and decoder losses from the model's outputs, in numpy."""
    outputs = model(batch)
    logits = np.asarray(outputs["logits"], "float64")
    labels = 2 * np.eye(len(logits)) - 1
    sigmoid = np.mean(np.sum(np.logaddexp(0, -labels * logits), axis=-1))
    hidden = np.asarray(outputs["decoder_hidden"], "float64")
    head = model.decoder.head
    z = hidden @ np.asarray(head.kernel) + np.asarray(head.bias)
    z -= z.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    targets = np.asarray(batch["decoder_targets"])
    weights = np.asarray(batch["decoder_loss_weights"], "float64")
    ce = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    decoder = (ce * weights).sum() / max(weights.sum(), 1)
    return sigmoid, decoder


@pytest.mark.parametrize("naflex", [False, True])
def test_stage_a_reports_each_loss_as_in_numpy(naflex):
    model = _stage_a(naflex=naflex)
    model.compile(optimizer=siglip2_optimizer(total_steps=4))
    batch = next(iter(_dataset(n=8, naflex=naflex)))
    # The decoder head starts at zero; give it values so the check bites.
    model.decoder.head.kernel.assign(
        np.random.default_rng(1).normal(size=model.decoder.head.kernel.shape)
    )
    results = model.evaluate(
        _dataset(n=8, naflex=naflex), return_dict=True, verbose=0
    )
    sigmoid, decoder = _numpy_losses(model, batch)
    np.testing.assert_allclose(results["sigmoid_loss"], sigmoid, rtol=1e-5)
    np.testing.assert_allclose(results["decoder_loss"], decoder, rtol=1e-5)
    np.testing.assert_allclose(results["loss"], sigmoid + decoder, rtol=1e-5)


def test_stage_a_chunked_decoder_loss_equals_plain():
    plain, chunked = _stage_a(), _stage_a(chunk_size=5)
    chunked.set_weights(plain.get_weights())
    data = _dataset(n=8)
    for model in (plain, chunked):
        model.compile(optimizer=siglip2_optimizer(total_steps=4))
    a = plain.evaluate(data, return_dict=True, verbose=0)
    b = chunked.evaluate(data, return_dict=True, verbose=0)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)


def test_stage_a_ring_loss_is_the_plain_loss_on_one_device():
    plain = _stage_a()
    ring = StageAModel(plain.backbone, plain.decoder, ring_loss=True)
    batch = {k: np.asarray(v) for k, v in next(iter(_dataset(n=8))).items()}
    outputs = ring(batch)
    np.testing.assert_allclose(
        np.asarray(
            ring.backbone.contrastive_logits(
                outputs["image_embeddings"], outputs["text_embeddings"]
            )
        ),
        np.asarray(outputs["logits"]),
        rtol=1e-6,
    )
    sigmoid, decoder = _numpy_losses(plain, batch)
    # No distribution: `ring_sigmoid_loss` falls back to the global logits.
    loss = ring.compute_loss(x=batch, y_pred=outputs)
    np.testing.assert_allclose(float(loss), sigmoid + decoder, rtol=1e-5)
    np.testing.assert_allclose(
        float(ring.sigmoid_loss_tracker.result()), sigmoid, rtol=1e-5
    )


def test_stage_a_ring_loss_config_and_bad_value():
    model = _stage_a()
    assert model.get_config()["ring_loss"] is False
    ring = StageAModel(model.backbone, model.decoder, ring_loss=True)
    restored = StageAModel.from_config(ring.get_config())
    assert restored.ring_loss is True
    with pytest.raises(TypeError, match="must be a bool; got 'yes'"):
        StageAModel(model.backbone, model.decoder, ring_loss="yes")


def test_stage_a_fit_with_callbacks(tmp_path):
    model = _stage_a()
    model.compile(optimizer=siglip2_optimizer(total_steps=6))
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "stage_a.keras")),
        keras.callbacks.TensorBoard(str(tmp_path / "logs")),
        keras.callbacks.ProgbarLogger(),
    ]
    history = model.fit(_dataset(), epochs=3, callbacks=callbacks, verbose=0)
    losses = history.history["loss"]
    assert set(history.history) >= {"loss", "sigmoid_loss", "decoder_loss"}
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert os.listdir(tmp_path / "logs")
    restored = keras.models.load_model(tmp_path / "stage_a.keras")
    assert isinstance(restored, StageAModel)
    batch = next(iter(_dataset(n=8)))
    np.testing.assert_allclose(
        np.asarray(restored(batch)["logits"]),
        np.asarray(model(batch)["logits"]),
        atol=1e-5,
    )


_BACKEND_CODE = """
import json
import numpy as np
from training.test_stage_a import _dataset, _stage_a
from keras_siglip2.training.optimizer import siglip2_optimizer
import keras
model = _stage_a()
model.compile(
    optimizer=siglip2_optimizer(total_steps=2, warmup_steps=0)
)
before = [np.array(w) for w in model.trainable_weights]
history = model.fit(_dataset(n=8), epochs=1, verbose=0)
unchanged = [
    b.path
    for a, b in zip(before, model.trainable_weights)
    if np.allclose(a, np.asarray(b))
]
# `ring_loss=True` falls back to the plain loss on this backend.
from keras_siglip2.training.stage_a import StageAModel
ring = StageAModel(model.backbone, model.decoder, ring_loss=True)
batch = {
    k: np.asarray(v) for k, v in next(iter(_dataset(n=8))).items()
}
losses = [
    float(keras.ops.convert_to_numpy(
        m.compute_loss(x=batch, y_pred=m(batch))
    ))
    for m in (model, ring)
]
print("RESULT " + json.dumps({
    "backend": keras.backend.backend(),
    "history": {k: v[-1] for k, v in history.history.items()},
    "unchanged": unchanged,
    "plain_and_ring_loss": losses}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_stage_a_fit_on_other_backends(backend):
    report = run_code(_BACKEND_CODE, backend=backend)
    assert report["backend"] == backend
    history = report["history"]
    assert {"loss", "sigmoid_loss", "decoder_loss"} <= set(history)
    assert all(np.isfinite(v) for v in history.values())
    plain_loss, ring_loss = report["plain_and_ring_loss"]
    np.testing.assert_allclose(ring_loss, plain_loss, rtol=1e-6)
    # One step updates every weight except the decoder's inner layers: its
    # output head starts at zero, so no gradient reaches them yet.
    unchanged = report["unchanged"]
    assert not [
        path
        for path in unchanged
        if "locca_decoder" not in path or "/head/" in path
    ]
