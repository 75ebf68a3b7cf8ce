"""A SentencePiece model rebuilt from an HF `tokenizer.json`.

`save_pretrained` of today's transformers writes a Gemma/SigLIP 2
tokenizer as `tokenizer.json` only (the `tokenizers` library's format),
without the SentencePiece `tokenizer.model` it was converted from. Our
tokenizers run SentencePiece (TensorFlow Text), so this module converts
back: a byte-fallback BPE `tokenizer.json` becomes a SentencePiece BPE
`ModelProto` that tokenizes every text to the same ids.

The two BPE implementations agree when the SentencePiece piece scores
order merges as the HF merge list does. HF applies the adjacent pair of
lowest merge rank; SentencePiece merges the adjacent pair whose
concatenation is the piece of highest score. So each piece scores minus
the rank of the first merge that makes it. HF's own conversion lists,
for every piece, each split into two pieces, so both see the same
candidate pairs. A multi-character piece that no merge makes cannot come
out of HF's tokenizer; it is kept as `UNUSED` (SentencePiece splits such
pieces back into their parts), so ids keep their positions.

Piece types follow HF's added tokens: `special` ones are `CONTROL` (our
tokenizers match their literals in the text, as HF does), the others
`USER_DEFINED` (SentencePiece matches them itself), `unk_token` is
`UNKNOWN` and `<0xNN>` pieces are `BYTE`.

Only what converts exactly is accepted: the normalizers
`Replace(" ", "▁")` (whitespace escaping) and `Lowercase` (which
`SigLIP2Tokenizer` applies itself), and pre-tokenizers that neither split
the escaped text nor prepend to it. Anything else (NFKC, a dummy prefix,
a word-splitting `Metaspace`, a Unigram or WordPiece model) raises a
`ValueError` that names it: such a checkpoint needs its SentencePiece
file. (A dummy prefix is left out on purpose: HF prepends it to each
stretch of text between added tokens, SentencePiece once per text, so
the two differ around added tokens. Gemma has none.)
"""

import json
import re

from sentencepiece import sentencepiece_model_pb2

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
_SPACE = "▁"  # U+2581, SentencePiece's escaped space.
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def sentencepiece_from_tokenizer_json(path: str) -> bytes:
    """Serialised SentencePiece `ModelProto` equivalent to `path`.

    Args:
        path: an HF `tokenizer.json` holding a BPE model with byte
            fallback (Gemma's, as `Siglip2Tokenizer.save_pretrained`
            writes it).

    Returns:
        The model's bytes, for `SigLIP2Tokenizer(proto=...)` or
        `sentencepiece.SentencePieceProcessor(model_proto=...)`.

    Raises:
        ValueError: unreadable JSON, a model other than byte-fallback
            BPE, a normalizer or pre-tokenizer SentencePiece cannot
            express, or vocabulary ids that are not `0..n-1`; the message
            names the file and the part.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path}: no `model` object; not a tokenizer.json.")
    try:
        return _convert(path, data)
    except (AttributeError, KeyError, TypeError) as e:
        # Fields of the wrong JSON type, e.g. a list for `vocab`.
        raise ValueError(f"{path}: a malformed tokenizer.json: {e!r}") from None


def _convert(path: str, data: dict) -> bytes:
    model = data["model"]
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE" or not model.get("byte_fallback"):
        raise ValueError(
            f"{path}: a {kind or 'typeless'} model"
            f"{'' if kind != 'BPE' else ' without byte fallback'}; only "
            "Gemma-style BPE with byte fallback converts to SentencePiece. "
            "Put the checkpoint's SentencePiece file beside it."
        )
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field):
            raise ValueError(
                f"{path}: BPE with `{field}`={model[field]!r} has no "
                "SentencePiece equivalent."
            )
    escape = _normalizer(path, data.get("normalizer"))
    escape = _pre_tokenizer(path, data.get("pre_tokenizer"), escape)
    pieces = _pieces_by_id(path, model, data.get("added_tokens") or [])
    ranks = _merge_ranks(path, model.get("merges") or [])

    proto = sentencepiece_model_pb2.ModelProto()
    special = {
        token["content"]: token.get("special", False)
        for token in data.get("added_tokens") or []
    }
    unk = model.get("unk_token")
    for piece in pieces:
        entry = proto.pieces.add(piece=piece, score=0.0)
        if piece == unk:
            entry.type = _Piece.UNKNOWN
        elif piece in special:
            entry.type = (
                _Piece.CONTROL if special[piece] else _Piece.USER_DEFINED
            )
        elif _BYTE_PIECE.fullmatch(piece):
            entry.type = _Piece.BYTE
        elif piece in ranks:
            entry.score = -float(ranks[piece])
        elif len(piece) == 1:
            # Characters are never merged into; below every merge.
            entry.score = -float(len(ranks) + len(proto.pieces))
        else:
            entry.type = _Piece.UNUSED
    if unk not in pieces or special.get(unk) is False:
        raise ValueError(
            f"{path}: the unknown token {unk!r} is not a special token of "
            "the vocabulary; SentencePiece needs one."
        )

    spec = proto.trainer_spec
    spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    spec.unk_id, spec.unk_piece = pieces.index(unk), unk
    # Gemma's names; -1 (absent) otherwise, as SentencePiece allows.
    for name in ("bos", "eos", "pad"):
        piece = f"<{name}>"
        setattr(
            spec, f"{name}_id", pieces.index(piece) if piece in special else -1
        )
        setattr(spec, f"{name}_piece", piece)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = escape
    return proto.SerializeToString()


def _normalizer(path: str, spec) -> bool:
    """Whether HF's normalizer escapes whitespace (`▁` for spaces)."""
    escape = False
    for step in _flatten(spec, "normalizers"):
        kind = step.get("type")
        if kind == "Lowercase":
            continue  # SigLIP2Tokenizer lower-cases every text itself.
        if (
            kind == "Replace"
            and step.get("pattern") == {"String": " "}
            and step.get("content") == _SPACE
        ):
            escape = True
            continue
        raise ValueError(
            f"{path}: the normalizer {json.dumps(step)[:200]} has no exact "
            "SentencePiece equivalent here (supported: Lowercase and "
            "Replace(' ', '▁'))."
        )
    return escape


