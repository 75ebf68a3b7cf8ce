"""LocCa decoder sequences: layouts written out by hand."""

import numpy as np
import tensorflow as tf

from keras_siglip2.data.locca import CAPTION
from keras_siglip2.data.locca import GROUNDED
from keras_siglip2.data.locca import REFERRING
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.locca import locca_sequence
from keras_siglip2.data.locca import random_locca_sequence

VOCAB = LocCaVocabulary(text_vocabulary_size=100, num_location_bins=11)
CAPTION_IDS = np.array([5, 6, 7, 1, 0, 0])
REGION_IDS = np.array([8, 9, 1, 0, 0, 0])
BOX = np.array([0.1, 0.2, 0.5, 0.9], "float32")
# Bins of BOX over 11 bins (0, 0.1, ..., 1.0): 1, 2, 5, 9.
BOX_TOKENS = [101, 102, 105, 109]
CAP, REF, GCAP = 111, 112, 113
MASK = 114


def _as_lists(sequence):
    return {key: np.asarray(value).tolist() for key, value in sequence.items()}


def test_vocabulary_layout():
    assert VOCAB.size == 115
    assert [VOCAB.task_id(t) for t in (CAPTION, REFERRING, GROUNDED)] == [
        CAP,
        REF,
        GCAP,
    ]
    assert VOCAB.mask_id == MASK
    np.testing.assert_array_equal(VOCAB.box_to_tokens(BOX), BOX_TOKENS)
    np.testing.assert_allclose(
        VOCAB.tokens_to_box(BOX_TOKENS), [0.1, 0.2, 0.5, 0.9], atol=1e-6
    )
    assert float(VOCAB.tokens_to_box([5])[0]) == -1.0


def test_captioning_autoregressive_and_parallel():
    seq = _as_lists(
        locca_sequence(CAPTION, CAPTION_IDS, REGION_IDS, BOX, VOCAB, 8)
    )
    assert seq["decoder_inputs"] == [CAP, 5, 6, 7, 0, 0, 0, 0]
    assert seq["decoder_targets"] == [5, 6, 7, 1, 0, 0, 0, 0]
    assert seq["decoder_loss_weights"] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert seq["parallel"] is False
    seq = _as_lists(
        locca_sequence(
            CAPTION, CAPTION_IDS, REGION_IDS, BOX, VOCAB, 8, parallel=True
        )
    )
    assert seq["decoder_inputs"] == [CAP, MASK, MASK, MASK, 0, 0, 0, 0]
    assert seq["decoder_targets"] == [5, 6, 7, 1, 0, 0, 0, 0]
    assert seq["parallel"] is True


def test_referring_expression_predicts_the_box():
    seq = _as_lists(
        locca_sequence(
            REFERRING, CAPTION_IDS, REGION_IDS, BOX, VOCAB, 8, parallel=True
        )
    )
    assert seq["decoder_inputs"] == [REF, 8, 9, *BOX_TOKENS, 0]
    assert seq["decoder_targets"] == [8, 9, *BOX_TOKENS, 1, 0]
    assert seq["decoder_loss_weights"] == [0, 0, 1, 1, 1, 1, 1, 0]
    # Parallel prediction applies to captioning only.
    assert seq["parallel"] is False


def test_grounded_captioning_predicts_the_region_caption():
    seq = _as_lists(
        locca_sequence(GROUNDED, CAPTION_IDS, REGION_IDS, BOX, VOCAB, 8)
    )
    assert seq["decoder_inputs"] == [GCAP, *BOX_TOKENS, 8, 9, 0]
    assert seq["decoder_targets"] == [*BOX_TOKENS, 8, 9, 1, 0]
    assert seq["decoder_loss_weights"] == [0, 0, 0, 0, 1, 1, 1, 0]


def test_long_sequences_are_truncated():
    long_caption = np.arange(10, 40)
    seq = _as_lists(
        locca_sequence(CAPTION, long_caption, REGION_IDS, BOX, VOCAB, 8)
    )
    assert seq["decoder_inputs"] == [CAP, *range(10, 17)]
    assert seq["decoder_targets"] == list(range(10, 18))


def test_random_tasks_in_tf_data_are_deterministic_and_mixed():
    def make():
        data = tf.data.Dataset.from_tensors((CAPTION_IDS, REGION_IDS, BOX))
        data = data.repeat(200).enumerate()
        return data.map(
            lambda i, x: random_locca_sequence(
                tf.stack([i, i + 1000]), *x, VOCAB, 8
            )
        )

    first = [(int(e["task"]), bool(e["parallel"])) for e in make()]
    assert first == [(int(e["task"]), bool(e["parallel"])) for e in make()]
    tasks = np.array([t for t, _ in first])
    counts = np.bincount(tasks, minlength=3) / len(tasks)
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.25], atol=0.1)
    parallel = [p for t, p in first if t == CAPTION]
    assert 0.3 < np.mean(parallel) < 0.7
    assert not any(p for t, p in first if t != CAPTION)
