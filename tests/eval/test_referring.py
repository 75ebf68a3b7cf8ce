"""Referring expression comprehension: IoU, sequences, decoder protocol.

Oracles: hand-computed IoUs (overlap, containment, touching, empty and
inverted boxes), hand-built decoder sequences and prompts, quantised
ground-truth boxes (accuracy 1), and a decoder trained on a frozen tiny
encoder until it reproduces the boxes of its training expressions, which
checks that training sequences, prompts and greedy decoding line up.
"""

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import tiny_backbone

from keras_siglip2.data import generated
from keras_siglip2.data.locca import REFERRING
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.readers import jsonl_examples
from keras_siglip2.data.readers import write_jsonl
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.eval import referring
from keras_siglip2.eval.encoders import BackboneEncoder
from keras_siglip2.eval.encoders import as_examples
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer

VOCAB = LocCaVocabulary(text_vocabulary_size=10, num_location_bins=5)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # overlap 1, union 4 + 4 - 1
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),
        ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),  # contained
        ([0, 0, 1, 1], [1, 1, 2, 2], 0.0),  # touching corners
        ([0, 0, 1, 1], [0, 1, 1, 2], 0.0),  # touching edges
        ([0, 0, 1, 2], [0, 0, 1, 1], 0.5),
        ([0.1, 0.2, 0.5, 0.6], [0.3, 0.2, 0.7, 0.6], 0.08 / 0.24),
        ([2, 2, 1, 1], [1, 1, 2, 2], 0.0),  # inverted: empty
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # two empty boxes
    ],
)
def test_box_iou_hand_computed(a, b, expected):
    assert referring.box_iou(a, b) == pytest.approx(expected)
    assert referring.box_iou(b, a) == pytest.approx(expected)


def test_box_iou_broadcasts():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]])
    iou = referring.box_iou(boxes[:, None], boxes[None, :])
    assert iou.shape == (3, 3)
    np.testing.assert_allclose(np.diag(iou), 1.0)
    assert iou[0, 1] == pytest.approx(1 / 7) and iou[0, 2] == 0.0


def test_accuracy_counts_iou_of_exactly_half():
    predicted = [[0, 0, 1, 2], [0, 0, 1, 2], [5, 5, 6, 6]]
    true = [[0, 0, 1, 1], [0, 0, 1, 3], [0, 0, 1, 1]]
    # IoUs 0.5, 2/3 and 0.
    assert referring.referring_accuracy(predicted, true) == pytest.approx(2 / 3)
    assert referring.referring_accuracy(predicted, true, 0.6) == pytest.approx(
        1 / 3
    )


def test_location_token_mask():
    mask = referring.location_token_mask(VOCAB)
    assert mask.shape == (VOCAB.size,)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(10, 15))


def test_sequences_and_prompts_hand_built():
    # Tokens 5, 6 then EOS (1) and padding; a box on bins (0, 1, 2, 4).
    ids = [[5, 6, 1, 0, 0, 0], [7, 8, 9, 7, 8, 1]]
    boxes = [[0.0, 0.25, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]]
    sequences = referring.referring_sequences(ids, boxes, VOCAB, max_length=8)
    ref = VOCAB.task_id(REFERRING)
    np.testing.assert_array_equal(
        sequences["decoder_inputs"][0], [ref, 5, 6, 10, 11, 12, 14, 0]
    )
    np.testing.assert_array_equal(
        sequences["decoder_targets"][0], [5, 6, 10, 11, 12, 14, 1, 0]
    )
    np.testing.assert_array_equal(
        sequences["decoder_loss_weights"][0], [0, 0, 1, 1, 1, 1, 1, 0]
    )
    np.testing.assert_array_equal(sequences["prompt_ids"][0], [ref, 5, 6, 0])
    # The long expression is cut to 8 - 5 = 3 tokens: the box still fits.
    np.testing.assert_array_equal(
        sequences["decoder_inputs"][1], [ref, 7, 8, 9, 10, 10, 14, 14]
    )
    np.testing.assert_array_equal(
        sequences["decoder_targets"][1], [7, 8, 9, 10, 10, 14, 14, 1]
    )
    np.testing.assert_array_equal(sequences["prompt_ids"][1], [ref, 7, 8, 9])
    np.testing.assert_array_equal(sequences["prompt_lengths"], [3, 4])


def test_quantised_ground_truth_is_correct():
    examples = as_examples(generated.generated_examples("test", 0, 20))
    _, _, boxes = referring.referring_pairs(examples)
    vocabulary = LocCaVocabulary(100, num_location_bins=1000)
    quantised = vocabulary.tokens_to_box(vocabulary.box_to_tokens(boxes))
    assert referring.referring_accuracy(np.asarray(quantised), boxes) == 1.0


def test_pairs_from_refcoco_style_jsonl(tmp_path):
    rows = [
        {
            "key": "a",
            "image": np.zeros((20, 40, 3), np.uint8),
            "captions": ["two boxes"],
            "boxes": [[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 1.0, 1.0]],
            "refexps": ["the left one", ""],
        },
        {
            "key": "b",
            "image": np.zeros((10, 10, 3), np.uint8),
            "captions": ["no boxes"],
        },
    ]
    write_jsonl(rows, tmp_path / "refs.jsonl")
    examples = as_examples(jsonl_examples(tmp_path / "refs.jsonl"))
    images, expressions, boxes = referring.referring_pairs(examples)
    np.testing.assert_array_equal(images, [0])
    assert expressions == ["the left one"]
    np.testing.assert_allclose(boxes, [[0.1, 0.2, 0.5, 0.6]], atol=1e-4)


def test_wrong_decoder_vocabulary_is_an_error():
    class Encoder:
        tokenizer = SigLIP2Tokenizer(
            proto=train_demo_sentencepiece(600, num_examples=50),
            sequence_length=12,
        )

    decoder = referring.LocCaDecoder(20, 8, 1, 2, 16, 16, 8)
    with pytest.raises(ValueError, match=r"vocabulary \(20\) must be"):
        referring.evaluate_referring(Encoder(), [], [], decoder=decoder)


def test_decoder_on_frozen_tiny_encoder_learns_its_boxes():
    backbone = tiny_backbone(600, 12)
    proto = train_demo_sentencepiece(600, num_examples=100)
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=12)
    encoder = BackboneEncoder(backbone, tokenizer)
    frozen = [w.numpy().copy() for w in backbone.weights]
    examples = as_examples(
        generated.generated_examples(
            "train", 0, 6, image_size=16, english_fraction=1.0
        )
    )
    # Scored on its own training expressions: a decoder that memorised
    # them proves that sequences, prompts and decoding agree.
    results = referring.evaluate_referring(
        encoder,
        examples,
        examples,
        num_location_bins=16,
        steps=300,
        batch_size=8,
        learning_rate=3e-3,
    )
    assert results["num_train"] == results["num_test"] == 17
    assert 0 < results["train_loss_last"] < 0.1 * results["train_loss_first"]
    assert results["accuracy@0.5"] >= 0.9
    assert 0.5 <= results["mean_iou"] <= 1.0
    for before, after in zip(frozen, backbone.weights):
        np.testing.assert_array_equal(before, after.numpy())
    # Building the decoder keeps TensorFlow's state (no global reseed):
    # the tokenizer still works inside tf.data.
    texts = ["a red circle", "ein blaues quadrat"]
    in_graph = next(
        iter(tf.data.Dataset.from_tensors(texts).map(tokenizer))
    ).numpy()
    np.testing.assert_array_equal(in_graph, np.asarray(tokenizer(texts)))
