"""Referring expression comprehension with a decoder on a frozen encoder.

SigLIP 2's protocol (as LocCa's): the image encoder is frozen and a
transformer decoder, cross-attending to its unpooled patch tokens, is
trained to read a referring expression and write the box of the region
it describes as four location tokens (`[REF] expression <ymin> <xmin>
<ymax> <xmax> EOS`, `keras_siglip2.data.locca`). At test time the box is
decoded greedily, restricted to location tokens, and a prediction is
correct when its IoU with the ground-truth box is at least 0.5.

Here the patch tokens are computed once (the encoder is frozen, so they
never change) and a `LocCaDecoder` sized as SigLIP 2's (half the text
encoder's depth) is trained on them for a few steps; any decoder can be
passed instead, e.g. a Stage A one to fine-tune.
"""

import random
from collections.abc import Iterable
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_siglip2.data.locca import REFERRING
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.locca import locca_sequence
from keras_siglip2.eval.encoders import as_examples
from keras_siglip2.losses.decoder import decoder_loss
from keras_siglip2.models.locca_decoder import LocCaDecoder
from keras_siglip2.models.locca_decoder import locca_decoder_for

_BOX_TOKENS = 4
_SEQUENCE_KEYS = ("decoder_inputs", "decoder_targets", "decoder_loss_weights")
# Greedy decoding runs eagerly; large batches amortise the dispatch.
_PREDICT_BATCH_SIZE = 128


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """Intersection over union of boxes, element by element.

    Boxes are `[ymin, xmin, ymax, xmax]` (any unit). A box with
    `max < min` on an axis is empty (area 0); two empty boxes have IoU 0.

    Args:
        boxes_a: float `(..., 4)`.
        boxes_b: float `(..., 4)`, broadcastable against `boxes_a`.

    Returns:
        float64 `(...)` IoU in `[0, 1]`.
    """
    a = np.asarray(boxes_a, np.float64)
    b = np.asarray(boxes_b, np.float64)
    if a.shape[-1:] != (4,) or b.shape[-1:] != (4,):
        raise ValueError(
            f"Boxes must have shape (..., 4); got {a.shape} and {b.shape}."
        )

    def area(box):
        return np.maximum(box[..., 2] - box[..., 0], 0) * np.maximum(
            box[..., 3] - box[..., 1], 0
        )

    low = np.maximum(a[..., :2], b[..., :2])
    high = np.minimum(a[..., 2:], b[..., 2:])
    intersection = np.prod(np.maximum(high - low, 0), axis=-1)
    union = area(a) + area(b) - intersection
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, intersection / safe, 0.0)


def referring_accuracy(predicted, true, threshold: float = 0.5) -> float:
    """Fraction of predicted boxes with IoU >= `threshold` with the truth.

    Args:
        predicted: float `(num, 4)` `[ymin, xmin, ymax, xmax]`.
        true: float `(num, 4)`.
        threshold: float.

    Returns:
        float in [0, 1].
    """
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(
            "`predicted` and `true` must both be (num, 4); got "
            f"{predicted.shape} and {true.shape}."
        )
    if not len(true):
        raise ValueError("No boxes to score.")
    return float(np.mean(box_iou(predicted, true) >= threshold))


def location_token_mask(vocabulary: LocCaVocabulary) -> np.ndarray:
    """bool `(vocabulary.size,)`: True for the location tokens."""
    mask = np.zeros(vocabulary.size, bool)
    first = vocabulary.first_location_id
    mask[first : first + vocabulary.num_location_bins] = True
    return mask


def referring_pairs(examples: Sequence[dict]):
    """The (image, expression, box) rows of examples that have one.

    Rows whose expression is empty (a box without expression in the
    readers' structure) are left out.

    Args:
        examples: dicts with `"boxes"` `(R, 4)` and `"refexps"` `(R,)`.

    Returns:
        `(image_indices, expressions, boxes)`: int32 `(num,)`, list of
        str, float32 `(num, 4)`.
    """
    indices, expressions, boxes = [], [], []
    for index, example in enumerate(examples):
        refexps = np.asarray(example["refexps"]).reshape(-1)
        rows = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        if len(refexps) != len(rows):
            raise ValueError(
                f"Example {str(example.get('key', index))!r}: "
                f"{len(rows)} boxes but {len(refexps)} refexps."
            )
        for refexp, box in zip(refexps, rows):
            if str(refexp).strip():
                indices.append(index)
                expressions.append(str(refexp))
                boxes.append(box)
    return (
        np.asarray(indices, np.int32),
        expressions,
        np.asarray(boxes, np.float32).reshape(-1, 4),
    )


