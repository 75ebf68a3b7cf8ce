"""
Title: Fine-tuning SigLIP 2 with model.fit
Author: keras-siglip2 contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: Train a SigLIP 2 backbone on your own image-text pairs with
the sigmoid loss, evaluate before and after, lock the image tower
(LiT-style), save and reload.
Accelerator: None (a GPU or TPU for real presets)
"""

# ## Introduction
#
# `SigLIP2Backbone` is a `keras.Model` whose output is the matrix of
# image-text logits of a batch, and whose default loss is SigLIP's
# pairwise sigmoid loss: image `i` and text `i` are a positive pair,
# every other pair in the batch a negative. So fine-tuning is
# `compile` + `fit` on batches of `{"images", "token_ids"}`, with no
# labels, on any Keras backend.
#
# This guide:
# 1. loads a backbone and its preprocessor from a preset;
# 2. builds a `tf.data` pipeline of image-caption pairs;
# 3. measures zero-shot accuracy and retrieval recall, fine-tunes with the
#    paper's optimizer, and measures again;
# 4. fine-tunes with the image tower frozen (LiT, "locked-image tuning");
# 5. saves the model as a `.keras` file and reloads it.

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_siglip2 import eval as siglip2_eval  # noqa: E402
from keras_siglip2.data import generated_dataset  # noqa: E402
from keras_siglip2.data import generated_examples  # noqa: E402
from keras_siglip2.data import train_demo_sentencepiece  # noqa: E402
from keras_siglip2.data import zero_shot_class_names  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2ImageConverter  # noqa: E402
from keras_siglip2.models import SigLIP2Preprocessor  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2Tokenizer  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402
from keras_siglip2.training.optimizer import siglip2_optimizer  # noqa: E402

# Training steps and batch size; the tests run fewer steps.
STEPS = int(os.environ.get("SIGLIP2_GUIDE_STEPS", "300"))
BATCH_SIZE = 32

# ## A backbone and its preprocessor
#
# With network access this is
# `SigLIP2Backbone.from_preset("siglip2_base_patch16_224")` and the same
# for `SigLIP2Preprocessor` (set `SIGLIP2_PRESET` to a preset name or
# directory). Offline, as here, a tiny randomly initialised model and a
# SentencePiece vocabulary trained on generated captions are written to
# a local preset directory first (see the getting-started guide). A
# random model is not a pretrained one, so the "fine-tuning" below is
# really a short training from scratch; the code is the same.

preset = os.environ.get("SIGLIP2_PRESET")
if preset is None:
    preset = tempfile.mkdtemp(prefix="siglip2_tiny_preset_")
    tokenizer = SigLIP2Tokenizer(
        proto=train_demo_sentencepiece(vocab_size=600, num_examples=300),
        sequence_length=16,
    )
    SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=32,
            patch_size=8,
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=64,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(),
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=64,
            max_sequence_length=16,
        ),
    ).save_to_preset(preset)
    SigLIP2Preprocessor(
        tokenizer, SigLIP2ImageConverter(image_size=32)
    ).save_to_preset(preset)

backbone = SigLIP2Backbone.from_preset(preset)
preprocessor = SigLIP2Preprocessor.from_preset(preset)
image_size = backbone.vision_encoder.image_size

# ## Data
#
# Any `tf.data.Dataset` of images and captions will do: the readers in
# `keras_siglip2.data` (`read_webdataset`, `read_tfrecord`, `read_jsonl`)
# yield the same dicts as the generated dataset used here. The task data
# is single-object scenes captioned with colour and shape ("a red
# circle"), the vocabulary of the zero-shot classes.
#
# The preprocessor runs inside `Dataset.map`: it resizes each image to the
# model's resolution, scales it to `[-1, 1]` and tokenizes the caption,
# so the batches have fixed shapes and `fit` compiles one train step.
# There is no label: the positives are the diagonal of each batch.

task = dict(num_objects=(1, 1), num_captions=2, english_fraction=1.0)


def pairs(example):
    return {"images": example["image"], "prompts": example["captions"][1]}


train_data = (
    generated_dataset("train", seed=0, image_size=image_size, **task)
    .map(pairs)
    .map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    .batch(BATCH_SIZE, drop_remainder=True)
    .prefetch(tf.data.AUTOTUNE)
)
batch = next(iter(train_data))
print({key: (tuple(v.shape), v.dtype.name) for key, v in batch.items()})

# ## Evaluation before training
#
# Held-out test scenes (a different seed stream) scored with the two
# evaluations of the getting-started guide.

