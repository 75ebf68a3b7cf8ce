"""From image-text examples to training batches (`tf.data`).

Input elements have the reader schema of `keras_siglip2.data.readers`
(`image`, `captions`, `boxes`, `refexps`; generated examples add
`grounded_captions`). Each example gets, deterministically from
`(seed, index)`: one of its captions for the sigmoid loss, and a LocCa
decoder sequence (captioning, a referring expression of one of its boxes,
or a grounded caption of it; see `keras_siglip2.data.locca`). Examples
without boxes are always used for captioning.

Images become either fixed-resolution `images` (an image converter, e.g.
`SigLIP2ImageConverter`) or NaFlex inputs with one sequence length per
batch, chosen from `sequence_lengths` by a hash of `(seed, batch index)`
(`batch_sequence_lengths` gives them in numpy), so every batch has one
static shape. `split_longest_batches` halves the batches of the longest
length into two steps.
"""

import numpy as np
import tensorflow as tf

from keras_siglip2.data.locca import CAPTION
from keras_siglip2.data.locca import GROUNDED
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.locca import locca_sequence
from keras_siglip2.data.naflex import naflex_preprocess


def _draw(seed, index, stream):
    """A stateless seed for `(seed, index)` and a named stream."""
    return tf.stack(
        [tf.cast(seed, tf.int64) * 1_000_003 + stream, tf.cast(index, tf.int64)]
    )


def _pick(strings, seed):
    """One element of a non-empty 1-D string tensor."""
    count = tf.shape(strings, out_type=tf.int64)[0]
    position = tf.random.stateless_uniform(
        (), seed, minval=0, maxval=count, dtype=tf.int64
    )
    return strings[position]


def training_batches(
    examples: tf.data.Dataset,
    tokenizer,
    batch_size: int,
    decoder_vocabulary: LocCaVocabulary | None = None,
    decoder_length: int = 32,
    image_converter=None,
    naflex_patch_size: int | None = None,
    sequence_lengths=(256,),
    seed: int = 0,
    task_probabilities=(0.5, 0.25, 0.25),
    parallel_fraction: float = 0.5,
    drop_remainder: bool = True,
    start_index: int = 0,
) -> tf.data.Dataset:
    """Batches for the sigmoid loss and (optionally) the LocCa decoder.

    Args:
        examples: `tf.data.Dataset` of reader-schema dicts.
        tokenizer: a text tokenizer layer mapping strings to fixed-length
            int ids (e.g. `SigLIP2Tokenizer`).
        batch_size: int.
        decoder_vocabulary: a `LocCaVocabulary` to add decoder sequences,
            or None for image-text batches only.
        decoder_length: int. Decoder sequence length.
        image_converter: layer for fixed-resolution images; exclusive with
            `naflex_patch_size`.
        naflex_patch_size: int. Produce NaFlex inputs with this patch size.
        sequence_lengths: NaFlex lengths, one drawn per batch.
        seed: int. Seeds every random choice (with the element index).
        task_probabilities: captioning, referring, grounded captioning.
        parallel_fraction: fraction of captioning in parallel prediction.
        drop_remainder: drop a last, smaller batch (static batch size).
        start_index: index of the first element in the whole stream, when
            `examples` resumes a stream part-way (random choices depend on
            the index, so a resumed stream continues identically; keep it a
            multiple of `batch_size`).

    Returns:
        `tf.data.Dataset` of dicts: `images` (or `patches`, `patch_mask`,
        `spatial_shapes`), `token_ids`, and with a decoder vocabulary
        `decoder_inputs`, `decoder_targets`, `decoder_loss_weights`,
        `parallel`, `task`.
    """
    if (image_converter is None) == (naflex_patch_size is None):
        raise ValueError(
            "Pass exactly one of `image_converter` (fixed resolution) and "
            "`naflex_patch_size` (NaFlex)."
        )
    lengths = [int(length) for length in sequence_lengths]
    task_logits = tf.math.log([list(task_probabilities)])

    def vision(index, image):
        if image_converter is not None:
            return {"images": image_converter(image)}
        which = _length_choice(tf, seed, index // batch_size, len(lengths))
        branches = [
            (
                lambda length=length: naflex_preprocess(
                    image, naflex_patch_size, length
                )
            )
            for length in lengths
        ]
        return tf.switch_case(tf.cast(which, tf.int32), branches)

    def decoder(index, example, caption_ids):
        boxes = example["boxes"]
        num_regions = tf.shape(boxes, out_type=tf.int64)[0]
        has_region = num_regions > 0
        region = tf.random.stateless_uniform(
            (),
            _draw(seed, index, 2),
            maxval=tf.maximum(num_regions, 1),
            dtype=tf.int64,
        )
        task = tf.random.stateless_categorical(
            task_logits, 1, _draw(seed, index, 3)
        )[0, 0]
        task = tf.where(has_region, tf.cast(task, tf.int32), CAPTION)
        box = tf.cond(has_region, lambda: boxes[region], lambda: tf.zeros((4,)))
        region_texts = example.get("grounded_captions", example["refexps"])
        region_text = tf.cond(
            has_region,
            lambda: tf.where(
                task == GROUNDED,
                region_texts[region],
                example["refexps"][region],
            ),
            lambda: tf.constant(""),
        )
        parallel = (
            tf.random.stateless_uniform((), _draw(seed, index, 4))
            < parallel_fraction
        )
        sequence = locca_sequence(
            task,
            caption_ids,
            tokenizer(region_text),
            box,
            decoder_vocabulary,
            decoder_length,
            parallel=parallel,
        )
        sequence["task"] = task
        return sequence

    def to_inputs(index, example):
        caption = _pick(example["captions"], _draw(seed, index, 0))
        caption_ids = tokenizer(caption)
        inputs = {**vision(index, example["image"]), "token_ids": caption_ids}
        if decoder_vocabulary is not None:
            inputs.update(decoder(index, example, caption_ids))
        return inputs

    return (
        examples.enumerate(start=start_index)
        .map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=drop_remainder)
    )


