"""Tokenizers against HF transformers, on a SentencePiece model trained here.

Oracles: HF's `Siglip2Tokenizer` (what `AutoTokenizer` gives for siglip2
checkpoints) and `SiglipTokenizer`, built from the same model file and
called as the SigLIP processors call them (`padding="max_length",
truncation=True, max_length=64`).
"""

import unicodedata

import keras
import numpy as np
import pytest
import sentencepiece as spm
import sentencepiece_fixture as fixture
import tensorflow as tf
from distribution_subprocess import run_code

from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import SigLIPTokenizer
from keras_siglip2.models.tokenizer import lowercase
from keras_siglip2.models.tokenizer import lowercase_tf


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma")
    (path / "tokenizer.model").write_bytes(fixture.train_gemma_like())
    return path


@pytest.fixture(scope="module")
def gemma_proto(gemma_dir):
    return (gemma_dir / "tokenizer.model").read_bytes()


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "spiece.model"
    path.write_bytes(fixture.train_t5_like())
    return path


@pytest.fixture(scope="module")
def strings():
    texts = fixture.oracle_strings()
    assert len(texts) >= 500
    return texts


@pytest.fixture(scope="module")
def hf_siglip2_ids(gemma_dir, strings):
    return np.asarray(
        fixture.hf_ids(fixture.hf_siglip2_tokenizer(str(gemma_dir)), strings)
    )


def _tf_data_ids(tokenizer, texts, batch_size=64):
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(batch_size)
    return np.concatenate([b.numpy() for b in dataset.map(tokenizer)])


def _assert_rows_equal(actual, expected, texts):
    actual, expected = np.asarray(actual), np.asarray(expected)
    bad = np.flatnonzero(np.any(actual != expected, axis=-1))
    assert bad.size == 0, (
        f"{bad.size} of {len(texts)} rows differ; first: "
        f"{texts[bad[0]]!r}\nours {actual[bad[0]].tolist()}\n"
        f"hf   {expected[bad[0]].tolist()}"
    )


def test_oracle_strings_cover_the_hard_cases(strings, hf_siglip2_ids):
    def has_script(text, name):
        return any(name in unicodedata.name(c, "") for c in text)

    assert "" in strings and " " in strings and "\t" in strings
    for script in ("CYRILLIC", "CJK", "ARABIC", "DEVANAGARI", "HANGUL"):
        assert sum(has_script(t, script) for t in strings) >= 20, script
    assert sum(any(ord(c) >= 0x1F300 for c in t) for t in strings) >= 20
    # Texts of more than 63 tokens end with the EOS and no padding.
    truncated = hf_siglip2_ids[:, -1] == 1
    assert truncated.sum() >= 30


def test_siglip2_matches_hf_eagerly(gemma_proto, strings, hf_siglip2_ids):
    ids = SigLIP2Tokenizer(proto=gemma_proto)(strings)
    assert isinstance(ids, np.ndarray)
    assert ids.shape == (len(strings), 64) and ids.dtype == np.int32
    _assert_rows_equal(ids, hf_siglip2_ids, strings)


def test_siglip2_matches_hf_in_tf_data(gemma_proto, strings, hf_siglip2_ids):
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto)
    ids = _tf_data_ids(tokenizer, strings)
    assert ids.dtype == np.int32
    _assert_rows_equal(ids, hf_siglip2_ids, strings)


def test_siglip2_single_examples_in_tf_data(gemma_proto, strings):
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto)
    texts = strings[:40]
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer)
    assert dataset.element_spec.shape == (64,)
    ids = np.stack([x.numpy() for x in dataset])
    _assert_rows_equal(ids, tokenizer(texts), texts)


def test_tf_workflow_outside_tf_data_matches(gemma_proto, strings):
    texts = strings[:60]
    python = SigLIP2Tokenizer(proto=gemma_proto)
    graph = SigLIP2Tokenizer(proto=gemma_proto, _allow_python_workflow=False)
    _assert_rows_equal(
        keras.ops.convert_to_numpy(graph(texts)), python(texts), texts
    )


@pytest.mark.parametrize(
    "inputs, shape",
    [
        ("a photo", (64,)),
        (b"a photo", (64,)),
        (np.array("a photo"), (64,)),
        (["a", "b c"], (2, 64)),
        (("a", "b c", ""), (3, 64)),
        (np.array(["a", "b"]), (2, 64)),
        (np.array([b"a", b"b"], dtype=object), (2, 64)),
        (tf.constant(["a", "b"]), (2, 64)),
        ([], (0, 64)),
    ],
)
def test_input_types(gemma_proto, inputs, shape):
    ids = SigLIP2Tokenizer(proto=gemma_proto)(inputs)
    assert ids.shape == shape and ids.dtype == np.int32


def test_layout_eos_then_right_padding(gemma_proto):
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto)
    model = spm.SentencePieceProcessor(model_proto=gemma_proto)
    pieces = model.encode("a red circle")
    ids = tokenizer("A Red Circle")
    n = len(pieces)
    assert ids[:n].tolist() == pieces
    assert ids[n] == tokenizer.end_token_id == 1
    assert (ids[n + 1 :] == tokenizer.pad_token_id).all()
    assert tokenizer.pad_token_id == 0
    assert tokenizer.start_token_id not in ids


