"""Image<->text retrieval recall.

Oracles: a hand-computed similarity matrix with several captions per
image and a tie, an argsort-based reference on random matrices, and a
perfect oracle encoder on generated data and on WebDataset shards, which
must reach 100%.
"""

import numpy as np
import pytest
from tiny_models import tiny_backbone

from keras_siglip2.data import generated
from keras_siglip2.data.readers import webdataset_examples
from keras_siglip2.data.readers import write_webdataset
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.eval import retrieval
from keras_siglip2.eval.encoders import BackboneEncoder
from keras_siglip2.eval.encoders import as_examples
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer

# 3 images; captions 0, 1 show image 0, caption 2 image 1, 3 and 4 image 2.
SIMILARITY = np.array(
    [
        [0.9, 0.1, 0.8, 0.3, 0.2],
        [0.5, 0.7, 0.6, 0.2, 0.9],
        [0.4, 0.3, 0.1, 0.2, 0.35],
    ]
)
CAPTION_IMAGES = np.array([0, 0, 1, 2, 2])


def test_ranks_hand_computed():
    image_ranks, caption_ranks = retrieval.retrieval_ranks(
        SIMILARITY, CAPTION_IMAGES
    )
    # Image 0: its best caption (0.9) beats all. Image 1: its caption
    # (0.6) is beaten by 0.7 and 0.9. Image 2: its best (0.35) by 0.4.
    np.testing.assert_array_equal(image_ranks, [0, 2, 1])
    # Caption 3 (image 2, 0.2) is beaten by 0.3 and tied by image 1.
    np.testing.assert_array_equal(caption_ranks, [0, 2, 1, 2, 1])


def test_recall_hand_computed():
    recall = retrieval.recall_at_k(SIMILARITY, CAPTION_IMAGES, ks=(1, 2, 3))
    assert recall == pytest.approx(
        {
            "image_to_text/R@1": 1 / 3,
            "image_to_text/R@2": 2 / 3,
            "image_to_text/R@3": 1.0,
            "text_to_image/R@1": 1 / 5,
            "text_to_image/R@2": 3 / 5,
            "text_to_image/R@3": 1.0,
        }
    )


def test_constant_similarity_is_never_a_hit_at_1():
    recall = retrieval.recall_at_k(np.zeros((3, 5)), CAPTION_IMAGES, ks=(1,))
    assert recall == {"image_to_text/R@1": 0.0, "text_to_image/R@1": 0.0}


def test_recall_matches_argsort_reference():
    rng = np.random.default_rng(0)
    similarity = rng.normal(size=(20, 50))
    ids = np.concatenate([np.arange(20), rng.integers(0, 20, 30)])
    recall = retrieval.recall_at_k(similarity, ids)
    for k in retrieval.DEFAULT_KS:
        image_hits = [
            np.isin(np.argsort(-row)[:k], np.flatnonzero(ids == i)).any()
            for i, row in enumerate(similarity)
        ]
        caption_hits = [
            i in np.argsort(-similarity[:, c])[:k] for c, i in enumerate(ids)
        ]
        assert recall[f"image_to_text/R@{k}"] == np.mean(image_hits)
        assert recall[f"text_to_image/R@{k}"] == np.mean(caption_hits)


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match=r"Images \[1\] have no caption"):
        retrieval.retrieval_ranks(np.zeros((2, 2)), [0, 0])


class CaptionOracle:
    """A perfect encoder: an image and its captions share a one-hot."""

    def __init__(self, examples):
        self.images = {e["image"].tobytes(): i for i, e in enumerate(examples)}
        self.captions = {
            str(c): i for i, e in enumerate(examples) for c in e["captions"]
        }
        self.size = len(examples)

    def encode_images(self, images):
        rows = [self.images[np.asarray(i).tobytes()] for i in images]
        return np.eye(self.size)[rows]

    def encode_texts(self, texts):
        return np.eye(self.size)[[self.captions[t] for t in texts]]


def _unique_captions(examples):
    """The examples none of whose captions another example shares."""
    counts = {}
    for example in examples:
        for caption in set(example["captions"]):
            counts[caption] = counts.get(caption, 0) + 1
    return [e for e in examples if all(counts[c] == 1 for c in e["captions"])]


@pytest.fixture(scope="module")
def examples():
    return _unique_captions(
        as_examples(
            generated.generated_examples(
                "test", 0, 24, image_size=16, num_captions=3
            )
        )
    )


def test_oracle_scores_100_percent(examples):
    assert len(examples) >= 15
    results = retrieval.evaluate_retrieval(CaptionOracle(examples), examples)
    for direction in ("image_to_text", "text_to_image"):
        assert results[f"{direction}/R@1"] == 1.0
    assert results["num_images"] == len(examples)
    assert results["num_captions"] == 3 * len(examples)


def test_oracle_on_webdataset_shards(examples, tmp_path):
    write_webdataset(examples[:10], tmp_path / "shard.tar")
    read = webdataset_examples(str(tmp_path / "shard.tar"))
    results = retrieval.evaluate_retrieval(
        CaptionOracle(examples), read, max_captions_per_image=2
    )
    assert results["image_to_text/R@1"] == 1.0
    assert results["text_to_image/R@1"] == 1.0
    assert (results["num_images"], results["num_captions"]) == (10, 20)


def test_tiny_model_on_generated_data_is_in_range(examples):
    backbone = tiny_backbone(600, 12)
    proto = train_demo_sentencepiece(600, num_examples=100)
    tokenizer = SigLIP2Tokenizer(proto=proto, sequence_length=12)
    results = retrieval.evaluate_retrieval(
        BackboneEncoder(backbone, tokenizer), examples
    )
    for direction in ("image_to_text", "text_to_image"):
        recalls = [results[f"{direction}/R@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0
    assert results["num_captions"] == 3 * len(examples)
