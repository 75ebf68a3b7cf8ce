"""Command line: `python -m keras_siglip2 {demo,convert,summary,eval}`.

- `demo [--output_dir DIR] [--steps N] [--batch_size B] [--seed S]
  [--demo_eval_examples E] [--demo_decoder_steps K]` runs the SigLIP 2
  recipe offline on the generated dataset with a tiny model (both towers
  width 64, 2 layers, 4 heads, MLP 256; 32 px images in 8 px patches;
  16-token texts; a 1000-piece SentencePiece vocabulary trained on the
  captions; ~330k parameters), in about 12 minutes on 2 otherwise idle
  CPU cores with the defaults (N=2400 steps of B=32; longer on cores
  shared with other work, see benchmarks/RESULTS.md): it trains the
  Stage D teacher (twice the student's width, sigmoid loss, "curated"
  data: English, no rendered words; N steps), then stages A (sigmoid +
  LocCa), B (+ self-distillation and masked prediction), C (the NaFlex
  variant, sequence lengths 16/36/64) and D (ACID with that teacher),
  with Keras progress bars and resumable checkpoints in
  `DIR/checkpoints`. After each stage (and at random init, and for the
  teacher) it scores zero-shot top-1, image<->text retrieval R@1/R@5,
  referring-expression accuracy and dense-probe mIoU on held-out data (E
  test images), prints them as a table per stage and writes
  `DIR/results.json`. Two rows isolate a stage's own change: the Stage B
  model in NaFlex form (before Stage C trains it), and a control run of
  Stage D without ACID's selection (the Stage C model trained for the
  same steps on random halves of the same super-batches). It writes
  `DIR/loss_curves.png` (per-step losses, stages shaded),
  `DIR/naflex_grids.png` (patch grids of images of three aspect ratios
  at each length) and `DIR/backbone.keras`, reloads it, and prints the
  parameter counts of the real SigLIP 2 sizes.
- `convert --from {hf,big_vision,keras_hub,keras} --to
  {keras,hf,keras_hub,big_vision} SRC DST` converts a checkpoint, with a
  progress bar over its tensors. `keras` is a `.keras` file (when the path
  ends in `.keras`) or our preset directory; `keras_hub` a keras-hub
  `SigLIPBackbone` preset directory (or, as a source, a preset name).
  With `--to hf --processor PRESET`, the tokenizer and image converter of
  PRESET (any preset or HF directory `SigLIP2Preprocessor.from_preset`
  reads, e.g. SRC) are written too, for `transformers.AutoProcessor`.
- `summary SRC` prints the architecture and parameter counts per tower of
  a checkpoint (`.npz`, `.keras`, a preset or HF directory) or of a preset
  name, without downloading it.
- `eval [--eval_model tiny|MODEL] [--eval_data generated|PATH] ...` scores
  a model: zero-shot classification (multilingual prompts), image<->text
  retrieval, referring expressions (a decoder trained on the frozen image
  tower) and a dense linear probe; prints a table and writes JSON
  (`--eval_output`). Offline on the generated dataset by default; on
  WebDataset/TFRecord/JSONL data with `--eval_data` (zero-shot with
  `--eval_class_names`, referring with `--eval_train_data`).
"""

import json
import math
import os
import pathlib
import sys
import time
import zipfile
from collections.abc import Callable

import keras
import numpy as np
from absl import app
from absl import flags

from keras_siglip2 import demo_plots
from keras_siglip2 import eval as eval_lib
from keras_siglip2.convert.big_vision import load_big_vision_npz
from keras_siglip2.convert.big_vision import save_big_vision_npz
from keras_siglip2.convert.hf import load_hf_checkpoint
from keras_siglip2.convert.hf import save_hf_checkpoint
from keras_siglip2.convert.keras_hub import load_preset
from keras_siglip2.convert.keras_hub import save_keras_hub_preset
from keras_siglip2.data.generated import CLASS_NAMES as GENERATED_CLASS_NAMES
from keras_siglip2.data.generated import LANGUAGES as GENERATED_LANGUAGES
from keras_siglip2.data.generated import GeneratedConfig
from keras_siglip2.data.generated import generate_example
from keras_siglip2.data.generated import generated_dataset
from keras_siglip2.data.generated import generated_examples
from keras_siglip2.data.generated import zero_shot_class_names
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.pipeline import training_batches
from keras_siglip2.data.readers import SkipCounter
from keras_siglip2.data.readers import jsonl_examples
from keras_siglip2.data.readers import tfrecord_examples
from keras_siglip2.data.readers import webdataset_examples
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.layers.contrastive_logits import ContrastiveLogits
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.configs import BackboneConfig
from keras_siglip2.models.configs import get_config
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.models.preprocessor import SigLIP2Preprocessor
from keras_siglip2.models.presets import PRESETS
from keras_siglip2.models.presets import get_preset
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training import checkpoint as ckpt
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.recipe import RecipeConfig
from keras_siglip2.training.recipe import SigLIP2Recipe
from keras_siglip2.training.stage_a import StageAModel
from keras_siglip2.training.stage_d import num_kept
from keras_siglip2.utils.atomic_write import write_json_atomic

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "siglip2_demo",
    "`demo`: where it writes checkpoints/ (resumed when present), "
    "teacher.keras, results.json, losses.json, loss_curves.png, "
    "naflex_grids.png and backbone.keras.",
)
_STEPS = flags.DEFINE_integer(
    "steps",
    2400,
    "`demo`: nominal training steps of stages A-C, in 20 checkpoint "
    "segments: A the first 80%, B to 90%, then the NaFlex Stage C covers "
    "the last 10% stretched x3.75 (plus a step per half batch at the "
    "longest length); Stage D adds 10% with 2x super-batches. The Stage D "
    "teacher trains for `steps` steps first.",
    lower_bound=16,
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    32,
    "`demo`: image-text pairs per training batch (even: NaFlex Stage C "
    "halves batches of the longest sequence length).",
    lower_bound=2,
)
_DEMO_EVAL_EXAMPLES = flags.DEFINE_integer(
    "demo_eval_examples",
    256,
    "`demo`: held-out test images of each evaluation (twice as many "
    "validation images train the referring decoder and the dense probe).",
    lower_bound=8,
)
_DEMO_DECODER_STEPS = flags.DEFINE_integer(
    "demo_decoder_steps",
    200,
    "`demo`: training steps of the referring-expression decoder in each "
    "evaluation.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 0, "`demo`: random seed.")
SOURCE_FORMATS = ("hf", "big_vision", "keras_hub", "keras")
TARGET_FORMATS = ("keras", "hf", "keras_hub", "big_vision")
_FROM = flags.DEFINE_enum(
    "from", None, SOURCE_FORMATS, "Source format of `convert`."
)
_TO = flags.DEFINE_enum(
    "to", None, TARGET_FORMATS, "Target format of `convert`."
)
_PROCESSOR = flags.DEFINE_string(
    "processor",
    None,
    "`convert --to hf`: a preset or directory whose tokenizer and image "
    "converter are written as HF processor files beside the model.",
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "`convert --from big_vision`: input size when it is not grid * patch "
    "(e.g. 384 for so400m/14 at 384 px).",
    lower_bound=1,
)

TINY_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    intermediate_dim=256,
)
TINY_TEXT = dict(
    vocabulary_size=1000,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    intermediate_dim=256,
    max_sequence_length=16,
)
# The Stage D teacher: larger than the student, as in the paper (an
# So400m teacher for B-sized students): twice the width. (Twice the depth
# too learns more slowly at this budget: weaker than the student after
# the same steps, see benchmarks/RESULTS.md.)
TEACHER_VISION = dict(TINY_VISION, hidden_dim=128, intermediate_dim=512)
TEACHER_TEXT = dict(TINY_TEXT, hidden_dim=128, intermediate_dim=512)
TABLE_CONFIGS = (
    "base_patch16_256",
    "large_patch16_256",
    "so400m_patch16_256",
    "giant_patch16_256",
    "so400m_patch14_384",
)


