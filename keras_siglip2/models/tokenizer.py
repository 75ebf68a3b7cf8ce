"""Text tokenizers: `SigLIP2Tokenizer` (Gemma) and `SigLIPTokenizer` (v1).

Both turn strings into int32 `(batch, sequence_length)` token ids the way
the released checkpoints expect them: text normalised (SigLIP 2:
lower-cased; SigLIP: lower-cased, ASCII punctuation removed, whitespace
collapsed), SentencePiece-tokenized without BOS, EOS appended, right-padded
to exactly `sequence_length` (64). Both run eagerly on Python strings, lists
and numpy arrays (pure Python, via `sentencepiece`) and inside
`tf.data.Dataset.map` (TensorFlow ops, via `tensorflow_text`); the two paths
give identical ids.

Truncation. When a text has more than `sequence_length - 1` tokens,
`truncation="sticky"` keeps the first `sequence_length - 1` and the EOS.
This is big_vision's `tok(eos="sticky")` and also what HF transformers does
(its tokenizers reserve room for the EOS they append before truncating),
so it is the default. `truncation="cut"` cuts `tokens + [EOS]` at
`sequence_length`, dropping the EOS of long texts (keras-hub's
`SentencePieceTokenizer(add_eos=True, sequence_length=...)` behaviour).
"""

import functools
import hashlib
import re
import string

import keras
import numpy as np
import tensorflow as tf
from keras_hub.src.utils.tensor_utils import preprocessing_function
from keras_hub.tokenizers import GemmaTokenizer
from keras_hub.tokenizers import SigLIPTokenizer as _KerasHubSigLIPTokenizer

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.presets import PresetFiles

TRUNCATION_MODES = ("sticky", "cut")
_NUL = "\x00"


class _SharedSentencePieceModel(tf.saved_model.experimental.TrackableResource):
    """tf-text's SentencePiece model resource, under a shared name.

    tf-text makes the model a resource private to the eager kernel that
    created it. `tf.random.set_seed`, and so `keras.utils.set_random_seed`,
    clears TensorFlow's kernel cache, which deletes such resources: every
    later `tf.data` map of the tokenizer fails with "Resource ...
    SentencepieceOp ... does not exist". Under a shared name the model
    lives in TensorFlow's resource manager instead, once per distinct
    proto (the name is its hash) for the life of the process. (tf-text's
    own private copy is still built; it goes with the kernel cache.)
    """

    def __init__(self, proto: bytes):
        self._proto = proto
        digest = hashlib.sha256(proto).hexdigest()[:32]
        self._shared_name = f"keras_siglip2_sentencepiece_{digest}"
        super().__init__()
        _ = self.resource_handle  # Creates the resource now, eagerly.

    def _create_resource(self):
        from tensorflow_text.python.ops import sentencepiece_tokenizer as ops

        return ops.gen_sentencepiece_tokenizer.sentencepiece_op(
            model=self._proto, shared_name=self._shared_name
        )


@functools.lru_cache(maxsize=1)
def _lowercase_table():
    """Per-code-point lower-case mapping, as `(keys, values, multi)`.

    `keys`/`values`: sorted int32 code points that map to one code point.
    `multi`: `{char: lowered}` for the few that map to several (`İ`).
    """
    keys, values, multi = [], [], {}
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        lowered = char.lower()
        if lowered == char:
            continue
        if len(lowered) == 1:
            keys.append(code)
            values.append(ord(lowered))
        else:
            multi[char] = lowered
    return (
        np.asarray(keys, np.int32),
        np.asarray(values, np.int32),
        multi,
    )


def lowercase(text: str) -> str:
    """Lower-cases each code point on its own, like HF's `Lowercase`.

    HF's normaliser (Rust `char::to_lowercase`) maps every code point
    independently, while `str.lower` also applies the final-sigma rule
    (`Σ` -> `ς` at the end of a word). Mapping `Σ` first leaves no
    context-dependent rule, so the result is the per-code-point mapping.
    """
    return text.replace("Σ", "σ").lower()