def batch_sequence_lengths(
    num_batches: int, sequence_lengths, seed: int = 0, start: int = 0
) -> np.ndarray:
    """The NaFlex length `training_batches` draws for each batch index.

    Args:
        num_batches: int. How many batches.
        sequence_lengths: the lengths `training_batches` draws from.
        seed: int. Its `seed`.
        start: int. First batch index (`start_index // batch_size`).

    Returns:
        int `(num_batches,)`: the lengths of batches `start, start + 1,
        ...`.
    """
    lengths = np.array([int(length) for length in sequence_lengths])
    indices = np.arange(start, start + max(num_batches, 0), dtype=np.int64)
    return lengths[_length_choice(np, seed, indices, len(lengths))]


_MASK32 = 0xFFFFFFFF


def _hash32(xp, x):
    """A 32-bit integer mixer (two multiply-xorshift rounds) on int64
    values in [0, 2**32), with numpy (`xp is np`) or TensorFlow."""
    for _ in range(2):
        x = (_xor(xp, _shift(xp, x, 16), x) * 0x45D9F3B) & _MASK32
    return _xor(xp, _shift(xp, x, 16), x)


def _shift(xp, x, bits):
    return x >> bits if xp is np else tf.bitwise.right_shift(x, bits)


def _xor(xp, a, b):
    return a ^ b if xp is np else tf.bitwise.bitwise_xor(a, b)


def _length_choice(xp, seed, batch_index, count):
    """Which of `count` NaFlex lengths batch `batch_index` uses: a pure
    hash of `(seed, batch_index)`, identical in numpy and TensorFlow, so
    the recipe can plan (and resume) a whole NaFlex stage in numpy."""
    mixed_seed = int(_hash32(np, np.int64(int(seed) & _MASK32)))
    if xp is np:
        index = np.asarray(batch_index, np.int64)
    else:
        index = tf.cast(batch_index, tf.int64)
    value = _hash32(xp, (index + mixed_seed) & _MASK32)
    return value % count


def split_longest_batches(
    batches: tf.data.Dataset, longest_length: int
) -> tf.data.Dataset:
    """Halves the batch and doubles the steps at the longest NaFlex length.

    The paper (Sec. 2.4.2) halves the batch size and doubles the training
    steps at the largest sequence length to fit memory. Here each batch
    whose `patches` have `longest_length` tokens becomes two consecutive
    half batches (its first and second halves, same examples, same
    order), each one optimizer step; other batches pass unchanged. Every
    length thus still sees the same share of examples.

    Args:
        batches: NaFlex batches from `training_batches` (even batch size).
        longest_length: int. The length whose batches are split.

    Returns:
        `tf.data.Dataset` with an unknown (None) batch dimension.
    """

    def split(batch):
        length = tf.shape(batch["patches"], out_type=tf.int64)[1]
        parts = tf.where(length == longest_length, 2, 1)
        parts = tf.cast(parts, tf.int64)
        size = tf.shape(batch["token_ids"], out_type=tf.int64)[0] // parts

        def part(i):
            return tf.nest.map_structure(
                lambda x: x[i * size : (i + 1) * size], batch
            )

        return tf.data.Dataset.range(parts).map(part)

    return batches.flat_map(split)
