"""LocCa decoder: attention structure, masking, decoding, serialization."""

import keras
import numpy as np
import pytest

from keras_siglip2.models.locca_decoder import LocCaDecoder

VOCAB = 23


@pytest.fixture(scope="module")
def decoder():
    keras.utils.set_random_seed(0)
    layer = LocCaDecoder(
        vocabulary_size=VOCAB,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=24,
        max_sequence_length=8,
        image_dim=12,
    )
    layer.build((None, 8))
    # The head starts at zero (uniform predictions); randomise it so
    # decoding is informative.
    layer.head.kernel.assign(
        np.random.default_rng(0).normal(size=(16, VOCAB)).astype("float32")
    )
    return layer


def _inputs(seed=0, batch=2, length=6, patches=5):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, length)).astype("int32")
    image = rng.normal(size=(batch, patches, 12)).astype("float32")
    return ids, image


def test_autoregressive_positions_ignore_the_future(decoder):
    ids, image = _inputs()
    changed = ids.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    a = np.asarray(decoder(ids, image))
    b = np.asarray(decoder(changed, image))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


def test_parallel_examples_see_the_whole_sequence(decoder):
    ids, image = _inputs()
    changed = ids.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    parallel = np.array([True, False])
    a = np.asarray(decoder(ids, image, parallel=parallel))
    b = np.asarray(decoder(changed, image, parallel=parallel))
    assert np.abs(a[0, :4] - b[0, :4]).max() > 1e-3
    np.testing.assert_allclose(a[1, :4], b[1, :4], atol=1e-6)


def test_padded_image_tokens_are_ignored(decoder):
    ids, image = _inputs()
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "int32")
    noisy = image.copy()
    noisy[0, 3:] = 50.0
    np.testing.assert_allclose(
        np.asarray(decoder(ids, image, image_mask=mask)),
        np.asarray(decoder(ids, noisy, image_mask=mask)),
        atol=1e-6,
    )


def test_greedy_generation_matches_step_by_step_argmax(decoder):
    _, image = _inputs()
    prompts = np.array([[3, 4, 0], [5, 0, 0]], "int32")
    lengths = np.array([2, 1], "int32")
    generated = np.asarray(decoder.generate(image, prompts, lengths, 4))
    for b in range(2):
        sequence = list(prompts[b, : lengths[b]])
        for _ in range(4):
            hidden = decoder(np.array([sequence], "int32"), image[b : b + 1])
            logits = np.asarray(decoder.logits(hidden))[0, -1]
            sequence.append(int(np.argmax(logits)))
        assert generated[b].tolist() == sequence[lengths[b] :]


def test_generation_respects_allowed_tokens(decoder):
    _, image = _inputs()
    allowed = np.zeros(VOCAB, bool)
    allowed[[7, 9]] = True
    generated = np.asarray(
        decoder.generate(
            image,
            np.array([[3], [4]]),
            np.array([1, 1]),
            3,
            allowed_token_mask=allowed,
        )
    )
    assert set(generated.ravel()) <= {7, 9}


def test_too_long_generation_is_rejected(decoder):
    _, image = _inputs()
    with pytest.raises(ValueError, match="max_sequence_length"):
        decoder.generate(image, np.zeros((2, 5)), np.ones(2), 4)


def test_config_round_trip(decoder):
    config = decoder.get_config()
    clone = LocCaDecoder.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 8))
    clone.set_weights(decoder.get_weights())
    ids, image = _inputs()
    np.testing.assert_allclose(
        np.asarray(clone(ids, image)), np.asarray(decoder(ids, image))
    )