def _pre_tokenizer(path: str, spec, escape: bool) -> bool:
    """Accepts pre-tokenizers that leave the text whole and unprefixed;
    gives whether whitespace is escaped."""
    for step in _flatten(spec, "pretokenizers"):
        kind = step.get("type")
        if kind == "Split" and step.get("pattern") == {"String": " "}:
            if escape:
                continue  # No spaces remain after escaping: a no-op.
        elif kind == "Metaspace" and step.get("replacement") == _SPACE:
            scheme = step.get("prepend_scheme")
            if scheme is None:  # Older files: a boolean.
                prefix = step.get("add_prefix_space", True)
                scheme = "always" if prefix else "never"
            if scheme == "never" and not step.get("split", True):
                escape = True
                continue
        raise ValueError(
            f"{path}: the pre-tokenizer {json.dumps(step)[:200]} splits "
            "or prefixes the text; SentencePiece BPE (without a dummy "
            "prefix) tokenizes it whole."
        )
    return escape


def _flatten(spec, key: str) -> list[dict]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [s for part in spec.get(key, []) for s in _flatten(part, key)]
    return [spec]


def _pieces_by_id(path: str, model: dict, added: list) -> list[str]:
    """Pieces in id order, added tokens included; ids must be `0..n-1`."""
    by_id = {}
    entries = list(model.get("vocab", {}).items())
    entries += [(token["content"], token["id"]) for token in added]
    for piece, index in entries:
        if by_id.setdefault(index, piece) != piece:
            raise ValueError(
                f"{path}: id {index} is both {by_id[index]!r} and {piece!r}."
            )
    if sorted(by_id) != list(range(len(by_id))):
        missing = sorted(set(range(max(by_id, default=-1) + 1)) - set(by_id))
        raise ValueError(
            f"{path}: vocabulary ids are not 0..{len(by_id) - 1} "
            f"(missing {missing[:5]}); SentencePiece ids are positions."
        )
    pieces = [by_id[i] for i in range(len(by_id))]
    if len(set(pieces)) != len(pieces):
        raise ValueError(f"{path}: a piece appears under two ids.")
    return pieces


def _merge_ranks(path: str, merges: list) -> dict[str, int]:
    """Merged piece to the rank of the first merge that makes it."""
    ranks = {}
    for rank, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"{path}: merge {rank} is not a pair: {merge!r}.")
        ranks.setdefault(pair[0] + pair[1], rank)
    return ranks