def _count(layer: keras.layers.Layer) -> int:
    return sum(math.prod(v.shape) for v in layer.weights)


def _architecture_param_counts(name: str) -> tuple[int, int, int]:
    """Parameter counts of a named architecture, without allocating it.

    Args:
        name: a config name such as `"so400m_patch14_384"`.

    Returns:
        `(image_tower, text_tower, total)`; the total adds the logit scale
        and bias.
    """
    config = get_config(name)
    image_size = config.vision["image_size"]
    length = config.text["max_sequence_length"]
    # Without `initialize_variables=False` the scope would draw every
    # initial value on exit, which takes minutes for the giant model.
    with keras.StatelessScope(initialize_variables=False):
        vision = SigLIP2VisionEncoder(**config.vision)
        vision.build((None, image_size, image_size, 3))
        text = SigLIP2TextEncoder(**config.text)
        text.build((None, length))
        logits = ContrastiveLogits()
        logits.build((None, vision.hidden_dim), (None, text.projection_dim))
        counts = (_count(vision), _count(text), _count(logits))
    # The never-initialised variables stay queued for initialisation by
    # the next stateless scope to close (JAX training opens them); drop them.
    keras.utils.clear_session(free_memory=False)
    return counts[0], counts[1], sum(counts)


def _print_header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


# === demo ===

# NaFlex sequence lengths (patches of 8 px): 32, 48 and 64 px squares.
DEMO_NAFLEX_LENGTHS = (16, 36, 64)
# Sides of the generated training and test images (aspect ratios vary).
DEMO_SIDE_RANGE = (24, 64)
DEMO_LOCATION_BINS = 32
# The paper's Stage D rate is 1e-5 after 40B examples at peak 1e-3; the
# demo's model is far from converged after a few hundred steps, so Stage D
# uses a tenth of the peak rate to move in its few steps.
DEMO_DISTILLATION_LEARNING_RATE = 1e-4
# Stage B teacher temperature of the demo's small projection heads.
DEMO_TEACHER_TEMPERATURE = 0.02
# "Curated" data of the Stage D teacher: English captions only, without
# rendered words, from its own seed stream.
TEACHER_DATA = dict(english_fraction=1.0, text_fraction=0.0)
TEACHER_ROW = "teacher of D (curated)"
# Columns of the per-stage table: (header, metric key).
DEMO_COLUMNS = (
    ("0-shot", "zero_shot/top1"),
    ("I>T@1", "retrieval/image_to_text/R@1"),
    ("I>T@5", "retrieval/image_to_text/R@5"),
    ("T>I@1", "retrieval/text_to_image/R@1"),
    ("T>I@5", "retrieval/text_to_image/R@5"),
    ("ref@.5", "referring/accuracy@0.5"),
    ("mIoU", "dense_probe/mIoU"),
)
_METRIC_TASKS = ("zero_shot", "retrieval", "referring", "dense_probe")


def format_stage_table(rows: dict[str, dict[str, float]]) -> str:
    """The per-stage table: one row per evaluated model, one column each.

    Args:
        rows: `{row_name: {metric_key: value}}` with the keys of
            `DEMO_COLUMNS` (missing ones print as `n/a`).

    Returns:
        str, without a trailing newline.
    """
    width = max([len("model")] + [len(name) for name in rows])
    header = f"{'model':<{width}}" + "".join(
        f"  {title:>6}" for title, _ in DEMO_COLUMNS
    )
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = []
        for _, key in DEMO_COLUMNS:
            value = metrics.get(key)
            cells.append(
                "   n/a"
                if value is None or not math.isfinite(value)
                else f"{value:6.3f}"
            )
        lines.append(f"{name:<{width}}" + "".join(f"  {c}" for c in cells))
    return "\n".join(lines)


def _generated_images(split, count, seed, **overrides) -> list:
    config = GeneratedConfig(side_range=DEMO_SIDE_RANGE, **overrides)
    return eval_lib.as_examples(
        generated_examples(split, seed, count, config=config)
    )


class _StepLosses(keras.callbacks.Callback):
    """Per-step losses of every stage, saved at each checkpoint.

    Keras logs each metric's running mean over the epoch (a checkpoint
    segment of `steps_per_epoch` steps); step `b`'s own value is
    `(b + 1) * mean_b - b * mean_{b-1}`.

    Args:
        run: name of the run (a key of the saved file).
        steps_per_epoch: the recipe's `checkpoint_every`.
        path: JSON file `{run: {loss: [[step, value], ...]}}`, rewritten
            at the end of every epoch (other runs' entries are kept).
        runs: the curves recorded so far, of every run; updated in place.
    """

    def __init__(self, run: str, steps_per_epoch: int, path, runs: dict):
        super().__init__()
        self.run = run
        self.steps_per_epoch = steps_per_epoch
        self.path = path
        self.runs = runs
        self.curves = runs.setdefault(run, {})
        self.first_step = 0
        self.means = {}

    def resume_at(self, step: int) -> None:
        """Drops the values recorded at `step` and after."""
        for name, points in self.curves.items():
            self.curves[name] = [p for p in points if p[0] < step]

    def on_epoch_begin(self, epoch, logs=None):
        self.first_step = epoch * self.steps_per_epoch
        self.means = {}

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch
        for name, mean in (logs or {}).items():
            if not name.endswith("loss"):
                continue
            mean = float(mean)
            value = (batch + 1) * mean - batch * self.means.get(name, 0.0)
            self.means[name] = mean
            self.curves.setdefault(name, []).append([step, value])

    def on_epoch_end(self, epoch, logs=None):
        write_json_atomic(self.path, self.runs)


