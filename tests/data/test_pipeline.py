"""Training batches from generated and real-format examples."""

import numpy as np
import pytest

from keras_siglip2.data.generated import generated_dataset
from keras_siglip2.data.generated import generated_examples
from keras_siglip2.data.locca import CAPTION
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.pipeline import batch_sequence_lengths
from keras_siglip2.data.pipeline import training_batches
from keras_siglip2.data.readers import read_jsonl
from keras_siglip2.data.readers import write_jsonl
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    proto = train_demo_sentencepiece(vocab_size=600, num_examples=100)
    return SigLIP2Tokenizer(proto=proto, sequence_length=16)


def _examples(n=12):
    return generated_dataset(
        "train", seed=0, num_examples=n, side_range=(32, 64)
    )


def _as_numpy(dataset):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def test_pipeline_is_deterministic_and_naflex_lengths_per_batch(tokenizer):
    vocabulary = LocCaVocabulary(tokenizer.vocabulary_size(), 32)

    def make():
        return training_batches(
            _examples(),
            tokenizer,
            4,
            vocabulary,
            20,
            naflex_patch_size=8,
            sequence_lengths=(16, 32, 48),
            seed=3,
        )

    first, second = _as_numpy(make()), _as_numpy(make())
    assert len(first) == 3
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    expected = batch_sequence_lengths(3, (16, 32, 48), seed=3)
    assert [b["patches"].shape[1] for b in first] == list(expected)
    for batch in first:
        counts = batch["spatial_shapes"].prod(-1)
        np.testing.assert_array_equal(batch["patch_mask"].sum(-1), counts)
        # Captions end with EOS and are right-padded.
        assert (batch["token_ids"][:, 0] > 1).all()
        # Loss weights only on targets; parallel only for captioning.
        assert (batch["decoder_loss_weights"].sum(-1) > 0).all()
        assert not (batch["parallel"] & (batch["task"] != CAPTION)).any()


def test_pipeline_text_and_boxes_come_from_the_example(tokenizer):
    vocabulary = LocCaVocabulary(tokenizer.vocabulary_size(), 50)
    batches = _as_numpy(
        training_batches(
            _examples(8),
            tokenizer,
            8,
            vocabulary,
            40,
            image_converter=SigLIP2ImageConverter(
                image_size=32, interpolation="bilinear"
            ),
            seed=0,
        )
    )
    batch = batches[0]
    assert batch["images"].shape == (8, 32, 32, 3)
    assert -1.0 <= batch["images"].min() and batch["images"].max() <= 1.0
    examples = list(
        generated_examples("train", seed=0, num_examples=8, side_range=(32, 64))
    )
    for i, example in enumerate(examples):
        captions = {
            tuple(np.asarray(tokenizer(c))) for c in example["captions"]
        }
        assert tuple(batch["token_ids"][i]) in captions
        if batch["task"][i] == CAPTION:
            continue
        # The box tokens in the sequence are one of the example's boxes.
        ids = np.concatenate(
            [batch["decoder_inputs"][i], batch["decoder_targets"][i]]
        )
        last_location = vocabulary.first_location_id + 50
        loc = ids[(ids >= vocabulary.first_location_id) & (ids < last_location)]
        box = np.asarray(vocabulary.tokens_to_box(loc[:4]))
        distances = np.abs(example["boxes"] - box).max(-1)
        assert distances.min() <= 1 / 49 + 1e-6


def test_pipeline_reads_real_formats_without_boxes(tokenizer, tmp_path):
    examples = []
    for example in generated_examples(
        "train", seed=1, num_examples=4, image_size=32
    ):
        example = dict(example)
        example["boxes"] = np.zeros((0, 4), "float32")
        example["refexps"] = np.array([], dtype=object)
        examples.append(example)
    write_jsonl(examples, tmp_path / "data.jsonl")
    vocabulary = LocCaVocabulary(tokenizer.vocabulary_size(), 16)
    batches = _as_numpy(
        training_batches(
            read_jsonl(tmp_path / "data.jsonl"),
            tokenizer,
            4,
            vocabulary,
            20,
            image_converter=SigLIP2ImageConverter(image_size=16),
        )
    )
    assert len(batches) == 1
    assert (batches[0]["task"] == CAPTION).all()


def test_pipeline_needs_one_image_mode(tokenizer):
    with pytest.raises(ValueError, match="exactly one"):
        training_batches(_examples(), tokenizer, 4)
