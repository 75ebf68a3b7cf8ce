"""
Title: The full SigLIP 2 training recipe
Author: keras-siglip2 contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: Stages A to D of the SigLIP 2 recipe in one resumable run:
the paper's schedule, a tiny run through every stage, an interruption and
a resume, and an evaluation.
Accelerator: None here; a TPU or GPU pod at the paper's scale
"""

# ## Introduction
#
# SigLIP 2 (arXiv 2502.14786, Sec. 2) trains one model through stages
# that switch on at fixed fractions of training:
#
# - **Stage A** (from the start): the SigLIP sigmoid image-text loss,
#   plus a LocCa decoder on the image tower's patch tokens that learns
#   captioning, referring expressions (caption -> box) and grounded
#   captioning (box -> caption).
# - **Stage B** (last 20%): adds self-distillation with an EMA teacher:
#   local-to-global consistency (the student sees small crops, the
#   teacher the whole image) and masked prediction (the student sees half
#   of its patches masked and predicts the teacher's patch features).
# - **Stage C** (last 5%): fixed-resolution checkpoints adapt to their
#   final resolution (the position table is resized, the patch embedding
#   PI-resized if the patch size changes). The NaFlex variant instead
#   continues from 90% with native aspect ratios and a random sequence
#   length per batch.
# - **Stage D** (small models): ACID distillation: from each super-batch,
#   train on the examples that a stronger teacher finds easy and the
#   student finds hard (high "learnability").
#
# `SigLIP2Recipe` runs all of them in one `fit`, by fraction of the
# examples seen, writing a checkpoint every `checkpoint_every` steps; a
# run that is stopped or killed resumes from its last checkpoint to the
# same weights as an uninterrupted one.

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

from keras_siglip2 import eval as siglip2_eval  # noqa: E402
from keras_siglip2.data import generated_dataset  # noqa: E402
from keras_siglip2.data import generated_examples  # noqa: E402
from keras_siglip2.data import train_demo_sentencepiece  # noqa: E402
from keras_siglip2.data import zero_shot_class_names  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2Tokenizer  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402
from keras_siglip2.training.recipe import RecipeConfig  # noqa: E402
from keras_siglip2.training.recipe import SigLIP2Recipe  # noqa: E402
from keras_siglip2.training.recipe import stage_plan  # noqa: E402

# ## The paper's configuration
#
# `RecipeConfig` names every hyper-parameter; its defaults are the
# paper's. Only the amount of data and the batch are required. The
# released models saw 40B examples at a batch of 32k (about 1.2M steps):

paper = RecipeConfig(total_examples=40_000_000_000, batch_size=32_768)
for field in (
    "learning_rate",
    "weight_decay",
    "beta_2",
    "global_clipnorm",
    "warmup_fraction",
    "decoder_loss_weight",
    "self_distillation_start",
    "resolution_change_start",
    "naflex_start",
    "naflex_stretch",
    "num_local_crops",
    "ema_momentum",
    "mask_ratio",
):
    print(f"{field:>24} = {getattr(paper, field)}")

# The stage plan turns the fractions into steps (rounded to whole
# checkpoint segments). For a fixed-resolution model and for the NaFlex
# variant, whose Stage C starts at 90% and covers the remaining 10% of
# the data 3.75 times (with half batches at the longest length, so it
# takes more steps than batches):


def print_plan(config, title):
    steps = config.total_examples // config.batch_size
    print(title)
    print(f"  {'stage':<6}{'steps':>22}{'of A-C schedule':>18}")
    for stage in stage_plan(config):
        span = f"[{stage.start_step:,}, {stage.end_step:,})"
        share = (stage.end_step - stage.start_step) / steps
        print(f"  {stage.name:<6}{span:>22}{share:>17.1%}")


print_plan(paper, "fixed resolution, 40B examples, batch 32k:")
print_plan(
    RecipeConfig(total_examples=40_000_000_000, batch_size=32_768, naflex=True),
    "NaFlex:",
)

# Stage D is switched on by `distillation_examples` (the paper uses it
# for B/16 and B/32, at learning rate 1e-5 without weight decay, keeping
# half of each super-batch of twice the batch for B/16).

# ## A tiny run through every stage
#
# The same code at toy scale: a 16 px model with 4 px patches, a
# SentencePiece vocabulary trained on the generated dataset's captions,
# 8 steps of 4 examples for stages A-C, then Stage D. Stage C changes the
# resolution from 16 to 20 px. Stage B's projection heads are shrunk to
# fit the tiny model.
#
# Stage D needs a teacher that reads the same token ids. The paper's is
# an So400m fine-tuned on curated data; here a wider, randomly
# initialised tiny model stands in (load yours with
# `SigLIP2Backbone.from_preset`).