def lowercase_tf(text):
    """`lowercase` in TensorFlow ops, for `tf.data`.

    Uses the table built from Python's own case mapping (not ICU's
    `tf.strings.lower`, whose Unicode version and final-sigma rule differ),
    so both paths agree on every code point; it is also safe on strings
    that hold NUL characters.

    Args:
        text: `tf.string` tensor of any shape, valid UTF-8.

    Returns:
        `tf.string` tensor of the same shape.
    """
    keys, values, multi = _lowercase_table()
    text = tf.convert_to_tensor(text, tf.string)
    shape = tf.shape(text)
    text = tf.reshape(text, [-1])
    for char, lowered in multi.items():
        text = tf.strings.regex_replace(text, re.escape(char), lowered)
    codes = tf.strings.unicode_decode(text, "UTF-8", errors="strict")
    flat = codes.flat_values
    position = tf.minimum(tf.searchsorted(keys, flat), len(keys) - 1)
    hit = tf.equal(tf.gather(keys, position), flat)
    flat = tf.where(hit, tf.gather(values, position), flat)
    text = tf.strings.unicode_encode(codes.with_flat_values(flat), "UTF-8")
    return tf.reshape(text, shape)


def _as_string_list(inputs) -> tuple[list[str], bool]:
    """Python strings from eager inputs, and whether they were batched."""
    if isinstance(inputs, (str, bytes)):
        inputs, batched = [inputs], False
    elif isinstance(inputs, (list, tuple)):
        inputs, batched = list(inputs), True
    else:
        array = (
            inputs.numpy()
            if isinstance(inputs, tf.Tensor)
            else np.asarray(inputs)
        )
        if array.ndim > 1:
            raise ValueError(
                "Text inputs must be a string or a 1-D batch of strings; "
                f"got an array of shape {array.shape}."
            )
        batched = array.ndim == 1
        inputs = array.reshape(-1).tolist()
    texts = []
    for item in inputs:
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str):
            raise TypeError(
                "Text inputs must be strings; got an element of type "
                f"{type(item).__name__}: {item!r}."
            )
        texts.append(item)
    return texts, batched