class _CachingEncoder(eval_lib.BackboneEncoder):
    """A `BackboneEncoder` that preprocesses each image once.

    The demo scores every task of several stages on the same few hundred
    images (the same arrays): their inputs are kept by identity.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._inputs = {}

    def image_inputs(self, images):
        rows = []
        for image in images:
            if id(image) not in self._inputs:
                # The image is kept too, so its id is never reused.
                self._inputs[id(image)] = (
                    image,
                    super().image_inputs([image]),
                )
            rows.append(self._inputs[id(image)][1])
        if not self.backbone.naflex:
            return np.concatenate(rows)
        return {
            key: np.concatenate([row[key] for row in rows]) for key in rows[0]
        }


class _DemoEvaluation:
    """Scores a backbone on every task on the same held-out data.

    Zero-shot top-1 (80 colour-shape classes, English prompts) on
    single-object test images; image<->text retrieval R@1/R@5 on test
    images with three captions each; referring-expression accuracy
    (IoU >= 0.5) of a decoder trained on the frozen patch tokens of
    validation images (the same initial decoder weights for every
    model); a dense linear probe's mIoU (patch-centre labels). All
    images are generated at native aspect ratios; fixed-resolution models
    see them resized to their square input, NaFlex models patchified.

    Args:
        tokenizer: the `SigLIP2Tokenizer` of the backbones.
        decoder: the referring `LocCaDecoder` (its vocabulary the
            `LocCaVocabulary` of the tokenizer with `DEMO_LOCATION_BINS`);
            reset to its initial weights before each evaluation.
        num_examples: int. Test images (validation images: twice as many).
        decoder_steps: int. Training steps of the decoder.
        seed: int. Data and shuffling seed.
    """

    def __init__(self, tokenizer, decoder, num_examples, decoder_steps, seed):
        self.tokenizer = tokenizer
        self.decoder = decoder
        if not decoder.built:
            decoder.build((None, decoder.max_sequence_length))
        self.decoder_weights = decoder.get_weights()
        self.decoder_steps = decoder_steps
        self.seed = seed
        self.test = _generated_images(
            "test", num_examples, seed, num_captions=3
        )
        self.single = _generated_images(
            "test", num_examples, seed, num_objects=(1, 1)
        )
        self.train = _generated_images("validation", 2 * num_examples, seed)
        self.encoders = {}

    def __call__(
        self, backbone, max_num_patches=None, tasks=_METRIC_TASKS
    ) -> dict[str, float]:
        """Flat `{"task/metric": value}` of `tasks` (default: all).

        `"referring"` needs a backbone of the decoder's width (the
        student's).
        """
        # Stages that train the same backbone object share its encoder:
        # its compiled functions read the current weights at each call.
        key = (id(backbone), max_num_patches)
        if key not in self.encoders:
            self.encoders[key] = (
                backbone,
                _CachingEncoder(
                    backbone,
                    self.tokenizer,
                    batch_size=32,
                    max_num_patches=max_num_patches,
                ),
            )
        encoder = self.encoders[key][1]
        unknown = set(tasks) - set(_METRIC_TASKS)
        if unknown:
            raise ValueError(
                f"Unknown tasks {sorted(unknown)}; expected a subset of "
                f"{_METRIC_TASKS}."
            )
        scorers = {
            "zero_shot": lambda: eval_lib.evaluate_zero_shot(
                encoder, self.single, zero_shot_class_names("en")
            ),
            "retrieval": lambda: eval_lib.evaluate_retrieval(
                encoder, self.test, ks=(1, 5)
            ),
            "referring": lambda: self._referring(encoder),
            "dense_probe": lambda: eval_lib.evaluate_dense_probe(
                encoder,
                self.train,
                self.test,
                class_names=GENERATED_CLASS_NAMES,
                method="centre",
                epochs=10,
            ),
        }
        return {
            f"{task}/{metric}": float(value)
            for task in _METRIC_TASKS
            if task in tasks
            for metric, value in scorers[task]().items()
            if not metric.startswith("IoU/")
        }

    def _referring(self, encoder) -> dict:
        # Every model's decoder starts from the same weights.
        self.decoder.set_weights(self.decoder_weights)
        return eval_lib.evaluate_referring(
            encoder,
            self.train,
            self.test,
            decoder=self.decoder,
            num_location_bins=DEMO_LOCATION_BINS,
            steps=self.decoder_steps,
            batch_size=32,
            seed=self.seed,
        )


class _Demo:
    """Per-stage evaluation and the result files of a demo run."""

    def __init__(self, output_dir: pathlib.Path):
        self.output_dir = output_dir
        # Set once the recipe has built its layers (see `_recipe_demo`).
        self.evaluate = None
        # The fixed-resolution backbone the recipe starts from.
        self.fixed_backbone = None
        self.results_path = output_dir / "results.json"
        self.losses_path = output_dir / "losses.json"
        self.checkpoint_dir = output_dir / "checkpoints"
        # The Stage C student in fixed-resolution form, kept for Stage D's
        # control run.
        self.stage_c_path = output_dir / "stage_c.weights.h5"
        # NaFlex lengths of Stage C, if it trains the NaFlex variant.
        self.naflex_lengths = ()
        self.rows = {}
        self.runs = {}
        self.stages = {}
        self.metadata = {}

    def resume(self) -> bool:
        """Loads the results of an interrupted run; False if fresh."""
        if ckpt.latest_checkpoint(self.checkpoint_dir) is None:
            return False
        if self.results_path.exists():
            self.rows = eval_lib.read_json(self.results_path)["results"]
        if self.losses_path.exists():
            self.runs = json.loads(self.losses_path.read_text())
        return True

    def score(
        self, row: str, backbone, max_num_patches=None, tasks=_METRIC_TASKS
    ) -> None:
        start = time.perf_counter()
        self.rows[row] = self.evaluate(backbone, max_num_patches, tasks)
        eval_lib.write_json(self.rows, self.results_path, self.metadata)
        print(
            f"evaluated {row} in {time.perf_counter() - start:.1f} s:\n"
            + format_stage_table({row: self.rows[row]}),
            flush=True,
        )

    def on_stage_end(self, stage: str, backbone) -> None:
        """Scores a stage's backbone.

        A NaFlex backbone is scored at each sequence length, then in its
        fixed-resolution form (the same encoders on square images), the
        form Stage D trains, so that Stage D's own change shows. Before a
        NaFlex Stage C, the Stage B model is scored in NaFlex form too (the
        same encoders, position embeddings resized per image), so that
        Stage C's own change shows. The Stage C model is saved for Stage
        D's control run (`stage_c_path`).
        """
        if backbone.naflex:
            for length in self.naflex_lengths:
                self.score(
                    f"{stage} NaFlex ({length} patches)",
                    backbone,
                    max_num_patches=length,
                )
            fixed = self.fixed_backbone
            if not (
                fixed.vision_encoder is backbone.vision_encoder
                and fixed.text_encoder is backbone.text_encoder
            ):
                fixed = SigLIP2Backbone(
                    backbone.vision_encoder, backbone.text_encoder
                )
            backbone = fixed
        size = backbone.vision_encoder.image_size
        self.score(f"{stage} ({size} px)", backbone)
        if stage == "B" and self.naflex_lengths:
            naflex = SigLIP2Backbone(
                backbone.vision_encoder, backbone.text_encoder, naflex=True
            )
            for length in self.naflex_lengths:
                self.score(
                    f"{stage} NaFlex ({length} patches)",
                    naflex,
                    max_num_patches=length,
                )
        if stage == "C":
            tmp = self.stage_c_path.with_name(".tmp." + self.stage_c_path.name)
            backbone.save_weights(tmp)
            os.replace(tmp, self.stage_c_path)

    def recorder(self, run: str, recipe) -> _StepLosses:
        """A loss recorder for `recipe`, resumed at its checkpoint."""
        self.stages[run] = [
            (s.name, s.start_step, s.end_step) for s in recipe.plan
        ]
        recorder = _StepLosses(
            run, recipe.config.checkpoint_every, self.losses_path, self.runs
        )
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        if latest is not None:
            recorder.resume_at(ckpt.read_checkpoint(latest)[0]["step"])
        return recorder


def _print_histories(histories: dict) -> None:
    for stage, history in histories.items():
        for name, values in history.items():
            print(
                f"stage {stage} {name}: first {values[0]:.4f} "
                f"last {values[-1]:.4f}"
            )


def _tiny_backbone(
    vocabulary_size: int,
    prefix: str = "",
    vision: dict = TINY_VISION,
    text: dict = TINY_TEXT,
) -> SigLIP2Backbone:
    names = {}
    if prefix:
        names = {
            "vision": {"name": f"{prefix}_vision_encoder"},
            "text": {"name": f"{prefix}_text_encoder"},
            "backbone": {"name": f"{prefix}_backbone"},
        }
    return SigLIP2Backbone(
        SigLIP2VisionEncoder(**vision, **names.get("vision", {})),
        SigLIP2TextEncoder(
            **{**text, "vocabulary_size": vocabulary_size},
            **names.get("text", {}),
        ),
        **names.get("backbone", {}),
    )


def _train_teacher(tokenizer, path: pathlib.Path) -> SigLIP2Backbone:
    """The Stage D teacher: twice the student's width, trained on the
    "curated" data (English, no rendered words) with the sigmoid loss."""
    if path.exists():
        print(f"loading the teacher of an earlier run from {path}")
        return keras.saving.load_model(path, safe_mode=True)
    teacher = _tiny_backbone(
        tokenizer.vocabulary_size(),
        prefix="teacher",
        vision=TEACHER_VISION,
        text=TEACHER_TEXT,
    )
    steps, batch_size = _STEPS.value, _BATCH_SIZE.value
    data = training_batches(
        generated_dataset(
            "train",
            seed=_SEED.value + 1,
            side_range=DEMO_SIDE_RANGE,
            **TEACHER_DATA,
        ),
        tokenizer,
        batch_size,
        image_converter=SigLIP2ImageConverter(
            image_size=TINY_VISION["image_size"], interpolation="bilinear"
        ),
        seed=_SEED.value + 1,
    ).map(lambda b: {"images": b["images"], "token_ids": b["token_ids"]})
    teacher.compile(optimizer=siglip2_optimizer(total_steps=steps))
    epochs = 4
    history = teacher.fit(
        data.prefetch(2),
        epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        verbose=1,
    )
    losses = history.history["loss"]
    print(f"teacher sigmoid loss: first {losses[0]:.4f} last {losses[-1]:.4f}")
    teacher.save(path)
    return teacher


def demo_tokenizer() -> SigLIP2Tokenizer:
    """The demo's tokenizer: a SentencePiece vocabulary trained on the
    generated texts (deterministic), `TINY_TEXT`'s size and length."""
    proto = train_demo_sentencepiece(vocab_size=TINY_TEXT["vocabulary_size"])
    return SigLIP2Tokenizer(
        proto=proto, sequence_length=TINY_TEXT["max_sequence_length"]
    )


