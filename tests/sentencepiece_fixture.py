"""Tiny SentencePiece models trained at test time, and oracle test strings.

Nothing is downloaded: the models are trained in memory (well under a
second) on generated multilingual text, and HF transformers' tokenizers are
built from the same model files to serve as oracles.
"""

import io
import random

import sentencepiece as spm

WORDS = {
    "en": (
        "the a red blue green small large circle square triangle photo of "
        "dog cat on left right top bottom near far two three with and"
    ).split(),
    "de": (
        "der die das rote blaue grüne kleine große Kreis Quadrat Dreieck "
        "Foto eines Hundes Straße links rechts über unter"
    ).split(),
    "ru": (
        "красный синий зелёный маленький большой круг квадрат "
        "треугольник фото собаки кошки слева справа сверху снизу"
    ).split(),
    "zh": (
        "红色 蓝色 绿色 小 大 圆 正方形 三角形 照片 狗 猫 左 右 上 下"
    ).split(),
    "ar": (
        "أحمر أزرق أخضر صغير كبير دائرة مربع مثلث صورة كلب قطة يسار يمين"
    ).split(),
    "hi": (
        "लाल नीला हरा छोटा बड़ा वृत्त वर्ग त्रिभुज फोटो कुत्ता बिल्ली बाएं दाएं"
    ).split(),
    "emoji": "🐶 🐱 🔴 🔵 🟢 ⭐ 😀 👍🏽 ❤️ 🇩🇪".split(),
}
# Scripts and words the models never saw (byte fallback / unknown pieces).
UNSEEN = (
    "日本語 ひらがな カタカナ 한국어 ελληνικά ΟΔΟΣ ΣΟΦΟΣ İstanbul ǅemal ẞ "
    "ﬁ café cafe\u0301 ภาษาไทย עברית 👨\u200d👩\u200d👧 🏳️\u200d🌈 ① ½ ™ "
    "Ⅻ ｆｕｌｌｗｉｄｔｈ"
).split()
SPECIAL_LITERALS = [
    "<eos>",
    "<pad>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<EOS>",
    "<Pad>",
    "</s>",
    "<0x41>",
    "<start_of_turn>",
    "<<eos>>",
    "<eos><eos>",
]
EDGE_CASES = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \u3000\u00a0 ",
    "\x00",
    "a\x00b",
    "\x00<eos>\x00",
    "x\x1fy",
    "  leading and trailing  ",
    "a  b   c",
    "...",
    "!!!???",
    "1234567890",
    "3.14 + 2,718 = 5.858",
    "ΟΔΟΣ ΣΟΦΟΣ. Σ",
    "İSTANBUL İi Iı",
    "STRASSE straße ẞ",
    "▁leading underscore ▁",
]


def multilingual_corpus(num_sentences: int, seed: int = 0):
    """Yields generated sentences in seven scripts, mixed case."""
    rng = random.Random(seed)
    languages = list(WORDS)
    for _ in range(num_sentences):
        language = rng.choice(languages)
        words = [rng.choice(WORDS[language]) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.3:
            words = [
                w.capitalize() if rng.random() < 0.5 else w.upper()
                for w in words
            ]
        if rng.random() < 0.2:
            words.append(str(rng.randint(0, 1000)))
        separator = "" if language == "zh" else " "
        yield separator.join(words) + rng.choice(["", ".", "!", "?", ","])


def train_gemma_like(vocab_size: int = 1000) -> bytes:
    """A Gemma-style model: BPE, byte fallback, identity normalisation.

    No dummy prefix, whitespace kept, digits split; `<pad>`, `<eos>`,
    `<bos>`, `<unk>`, `<mask>` at ids 0-4 and user-defined turn markers,
    as in Gemma's vocabulary.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=multilingual_corpus(3000),
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
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()


def train_t5_like(vocab_size: int = 800) -> bytes:
    """A SigLIP v1 / T5-style model: unigram, NFKC, dummy prefix.

    `<pad>`, `</s>`, `<unk>` at ids 0, 1, 2 and no BOS.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=multilingual_corpus(3000, seed=1),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    return model.getvalue()


def oracle_strings(num_random: int = 480, seed: int = 0) -> list[str]:
    """Test strings: edge cases, special literals, long and random texts.

    Random texts mix the training scripts with unseen scripts, emoji,
    digits, punctuation, odd whitespace and upper case; about a tenth are
    long enough to need truncation at 64 tokens.
    """
    rng = random.Random(seed)
    pool = [w for words in WORDS.values() for w in words] + UNSEEN
    separators = [" ", " ", " ", "", "  ", "\t", "\n", ", ", ". ", "\u3000"]
    strings = list(EDGE_CASES)
    for literal in SPECIAL_LITERALS:
        strings += [literal, f"a {literal} b", f"X{literal}y{literal}"]
    for _ in range(num_random):
        length = rng.choice([1, 2, 4, 8, 16]) if rng.random() < 0.9 else 80
        text = ""
        for _ in range(length):
            word = rng.choice(pool)
            roll = rng.random()
            if roll < 0.15:
                word = word.upper()
            elif roll < 0.3:
                word = word.title()
            elif roll < 0.33:
                word = rng.choice(SPECIAL_LITERALS)
            text += word + rng.choice(separators)
        if rng.random() < 0.3:
            text = text.strip()
        strings.append(text)
    return strings


def hf_siglip2_tokenizer(model_dir: str):
    """HF `Siglip2Tokenizer` from `model_dir/tokenizer.model`, configured
    as the released checkpoints (no BOS, EOS, right padding)."""
    from transformers import Siglip2Tokenizer

    return Siglip2Tokenizer.from_pretrained(
        model_dir,
        add_bos_token=False,
        add_eos_token=True,
        padding_side="right",
    )


def hf_siglip_tokenizer(model_file: str):
    """HF `SiglipTokenizer` (v1) from a SentencePiece model file."""
    from transformers import SiglipTokenizer

    return SiglipTokenizer(vocab_file=model_file)


def hf_ids(tokenizer, texts, max_length: int = 64):
    """Ids as the SigLIP processors produce them."""
    return tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
    )["input_ids"]