class _FixedLengthMixin:
    """Shared pipeline: normalise, encode, append EOS, truncate, pad.

    Subclasses implement `_encode_python(text) -> list[int]` and
    `_encode_tf(texts) -> ragged int32 (batch, None)`, both without EOS.
    """

    def _init_fixed_length(self, sequence_length, truncation):
        if (
            not isinstance(sequence_length, int)
            or isinstance(sequence_length, bool)
            or sequence_length < 1
        ):
            raise ValueError(
                "`sequence_length` must be a positive int; got "
                f"{sequence_length!r}."
            )
        if truncation not in TRUNCATION_MODES:
            raise ValueError(
                f"`truncation` must be one of {TRUNCATION_MODES}; got "
                f"{truncation!r}."
            )
        self.truncation = truncation

    def _set_proto_tf(self, proto):
        super()._set_proto_tf(proto)
        # See `_SharedSentencePieceModel`: survives `tf.random.set_seed`.
        self._sentence_piece._model_resource = _SharedSentencePieceModel(proto)

    def set_proto(self, proto):
        """Sets the SentencePiece model; raises `ValueError` if unparsable.

        Args:
            proto: path to a `.model`/`.spm` file, or its bytes.
        """
        source = (
            f"'{proto}'" if isinstance(proto, str) else "the given proto bytes"
        )
        try:
            super().set_proto(proto)
        except (RuntimeError, tf.errors.OpError) as error:
            raise ValueError(
                f"Could not parse the SentencePiece model in {source}: "
                f"{str(error).strip()[:300]}"
            ) from error
        if proto is not None and self.vocabulary_size() == 0:
            raise ValueError(
                f"The SentencePiece model in {source} has no pieces."
            )

    def _pack_python(self, ids: list[int]) -> list[int]:
        length = self.sequence_length
        if self.truncation == "sticky":
            ids = ids[: length - 1]
        ids = (ids + [self.end_token_id])[:length]
        return ids + [self.pad_token_id] * (length - len(ids))

    def _pack_tf(self, ids):
        """Ragged `(batch, None)` ids to dense `(batch, sequence_length)`.

        Dense ops only: ragged slicing and concatenation trace to many
        more ops, which makes `Dataset.map` slow to build.
        """
        length = self.sequence_length
        num_tokens = ids.row_lengths()
        if self.truncation == "sticky":
            num_tokens = tf.minimum(num_tokens, length - 1)
        dense = ids.to_tensor(
            default_value=tf.constant(self.pad_token_id, ids.dtype),
            shape=[None, length],
        )
        column = tf.range(length, dtype=num_tokens.dtype)[tf.newaxis]
        num_tokens = num_tokens[:, tf.newaxis]
        pad = tf.constant(self.pad_token_id, ids.dtype)
        eos = tf.constant(self.end_token_id, ids.dtype)
        dense = tf.where(column < num_tokens, dense, pad)
        return tf.where(column == num_tokens, eos, dense)

    def _tokenize_python(self, inputs):
        self._maybe_initialized_spm()
        texts, batched = _as_string_list(inputs)
        ids = [self._pack_python(self._encode_python(t)) for t in texts]
        ids = np.asarray(ids, dtype=self.compute_dtype).reshape(
            (len(texts), self.sequence_length)
        )
        return ids if batched else ids[0]

    @preprocessing_function
    def _tokenize_tf(self, inputs):
        self._maybe_initialized_tf()
        texts = tf.convert_to_tensor(inputs)
        if texts.dtype != tf.string:
            raise TypeError(
                f"Text inputs must be strings; got dtype {texts.dtype.name}."
            )
        if texts.shape.rank is None or texts.shape.rank > 1:
            raise ValueError(
                "Text inputs must be a string or a 1-D batch of strings; "
                f"got shape {texts.shape}."
            )
        unbatched = texts.shape.rank == 0
        if unbatched:
            texts = texts[tf.newaxis]
        ids = self._pack_tf(self._encode_tf(texts))
        return ids[0] if unbatched else ids

    def tokenize(self, inputs):
        """Token ids of one string or a 1-D batch of strings.

        Args:
            inputs: `str`/`bytes`, a list or tuple of them, a 0-D/1-D numpy
                array or tensor of strings.

        Returns:
            int32 `(sequence_length,)` for one string, else
            `(batch, sequence_length)`: numpy eagerly, `tf.Tensor` in
            `tf.data`.
        """
        self._check_vocabulary()
        if self._use_tf_workflow():
            return self._tokenize_tf(inputs)
        return self._tokenize_python(inputs)

    def compute_output_spec(self, input_spec):
        return keras.KerasTensor(
            tuple(input_spec.shape) + (self.sequence_length,),
            dtype=self.compute_dtype,
        )

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads the tokenizer of a preset directory, name or handle.

        Accepts keras-hub's SigLIP and SigLIP 2 preset names (see
        `keras_siglip2.models.presets.preset_names()`; keras-hub downloads
        the two files needed, only when asked), `kaggle://`/`hf://`
        handles, and directories written by `save_to_preset` of keras-hub's
        `SigLIPTokenizer`/`GemmaTokenizer`/`SigLIPPreprocessor` or of ours.
        The family decides the class returned, whichever class this is
        called on: a Gemma vocabulary (SigLIP 2) gives a `SigLIP2Tokenizer`,
        a keras-hub `SigLIPTokenizer` (SigLIP, MedSigLIP) a
        `SigLIPTokenizer`. See `load_tokenizer` for the translation.

        Args:
            preset: string or path.
            **kwargs: constructor arguments that replace the preset's
                (e.g. `sequence_length`, `truncation`).

        Returns:
            A `SigLIP2Tokenizer` or `SigLIPTokenizer`.
        """
        return load_tokenizer(preset, **kwargs)

    def get_config(self):
        config = super().get_config()
        # BOS/EOS are added by this pipeline, never by SentencePiece.
        config.pop("add_bos", None)
        config.pop("add_eos", None)
        config["truncation"] = self.truncation
        return config


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Tokenizer(_FixedLengthMixin, GemmaTokenizer):
    """SigLIP 2 tokenizer: lower-cased Gemma SentencePiece, EOS, 64 ids.

    For each text: literal special tokens are split out (see
    `parse_special_tokens`); the rest is lower-cased code point by code
    point and tokenized with the Gemma SentencePiece model (256k pieces in
    the released checkpoints; no BOS, no dummy prefix); EOS (id 1) is
    appended; the ids are truncated (see the module docstring) and
    right-padded with `<pad>` (id 0) to exactly `sequence_length`. No
    attention mask: the text tower attends over the pads.

    This reproduces HF transformers' `Siglip2Tokenizer` called as the
    `Siglip2Processor` calls it (`padding="max_length", truncation=True,
    max_length=64`), id for id (tested on 500+ multilingual strings).
    Known differences, all in inputs that captions do not contain:
    - code points whose lower case was added to Unicode after Python's
      `unicodedata` version (HF's Rust tables are newer);
    - a user-defined piece (e.g. `<start_of_turn>`) written in upper case:
      HF matches such pieces before lower-casing (so not at all), while
      SentencePiece matches them after (so as one piece);
    - a special token that is not a piece of the model (HF appends it to
      the vocabulary; here it is text).
    It follows big_vision's training preprocessing, `lower|tok(
    model="gemma", bos="no", eos="sticky", length=64)`, except that
    big_vision tokenizes literal special tokens as text (use
    `parse_special_tokens=False` for that) and that its TensorFlow `lower`
    may differ on rare Unicode case mappings (e.g. word-final `Σ`).

    The model must be Gemma-style (as released): BPE with byte fallback,
    identity normalisation, no dummy prefix, pieces `<pad>`, `<eos>`,
    `<bos>` at ids 0, 1, 2 and `<unk>`.

    Args:
        proto: path to the SentencePiece model file, or its bytes.
        sequence_length: int. Output length (64 for SigLIP 2).
        truncation: `"sticky"` (keep EOS; HF and big_vision) or `"cut"`.
        lowercase: bool. Lower-case the text (the released models were
            trained on lower-case text).
        parse_special_tokens: bool. Map literal control pieces written in
            the text (`<eos>`, `<pad>`, `<bos>`, `<unk>`, `<mask>`, ...;
            case-sensitive) to their ids, as HF does; if False they are
            tokenized as text, as big_vision does.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Example:
    >>> tokenizer = SigLIP2Tokenizer(proto="gemma.model")  # doctest: +SKIP
    >>> tokenizer(["A photo of a cat.", "Ein Hund"]).shape  # doctest: +SKIP
    (2, 64)
    """

    backbone_cls = SigLIP2Backbone

    def __init__(
        self,
        proto=None,
        sequence_length: int = 64,
        truncation: str = "sticky",
        lowercase: bool = True,
        parse_special_tokens: bool = True,
        **kwargs,
    ):
        self._init_fixed_length(sequence_length, truncation)
        self.lowercase = bool(lowercase)
        self.parse_special_tokens = bool(parse_special_tokens)
        super().__init__(
            proto=proto,
            sequence_length=sequence_length,
            add_bos=False,
            add_eos=False,
            **kwargs,
        )

    def set_proto(self, proto):
        super().set_proto(proto)
        self._special_ids = {}
        self._special_regex = None
        self._nul_ids = []
        if proto is None:
            return
        model = self._sentence_piece_spm
        if self.parse_special_tokens:
            self._special_ids = {
                model.id_to_piece(i): i
                for i in range(model.vocab_size())
                if model.is_control(i) or model.is_unknown(i)
            }
        if self._special_ids:
            # Longest first: alternation is leftmost-first in `re` and RE2,
            # so this gives HF's leftmost-longest match.
            literals = sorted(self._special_ids, key=len, reverse=True)
            self._special_regex = "|".join(re.escape(s) for s in literals)
        self._nul_ids = list(model.encode(_NUL))
        if len(self._nul_ids) > 1:
            raise ValueError(
                "Expected the SentencePiece model to encode NUL as at most "
                f"one token (Gemma-style byte fallback); got {self._nul_ids}."
            )

    def _normalize_python(self, text):
        return lowercase(text) if self.lowercase else text

    def _encode_python(self, text: str) -> list[int]:
        model = self._sentence_piece_spm
        if self._special_regex is None:
            return list(model.encode(self._normalize_python(text)))
        ids = []
        segments = re.split(f"({self._special_regex})", text)
        for index, segment in enumerate(segments):
            if index % 2:
                ids.append(self._special_ids[segment])
            elif segment:
                ids.extend(model.encode(self._normalize_python(segment)))
        return ids

    def _encode_tf(self, texts):
        model = self._sentence_piece
        normalize = lowercase_tf if self.lowercase else (lambda x: x)
        if self._special_regex is None:
            return model.tokenize(normalize(texts))
        # Split out the special tokens with plain string ops (much cheaper
        # to trace than `tf_text.regex_split`, which also stops at NUL):
        # wrap each match in NULs, after turning every NUL of the text into
        # an empty special slot (NUL NUL), then split at NUL. Odd slots are
        # special ("" for a NUL), even slots text. This is exact for the
        # NUL: with identity normalisation and no dummy prefix it is its
        # own byte-fallback token and never merges.
        marked = tf.strings.regex_replace(
            texts, "\\x00", tf.constant(_NUL + _NUL)
        )
        marked = tf.strings.regex_replace(
            marked,
            tf.constant(f"({self._special_regex})"),
            tf.constant(_NUL + "\\1" + _NUL),
        )
        parts = tf.strings.split(marked, _NUL)
        values = parts.flat_values
        part_row = parts.value_rowids()
        part = tf.range(tf.size(values, out_type=part_row.dtype))
        is_special = (part - tf.gather(parts.row_starts(), part_row)) % 2 == 1
        text_ids = model.tokenize(normalize(tf.where(is_special, "", values)))
        literals = [""] + list(self._special_ids)
        table = [self._nul_ids[0] if self._nul_ids else -1] + list(
            self._special_ids.values()
        )
        slot = tf.argmax(
            tf.cast(
                tf.equal(values[:, tf.newaxis], tf.constant(literals)),
                tf.int32,
            ),
            axis=1,
        )
        special_ids = tf.gather(tf.constant(table, text_ids.dtype), slot)
        keep = is_special & (special_ids >= 0)
        # Each part holds text tokens or one special id: merge both streams
        # in part order (a stable sort by part), then group parts by row.
        value_part = tf.concat(
            [text_ids.value_rowids(), tf.boolean_mask(part, keep)], 0
        )
        order = tf.argsort(value_part, stable=True)
        flat_ids = tf.gather(
            tf.concat(
                [text_ids.flat_values, tf.boolean_mask(special_ids, keep)], 0
            ),
            order,
        )
        return tf.RaggedTensor.from_value_rowids(
            flat_ids,
            tf.gather(part_row, tf.gather(value_part, order)),
            nrows=tf.shape(texts, out_type=part_row.dtype)[0],
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "lowercase": self.lowercase,
                "parse_special_tokens": self.parse_special_tokens,
            }
        )
        return config


_PUNCTUATION_PATTERN = "[" + re.escape(string.punctuation) + "]"


@functools.lru_cache(maxsize=1)
def _whitespace_pattern() -> str:
    """RE2 class of the characters Python's `\\s` and `str.strip` use."""
    codes = [c for c in range(0x110000) if chr(c).isspace()]
    return "[" + "".join(f"\\x{{{c:x}}}" for c in codes) + "]+"


def canonicalize_text(text: str) -> str:
    """SigLIP (v1) text canonicalisation, as HF's `SiglipTokenizer`.

    Lower-cases (`str.lower`), removes ASCII punctuation, collapses runs of
    whitespace to one space and strips the ends (big_vision's
    `prompt_engineering` normalisation).
    """
    text = text.lower()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def canonicalize_text_tf(text):
    """`canonicalize_text` in TensorFlow ops, for `tf.data`.

    Lower-cases with ICU (`tf.strings.lower`), which like `str.lower` maps a
    word-final `Σ` to `ς`; it may differ from Python on code points newer
    than TensorFlow's ICU.

    Args:
        text: 1-D `tf.string` tensor.

    Returns:
        1-D `tf.string` tensor.
    """
    # `tf.strings.lower` stops at NUL (and so does a NUL `separator` of
    # `reduce_join`): lower-case the NUL-free parts, then re-insert NULs
    # as data.
    parts = tf.strings.split(text, _NUL)
    lowered = tf.strings.lower(parts.flat_values, encoding="utf-8")
    last_in_row = tf.gather(parts.row_limits(), parts.value_rowids()) - 1
    is_last = tf.equal(
        tf.range(tf.size(lowered, out_type=last_in_row.dtype)), last_in_row
    )
    lowered = tf.strings.join([lowered, tf.where(is_last, "", _NUL)])
    text = tf.strings.reduce_join(parts.with_flat_values(lowered), axis=-1)
    text = tf.strings.regex_replace(text, _PUNCTUATION_PATTERN, "")
    text = tf.strings.regex_replace(text, _whitespace_pattern(), " ")
    return tf.strings.regex_replace(text, "^ | $", "")


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIPTokenizer(_FixedLengthMixin, _KerasHubSigLIPTokenizer):
    """SigLIP (v1) tokenizer: canonicalised text, T5-style SentencePiece.

    For each text: `canonicalize_text` (lower-case, ASCII punctuation
    removed, whitespace collapsed and stripped), SentencePiece with the
    model's own normalisation (the released 32k English model: NFKC, dummy
    prefix), EOS `</s>` appended, truncated (see the module docstring) and
    right-padded with `</s>` (SigLIP pads with the EOS id) to exactly
    `sequence_length`.

    This reproduces HF transformers' `SiglipTokenizer` with
    `padding="max_length", truncation=True, max_length=64` (tested on 500
    strings), except:
    - literal `</s>`/`<unk>` in the text: HF maps them to their ids (and
      strips the spaces around them); here they are text, which
      canonicalisation turns into `s`/`unk`;
    - in `tf.data`, lower-casing uses ICU, which may differ from Python's
      `str.lower` on code points newer than TensorFlow's ICU.

    Args:
        proto: path to the SentencePiece model file, or its bytes. Must have
            `</s>` and `<unk>` pieces.
        sequence_length: int. Output length (64 for SigLIP).
        truncation: `"sticky"` (keep EOS; HF) or `"cut"`.
        canonicalize: bool. Apply `canonicalize_text` first.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Example:
    >>> tokenizer = SigLIPTokenizer(proto="spiece.model")  # doctest: +SKIP
    >>> tokenizer("A photo of a cat.").shape  # doctest: +SKIP
    (64,)
    """

    backbone_cls = SigLIP2Backbone

    def __init__(
        self,
        proto=None,
        sequence_length: int = 64,
        truncation: str = "sticky",
        canonicalize: bool = True,
        **kwargs,
    ):
        self._init_fixed_length(sequence_length, truncation)
        self.canonicalize = bool(canonicalize)
        super().__init__(
            proto=proto,
            sequence_length=sequence_length,
            add_bos=False,
            add_eos=False,
            **kwargs,
        )

    def _encode_python(self, text: str) -> list[int]:
        if self.canonicalize:
            text = canonicalize_text(text)
        return list(self._sentence_piece_spm.encode(text))

    def _encode_tf(self, texts):
        if self.canonicalize:
            texts = canonicalize_text_tf(texts)
        return self._sentence_piece.tokenize(texts)

    def get_config(self):
        config = super().get_config()
        config["canonicalize"] = self.canonicalize
        return config


# --- Presets ------------------------------------------------------------------

TOKENIZER_FILE = "tokenizer.json"
VOCABULARY_FILE = "assets/tokenizer/vocabulary.spm"
PREPROCESSOR_FILE = "preprocessor.json"
BACKBONE_FILE = "config.json"
_OURS = {
    "keras_siglip2>SigLIP2Tokenizer": SigLIP2Tokenizer,
    "keras_siglip2>SigLIPTokenizer": SigLIPTokenizer,
}
_KERAS_HUB = {
    "keras_hub>GemmaTokenizer": SigLIP2Tokenizer,
    "keras_hub>SigLIPTokenizer": SigLIPTokenizer,
}
_KERAS_HUB_PREPROCESSOR = "keras_hub>SigLIPPreprocessor"
# HF checkpoints: the SentencePiece file names the family.
_HF_VOCABULARIES = {
    "tokenizer.model": SigLIP2Tokenizer,
    "spiece.model": SigLIPTokenizer,
}
_BACKBONES = ("keras_hub>SigLIPBackbone", "keras_siglip2>SigLIP2Backbone")


def _keras_hub_settings(files: PresetFiles) -> dict:
    """Sequence length and text canonicalisation of a keras-hub preset.

    From `preprocessor.json` (a keras-hub `SigLIPPreprocessor`) and the
    text tower of `config.json`, both optional; they must agree.
    """
    settings = {}
    lengths = {}
    registered, config = files.registered_json(PREPROCESSOR_FILE, False)
    if registered == _KERAS_HUB_PREPROCESSOR:
        if config.get("add_start_token", False) or not config.get(
            "add_end_token", True
        ):
            raise ValueError(
                f"{files.name}: `{PREPROCESSOR_FILE}` sets "
                "`add_start_token=True` or `add_end_token=False`; SigLIP "
                "texts end with EOS and have no BOS."
            )
        if config.get("sequence_length") is not None:
            lengths[PREPROCESSOR_FILE] = config["sequence_length"]
        settings["canonicalize"] = bool(config.get("canonicalize_text", True))
    registered, config = files.registered_json(BACKBONE_FILE, False)
    if registered in _BACKBONES:
        text = config.get("text_encoder", {})
        length = text.get("config", {}).get("max_sequence_length")
        if length is not None:
            lengths[BACKBONE_FILE] = length
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{files.name}: the sequence lengths disagree: {lengths}."
        )
    if lengths:
        settings["sequence_length"] = next(iter(lengths.values()))
    return settings


def load_tokenizer(preset, **kwargs):
    """Builds our tokenizer from a preset's `tokenizer.json` and vocabulary.

    Reads `tokenizer.json` and `assets/tokenizer/vocabulary.spm` of
    - ours (`SigLIP2Tokenizer`/`SigLIPTokenizer.save_to_preset`): the
      saved configuration, as is;
    - keras-hub's `GemmaTokenizer` (its SigLIP 2 presets): a
      `SigLIP2Tokenizer` with the SigLIP 2 pipeline (lower-case, no BOS,
      sticky EOS, `<pad>` padding). keras-hub's own `SigLIPPreprocessor`
      would canonicalise these texts like SigLIP's; the released SigLIP 2
      models were trained on lower-cased text only (big_vision's `lower`,
      HF's `Siglip2Tokenizer`), which is what ours does;
    - keras-hub's `SigLIPTokenizer` (SigLIP and MedSigLIP presets): a
      `SigLIPTokenizer` (canonicalised text, sticky EOS, EOS padding), the
      ids keras-hub's `SigLIPPreprocessor` gives.
    - an HF `SiglipModel`/`Siglip2Model` checkpoint (`config.json` with a
      `model_type`): `tokenizer.model` (Gemma) gives a `SigLIP2Tokenizer`,
      `spiece.model` a `SigLIPTokenizer`, `sequence_length` the text
      tower's `max_position_embeddings`. Without either file, a Gemma
      BPE `tokenizer.json` (all that today's `save_pretrained` writes)
      is converted to SentencePiece (`convert/hf_tokenizer.py`).
    For keras-hub files the sequence length comes from `preprocessor.json`
    or the text tower in `config.json` when present (64 otherwise), and
    SigLIP's canonicalisation from `preprocessor.json`'s
    `canonicalize_text`.

    Args:
        preset: a directory, a preset name or a `kaggle://`/`hf://` handle.
        **kwargs: constructor arguments that replace the preset's.

    Returns:
        A `SigLIP2Tokenizer` or `SigLIPTokenizer`.

    Raises:
        ValueError: unknown names (with close matches), a missing
            `tokenizer.json` or vocabulary file, a tokenizer class that is
            neither ours nor keras-hub's SigLIP/Gemma one, or a vocabulary
            that does not parse or lacks the family's special tokens; the
            message names the file. Nothing partially loaded is returned.
    """
    files = PresetFiles(preset)
    backbone = files.json(BACKBONE_FILE, required=False) or {}
    if "registered_name" not in backbone and backbone.get("model_type") in (
        "siglip",
        "siglip2",
    ):
        return _load_hf(files, backbone, kwargs)
    registered, config = files.registered_json(TOKENIZER_FILE)
    if registered in _OURS:
        cls = _OURS[registered]
        config = {**config, "proto": None, **kwargs}
    elif registered in _KERAS_HUB:
        cls = _KERAS_HUB[registered]
        settings = _keras_hub_settings(files)
        if cls is SigLIP2Tokenizer:
            settings.pop("canonicalize", None)
        config = {**settings, **kwargs}
    else:
        raise ValueError(
            f"{files.name}: `{TOKENIZER_FILE}` holds a {registered!r}; "
            f"expected one of {sorted(_OURS) + sorted(_KERAS_HUB)}."
        )
    vocabulary = files.path(VOCABULARY_FILE)
    try:
        tokenizer = cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{files.name}: cannot build a {cls.__name__} from "
            f"`{TOKENIZER_FILE}`: {e}"
        ) from None
    return _with_vocabulary(tokenizer, vocabulary)


def _with_vocabulary(
    tokenizer, vocabulary: str | bytes, source: str | None = None
):
    """Sets the SentencePiece model (a path, or bytes built from the file
    `source`); errors name the file."""
    source = source or vocabulary
    try:
        tokenizer.set_proto(vocabulary)
    except ValueError as e:
        message = str(e)
        if source not in message:
            message = f"{source}: {message}"
        raise ValueError(message) from None
    return tokenizer


def _load_hf(files: PresetFiles, config: dict, kwargs: dict):
    """An HF `SiglipModel`/`Siglip2Model` checkpoint: the family from its
    SentencePiece file, the length from the text tower's positions.

    Without a SentencePiece file (today's `save_pretrained` writes a
    Gemma tokenizer as `tokenizer.json` only), a SigLIP 2 tokenizer is
    rebuilt from `tokenizer.json` (see `convert/hf_tokenizer.py`).
    """
    for file in _HF_VOCABULARIES:
        vocabulary = files.path(file, required=False)
        if vocabulary is not None:
            cls = _HF_VOCABULARIES[file]
            break
    else:
        tokenizer_json = files.path(TOKENIZER_FILE, required=False)
        if tokenizer_json is None:
            raise ValueError(
                f"{files.name}: an HF checkpoint without a SentencePiece "
                f"model ({' or '.join(f'`{f}`' for f in _HF_VOCABULARIES)})"
                f" or a `{TOKENIZER_FILE}`."
            )
        # Imported here: `convert` imports the models package.
        from keras_siglip2.convert.hf_tokenizer import (
            sentencepiece_from_tokenizer_json,
        )

        vocabulary = sentencepiece_from_tokenizer_json(tokenizer_json)
        cls = SigLIP2Tokenizer
    source = vocabulary if isinstance(vocabulary, str) else tokenizer_json
    text = config.get("text_config") or {}
    kwargs = {
        "sequence_length": text.get("max_position_embeddings", 64),
        **kwargs,
    }
    try:
        tokenizer = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{files.name}: cannot build a {cls.__name__} from "
            f"`{BACKBONE_FILE}`: {e}"
        ) from None
    return _with_vocabulary(tokenizer, vocabulary, source)