@pytest.mark.parametrize("length", [1, 2, 64])
def test_truncation_modes(gemma_proto, length):
    model = spm.SentencePieceProcessor(model_proto=gemma_proto)
    text = "ein großes rotes quadrat links " * 20
    pieces = model.encode(text)
    assert len(pieces) > 64
    sticky = SigLIP2Tokenizer(proto=gemma_proto, sequence_length=length)
    cut = SigLIP2Tokenizer(
        proto=gemma_proto, sequence_length=length, truncation="cut"
    )
    expected_sticky = pieces[: length - 1] + [1]
    expected_cut = (pieces + [1])[:length]
    assert sticky(text).tolist() == expected_sticky
    assert cut(text).tolist() == expected_cut
    for tokenizer, expected in ((sticky, expected_sticky), (cut, expected_cut)):
        ids = _tf_data_ids(tokenizer, [text, "kurz"])
        assert ids[0].tolist() == expected
    if length == 64:
        assert sticky("ein quadrat").tolist() == cut("ein quadrat").tolist()


def test_shorter_sequence_length_matches_hf(gemma_dir, gemma_proto, strings):
    hf = fixture.hf_siglip2_tokenizer(str(gemma_dir))
    texts = strings[:200]
    expected = fixture.hf_ids(hf, texts, max_length=16)
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto, sequence_length=16)
    _assert_rows_equal(tokenizer(texts), expected, texts)
    _assert_rows_equal(_tf_data_ids(tokenizer, texts), expected, texts)


def test_literal_special_tokens(gemma_proto):
    model = spm.SentencePieceProcessor(model_proto=gemma_proto)
    parsed = SigLIP2Tokenizer(proto=gemma_proto)
    literal = SigLIP2Tokenizer(proto=gemma_proto, parse_special_tokens=False)
    text = "a<eos>b <mask>"
    expected = model.encode("a") + [1] + model.encode("b ") + [4]
    assert parsed(text)[: len(expected) + 1].tolist() == expected + [1]
    # big_vision semantics: the literal is text.
    as_text = model.encode(text) + [1]
    assert literal(text)[: len(as_text)].tolist() == as_text
    ids = _tf_data_ids(literal, [text])
    assert ids[0, : len(as_text)].tolist() == as_text
    # Matching is case-sensitive, before lower-casing (as in HF).
    upper = model.encode("<eos>") + [1]
    assert parsed("<EOS>")[: len(upper)].tolist() == upper


def test_known_difference_upper_case_user_defined_piece(gemma_dir, gemma_proto):
    """HF matches user-defined pieces before lower-casing, SentencePiece
    after: `<START_OF_TURN>` is characters in HF, one piece here."""
    hf = fixture.hf_siglip2_tokenizer(str(gemma_dir))
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto)
    piece = tokenizer.token_to_id("<start_of_turn>")
    ours = tokenizer(["<start_of_turn>", "<START_OF_TURN>"])
    theirs = fixture.hf_ids(hf, ["<start_of_turn>", "<START_OF_TURN>"])
    assert ours[0].tolist() == theirs[0]
    assert ours[1, 0] == piece and theirs[1][0] != piece


def test_lowercase_false_keeps_case(gemma_proto):
    model = spm.SentencePieceProcessor(model_proto=gemma_proto)
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto, lowercase=False)
    expected = model.encode("Der HUND") + [1]
    assert tokenizer("Der HUND")[: len(expected)].tolist() == expected
    ids = _tf_data_ids(tokenizer, ["Der HUND"])
    assert ids[0, : len(expected)].tolist() == expected


def _assigned_code_points():
    return "\n".join(
        chr(code)
        for code in range(0x110000)
        if unicodedata.category(chr(code)) not in ("Cn", "Cs")
    )


def test_lowercase_agrees_with_hf_and_tf_on_every_code_point():
    """Per code point, on every code point assigned in Python's Unicode
    database; HF's newer tables also map a few code points unassigned in
    it (the only difference)."""
    from tokenizers import normalizers

    text = _assigned_code_points() + "\nΟΔΟΣ ΣΟΦΟΣ.\x00İ"
    expected = normalizers.Lowercase().normalize_str(text)
    assert lowercase(text) == expected
    assert lowercase_tf(tf.constant(text)).numpy().decode() == expected


def test_config_and_assets_round_trip(gemma_proto, tmp_path, strings):
    tokenizer = SigLIP2Tokenizer(
        proto=gemma_proto,
        sequence_length=32,
        truncation="cut",
        parse_special_tokens=False,
    )
    config = keras.saving.serialize_keras_object(tokenizer)
    assert config["registered_name"] == "keras_siglip2>SigLIP2Tokenizer"
    assert "add_eos" not in config["config"]
    tokenizer.save_assets(str(tmp_path))
    restored = keras.saving.deserialize_keras_object(config)
    restored.load_assets(str(tmp_path))
    assert restored.get_config() == tokenizer.get_config()
    np.testing.assert_array_equal(restored(strings), tokenizer(strings))