tokenizer = SigLIP2Tokenizer(
    proto=train_demo_sentencepiece(vocab_size=600, num_examples=100),
    sequence_length=12,
)


def tiny_backbone(width, patch_size):
    return SigLIP2Backbone(
        SigLIP2VisionEncoder(
            image_size=16,
            patch_size=patch_size,
            hidden_dim=width,
            num_layers=1,
            num_heads=2,
            intermediate_dim=2 * width,
        ),
        SigLIP2TextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(),
            hidden_dim=width,
            num_layers=1,
            num_heads=2,
            intermediate_dim=2 * width,
            max_sequence_length=12,
        ),
    )


student = tiny_backbone(16, patch_size=4)
teacher = tiny_backbone(24, patch_size=8)

config = RecipeConfig(
    total_examples=32,
    batch_size=4,
    checkpoint_every=2,
    image_size=16,
    stage_c_image_size=20,
    distillation_examples=16,
    decoder_length=20,
    num_location_bins=16,
    num_local_crops=2,
    local_crop_size=8,
    head_hidden_dim=16,
    head_bottleneck_dim=8,
    num_prototypes=32,
    num_patch_prototypes=16,
)

# The data is a function from an example index to a `tf.data` stream
# starting there, so that a resumed run continues exactly where the
# checkpoint left off. Real data plugs in the same way, e.g.
# `lambda start: read_webdataset(shards).skip(start)`.

recipe = SigLIP2Recipe(
    config,
    student,
    tokenizer,
    lambda start: generated_dataset(
        "train", seed=0, start=start, side_range=(16, 40)
    ),
    teacher=teacher,
)
print(
    "tiny plan: "
    + ", ".join(f"{s.name} [{s.start_step}, {s.end_step})" for s in recipe.plan)
)

# ## Interrupt and resume
#
# `stop_after_steps` stops the run after a checkpoint, as a pre-empted
# job would; calling `fit` again with the same directory resumes from the
# latest checkpoint (model, optimizer, EMA teacher, step and data
# position) and goes on through the remaining stages. `on_stage_end` is
# called with each finished stage's backbone. A run resumed from a stage's
# final checkpoint calls it for that stage again first (a pre-empted
# process may have stopped before its callback ran), so keep the callback
# idempotent: here the second `fit` reports Stage B once more.

checkpoint_dir = Path(tempfile.mkdtemp(prefix="siglip2_recipe_"))


def on_stage_end(name, backbone):
    mode = "NaFlex" if backbone.naflex else "fixed"
    print(
        f"stage {name} done: {backbone.vision_encoder.image_size} px ({mode})"
    )


start = time.perf_counter()
first = recipe.fit(
    checkpoint_dir, verbose=0, stop_after_steps=6, on_stage_end=on_stage_end
)
latest = (checkpoint_dir / "LATEST").read_text().strip()
print(f"stopped; latest checkpoint: {latest}")
files = sorted(path.name for path in (checkpoint_dir / latest).iterdir())
print(f"checkpoint files: {files}")
result = recipe.fit(checkpoint_dir, verbose=0, on_stage_end=on_stage_end)
print(f"recipe time: {time.perf_counter() - start:.0f} s")

# Each stage reports its own losses: the sigmoid and LocCa decoder losses
# throughout, the two self-distillation losses from Stage B, and in Stage
# D the loss on the kept examples and their learnability.

for stage, history in {**first["histories"], **result["histories"]}.items():
    print(
        f"stage {stage}: "
        + ", ".join(f"{k} {v[-1]:.3f}" for k, v in sorted(history.items()))
    )

# ## Evaluation
#
# The final backbone (at the Stage C resolution) goes through the same
# evaluations as any other: zero-shot classification and retrieval on
# held-out generated scenes. Eight steps of a 16-wide model learn close to
# nothing; the point is the plumbing, and the numbers are the baseline a
# real run improves on.

backbone = result["backbone"]
encoder = siglip2_eval.BackboneEncoder(backbone, tokenizer, batch_size=32)
test = list(
    generated_examples("test", seed=0, num_examples=32, num_objects=(1, 1))
)
print(
    siglip2_eval.format_table(
        {
            "zero_shot": siglip2_eval.evaluate_zero_shot(
                encoder, test, zero_shot_class_names("en"), ks=(1, 5)
            ),
            "retrieval": siglip2_eval.evaluate_retrieval(
                encoder, test, ks=(1, 5)
            ),
        },
        title=f"after the recipe ({backbone.vision_encoder.image_size} px)",
    )
)

# The trained backbone is an ordinary `SigLIP2Backbone`: save it with
# `backbone.save(...)` or `backbone.save_to_preset(...)`, or export it
# (see the converting guide).

path = checkpoint_dir / "final.keras"
backbone.save(path)
print(f"saved {path.name}: {type(keras.saving.load_model(path)).__name__}")