test_examples = list(
    generated_examples("test", seed=0, num_examples=64, **task)
)
class_names = zero_shot_class_names("en")


def evaluate(model):
    encoder = siglip2_eval.BackboneEncoder(
        model, preprocessor.tokenizer, batch_size=64
    )
    return {
        "zero_shot": siglip2_eval.evaluate_zero_shot(
            encoder, test_examples, class_names, ks=(1, 5)
        ),
        "retrieval": siglip2_eval.evaluate_retrieval(
            encoder, test_examples, ks=(1, 5), max_captions_per_image=2
        ),
    }


before = evaluate(backbone)

# ## Fine-tuning
#
# `siglip2_optimizer` is the paper's optimizer: Adam (beta_2 = 0.95) with
# decoupled weight decay on kernels only, global-norm clipping at 1 and a
# linear-warmup + cosine schedule. The paper pre-trains at learning rate
# 1e-3; to fine-tune released weights use much less (1e-5 to 1e-4). The
# tiny random model here needs the pre-training rate.
#
# No loss is given to `compile`: the backbone's `compute_loss` is the
# sigmoid loss.

learning_rate = 1e-3 if "SIGLIP2_PRESET" not in os.environ else 1e-5
backbone.compile(
    optimizer=siglip2_optimizer(total_steps=STEPS, learning_rate=learning_rate)
)
# Five "epochs" of `STEPS / 5` steps each, to see the loss go down.
history = backbone.fit(
    train_data, steps_per_epoch=STEPS // 5, epochs=5, verbose=2
)
losses = history.history["loss"]
print("sigmoid loss per epoch: " + ", ".join(f"{v:.4f}" for v in losses))

# A reference point: a model that ignores its inputs can at best give
# every pair the same logit, the log-odds of a positive (1 in
# `BATCH_SIZE`), for a loss of `-log(p) - (n - 1) log(1 - p)` with
# `p = 1 / n`. The first steps reach it by learning the bias alone; a
# loss below it means the towers have started to match images and texts.

p = 1.0 / BATCH_SIZE
input_blind = -np.log(p) - (BATCH_SIZE - 1) * np.log(1.0 - p)
print(f"best loss of an input-blind model: {input_blind:.4f}")

after = evaluate(backbone)
print(
    siglip2_eval.format_table(
        {
            f"{task}/{when}": {
                metric: value
                for metric, value in results[task].items()
                if not metric.startswith("num_")
            }
            for when, results in (("before", before), ("after", after))
            for task in results
        },
        title="held-out test scenes, before and after fine-tuning",
    )
)

# ## Locked-image tuning (LiT)
#
# LiT trains only the text tower (and the logit scale and bias) against a
# frozen image tower: the image features, and everything built on them,
# stay exactly as they were. In Keras that is `trainable = False` on the
# image tower, then `compile` again so the train step picks up the new
# set of trainable weights.

backbone.vision_encoder.trainable = False


def values(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


image_weights = values(backbone.vision_encoder)
text_weights = values(backbone.text_encoder)
backbone.compile(
    optimizer=siglip2_optimizer(total_steps=20, learning_rate=learning_rate)
)
backbone.fit(train_data, steps_per_epoch=20, epochs=1, verbose=0)
image_unchanged = all(
    np.array_equal(a, b)
    for a, b in zip(image_weights, values(backbone.vision_encoder))
)
text_changed = any(
    not np.array_equal(a, b)
    for a, b in zip(text_weights, values(backbone.text_encoder))
)
print(
    f"LiT: trainable weights {len(backbone.trainable_weights)} of "
    f"{len(backbone.weights)}; image tower unchanged: {image_unchanged}; "
    f"text tower changed: {text_changed}"
)
backbone.vision_encoder.trainable = True

# ## Saving and reloading
#
# A `.keras` file holds the architecture and the weights; `load_model`
# rebuilds the backbone with no code beyond this library's import. (Use
# `backbone.save_to_preset(directory)` to publish it as a preset, and the
# converters to export it to HF or big_vision; see the converting guide.)

path = os.path.join(tempfile.mkdtemp(), "siglip2_finetuned.keras")
backbone.save(path)
reloaded = keras.saving.load_model(path)
check = next(iter(train_data.take(1)))
difference = np.max(
    np.abs(
        keras.ops.convert_to_numpy(backbone(check))
        - keras.ops.convert_to_numpy(reloaded(check))
    )
)
print(f"reloaded {type(reloaded).__name__}: max logit difference {difference}")
