"""Small Gemma-style SentencePiece vocabularies, trained offline.

The released SigLIP 2 checkpoints use the 256k-piece Gemma tokenizer
(loaded through presets). For demos and tests, `train_sentencepiece`
trains a small model with the same conventions, so `SigLIP2Tokenizer`
takes it unchanged: BPE with byte fallback (no text is ever `<unk>`),
identity normalisation, no dummy prefix, whitespace kept, digits split,
`<pad>`, `<eos>`, `<bos>`, `<unk>` at ids 0-3 and `<mask>` (a control
piece, e.g. for parallel-prediction decoder inputs) at id 4. Texts are
lower-cased first, as `SigLIP2Tokenizer` lower-cases its inputs.
`train_demo_sentencepiece` trains one on the generated dataset's texts in
all its languages.
"""

import io
import os

import sentencepiece as spm
import tensorflow as tf

from keras_siglip2.data import generated
from keras_siglip2.models.tokenizer import lowercase as _lowercase

SPECIAL_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


def train_sentencepiece(
    texts,
    vocab_size: int = 1000,
    output_path=None,
    lowercase: bool = True,
    user_defined_symbols=(),
) -> bytes:
    """Trains a Gemma-style SentencePiece model (see the module docstring).

    Args:
        texts: iterable of str, the training corpus.
        vocab_size: int, total pieces including the 256 byte pieces and
            `SPECIAL_PIECES`.
        output_path: optional file to write the model to (e.g.
            `"demo.model"`); its folder is created.
        lowercase: lower-case the texts before training.
        user_defined_symbols: extra pieces always kept whole (e.g.
            location tokens `"<loc0000>"`), ids after `<mask>`.

    Returns:
        The serialised model (`bytes`), for `SigLIP2Tokenizer(proto=...)`.

    Raises:
        ValueError: if `texts` is empty or SentencePiece cannot train a
            model of `vocab_size` (too small for the byte and special
            pieces, or larger than the corpus supports).

    Example:
    >>> proto = train_sentencepiece(["a red circle", "ein roter Kreis"], 300)
    >>> import sentencepiece as spm
    >>> spm.SentencePieceProcessor(model_proto=proto).id_to_piece(1)
    '<eos>'
    """
    corpus = [_lowercase(t) if lowercase else t for t in texts]
    corpus = [t for t in corpus if t]
    if not corpus:
        raise ValueError("`texts` has no non-empty text to train on.")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece="<pad>",
            eos_piece="<eos>",
            bos_piece="<bos>",
            unk_piece="<unk>",
            control_symbols=["<mask>"],
            user_defined_symbols=list(user_defined_symbols),
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=1.0,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(
            f"SentencePiece could not train a {vocab_size}-piece model on "
            f"{len(corpus)} texts: {error}"
        ) from error
    proto = model.getvalue()
    if output_path is not None:
        folder = os.path.dirname(os.fspath(output_path))
        if folder:
            tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(output_path, "wb") as file:
            file.write(proto)
    return proto


def train_demo_sentencepiece(
    vocab_size: int = 1000,
    num_examples: int = 2000,
    seed: int = 0,
    output_path=None,
    user_defined_symbols=(),
) -> bytes:
    """A vocabulary for the generated dataset, all languages equally.

    Trains on the captions, referring expressions and grounded captions of
    `num_examples` generated training examples with languages drawn
    uniformly (not 90% English, so every script gets pieces), plus the
    zero-shot class names in every language. Takes about a second.

    Args:
        vocab_size: int.
        num_examples: generated examples to take texts from.
        seed: the generated dataset's seed.
        output_path: optional file to write the model to.
        user_defined_symbols: extra whole pieces (see
            `train_sentencepiece`).

    Returns:
        The serialised model (`bytes`).
    """
    languages = generated.LANGUAGES
    texts = list(
        generated.generated_texts(
            "train",
            seed,
            num_examples,
            english_fraction=1 / len(languages),
            languages=languages,
            num_captions=generated.NUM_CAPTION_VARIANTS,
            text_fraction=0.3,
        )
    )
    for language in languages:
        texts += generated.zero_shot_class_names(language)
    return train_sentencepiece(
        texts,
        vocab_size,
        output_path,
        user_defined_symbols=user_defined_symbols,
    )