def _recipe_demo(output_dir: pathlib.Path) -> dict:
    keras.utils.set_random_seed(_SEED.value)
    _print_header("Data and tokenizer")
    tokenizer = demo_tokenizer()
    print(
        f"generated grounded multilingual dataset; SentencePiece vocabulary "
        f"of {tokenizer.vocabulary_size()} pieces trained on its captions"
    )
    backbone = _tiny_backbone(tokenizer.vocabulary_size())
    _print_header("Tiny SigLIP2Backbone")
    print(
        "image tower: {image_size} px, patch {patch_size}, width "
        "{hidden_dim}, {num_layers} layers, {num_heads} heads".format(
            **TINY_VISION
        )
    )
    print(
        "text tower: vocabulary {vocabulary_size}, {max_sequence_length} "
        "tokens, width {hidden_dim}, {num_layers} layers, {num_heads} "
        "heads".format(**TINY_TEXT)
    )
    examples = list(
        generated_examples(
            "test", seed=_SEED.value, num_examples=6, image_size=32
        )
    )
    images = np.stack([e["image"] for e in examples]).astype("float32")
    images = images / 127.5 - 1.0
    token_ids = np.asarray(tokenizer([e["captions"][0] for e in examples]))
    inputs = {"images": images[:4], "token_ids": token_ids}
    print(
        "image embeddings: "
        f"{tuple(backbone.get_vision_embeddings(inputs['images']).shape)}"
    )
    print(
        "text embeddings: "
        f"{tuple(backbone.get_text_embeddings(token_ids).shape)}"
    )
    print(f"logits (images x texts): {tuple(backbone(inputs).shape)}")
    print(
        f"parameters: image tower {backbone.vision_encoder.count_params():,}"
        f", text tower {backbone.text_encoder.count_params():,}"
        f", total {backbone.count_params():,}"
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    _print_header("NaFlex inputs")
    grid_images = [
        generate_example(
            "test", _SEED.value, index, GeneratedConfig(image_size=size)
        )["image"]
        for index, size in enumerate(((24, 72), (48, 48), (64, 32)))
    ]
    grids = demo_plots.plot_naflex_grids(
        grid_images,
        TINY_VISION["patch_size"],
        DEMO_NAFLEX_LENGTHS,
        output_dir / "naflex_grids.png",
    )
    for image, row in zip(grid_images, grids):
        print(
            f"{image.shape[0]}x{image.shape[1]} px -> patch grids "
            + ", ".join(
                f"{r}x{c} (length {n})"
                for (r, c), n in zip(row, DEMO_NAFLEX_LENGTHS)
            )
        )
    print(f"wrote {output_dir / 'naflex_grids.png'}")

    steps, batch_size = _STEPS.value, _BATCH_SIZE.value
    every = max(1, steps // 20)
    config = RecipeConfig(
        total_examples=steps * batch_size,
        batch_size=batch_size,
        checkpoint_every=every,
        image_size=TINY_VISION["image_size"],
        naflex=True,
        naflex_sequence_lengths=DEMO_NAFLEX_LENGTHS,
        decoder_length=24,
        num_location_bins=DEMO_LOCATION_BINS,
        num_local_crops=4,
        local_crop_size=16,
        head_hidden_dim=128,
        head_bottleneck_dim=32,
        num_prototypes=256,
        num_patch_prototypes=128,
        # DINO's 0.04 -> 0.07 lets these small heads (128 hidden, 256/128
        # prototypes) collapse to the uniform output; 0.02 does not (see
        # benchmarks/RESULTS.md, "Demo").
        warmup_teacher_temperature=DEMO_TEACHER_TEMPERATURE,
        teacher_temperature=DEMO_TEACHER_TEMPERATURE,
        distillation_examples=2 * every * batch_size * 2,
        distillation_learning_rate=DEMO_DISTILLATION_LEARNING_RATE,
        seed=_SEED.value,
    )
    demo = _Demo(output_dir)
    resumed = demo.resume()

    _print_header(
        f"Stage D teacher: {steps} steps of {batch_size} curated examples"
    )
    print(
        "width {hidden_dim} (twice the student's), {num_layers} layers, "
        "trained with the sigmoid loss on English-only captions "
        "without rendered words (ACID's teacher is a larger model trained "
        "on curated data); it scores learnability in Stage D".format(
            **TEACHER_VISION
        )
    )
    teacher = _train_teacher(tokenizer, output_dir / "teacher.keras")

    def examples_from(start):
        return generated_dataset(
            "train", seed=_SEED.value, start=start, side_range=DEMO_SIDE_RANGE
        )

    recipe = SigLIP2Recipe(
        config, backbone, tokenizer, examples_from, teacher=teacher
    )
    # Created after the recipe's own decoder, so that one keeps its name
    # (and checkpoint paths) in a resumed process.
    vocabulary = LocCaVocabulary(
        tokenizer.vocabulary_size(), DEMO_LOCATION_BINS
    )
    decoder = locca_decoder_for(
        backbone, vocabulary.size, tokenizer.sequence_length + 4
    )
    demo.evaluate = _DemoEvaluation(
        tokenizer,
        decoder,
        _DEMO_EVAL_EXAMPLES.value,
        _DEMO_DECODER_STEPS.value,
        _SEED.value,
    )
    demo.fixed_backbone = backbone
    demo.naflex_lengths = DEMO_NAFLEX_LENGTHS if config.naflex else ()
    demo.metadata = {
        "steps": steps,
        "batch_size": batch_size,
        "seed": _SEED.value,
        "eval_examples": _DEMO_EVAL_EXAMPLES.value,
        "decoder_steps": _DEMO_DECODER_STEPS.value,
        "backend": keras.backend.backend(),
    }
    _print_header("Evaluation of each stage on held-out generated data")
    print(
        "zero-shot top-1 (80 classes) on single-object test images; "
        "image<->text retrieval R@1/R@5; referring-expression accuracy "
        "(IoU >= 0.5, decoder trained on the frozen patch tokens); dense "
        "linear-probe mIoU (10 classes)"
    )
    if resumed:
        print(f"resuming from {ckpt.latest_checkpoint(demo.checkpoint_dir)}")
    else:
        # The referring decoder reads the student's width, not the
        # teacher's.
        demo.score(
            TEACHER_ROW,
            teacher,
            tasks=("zero_shot", "retrieval", "dense_probe"),
        )
        demo.score("init (random)", backbone)

    _print_header(
        f"Recipe: {steps} steps of {batch_size} examples; stages "
        + ", ".join(
            f"{s.name} [{s.start_step}, {s.end_step})" for s in recipe.plan
        )
    )
    print(
        f"A: sigmoid + LocCa at {config.image_size} px; B: + self-"
        "distillation and masked prediction (EMA teacher); C: the NaFlex "
        f"variant (native aspect ratios, sequence lengths "
        f"{DEMO_NAFLEX_LENGTHS}, one per batch, the remaining schedule "
        f"stretched x{config.naflex_stretch}); D: ACID with the teacher at "
        f"{config.image_size} px (super-batch x{config.super_batch_factor}, "
        f"keeps {1 - config.filter_ratio:.0%}, lr "
        f"{DEMO_DISTILLATION_LEARNING_RATE:g})"
    )
    start = time.perf_counter()
    result = recipe.fit(
        demo.checkpoint_dir,
        callbacks=[demo.recorder("recipe", recipe)],
        verbose=1,
        on_stage_end=demo.on_stage_end,
    )
    print(f"recipe time: {time.perf_counter() - start:.1f} s")
    _print_histories(result["histories"])
    backbone = result["backbone"]
    if demo.stage_c_path.exists() and "D" in [s.name for s in recipe.plan]:
        _print_header(
            "Stage D control: the same steps without ACID's selection"
        )
        _stage_d_control(recipe, demo, tokenizer.vocabulary_size())

    _print_header("Metrics per stage (held-out generated data)")
    print(format_stage_table(demo.rows))
    print(f"wrote {demo.results_path}")
    names = demo_plots.plot_loss_curves(
        demo.runs, demo.stages, output_dir / "loss_curves.png"
    )
    print(f"wrote {output_dir / 'loss_curves.png'} ({', '.join(names)})")

    _print_header("save and reload")
    path = output_dir / "backbone.keras"
    backbone.save(path)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    reloaded = keras.saving.load_model(path)
    image_size = backbone.vision_encoder.image_size
    images = np.zeros((2, image_size, image_size, 3), "float32")
    check = {"images": images, "token_ids": token_ids[:2]}
    difference = np.max(
        np.abs(
            keras.ops.convert_to_numpy(backbone(check))
            - keras.ops.convert_to_numpy(reloaded(check))
        )
    )
    print(f"max abs difference of logits after reload: {difference:.3g}")
    return demo.rows


def _stage_d_control(recipe, demo: _Demo, vocabulary_size: int) -> None:
    """Stage D without ACID: the Stage C model trained on random halves.

    A copy of the Stage C student (fixed-resolution form) trains for
    Stage D's steps with Stage D's optimizer and learning rate, on the
    first `kept` examples of each of Stage D's super-batches (a uniform
    random subset: the stream is i.i.d.) instead of the most learnable
    ones. The difference between the "D" and this row is the effect of
    the selection, not of training longer.
    """
    c = recipe.config
    stage = next(s for s in recipe.plan if s.name == "D")
    steps = stage.end_step - stage.start_step
    kept = num_kept(c.batch_size * c.super_batch_factor, c.filter_ratio)
    control = _tiny_backbone(vocabulary_size, prefix="control")
    control.load_weights(demo.stage_c_path)
    control.compile(optimizer=recipe.stage_optimizer("D"))
    data = recipe.stage_batches("D").map(
        lambda b: {
            "images": b["images"][:kept],
            "token_ids": b["token_ids"][:kept],
        }
    )
    history = control.fit(data, epochs=1, steps_per_epoch=steps, verbose=1)
    losses = history.history["loss"]
    print(
        f"control: {steps} steps of {kept} random examples per "
        f"super-batch, sigmoid loss {losses[-1]:.4f}"
    )
    size = control.vision_encoder.image_size
    demo.score(f"D control, no selection ({size} px)", control)


def _architecture_table() -> None:
    _print_header(
        "SigLIP 2 architectures: parameters (256k vocabulary, 64 tokens)"
    )
    print(
        f"{'config':<20} {'image tower':>15} {'text tower':>15} {'total':>15}"
    )
    for name in TABLE_CONFIGS:
        image, text, total = _architecture_param_counts(name)
        print(f"{name:<20} {image:>15,} {text:>15,} {total:>15,}")


def demo() -> None:
    """Runs the demo; see the module docstring."""
    start = time.perf_counter()
    print(
        f"keras-siglip2 demo (Keras {keras.__version__}, backend "
        f"{keras.backend.backend()})"
    )
    _exit_on_value_error(lambda: _recipe_demo(pathlib.Path(_OUTPUT_DIR.value)))
    _architecture_table()
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


class _ProgressBar:
    """`progress(done, total)` callback drawing a `keras.utils.Progbar`."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.verbose:
            return
        if self.bar is None or done == 1:
            self.bar = keras.utils.Progbar(total, unit_name="tensor")
        self.bar.update(done)


def _load_keras(path: str) -> SigLIP2Backbone:
    if path.endswith(".keras"):
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot load: {e}") from None
        if not isinstance(model, SigLIP2Backbone):
            raise ValueError(
                f"{path} holds a {type(model).__name__}, not a SigLIP2Backbone."
            )
        return model
    return load_preset(path)


def load_checkpoint(
    source_format: str,
    path: str,
    image_size: int | None = None,
    progress=None,
) -> SigLIP2Backbone:
    """Loads a backbone from any supported format.

    Args:
        source_format: one of `SOURCE_FORMATS`.
        path: checkpoint path (or, for `keras_hub`, a preset name).
        image_size: input size of a fixed-resolution big_vision model.
        progress: optional `progress(done, total)` callback.

    Returns:
        A `SigLIP2Backbone`.
    """
    if source_format == "hf":
        return load_hf_checkpoint(path, progress=progress)
    if source_format == "big_vision":
        return load_big_vision_npz(
            path, image_size=image_size, progress=progress
        )
    if source_format == "keras_hub":
        return load_preset(path, progress=progress)
    if source_format == "keras":
        return _load_keras(path)
    raise ValueError(
        f"Unknown source format {source_format!r}; expected one of "
        f"{SOURCE_FORMATS}."
    )


def save_checkpoint(
    backbone: SigLIP2Backbone,
    target_format: str,
    path: str,
    progress=None,
    preprocessor=None,
) -> None:
    """Writes a backbone in any supported format.

    Args:
        backbone: a `SigLIP2Backbone`.
        target_format: one of `TARGET_FORMATS`.
        path: output path.
        progress: optional `progress(done, total)` callback.
        preprocessor: optional `SigLIP2Preprocessor` written beside an
            `"hf"` checkpoint as HF processor files.
    """
    if preprocessor is not None and target_format != "hf":
        raise ValueError(
            f"A preprocessor is written with `hf` checkpoints only; got "
            f"{target_format!r}."
        )
    if target_format == "keras":
        if path.endswith(".keras"):
            backbone.save(path)
        else:
            backbone.save_to_preset(path)
    elif target_format == "hf":
        save_hf_checkpoint(
            backbone, path, progress=progress, preprocessor=preprocessor
        )
    elif target_format == "keras_hub":
        save_keras_hub_preset(backbone, path, progress=progress)
    elif target_format == "big_vision":
        save_big_vision_npz(backbone, path, progress=progress)
    else:
        raise ValueError(
            f"Unknown target format {target_format!r}; expected one of "
            f"{TARGET_FORMATS}."
        )


def convert_checkpoint(
    source_format: str,
    target_format: str,
    source: str,
    target: str,
    image_size: int | None = None,
    verbose: bool = True,
    processor: str | None = None,
) -> SigLIP2Backbone:
    """Converts `source` (in `source_format`) to `target`.

    Args:
        source_format: one of `SOURCE_FORMATS`.
        target_format: one of `TARGET_FORMATS`.
        source: input path or preset name.
        target: output path.
        image_size: input size of a fixed-resolution big_vision model.
        verbose: print progress bars and what was done.
        processor: with `target_format="hf"`, a preset or directory whose
            `SigLIP2Preprocessor` is written as HF processor files too.

    Returns:
        The converted `SigLIP2Backbone`.

    Raises:
        ValueError: bad input, named; `processor` with another target.
    """
    start = time.perf_counter()
    preprocessor = None
    if processor is not None:
        if target_format != "hf":
            raise ValueError(
                f"`processor` is for `--to hf`; got --to {target_format}."
            )
        preprocessor = SigLIP2Preprocessor.from_preset(processor)
    if verbose:
        print(f"reading {source} ({source_format})", flush=True)
    backbone = load_checkpoint(
        source_format, source, image_size, _ProgressBar(verbose)
    )
    if verbose:
        print(f"writing {target} ({target_format})", flush=True)
    save_checkpoint(
        backbone, target_format, target, _ProgressBar(verbose), preprocessor
    )
    if verbose:
        print(
            f"converted {backbone.count_params():,} parameters in "
            f"{time.perf_counter() - start:.1f} s"
        )
    return backbone


def _preset_tower_counts(config: BackboneConfig) -> tuple[int, int, int]:
    """Tower parameter counts of an architecture, without allocating it."""
    vision_config, text_config = config.vision, config.text
    size = vision_config["image_size"]
    with keras.StatelessScope(initialize_variables=False):
        vision = SigLIP2VisionEncoder(**vision_config)
        vision.build((None, size, size, 3))
        text = SigLIP2TextEncoder(**text_config)
        text.build((None, text_config["max_sequence_length"]))
        counts = (_count(vision), _count(text), 2)
    keras.utils.clear_session(free_memory=False)
    return counts


def _summary_lines(vision, text, naflex, counts) -> list[str]:
    """Architecture and parameter-count lines from encoder configs."""
    image, text_count, logits = counts
    resolution = (
        f"NaFlex, {vision['image_size'] // vision['patch_size']}^2 "
        "position grid"
        if naflex
        else f"{vision['image_size']} px"
    )
    pooling = "MAP head" if vision.get("use_head", True) else "mean pooling"
    return [
        f"image tower: {resolution}, patch {vision['patch_size']}, width "
        f"{vision['hidden_dim']}, {vision['num_layers']} layers, "
        f"{vision['num_heads']} heads, MLP {vision['intermediate_dim']}, "
        f"{pooling}",
        f"text tower: vocabulary {text['vocabulary_size']:,}, "
        f"{text['max_sequence_length']} tokens, width {text['hidden_dim']}, "
        f"{text['num_layers']} layers, {text['num_heads']} heads, MLP "
        f"{text['intermediate_dim']}, projection "
        f"{text.get('projection_dim') or text['hidden_dim']}",
        "parameters:",
        f"  {'image tower':<12} {image:>15,}",
        f"  {'text tower':<12} {text_count:>15,}",
        f"  {'logits':<12} {logits:>15,}",
        f"  {'total':<12} {image + text_count + logits:>15,}",
    ]


def _source_format(source: str) -> str:
    path = pathlib.Path(source)
    if source.endswith(".npz"):
        return "big_vision"
    if source.endswith(".keras"):
        return "keras"
    if path.is_dir():
        return "preset"
    if os.sep in source or path.exists():
        raise ValueError(
            f"{source}: not a `.npz` or `.keras` file, or a preset/HF "
            "checkpoint directory."
        )
    # Neither a file nor a directory: a misspelt preset name, which
    # `get_preset` reports with its closest matches.
    get_preset(source)
    return "preset"


def summarize(source: str) -> str:
    """Describes a checkpoint or preset name: architecture and counts.

    Args:
        source: a preset name (described from the preset table, nothing
            is downloaded), an `.npz` or `.keras` file, or a preset or HF
            checkpoint directory (loaded).

    Returns:
        The text `summary` prints.
    """
    if source in PRESETS:
        preset = PRESETS[source]
        lines = [
            f"{source}: {preset.description}",
            f"weights: {preset.kaggle_handle} (not downloaded)",
        ]
        if preset.note:
            lines.append(f"note: {preset.note}")
        config = preset.config
        counts = _preset_tower_counts(config)
        return "\n".join(
            lines + _summary_lines(config.vision, config.text, False, counts)
        )
    source_format = _source_format(source)
    if source_format == "big_vision":
        backbone = load_big_vision_npz(source)
    elif source_format == "keras":
        backbone = _load_keras(source)
    else:
        backbone = load_preset(source)
    kind = "NaFlex" if backbone.naflex else "fixed-resolution"
    counts = (
        backbone.vision_encoder.count_params(),
        backbone.text_encoder.count_params(),
        backbone.contrastive_logits.count_params(),
    )
    lines = [f"{source}: {kind} SigLIP2Backbone ({source_format})"]
    return "\n".join(
        lines
        + _summary_lines(
            backbone.vision_encoder.get_config(),
            backbone.text_encoder.get_config(),
            backbone.naflex,
            counts,
        )
    )


def _exit_on_value_error(run: Callable[[], None]) -> None:
    """Bad checkpoints and names are user errors: one line, no trace."""
    try:
        run()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def convert(source: str, target: str) -> None:
    """Runs `convert`; see the module docstring."""
    missing = [f"--{flag.name}" for flag in (_FROM, _TO) if flag.value is None]
    if missing:
        raise app.UsageError(f"`convert` needs {' and '.join(missing)}.")
    _exit_on_value_error(
        lambda: convert_checkpoint(
            _FROM.value,
            _TO.value,
            source,
            target,
            image_size=_IMAGE_SIZE.value,
            processor=_PROCESSOR.value,
        )
    )


def summary(source: str) -> None:
    """Runs `summary`; see the module docstring."""
    _exit_on_value_error(lambda: print(summarize(source)))


# === eval ===

EVAL_TASKS = ("zero_shot", "retrieval", "referring", "dense_probe")
DATA_FORMATS = ("auto", "webdataset", "tfrecord", "jsonl")
_EVAL_MODEL = flags.DEFINE_string(
    "eval_model",
    "tiny",
    "`eval`: `tiny` (a random-init tiny model), a `.keras` file (a "
    "SigLIP2Backbone or a Stage A model), a `.npz` or a preset/HF "
    "directory or preset name.",
)
_EVAL_TOKENIZER = flags.DEFINE_string(
    "eval_tokenizer",
    None,
    "`eval`: SentencePiece model file. Default for `tiny` and `.keras` "
    "models: the demo vocabulary trained on the generated texts; for "
    "preset and HF directories and preset names: their own tokenizer.",
)
_EVAL_DATA = flags.DEFINE_string(
    "eval_data",
    "generated",
    "`eval`: `generated` (offline, the `test` split) or a path/glob of "
    "test data in a reader format (WebDataset tars, TFRecords, JSONL).",
)
_EVAL_TRAIN_DATA = flags.DEFINE_string(
    "eval_train_data",
    None,
    "`eval`: training data of the referring-expression decoder (a path "
    "or glob, same format as --eval_data); `generated` data uses its "
    "`train` split.",
)
_EVAL_DATA_FORMAT = flags.DEFINE_enum(
    "eval_data_format",
    "auto",
    DATA_FORMATS,
    "`eval`: format of --eval_data/--eval_train_data; `auto` goes by the "
    "file extension.",
)
_EVAL_CLASS_NAMES = flags.DEFINE_string(
    "eval_class_names",
    None,
    "`eval` zero-shot on reader-format data: a file with one class name "
    "per line; each example's first caption is its class name.",
)
_EVAL_TASKS = flags.DEFINE_list(
    "eval_tasks",
    ["all"],
    f"`eval`: `all` or some of {', '.join(EVAL_TASKS)}.",
)
_EVAL_NUM_EXAMPLES = flags.DEFINE_integer(
    "eval_num_examples",
    128,
    "`eval`: test examples (at most, for reader data).",
    lower_bound=1,
)
_EVAL_NUM_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "eval_num_train_examples",
    256,
    "`eval`: training examples of the decoder and the dense probe.",
    lower_bound=1,
)
_EVAL_DECODER_STEPS = flags.DEFINE_integer(
    "eval_decoder_steps",
    300,
    "`eval`: training steps of the referring-expression decoder.",
    lower_bound=1,
)
_EVAL_PROBE_EPOCHS = flags.DEFINE_integer(
    "eval_probe_epochs", 20, "`eval`: epochs of the dense probe.", lower_bound=1
)
_EVAL_LOCATION_BINS = flags.DEFINE_integer(
    "eval_location_bins",
    1000,
    "`eval`: location tokens per box coordinate of the decoder.",
    lower_bound=2,
)
_EVAL_BATCH_SIZE = flags.DEFINE_integer(
    "eval_batch_size", 32, "`eval`: batch size.", lower_bound=1
)
_EVAL_MAX_NUM_PATCHES = flags.DEFINE_integer(
    "eval_max_num_patches",
    None,
    "`eval` of NaFlex models: sequence length (default: the position "
    "table's patch count).",
    lower_bound=1,
)
_EVAL_SEED = flags.DEFINE_integer("eval_seed", 0, "`eval`: random seed.")
_EVAL_OUTPUT = flags.DEFINE_string(
    "eval_output",
    "siglip2_eval/results.json",
    "`eval`: where to write the results as JSON.",
)


def _eval_backbone(source: str) -> SigLIP2Backbone:
    """The backbone `eval` scores (see --eval_model)."""
    if source == "tiny":
        keras.utils.set_random_seed(_EVAL_SEED.value)
        return SigLIP2Backbone(
            SigLIP2VisionEncoder(**TINY_VISION),
            SigLIP2TextEncoder(**TINY_TEXT),
        )
    if source.endswith(".keras"):
        model = keras.saving.load_model(source, safe_mode=True)
        if isinstance(model, StageAModel):
            model = model.backbone
        if not isinstance(model, SigLIP2Backbone):
            raise ValueError(
                f"{source} holds a {type(model).__name__}, not a "
                "SigLIP2Backbone or StageAModel."
            )
        return model
    if _source_format(source) == "big_vision":
        return load_big_vision_npz(source)
    return load_preset(source)


def _eval_tokenizer(
    source: str,
    backbone: SigLIP2Backbone,
    tokenizer_file: str | None = None,
    seed: int = 0,
):
    """The tokenizer `eval` uses (see --eval_tokenizer).

    `tokenizer_file` if given; else the demo vocabulary for `tiny` and
    `.keras` models; else the tokenizer of the preset or HF directory (or
    preset name) itself, if it has one.
    """
    text = backbone.text_encoder
    if tokenizer_file is not None:
        proto = tokenizer_file
    elif source == "tiny" or source.endswith(".keras"):
        print(
            f"tokenizer: the demo vocabulary ({text.vocabulary_size} "
            "pieces, trained on the generated texts)"
        )
        proto = train_demo_sentencepiece(
            vocab_size=text.vocabulary_size, seed=seed
        )
    elif _source_format(source) == "preset":
        try:
            tokenizer = SigLIP2Tokenizer.from_preset(source)
        except ValueError as e:
            raise app.UsageError(
                f"`eval` of {source} needs --eval_tokenizer (the model's "
                f"SentencePiece file): its own cannot be loaded: {e}"
            ) from None
        print(f"tokenizer: {type(tokenizer).__name__} of {source}")
        return tokenizer
    else:
        raise app.UsageError(
            f"`eval` of {source} needs --eval_tokenizer (the model's "
            "SentencePiece file, e.g. Gemma's tokenizer.model)."
        )
    return SigLIP2Tokenizer(
        proto=proto, sequence_length=text.max_sequence_length
    )


def _reader_format(path: str) -> str:
    if _EVAL_DATA_FORMAT.value != "auto":
        return _EVAL_DATA_FORMAT.value
    name = path.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if name.endswith(".jsonl"):
        return "jsonl"
    if ".tfrecord" in name or ".tfrec" in name:
        return "tfrecord"
    raise app.UsageError(
        f"Cannot tell the format of {path!r} from its extension; pass "
        f"--eval_data_format ({', '.join(DATA_FORMATS[1:])})."
    )


def _read_examples(path: str, limit: int, counter: SkipCounter) -> list:
    readers = {
        "webdataset": webdataset_examples,
        "tfrecord": tfrecord_examples,
        "jsonl": jsonl_examples,
    }
    reader = readers[_reader_format(path)]
    return eval_lib.as_examples(reader(path, skip_counter=counter), limit)


def _eval_tasks(user_data: bool) -> tuple[list[str], dict[str, str]]:
    """The tasks to run, and the reasons others are skipped."""
    requested = _EVAL_TASKS.value
    explicit = requested != ["all"]
    tasks = list(requested) if explicit else list(EVAL_TASKS)
    unknown = sorted(set(tasks) - set(EVAL_TASKS))
    if unknown:
        raise app.UsageError(
            f"Unknown --eval_tasks {unknown}; expected `all` or some of "
            f"{', '.join(EVAL_TASKS)}."
        )
    unavailable = {}
    if user_data:
        if _EVAL_CLASS_NAMES.value is None:
            unavailable["zero_shot"] = "needs --eval_class_names"
        if _EVAL_TRAIN_DATA.value is None:
            unavailable["referring"] = "needs --eval_train_data"
        unavailable["dense_probe"] = (
            "needs per-pixel class maps, which the reader formats lack"
        )
    blocked = [task for task in tasks if task in unavailable]
    if explicit and blocked:
        raise app.UsageError(
            "; ".join(f"{task} {unavailable[task]}" for task in blocked)
        )
    skipped = {task: unavailable[task] for task in blocked}
    return [task for task in tasks if task not in skipped], skipped


def _generated(split: str, count: int, image_size, **overrides) -> list:
    config = GeneratedConfig(image_size=image_size, **overrides)
    return eval_lib.as_examples(
        generated_examples(split, _EVAL_SEED.value, count, config=config)
    )


def _run_eval() -> None:
    start = time.perf_counter()
    print(
        f"keras-siglip2 eval (Keras {keras.__version__}, backend "
        f"{keras.backend.backend()})"
    )
    source = _EVAL_MODEL.value
    user_data = _EVAL_DATA.value != "generated"
    tasks, skipped = _eval_tasks(user_data)
    backbone = _eval_backbone(source)
    tokenizer = _eval_tokenizer(
        source, backbone, _EVAL_TOKENIZER.value, _EVAL_SEED.value
    )
    encoder = eval_lib.BackboneEncoder(
        backbone,
        tokenizer,
        batch_size=_EVAL_BATCH_SIZE.value,
        max_num_patches=_EVAL_MAX_NUM_PATCHES.value,
    )
    vision = backbone.vision_encoder
    image_size = None if backbone.naflex else vision.image_size
    num_test = _EVAL_NUM_EXAMPLES.value
    num_train = _EVAL_NUM_TRAIN_EXAMPLES.value
    counter = SkipCounter()
    needs_train = {"referring", "dense_probe"} & set(tasks)
    if user_data:
        test = _read_examples(_EVAL_DATA.value, num_test, counter)
        train = (
            _read_examples(_EVAL_TRAIN_DATA.value, num_train, counter)
            if needs_train
            else []
        )
    else:
        test = _generated("test", num_test, image_size, num_captions=3)
        train = (
            _generated("train", num_train, image_size, num_captions=3)
            if needs_train
            else []
        )
    print(
        f"model: {source}; data: {_EVAL_DATA.value} ({len(test)} test, "
        f"{len(train)} train examples)"
    )
    results = {}

    def run(name, score):
        _print_header(name)
        task_start = time.perf_counter()
        results[name] = score()
        print(f"{name}: {time.perf_counter() - task_start:.1f} s")

    if "zero_shot" in tasks:
        if user_data:
            with open(_EVAL_CLASS_NAMES.value, encoding="utf-8") as file:
                names = [line.strip() for line in file if line.strip()]
            run(
                "zero_shot",
                lambda: eval_lib.evaluate_zero_shot(encoder, test, names),
            )
        else:
            names = {
                language: zero_shot_class_names(language)
                for language in GENERATED_LANGUAGES
            }
            for split, name in (
                ("test", "zero_shot"),
                ("compositional", "zero_shot_compositional"),
            ):
                # One object per image, so the label is the whole scene.
                images = _generated(
                    split, num_test, image_size, num_objects=(1, 1)
                )
                run(
                    name,
                    lambda images=images: eval_lib.evaluate_zero_shot(
                        encoder,
                        images,
                        names,
                        eval_lib.MULTILINGUAL_TEMPLATES,
                    ),
                )
    if "retrieval" in tasks:
        run("retrieval", lambda: eval_lib.evaluate_retrieval(encoder, test))
    if "referring" in tasks:
        run(
            "referring",
            lambda: eval_lib.evaluate_referring(
                encoder,
                train,
                test,
                num_location_bins=_EVAL_LOCATION_BINS.value,
                steps=_EVAL_DECODER_STEPS.value,
                batch_size=_EVAL_BATCH_SIZE.value,
                seed=_EVAL_SEED.value,
            ),
        )
    if "dense_probe" in tasks:
        run(
            "dense_probe",
            lambda: eval_lib.evaluate_dense_probe(
                encoder,
                train,
                test,
                class_names=GENERATED_CLASS_NAMES,
                epochs=_EVAL_PROBE_EPOCHS.value,
            ),
        )
    for task, reason in skipped.items():
        print(f"skipped {task}: {reason}")
    if counter.total:
        print(f"skipped records: {counter.counts}")
    _print_header("results")
    print(eval_lib.format_table(results))
    metadata = {
        "model": source,
        "data": _EVAL_DATA.value,
        "train_data": (_EVAL_TRAIN_DATA.value or "")
        if user_data
        else "generated",
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "seed": _EVAL_SEED.value,
        "decoder_steps": _EVAL_DECODER_STEPS.value,
        "probe_epochs": _EVAL_PROBE_EPOCHS.value,
        "location_bins": _EVAL_LOCATION_BINS.value,
        "skipped": "; ".join(f"{t}: {r}" for t, r in skipped.items()),
        "skipped_records": counter.total,
        "seconds": round(time.perf_counter() - start, 1),
    }
    eval_lib.write_json(results, _EVAL_OUTPUT.value, metadata)
    print(f"\nwrote {_EVAL_OUTPUT.value}")
    print(f"done in {time.perf_counter() - start:.1f} s")


def evaluate() -> None:
    """Runs `eval`; see the module docstring."""
    _exit_on_value_error(_run_eval)


COMMANDS = {
    "demo": demo,
    "convert": convert,
    "summary": summary,
    "eval": evaluate,
}
ARGUMENTS = {
    "demo": (),
    "convert": ("SRC", "DST"),
    "summary": ("SRC",),
    "eval": (),
}


def _usage(command: str) -> str:
    return " ".join([command, *ARGUMENTS[command]])


def main(argv: list[str]) -> None:
    commands = ", ".join(COMMANDS)
    if len(argv) < 2:
        raise app.UsageError(
            f"Expected one command ({commands}); got {argv[1:]}."
        )
    command, arguments = argv[1], argv[2:]
    if command not in COMMANDS:
        raise app.UsageError(
            f"Unknown command {command!r}; expected one of: {commands}."
        )
    if len(arguments) != len(ARGUMENTS[command]):
        raise app.UsageError(
            f"Usage: {_usage(command)}; got arguments {arguments}."
        )
    COMMANDS[command](*arguments)


if __name__ == "__main__":
    app.run(main)