def referring_sequences(
    token_ids,
    boxes,
    vocabulary: LocCaVocabulary,
    max_length: int,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Decoder training sequences and greedy-decoding prompts.

    Built by `keras_siglip2.data.locca.locca_sequence` (the Stage A
    format). Expressions are cut to `max_length - 5` tokens first, so the
    four box tokens and EOS always fit.

    Args:
        token_ids: int `(num, text_length)` tokenized expressions
            (right-padded, EOS after the text).
        boxes: float `(num, 4)` normalised `[ymin, xmin, ymax, xmax]`.
        vocabulary: the `LocCaVocabulary`.
        max_length: int >= 6. Decoder sequence length.
        pad_id: int. The tokenizer's padding id.

    Returns:
        dict of numpy arrays: `"decoder_inputs"`, `"decoder_targets"` int32
        `(num, max_length)`, `"decoder_loss_weights"` float32 `(num,
        max_length)`, and `"prompt_ids"` int32 `(num, max_length - 4)`
        (`[REF]` and the expression, right-padded) with
        `"prompt_lengths"` int32 `(num,)`.
    """
    if max_length < _BOX_TOKENS + 2:
        raise ValueError(
            f"`max_length` must be >= {_BOX_TOKENS + 2} (task token, box "
            f"tokens, EOS); got {max_length}."
        )
    token_ids = np.array(token_ids, np.int32)
    token_ids[:, max_length - _BOX_TOKENS - 1 :] = pad_id
    dataset = tf.data.Dataset.from_tensor_slices(
        (token_ids, np.asarray(boxes, np.float32))
    ).map(
        lambda ids, box: locca_sequence(
            REFERRING, ids, ids, box, vocabulary, max_length
        )
    )
    sequences = next(iter(dataset.batch(len(token_ids))))
    sequences = {key: sequences[key].numpy() for key in _SEQUENCE_KEYS}
    # The first weighted target follows the prompt: `[REF] expression`.
    lengths = np.argmax(sequences["decoder_loss_weights"] > 0, axis=1) + 1
    width = max_length - _BOX_TOKENS
    columns = np.arange(width)[None, :]
    prompts = np.where(
        columns < lengths[:, None], sequences["decoder_inputs"][:, :width], 0
    )
    sequences["prompt_ids"] = prompts.astype(np.int32)
    sequences["prompt_lengths"] = lengths.astype(np.int32)
    return sequences


class _FrozenFeatureDecoder(keras.Model):
    """Trains a `LocCaDecoder` on precomputed (frozen) image tokens."""

    def __init__(self, decoder: LocCaDecoder, **kwargs):
        kwargs.setdefault("name", "frozen_feature_decoder")
        super().__init__(**kwargs)
        self.decoder = decoder

    def build(self, input_shape=None):
        if not self.decoder.built:
            self.decoder.build((None, self.decoder.max_sequence_length))
        self.built = True

    def call(self, inputs, training=False):
        return self.decoder(
            inputs["decoder_inputs"],
            inputs["image_tokens"],
            image_mask=inputs.get("image_mask"),
            training=training,
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return decoder_loss(
            y_pred,
            self.decoder.head.kernel,
            self.decoder.head.bias,
            x["decoder_targets"],
            x["decoder_loss_weights"],
        )


class _ReferringBatches(keras.utils.PyDataset):
    """`steps` shuffled batches of sequences with their image tokens.

    Gathers each batch's image tokens from the per-image array, so they
    are never copied per expression. Pure numpy, for every backend.
    """

    def __init__(
        self,
        image_tokens,
        image_mask,
        pair_images,
        sequences,
        batch_size,
        steps,
        seed,
    ):
        super().__init__()
        self.image_tokens = np.asarray(image_tokens, np.float32)
        self.image_mask = (
            None if image_mask is None else np.asarray(image_mask, np.int32)
        )
        self.pair_images = np.asarray(pair_images)
        self.sequences = {key: sequences[key] for key in _SEQUENCE_KEYS}
        count = len(self.pair_images)
        rng = np.random.default_rng(seed)
        passes = -(-steps * batch_size // count)
        order = np.concatenate([rng.permutation(count) for _ in range(passes)])
        self.rows = order[: steps * batch_size].reshape(steps, batch_size)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        rows = self.rows[index]
        images = self.pair_images[rows]
        batch = {key: value[rows] for key, value in self.sequences.items()}
        batch["image_tokens"] = self.image_tokens[images]
        if self.image_mask is not None:
            batch["image_mask"] = self.image_mask[images]
        return (batch,)


def train_referring_decoder(
    decoder: LocCaDecoder,
    image_tokens,
    pair_images,
    sequences: dict,
    image_mask=None,
    steps: int = 200,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Trains a decoder on frozen image tokens (only the decoder learns).

    Args:
        decoder: a `LocCaDecoder` whose vocabulary holds the location
            tokens.
        image_tokens: float `(num_images, length, dim)` frozen patch
            tokens.
        pair_images: int `(num,)` the image of each training sequence.
        sequences: from `referring_sequences`.
        image_mask: optional `(num_images, length)` validity (NaFlex).
        steps: int. Optimizer steps.
        batch_size: int. Sequences per step (cycled and reshuffled).
        learning_rate: float. Adam's, with global-norm clipping at 1.
        seed: int. Shuffling seed.

    Returns:
        The training loss of each step.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1; got {steps}.")
    count = len(pair_images)
    if not count:
        raise ValueError("No referring expressions to train on.")
    batches = _ReferringBatches(
        image_tokens,
        image_mask,
        pair_images,
        sequences,
        batch_size,
        steps,
        seed,
    )
    model = _FrozenFeatureDecoder(decoder)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=1.0)
    )
    recorder = _StepLosses()
    model.fit(batches, epochs=1, callbacks=[recorder], verbose=0)
    return recorder.losses


class _StepLosses(keras.callbacks.Callback):
    """Each step's loss, from the epoch's running mean that Keras logs.

    One epoch of `steps` steps, rather than `steps` one-step epochs,
    avoids Keras' per-epoch overhead.
    """

    def __init__(self):
        super().__init__()
        self.losses = []
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * self._mean)
        self._mean = mean


def predict_boxes(
    decoder: LocCaDecoder,
    image_tokens,
    pair_images,
    prompt_ids,
    prompt_lengths,
    vocabulary: LocCaVocabulary,
    image_mask=None,
    batch_size: int = 32,
) -> np.ndarray:
    """Greedy-decodes four location tokens per prompt and reads the box.

    Args:
        decoder: a trained `LocCaDecoder`.
        image_tokens: float `(num_images, length, dim)`.
        pair_images: int `(num,)` image of each prompt.
        prompt_ids: int `(num, prompt_width)` from `referring_sequences`.
        prompt_lengths: int `(num,)`.
        vocabulary: the `LocCaVocabulary`.
        image_mask: optional `(num_images, length)` validity (NaFlex).
        batch_size: int.

    Returns:
        float32 `(num, 4)` normalised `[ymin, xmin, ymax, xmax]`; not
        reordered, so `max < min` (an empty box) can occur.
    """
    allowed = keras.ops.convert_to_tensor(location_token_mask(vocabulary))
    tokens = []
    for start in range(0, len(pair_images), batch_size):
        rows = np.asarray(pair_images[start : start + batch_size])
        generated = decoder.generate(
            np.asarray(image_tokens)[rows],
            np.asarray(prompt_ids[start : start + batch_size]),
            np.asarray(prompt_lengths[start : start + batch_size]),
            num_steps=_BOX_TOKENS,
            image_mask=None if image_mask is None else image_mask[rows],
            allowed_token_mask=allowed,
        )
        tokens.append(keras.ops.convert_to_numpy(generated))
    tokens = np.concatenate(tokens)
    return np.asarray(vocabulary.tokens_to_box(tokens), np.float32)


def evaluate_referring(
    encoder,
    train_examples: Iterable[dict],
    test_examples: Iterable[dict],
    decoder: LocCaDecoder | None = None,
    num_location_bins: int = 1000,
    steps: int = 200,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    threshold: float = 0.5,
    seed: int = 0,
) -> dict:
    """Referring expression accuracy at IoU >= `threshold` (see module).

    Args:
        encoder: a `BackboneEncoder` (or any object with
            `encode_patches(images)`, `tokenize(texts)` and, without
            `decoder`, a `backbone`) with a tokenizer.
        train_examples: dicts with `"image"`, `"boxes"`, `"refexps"` to
            train the decoder on (the readers' elements, generated
            examples); anything `as_examples` takes.
        test_examples: the same, to score.
        decoder: optional `LocCaDecoder` to train (vocabulary
            `LocCaVocabulary(text_vocabulary_size, num_location_bins).size`
            with the tokenizer's vocabulary); default a fresh one sized by
            `locca_decoder_for` with length `text length + 4`.
        num_location_bins: int. Location tokens per coordinate.
        steps, batch_size, learning_rate: decoder training.
        threshold: float. IoU for a correct box.
        seed: int. Shuffling seed; without `decoder`, also the seed of
            the new decoder's initial weights.

    Returns:
        flat dict: `"accuracy@{threshold}"`, `"mean_iou"`,
        `"train_loss_first"`, `"train_loss_last"`, `"num_train"`,
        `"num_test"`.
    """
    train_examples = as_examples(train_examples)
    test_examples = as_examples(test_examples)
    tokenizer = encoder.tokenizer
    vocabulary = LocCaVocabulary(tokenizer.vocabulary_size(), num_location_bins)
    if decoder is None:
        # Keras draws unseeded initializer seeds from Python's `random`:
        # seed it for this build only. (`keras.utils.set_random_seed` would
        # also reseed numpy, TensorFlow and the caller's other draws.)
        python_random_state = random.getstate()
        random.seed(seed)
        try:
            decoder = locca_decoder_for(
                encoder.backbone,
                vocabulary.size,
                tokenizer.sequence_length + _BOX_TOKENS,
            )
        finally:
            random.setstate(python_random_state)
    if decoder.vocabulary_size != vocabulary.size:
        raise ValueError(
            f"The decoder's vocabulary ({decoder.vocabulary_size}) must be "
            f"the LocCa vocabulary of the tokenizer ({vocabulary.size} = "
            f"{vocabulary.text_vocabulary_size} text + "
            f"{num_location_bins} location + 4)."
        )
    pad_id = getattr(tokenizer, "pad_token_id", 0)
    splits = {}
    for name, examples in (("train", train_examples), ("test", test_examples)):
        pair_images, expressions, boxes = referring_pairs(examples)
        if not len(pair_images):
            raise ValueError(
                f"The {name} examples have no referring expressions."
            )
        used = np.unique(pair_images)
        patches = encoder.encode_patches([examples[i]["image"] for i in used])
        sequences = referring_sequences(
            encoder.tokenize(expressions),
            boxes,
            vocabulary,
            decoder.max_sequence_length,
            pad_id,
        )
        splits[name] = {
            "tokens": patches["features"],
            "mask": None if patches["mask"].all() else patches["mask"],
            "pairs": np.searchsorted(used, pair_images).astype(np.int32),
            "boxes": boxes,
            "sequences": sequences,
        }
    train, test = splits["train"], splits["test"]
    losses = train_referring_decoder(
        decoder,
        train["tokens"],
        train["pairs"],
        train["sequences"],
        image_mask=train["mask"],
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )
    predicted = predict_boxes(
        decoder,
        test["tokens"],
        test["pairs"],
        test["sequences"]["prompt_ids"],
        test["sequences"]["prompt_lengths"],
        vocabulary,
        image_mask=test["mask"],
        batch_size=max(batch_size, _PREDICT_BATCH_SIZE),
    )
    iou = box_iou(predicted, test["boxes"])
    return {
        f"accuracy@{threshold:g}": float(np.mean(iou >= threshold)),
        "mean_iou": float(np.mean(iou)),
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "num_train": len(train["pairs"]),
        "num_test": len(test["pairs"]),
    }
