"""SentencePiece models rebuilt from HF `tokenizer.json` files.

Oracles: the SentencePiece model HF's `tokenizer.json` was converted from
(trained here), and HF's `tokenizers` library running the JSON itself.
"""

import json

import pytest
import sentencepiece as spm
import sentencepiece_fixture as fixture
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer

from keras_siglip2.convert.hf_tokenizer import sentencepiece_from_tokenizer_json

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The Gemma-like SentencePiece model and the `tokenizer.json` that
    HF's `save_pretrained` writes for it (without the model file)."""
    model_dir = tmp_path_factory.mktemp("gemma")
    proto = fixture.train_gemma_like()
    (model_dir / "tokenizer.model").write_bytes(proto)
    saved = tmp_path_factory.mktemp("saved")
    fixture.hf_siglip2_tokenizer(str(model_dir)).save_pretrained(saved)
    assert not (saved / "tokenizer.model").exists()
    return proto, json.loads((saved / "tokenizer.json").read_text())


@pytest.fixture(scope="module")
def strings():
    return fixture.oracle_strings(num_random=300, seed=5)


def _write(tmp_path, data) -> str:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def _parse(proto: bytes):
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    return model


def test_rebuilt_model_tokenizes_as_the_original(original, strings, tmp_path):
    proto, data = original
    rebuilt = sentencepiece_from_tokenizer_json(_write(tmp_path, data))
    theirs = spm.SentencePieceProcessor(model_proto=proto)
    ours = spm.SentencePieceProcessor(model_proto=rebuilt)
    for text in strings:
        assert ours.encode(text) == theirs.encode(text), repr(text)
    # Same pieces and types at the same ids; scores in the same order.
    a, b = _parse(proto), _parse(rebuilt)
    assert [(p.piece, p.type) for p in a.pieces] == [
        (p.piece, p.type) for p in b.pieces
    ]
    merged = [i for i, p in enumerate(a.pieces) if p.type == _Piece.NORMAL]
    assert len(merged) > 500
    for earlier, later in zip(merged, merged[1:]):
        assert a.pieces[earlier].score >= a.pieces[later].score
        assert b.pieces[earlier].score >= b.pieces[later].score
    for name in ("unk", "bos", "eos", "pad"):
        assert getattr(ours, f"{name}_id")() == getattr(theirs, f"{name}_id")()
    assert b.normalizer_spec.escape_whitespaces
    assert not b.normalizer_spec.add_dummy_prefix


def _without_lowercase(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    steps = data["normalizer"]["normalizers"]
    data["normalizer"]["normalizers"] = [
        s for s in steps if s["type"] != "Lowercase"
    ]
    return data


@pytest.mark.parametrize("variant", ["as_saved", "metaspace", "old_merges"])
def test_rebuilt_model_tokenizes_as_hf_tokenizers(
    original, strings, tmp_path, variant
):
    """HF's `tokenizers` runs the JSON; whitespace escaping can come from
    a non-splitting, non-prefixing `Metaspace`, and merges can be `"a b"`
    strings (older files)."""
    data = _without_lowercase(original[1])
    if variant == "metaspace":
        data["normalizer"] = None
        data["pre_tokenizer"] = {
            "type": "Metaspace",
            "replacement": "▁",
            "prepend_scheme": "never",
            "split": False,
        }
    elif variant == "old_merges":
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    path = _write(tmp_path, data)
    oracle = Tokenizer.from_file(path)
    ours = spm.SentencePieceProcessor(
        model_proto=sentencepiece_from_tokenizer_json(path)
    )
    spec = _parse(ours.serialized_model_proto()).normalizer_spec
    assert spec.escape_whitespaces and not spec.add_dummy_prefix
    # Literal special tokens are split out by our tokenizers before
    # SentencePiece runs (tested against HF in test_tokenizer_presets).
    plain = [
        t
        for t in strings
        if not any(
            s in t for s in ("<eos>", "<pad>", "<bos>", "<unk>", "<mask>")
        )
    ]
    assert len(plain) > 250
    for text in plain:
        expected = oracle.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected, repr(text)


def test_unused_pieces_keep_their_ids(original, tmp_path):
    """A multi-character piece no merge makes is never produced by HF;
    it stays at its id as UNUSED."""
    data = _without_lowercase(original[1])
    merges = data["model"]["merges"]
    dropped = "".join(merges.pop())
    path = _write(tmp_path, data)
    model = _parse(sentencepiece_from_tokenizer_json(path))
    index = data["model"]["vocab"][dropped]
    assert model.pieces[index].piece == dropped
    assert model.pieces[index].type == _Piece.UNUSED
    oracle = Tokenizer.from_file(path)
    ours = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    text = dropped.replace("▁", " ") * 3
    assert (
        ours.encode(text) == oracle.encode(text, add_special_tokens=False).ids
    )


def _edit(data, edit):
    data = json.loads(json.dumps(data))
    edit(data)
    return data


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d.update(model={"type": "Unigram", "vocab": [["a", 0]]}),
            "a Unigram model",
        ),
        (
            lambda d: d["model"].update(byte_fallback=False),
            "without byte fallback",
        ),
        (
            lambda d: d.update(normalizer={"type": "NFKC"}),
            "normalizer .*NFKC",
        ),
        (
            lambda d: d["normalizer"]["normalizers"].insert(
                0, {"type": "Prepend", "prepend": "▁"}
            ),
            "normalizer .*Prepend",
        ),
        (
            lambda d: d.update(
                normalizer=None,
                pre_tokenizer={
                    "type": "Metaspace",
                    "replacement": "▁",
                    "prepend_scheme": "first",
                    "split": False,
                },
            ),
            "pre-tokenizer .*Metaspace.* prefixes",
        ),
        (
            lambda d: d.update(
                normalizer=None,
                pre_tokenizer={"type": "Metaspace", "replacement": "▁"},
            ),
            "pre-tokenizer .*Metaspace.* splits",
        ),
        (
            lambda d: d["model"]["vocab"].pop("re"),
            r"ids are not 0\.\.998 \(missing \[\d+\]\)",
        ),
        (
            lambda d: d["model"].update(continuing_subword_prefix="##"),
            "continuing_subword_prefix",
        ),
        (lambda d: d["model"]["merges"].append(["a"]), "not a pair"),
        (lambda d: d["model"]["merges"].append([1, 2]), "not a pair"),
        (lambda d: d["model"].update(vocab=[["a", 0]]), "malformed"),
        (lambda d: d["added_tokens"][3].update(special=False), "unknown token"),
    ],
)
def test_bad_tokenizer_json_names_the_problem(
    original, tmp_path, edit, message
):
    path = _write(tmp_path, _edit(original[1], edit))
    with pytest.raises(ValueError, match=message) as info:
        sentencepiece_from_tokenizer_json(path)
    assert "tokenizer.json" in str(info.value)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_unreadable_tokenizer_json(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="tokenizer.json"):
        sentencepiece_from_tokenizer_json(str(path))
