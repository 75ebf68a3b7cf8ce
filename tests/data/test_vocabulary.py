"""SentencePiece training on the generated captions, for the demo.

Oracles: the trained model's own pieces (special ids, byte fallback),
decode(encode(text)) == lower(text) on held-out generated texts in every
language, and `SigLIP2Tokenizer` (the consumer) loading the model.
"""

import time

import numpy as np
import pytest
import sentencepiece as spm

from keras_siglip2.data import generated
from keras_siglip2.data import vocabulary
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer


@pytest.fixture(scope="module")
def demo():
    start = time.perf_counter()
    proto = vocabulary.train_demo_sentencepiece(vocab_size=1000)
    seconds = time.perf_counter() - start
    return proto, seconds


def _held_out_texts(language, count=30):
    config = generated.GeneratedConfig(
        english_fraction=1.0 if language == "en" else 0.0,
        languages=(language,),
        num_captions=3,
        text_fraction=0.5,
    )
    return list(generated.generated_texts("test", 1, count, config))


def test_trains_quickly_with_gemma_special_ids(demo, tmp_path):
    proto, seconds = demo
    assert seconds < 20
    model = spm.SentencePieceProcessor(model_proto=proto)
    assert model.vocab_size() == 1000
    assert [model.id_to_piece(i) for i in range(5)] == list(
        vocabulary.SPECIAL_PIECES
    )
    assert (model.pad_id(), model.eos_id(), model.bos_id()) == (0, 1, 2)
    assert model.unk_id() == 3 and model.is_control(4)
    assert sum(model.is_byte(i) for i in range(1000)) == 256
    path = tmp_path / "sub" / "demo.model"
    again = vocabulary.train_sentencepiece(
        ["a red circle", "ein roter Kreis"], 300, output_path=path
    )
    assert path.read_bytes() == again


@pytest.mark.parametrize("language", generated.LANGUAGES)
def test_round_trip_and_coverage(demo, language):
    model = spm.SentencePieceProcessor(model_proto=demo[0])
    texts = _held_out_texts(language)
    pieces = 0
    fallback = 0
    for text in texts:
        ids = model.encode(text.lower())
        assert model.decode(ids) == text.lower()
        assert model.unk_id() not in ids
        pieces += len(ids)
        fallback += sum(model.is_byte(i) for i in ids)
    # The scripts are learned, not spelled out byte by byte.
    assert fallback / pieces < 0.01, (language, fallback, pieces)
    # Words become few pieces (a Chinese character is about a word part).
    characters = sum(len(text) for text in texts)
    assert characters / pieces > (1.5 if language == "zh" else 2.2), language


def test_unseen_script_falls_back_to_bytes(demo):
    model = spm.SentencePieceProcessor(model_proto=demo[0])
    text = "日本語のテキスト ελληνικά"
    ids = model.encode(text)
    assert model.decode(ids) == text and model.unk_id() not in ids
    assert any(model.is_byte(i) for i in ids)


def test_siglip2_tokenizer_takes_the_model(demo):
    tokenizer = SigLIP2Tokenizer(proto=demo[0], sequence_length=16)
    ids = np.asarray(tokenizer(["A Red Circle", "Красный круг <mask>"]))
    assert ids.shape == (2, 16)
    model = spm.SentencePieceProcessor(model_proto=demo[0])
    expected = model.encode("a red circle") + [1]
    assert ids[0, : len(expected)].tolist() == expected
    assert (ids[0, len(expected) :] == 0).all()
    assert 4 in ids[1].tolist()


def test_user_defined_symbols():
    proto = vocabulary.train_sentencepiece(
        ["the box <loc0001> <loc0002>", "a red circle"] * 5,
        300,
        user_defined_symbols=["<loc0001>", "<loc0002>"],
    )
    model = spm.SentencePieceProcessor(model_proto=proto)
    assert model.piece_to_id("<loc0001>") == 5
    assert len(model.encode("<loc0002>")) == 1


def test_lowercases_per_code_point():
    proto = vocabulary.train_sentencepiece(["ΟΔΟΣ ΣΟΦΟΣ Straße"] * 3, 290)
    model = spm.SentencePieceProcessor(model_proto=proto)
    pieces = {model.id_to_piece(i) for i in range(model.vocab_size())}
    assert "ς" not in pieces and "σ" in pieces
    assert not any(p.isupper() for p in pieces if p.isalpha())


def test_errors():
    with pytest.raises(ValueError, match="non-empty"):
        vocabulary.train_sentencepiece(["", ""], 300)
    with pytest.raises(ValueError, match="could not train"):
        vocabulary.train_sentencepiece(["a b c"], 100_000)
