"""Zero-shot classification and the backbone encoder.

Oracles: hand-computed top-k accuracies (ties counted as errors), a numpy
re-derivation of prompt-averaged class embeddings, a perfect label oracle
that must score 100% in every language (generated data and a JSONL file
in the reader format), and the backbone's own `get_*_embeddings` for
`BackboneEncoder` (batched, padded, fixed-resolution and NaFlex).
"""

import numpy as np
import pytest
from tiny_models import tiny_backbone

from keras_siglip2.data import generated
from keras_siglip2.data.naflex import naflex_preprocess_batch
from keras_siglip2.data.readers import read_jsonl
from keras_siglip2.data.readers import write_jsonl
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.eval import encoders
from keras_siglip2.eval import zero_shot
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer

VOCABULARY_SIZE = 600
TEXT_LENGTH = 12
NAMES = {
    language: generated.zero_shot_class_names(language)
    for language in generated.LANGUAGES
}


def _tiny_backbone(naflex=False):
    return tiny_backbone(VOCABULARY_SIZE, TEXT_LENGTH, naflex)


@pytest.fixture(scope="module")
def tokenizer():
    proto = train_demo_sentencepiece(VOCABULARY_SIZE, num_examples=100)
    return SigLIP2Tokenizer(proto=proto, sequence_length=TEXT_LENGTH)


@pytest.fixture(scope="module")
def single_objects():
    return encoders.as_examples(
        generated.generated_examples(
            "test", 0, 12, image_size=16, num_objects=(1, 1)
        )
    )


class LabelOracle:
    """A perfect encoder: images and texts as one-hot class vectors.

    An image maps to its example's label (looked up by pixels); a text to
    the longest class name, in any language, that it contains.
    """

    def __init__(self, examples, labels, names=NAMES):
        self.labels = {
            e["image"].tobytes(): int(label)
            for e, label in zip(examples, labels)
        }
        self.names = sorted(
            (
                (name, index)
                for language in names.values()
                for index, name in enumerate(language)
            ),
            key=lambda pair: -len(pair[0]),
        )
        self.num_classes = len(next(iter(names.values())))

    def encode_images(self, images):
        labels = [self.labels[np.asarray(i).tobytes()] for i in images]
        return np.eye(self.num_classes)[labels]

    def encode_texts(self, texts):
        labels = []
        for text in texts:
            matches = [i for name, i in self.names if name in text]
            assert matches, text
            labels.append(matches[0])
        return np.eye(self.num_classes)[labels]


def test_top_k_accuracy_hand_computed():
    scores = [[0.1, 0.5, 0.4], [0.3, 0.2, 0.1], [0.2, 0.2, 0.6]]
    # Ranks of the true class: 1 (0.5 is higher), 0, and 2 (class 1 ties
    # with it and counts against it; 0.6 is higher).
    accuracy = zero_shot.top_k_accuracy(scores, [2, 0, 0], ks=(1, 2, 3))
    assert accuracy == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top3": 1})


def test_top_k_accuracy_constant_scores_are_wrong():
    accuracy = zero_shot.top_k_accuracy(np.zeros((4, 5)), [0, 1, 2, 3])
    assert accuracy == {"top1": 0.0, "top5": 1.0}


def test_top_k_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 2\)"):
        zero_shot.top_k_accuracy(np.zeros((1, 2)), [2])


def test_class_embeddings_average_normalised_prompts():
    rng = np.random.default_rng(0)
    table = {}

    def encode(texts):
        for text in texts:
            table.setdefault(text, rng.normal(size=5))
        return np.stack([table[t] for t in texts])

    templates = ("a photo of a {}.", "{}!")
    weights = zero_shot.class_embeddings(encode, ["cat", "dog"], templates)
    for row, name in zip(weights, ["cat", "dog"]):
        prompts = [table[t.replace("{}", name)] for t in templates]
        mean = np.mean([p / np.linalg.norm(p) for p in prompts], axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), 1e-6)


def test_class_embeddings_need_a_placeholder():
    with pytest.raises(ValueError, match="'{}'"):
        zero_shot.class_embeddings(np.ones, ["cat"], ["a photo"])


def test_multilingual_templates_cover_the_generated_languages():
    assert set(zero_shot.MULTILINGUAL_TEMPLATES) == set(generated.LANGUAGES)
    for templates in zero_shot.MULTILINGUAL_TEMPLATES.values():
        assert all(t.count("{}") == 1 for t in templates)