def test_unparsable_proto_file_is_named(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="broken.model"):
        SigLIP2Tokenizer(proto=str(path))
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.model"):
        SigLIPTokenizer(proto=str(empty))
    with pytest.raises(ValueError, match="proto bytes"):
        SigLIP2Tokenizer(proto=b"\x08\x01garbage")


def test_proto_without_gemma_tokens_is_rejected(t5_file):
    with pytest.raises(ValueError, match="special token"):
        SigLIP2Tokenizer(proto=str(t5_file))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"truncation": "hf"}, "truncation"),
        ({"sequence_length": 0}, "sequence_length"),
        ({"sequence_length": 64.0}, "sequence_length"),
    ],
)
def test_bad_arguments(gemma_proto, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SigLIP2Tokenizer(proto=gemma_proto, **kwargs)


def test_bad_inputs(gemma_proto):
    tokenizer = SigLIP2Tokenizer(proto=gemma_proto)
    with pytest.raises(TypeError, match="int"):
        tokenizer(["a", 3])
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        tokenizer(np.array([["a", "b"]]))
    graph = SigLIP2Tokenizer(proto=gemma_proto, _allow_python_workflow=False)
    with pytest.raises(TypeError, match="int32"):
        graph(tf.constant([1, 2]))


# --- SigLIP (v1) ---------------------------------------------------------


def _without_literal_specials(texts):
    return [t for t in texts if "</s>" not in t and "<unk>" not in t]


def test_siglip_v1_matches_hf(t5_file, strings):
    texts = _without_literal_specials(strings)
    assert len(texts) >= 480
    expected = fixture.hf_ids(fixture.hf_siglip_tokenizer(str(t5_file)), texts)
    tokenizer = SigLIPTokenizer(proto=str(t5_file))
    assert tokenizer.pad_token_id == tokenizer.end_token_id == 1
    _assert_rows_equal(tokenizer(texts), expected, texts)
    _assert_rows_equal(_tf_data_ids(tokenizer, texts), expected, texts)


def test_siglip_v1_canonicalizes(t5_file):
    model = spm.SentencePieceProcessor(model_file=str(t5_file))
    tokenizer = SigLIPTokenizer(proto=str(t5_file))
    expected = model.encode("a photo of a dog") + [1]
    for text in ("A photo of a dog.", "  a, photo:\tof a DOG!! "):
        assert tokenizer(text)[: len(expected)].tolist() == expected
        assert _tf_data_ids(tokenizer, [text])[0, : len(expected)].tolist() == (
            expected
        )
    raw = SigLIPTokenizer(proto=str(t5_file), canonicalize=False)
    kept = model.encode("A dog.") + [1]
    assert raw("A dog.")[: len(kept)].tolist() == kept


def test_siglip_v1_known_difference_literal_special_tokens(t5_file):
    """HF maps a literal `</s>` in the text to EOS; here it is text, which
    canonicalisation turns into `s`."""
    hf = fixture.hf_siglip_tokenizer(str(t5_file))
    tokenizer = SigLIPTokenizer(proto=str(t5_file))
    model = spm.SentencePieceProcessor(model_file=str(t5_file))
    ours = tokenizer("a </s> b")
    expected = model.encode("a s b") + [1]
    assert ours[: len(expected)].tolist() == expected
    assert fixture.hf_ids(hf, ["a </s> b"])[0] != ours.tolist()


_SEED_SCRIPT = """
import json, sys
import keras, keras_hub, tensorflow as tf
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer, SigLIPTokenizer

gemma, t5 = (open(p, "rb").read() for p in sys.argv[1:3])
texts = ["a red circle", "ein blauer Kreis", "<eos> x"]
tokenizers = {
    "ours_siglip2": SigLIP2Tokenizer(proto=gemma),
    "ours_siglip": SigLIPTokenizer(proto=t5),
    "keras_hub": keras_hub.tokenizers.GemmaTokenizer(proto=gemma),
}
keras.utils.set_random_seed(0)  # Clears TensorFlow's kernel cache.
result = {}
for name, tokenizer in tokenizers.items():
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(3)
    try:
        ids = next(iter(dataset.map(tokenizer)))
        result[name] = [tokenizer(texts).tolist(), ids.numpy().tolist()]
    except tf.errors.NotFoundError as e:
        result[name] = str(e)[-300:]
print("RESULT " + json.dumps(result))
"""


def test_tf_data_after_set_random_seed(gemma_dir, t5_file):
    """`keras.utils.set_random_seed` clears TensorFlow's kernel cache,
    which deletes tf-text's kernel-owned SentencePiece model (keras-hub's
    tokenizer then fails in `tf.data`, checked here as the premise); ours
    keep theirs. In a subprocess: the cache is process-wide."""
    result = run_code(
        _SEED_SCRIPT, str(gemma_dir / "tokenizer.model"), str(t5_file)
    )
    assert "does not exist" in result["keras_hub"]
    for name in ("ours_siglip2", "ours_siglip"):
        assert isinstance(result[name], list), result[name]
        eager, in_tf_data = result[name]
        assert eager == in_tf_data and len(eager) == 3, name
