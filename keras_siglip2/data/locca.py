"""LocCa decoder sequences: captioning, referring expressions, grounding.

SigLIP 2 (following LocCa) trains a decoder on three tasks, mixed per
batch:

- captioning: `[CAP] caption EOS`; half of these use parallel prediction
  (every caption input is the mask token and attention is not causal);
- referring expression comprehension: `[REF] expression <y0> <x0> <y1>
  <x1> EOS`, predicting the box of the described region;
- grounded captioning: `[GCAP] <y0> <x0> <y1> <x1> region-caption EOS`.

Boxes are normalised `(ymin, xmin, ymax, xmax)` in `[0, 1]`, quantised to
`num_location_bins` location tokens placed after the text vocabulary,
followed by the three task tokens and the mask token. Only target tokens
(after the prefix) carry loss weight. All functions are TF ops, so they
run inside `tf.data.Dataset.map`.
"""

import dataclasses

import tensorflow as tf

CAPTION, REFERRING, GROUNDED = 0, 1, 2
TASK_NAMES = ("caption", "referring", "grounded")
_PAD_ID, _EOS_ID = 0, 1


@dataclasses.dataclass(frozen=True)
class LocCaVocabulary:
    """Layout of the decoder vocabulary.

    Attributes:
        text_vocabulary_size: int. Size of the text tokenizer's vocabulary
            (ids `[0, text_vocabulary_size)`; pad 0, EOS 1).
        num_location_bins: int. Location tokens per coordinate.
    """

    text_vocabulary_size: int
    num_location_bins: int = 1000

    @property
    def first_location_id(self) -> int:
        return self.text_vocabulary_size

    def task_id(self, task: int) -> int:
        """Token id of task `CAPTION`, `REFERRING` or `GROUNDED`."""
        return self.text_vocabulary_size + self.num_location_bins + task

    @property
    def mask_id(self) -> int:
        return self.text_vocabulary_size + self.num_location_bins + 3

    @property
    def size(self) -> int:
        """Decoder vocabulary size."""
        return self.mask_id + 1

    def box_to_tokens(self, box):
        """`(..., 4)` normalised boxes -> `(..., 4)` int32 location ids."""
        box = tf.clip_by_value(tf.cast(box, tf.float32), 0.0, 1.0)
        bins = tf.round(box * (self.num_location_bins - 1))
        return tf.cast(bins, tf.int32) + self.first_location_id

    def tokens_to_box(self, tokens):
        """`(..., 4)` location ids -> normalised boxes (invalid ids -> -1)."""
        bins = tf.cast(tokens, tf.int32) - self.first_location_id
        valid = (bins >= 0) & (bins < self.num_location_bins)
        box = tf.cast(bins, tf.float32) / (self.num_location_bins - 1)
        return tf.where(valid, box, -1.0)


def _text_tokens(token_ids):
    """Drops padding and EOS from tokenizer output."""
    token_ids = tf.cast(token_ids, tf.int32)
    return tf.boolean_mask(
        token_ids, (token_ids != _PAD_ID) & (token_ids != _EOS_ID)
    )


def locca_sequence(
    task,
    caption_ids,
    region_ids,
    region_box,
    vocabulary: LocCaVocabulary,
    max_length: int,
    parallel=False,
):
    """Builds the decoder inputs, targets and loss weights of one example.

    Args:
        task: int scalar (tensor): `CAPTION`, `REFERRING` or `GROUNDED`.
        caption_ids: int `(text_length,)` tokenized image caption (padded).
        region_ids: int `(text_length,)` tokenized referring expression or
            region caption (padded).
        region_box: float `(4,)` normalised box of that region.
        vocabulary: the `LocCaVocabulary`.
        max_length: int. Decoder sequence length (longer sequences are
            truncated, keeping the prefix).
        parallel: bool scalar (tensor). Parallel prediction; only applied
            to captioning.

    Returns:
        dict with `"decoder_inputs"`, `"decoder_targets"`: int32
        `(max_length,)`, `"decoder_loss_weights"`: float32 `(max_length,)`
        and `"parallel"`: bool scalar.
    """
    task = tf.cast(task, tf.int32)
    box_tokens = vocabulary.box_to_tokens(region_box)
    eos = tf.constant([_EOS_ID], tf.int32)
    caption = tf.concat([_text_tokens(caption_ids), eos], 0)
    region_text = _text_tokens(region_ids)
    region_caption = tf.concat([region_text, eos], 0)
    empty = tf.zeros((0,), tf.int32)
    prefix, target = tf.switch_case(
        task,
        [
            lambda: (empty, caption),
            lambda: (region_text, tf.concat([box_tokens, eos], 0)),
            lambda: (box_tokens, region_caption),
        ],
    )
    task_token = tf.gather(
        tf.constant([vocabulary.task_id(t) for t in range(3)], tf.int32),
        task,
    )
    # Keep the prefix and at least the first target token.
    prefix = prefix[: max_length - 1]
    sequence = tf.concat([[task_token], prefix, target], 0)[: max_length + 1]
    inputs, targets = sequence[:-1], sequence[1:]
    length = tf.shape(targets)[0]
    positions = tf.range(length)
    first_target = tf.shape(prefix)[0]
    weights = tf.cast(positions >= first_target, tf.float32)
    parallel = tf.logical_and(tf.cast(parallel, tf.bool), task == CAPTION)
    inputs = tf.where(
        tf.logical_and(parallel, positions > first_target),
        vocabulary.mask_id,
        inputs,
    )
    padding = [[0, max_length - length]]
    inputs = tf.ensure_shape(tf.pad(inputs, padding), (max_length,))
    targets = tf.ensure_shape(tf.pad(targets, padding), (max_length,))
    weights = tf.ensure_shape(tf.pad(weights, padding), (max_length,))
    return {
        "decoder_inputs": inputs,
        "decoder_targets": targets,
        "decoder_loss_weights": weights,
        "parallel": parallel,
    }


def random_locca_sequence(
    seed,
    caption_ids,
    region_ids,
    region_box,
    vocabulary: LocCaVocabulary,
    max_length: int,
    task_probabilities=(0.5, 0.25, 0.25),
    parallel_fraction: float = 0.5,
):
    """`locca_sequence` with the task and parallel flag drawn per example.

    Args:
        seed: int `(2,)` stateless seed (e.g. from the element index), so
            pipelines are deterministic.
        caption_ids, region_ids, region_box, vocabulary, max_length: as in
            `locca_sequence`.
        task_probabilities: probabilities of captioning, referring and
            grounded captioning.
        parallel_fraction: fraction of captioning examples decoded in
            parallel (0.5 in SigLIP 2).

    Returns:
        The dict of `locca_sequence`, plus `"task"`: int32 scalar.
    """
    logits = tf.math.log([list(task_probabilities)])
    task = tf.random.stateless_categorical(logits, 1, seed)[0, 0]
    draw = tf.random.stateless_uniform((), tf.stack([seed[1], seed[0]]))
    sequence = locca_sequence(
        task,
        caption_ids,
        region_ids,
        region_box,
        vocabulary,
        max_length,
        parallel=draw < parallel_fraction,
    )
    sequence["task"] = tf.cast(task, tf.int32)
    return sequence