def test_oracle_scores_100_percent_in_every_language(single_objects):
    labels = [e["label"] for e in single_objects]
    oracle = LabelOracle(single_objects, labels)
    results = zero_shot.evaluate_zero_shot(
        oracle, single_objects, NAMES, zero_shot.MULTILINGUAL_TEMPLATES
    )
    for language in generated.LANGUAGES:
        assert results[f"{language}/top1"] == 1.0
    assert results["mean/top1"] == 1.0
    assert results["num_examples"] == 12
    assert results["num_classes"] == 80


def test_oracle_on_reader_format_labels_from_captions(tmp_path):
    # Classification data in a reader format: the caption is the class.
    names = ["red circle", "blue square", "green star"]
    rng = np.random.default_rng(0)
    rows = [
        {
            "key": f"img{i}",
            "image": rng.integers(0, 256, (8 + i, 10, 3), dtype=np.uint8),
            "captions": [names[i % 3]],
        }
        for i in range(6)
    ]
    write_jsonl(rows, tmp_path / "data.jsonl")
    examples = encoders.as_examples(read_jsonl(tmp_path / "data.jsonl"))
    assert isinstance(examples[0]["captions"][0], str)
    oracle = LabelOracle(rows, [i % 3 for i in range(6)], {"en": names})
    results = zero_shot.evaluate_zero_shot(oracle, examples, names)
    assert results["top1"] == 1.0
    assert "en/top1" not in results


def test_unknown_caption_class_is_an_error():
    example = {"image": np.zeros((4, 4, 3), np.uint8), "captions": ["cow"]}
    with pytest.raises(ValueError, match="'cow' is not a class name"):
        zero_shot.example_labels([example], ["cat", "dog"])


def _logits(backbone, image_embeddings, text_embeddings):
    """The backbone's logits from embeddings, in numpy."""
    layer = backbone.contrastive_logits
    scale = np.exp(np.asarray(layer.logit_scale))
    images = encoders.l2_normalize(image_embeddings)
    texts = encoders.l2_normalize(text_embeddings)
    return scale * images @ texts.T + np.asarray(layer.logit_bias)


def test_backbone_encoder_matches_the_backbone(tokenizer, single_objects):
    backbone = _tiny_backbone()
    # Batches of 4 for 6 images and 6 texts: padded last batches.
    encoder = encoders.BackboneEncoder(backbone, tokenizer, batch_size=4)
    images = [e["image"] for e in single_objects[:6]]
    texts = ["a red circle", "ein roter Kreis", "红色圆形", "x", "y", "z"]
    converted = np.asarray(SigLIP2ImageConverter(image_size=16)(images))
    token_ids = tokenizer(texts)
    expected = backbone.predict(
        {"images": converted, "token_ids": token_ids}, verbose=0
    )
    image_embeddings = encoder.encode_images(images)
    text_embeddings = encoder.encode_texts(texts)
    np.testing.assert_allclose(
        _logits(backbone, image_embeddings, text_embeddings),
        expected,
        atol=1e-4,
    )


def test_backbone_encoder_naflex(tokenizer):
    backbone = _tiny_backbone(naflex=True)
    encoder = encoders.BackboneEncoder(backbone, tokenizer, batch_size=2)
    images = [
        generated.generate_example("test", 0, i)["image"] for i in range(3)
    ]
    texts = ["a red circle", "a blue star", "红色圆形"]
    inputs = naflex_preprocess_batch(images, 4, 16)
    expected = backbone.predict(
        {**inputs, "token_ids": tokenizer(texts)}, verbose=0
    )
    np.testing.assert_allclose(
        _logits(
            backbone, encoder.encode_images(images), encoder.encode_texts(texts)
        ),
        expected,
        atol=1e-4,
    )
    patches = encoder.encode_patches(images)
    np.testing.assert_array_equal(patches["mask"], inputs["patch_mask"] == 1)
    np.testing.assert_array_equal(
        patches["grid_shapes"], inputs["spatial_shapes"]
    )


def test_backbone_encoder_checks_the_tokenizer_length(tokenizer):
    short = SigLIP2Tokenizer(proto=tokenizer.proto, sequence_length=5)
    with pytest.raises(ValueError, match=r"`sequence_length` \(5\)"):
        encoders.BackboneEncoder(_tiny_backbone(), short)


def test_tiny_model_on_generated_data_is_in_range(tokenizer, single_objects):
    encoder = encoders.BackboneEncoder(_tiny_backbone(), tokenizer)
    results = zero_shot.evaluate_zero_shot(
        encoder, single_objects, NAMES, zero_shot.MULTILINGUAL_TEMPLATES
    )
    for language in [*generated.LANGUAGES, "mean"]:
        top1, top5 = results[f"{language}/top1"], results[f"{language}/top5"]
        assert 0.0 <= top1 <= top5 <= 1.0
    assert results["num_examples"] == 12
