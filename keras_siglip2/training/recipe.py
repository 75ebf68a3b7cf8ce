"""The SigLIP 2 recipe: every stage in one resumable `fit`.

`SigLIP2Recipe(config, ...).fit(checkpoint_dir)` trains through the stages
by fraction of the total examples, as in the paper:

- Stage A (from 0): sigmoid image-text loss + LocCa decoder;
- Stage B (from 80%): + local-to-global self-distillation and masked
  prediction with an EMA teacher (copied from the student at the switch;
  DINO's schedules: teacher temperature warmed up 0.04 -> 0.07 over the
  first 30% of the self-distillation steps, EMA momentum 0.996 -> 1.0 by
  a cosine over all of them);
- Stage C: fixed-resolution runs switch resolution (and optionally patch
  size, PI-resize) at 95% and continue with all losses: the EMA teacher
  is resized exactly like the student. NaFlex runs switch at 90% to
  NaFlex inputs, one sequence length per batch, with the remaining
  schedule stretched x3.75, each batch of the longest length trained as
  two half-batch steps (the paper's "half batch, double steps"; the
  cosine learning rate ends with the stage), and without
  self-distillation;
- Stage D (optional): ACID distillation from a teacher backbone, at
  learning rate 1e-5 without weight decay (fixed-resolution inputs, also
  after a NaFlex Stage C: both forms share the weights).

Every `checkpoint_every` steps an atomic checkpoint stores the model
(with the EMA teacher, its centres and the masking RNG state), optimizer,
step, stage, data position and the config (the data pipeline is a pure
function of the example index, and every random choice of the model is
seeded), so a run killed at any point resumes to the same final weights
as an uninterrupted one; a checkpoint of another config is refused.
Stage switches go through a checkpoint, so resuming and switching are the
same code path.
"""

import dataclasses
import json
import math
from collections.abc import Callable

import keras
import numpy as np

from keras_siglip2.data.augment import add_self_distillation_views
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.pipeline import batch_sequence_lengths
from keras_siglip2.data.pipeline import split_longest_batches
from keras_siglip2.data.pipeline import training_batches
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.models.resolution import resize_vision_weights
from keras_siglip2.models.resolution import with_image_size
from keras_siglip2.models.resolution import with_patch_size
from keras_siglip2.training import checkpoint as ckpt
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.stage_a import StageAModel
from keras_siglip2.training.stage_b import StageBModel
from keras_siglip2.training.stage_b import UniformCollapseMonitor
from keras_siglip2.training.stage_b import self_distillation_weights
from keras_siglip2.training.stage_d import StageDModel
from keras_siglip2.training.stage_d import check_teacher
from keras_siglip2.training.stage_d import num_kept
from keras_siglip2.training.stage_d import stage_d_optimizer

NAFLEX_SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """Every hyper-parameter of the recipe; defaults are the paper's.

    Attributes:
        total_examples: examples seen by stages A-C at their nominal
            schedule (40B for the paper's runs).
        batch_size: global batch (32k in the paper).
        learning_rate: peak learning rate of stages A-C.
        weight_decay: decoupled weight decay (big_vision convention).
        warmup_fraction: warmup as a fraction of the A-C schedule (20k of
            ~1.2M steps in the paper).
        beta_1, beta_2, global_clipnorm: Adam and clipping.
        decoder_loss_weight: weight of the LocCa loss.
        decoder_length: LocCa decoder sequence length.
        num_location_bins: location tokens per coordinate.
        self_distillation_start: fraction where Stage B starts (0.8).
        naflex: train the NaFlex variant in Stage C.
        resolution_change_start: fraction where fixed-res Stage C starts
            (0.95).
        naflex_start: fraction where NaFlex Stage C starts (0.9).
        image_size: training resolution of stages A-B.
        stage_c_image_size: fixed-res Stage C resolution (None: no
            change).
        stage_c_patch_size: fixed-res Stage C patch size (None: no
            change; else FlexiViT PI-resize).
        naflex_sequence_lengths: NaFlex lengths, one drawn per batch.
        naflex_stretch: stretch of the remaining schedule in NaFlex
            Stage C (3.75).
        naflex_half_batch_at_longest: in NaFlex Stage C, train each batch
            of the longest length as two half-batch steps (paper: "halve
            the batch size and double the steps" at the largest length).
        distillation_examples: examples of Stage D (0: no Stage D).
        distillation_learning_rate: Stage D learning rate (1e-5).
        filter_ratio: fraction of each super-batch discarded in Stage D
            (ACID's filtering ratio: 0.5 for B/16, 0.75 for B/32 with a
            4x super-batch).
        super_batch_factor: super-batch size over batch size in Stage D.
        size: model size, for the self-distillation loss weights
            (`self_distillation_weights`).
        ema_momentum: EMA teacher momentum at the start of
            self-distillation (DINO: 0.996).
        final_ema_momentum: momentum at its end, reached by DINO's cosine
            schedule over the self-distillation steps (1.0).
        mask_ratio: fraction of patches masked for masked prediction
            (TIPS: 0.5).
        student_temperature: self-distillation student temperature
            (DINO/iBOT: 0.1).
        teacher_temperature: teacher temperature after the warm-up
            (DINO/iBOT: 0.07). Small heads (a few hundred prototypes)
            can collapse to the uniform output at 0.04 -> 0.07 (both
            self-distillation losses sit at ln K; `fit` warns through a
            `UniformCollapseMonitor`); a lower temperature (the demo's
            0.02) avoids it (benchmarks/RESULTS.md, "Demo").
        warmup_teacher_temperature: teacher temperature at the switch
            (DINO/iBOT: 0.04), raised linearly to `teacher_temperature`.
        teacher_temperature_warmup_fraction: warm-up length as a
            fraction of the self-distillation steps (DINO: 30 of 100
            epochs, 0.3).
        center_momentum: momentum of the teacher centres (DINO: 0.9).
        num_local_crops: local crops per image in Stage B (8).
        local_crop_size: side of the local crops (None: half the image).
        head_hidden_dim, head_bottleneck_dim, num_prototypes,
            num_patch_prototypes: Stage B projection heads (DINO/iBOT).
        ring_loss: compute the sigmoid loss of stages A-C with the ring
            (chunked) form under a multi-device JAX distribution
            (`StageAModel(ring_loss=True)`); equal to the plain loss.
        checkpoint_every: steps between checkpoints (and stage boundaries
            are rounded to multiples of it).
        seed: seeds data choices and new parameters.
    """

    total_examples: int
    batch_size: int
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.02
    beta_1: float = 0.9
    beta_2: float = 0.95
    global_clipnorm: float = 1.0
    decoder_loss_weight: float = 1.0
    decoder_length: int = 32
    num_location_bins: int = 1000
    self_distillation_start: float = 0.8
    naflex: bool = False
    resolution_change_start: float = 0.95
    naflex_start: float = 0.9
    image_size: int = 256
    stage_c_image_size: int | None = None
    stage_c_patch_size: int | None = None
    naflex_sequence_lengths: tuple = NAFLEX_SEQUENCE_LENGTHS
    naflex_stretch: float = 3.75
    naflex_half_batch_at_longest: bool = True
    distillation_examples: int = 0
    distillation_learning_rate: float = 1e-5
    filter_ratio: float = 0.5
    super_batch_factor: int = 2
    size: str = "base"
    ema_momentum: float = 0.996
    final_ema_momentum: float = 1.0
    mask_ratio: float = 0.5
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    warmup_teacher_temperature: float = 0.04
    teacher_temperature_warmup_fraction: float = 0.3
    center_momentum: float = 0.9
    num_local_crops: int = 8
    local_crop_size: int | None = None
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    num_prototypes: int = 65536
    num_patch_prototypes: int = 8192
    ring_loss: bool = False
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.total_examples < self.batch_size or self.batch_size < 1:
            raise ValueError(
                f"Need 1 <= batch_size ({self.batch_size}) <= total_examples "
                f"({self.total_examples})."
            )
        if self.checkpoint_every < 1:
            raise ValueError(
                f"`checkpoint_every` must be >= 1; got {self.checkpoint_every}."
            )
        for name in (
            "self_distillation_start",
            "resolution_change_start",
            "naflex_start",
        ):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(
                    f"Stage fractions must be in (0, 1]; got {name}={value}."
                )
        starts = (
            self.self_distillation_start,
            self.naflex_start if self.naflex else self.resolution_change_start,
        )
        if not 0 < starts[0] <= starts[1] <= 1:
            raise ValueError(
                "Stage fractions must satisfy 0 < self_distillation_start <= "
                f"stage C start <= 1; got {starts}."
            )
        for name in (
            "warmup_fraction",
            "teacher_temperature_warmup_fraction",
            "ema_momentum",
            "final_ema_momentum",
            "mask_ratio",
            "center_momentum",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be in [0, 1]; got {value}.")
        if not 0 <= self.filter_ratio < 1:
            raise ValueError(
                f"`filter_ratio` must be in [0, 1); got {self.filter_ratio}."
            )
        if self.super_batch_factor < 1 or self.distillation_examples < 0:
            raise ValueError(
                "Need super_batch_factor >= 1 and distillation_examples >= "
                f"0; got {self.super_batch_factor} and "
                f"{self.distillation_examples}."
            )
        if self.naflex_stretch < 1:
            raise ValueError(
                f"`naflex_stretch` must be >= 1; got {self.naflex_stretch}."
            )
        lengths = tuple(self.naflex_sequence_lengths)
        if not lengths or any(int(n) != n or n < 1 for n in lengths):
            raise ValueError(
                "`naflex_sequence_lengths` must be positive ints; got "
                f"{lengths}."
            )
        if (
            self.naflex
            and self.naflex_half_batch_at_longest
            and self.batch_size % 2
        ):
            raise ValueError(
                "Halving the batch at the longest NaFlex length needs an "
                f"even batch_size; got {self.batch_size}."
            )
        # Raises for an unknown size.
        self_distillation_weights(self.size)


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage: its name and `[start_step, end_step)`."""

    name: str
    start_step: int
    end_step: int


def naflex_step_sizes(
    c: RecipeConfig, start_step: int, num_steps: int
) -> np.ndarray:
    """Examples per optimizer step of a NaFlex Stage C from `start_step`.

    Logical batches keep their index in the example stream (batch `b`
    holds examples `b * batch_size ...`, its length from
    `batch_sequence_lengths`); with `naflex_half_batch_at_longest`, each
    batch of the longest length is trained as two half-batch steps.

    Args:
        c: the config.
        start_step: first step of Stage C (every earlier step took a full
            batch, so logical batch `start_step` comes first).
        num_steps: how many steps.

    Returns:
        int `(num_steps,)`: `batch_size` or `batch_size // 2` per step.
    """
    lengths = batch_sequence_lengths(
        num_steps, c.naflex_sequence_lengths, seed=c.seed, start=start_step
    )
    full = np.full(num_steps, c.batch_size, np.int64)
    if not c.naflex_half_batch_at_longest:
        return full
    split = lengths == max(c.naflex_sequence_lengths)
    repeats = np.where(split, 2, 1)
    sizes = np.repeat(np.where(split, c.batch_size // 2, full), repeats)
    return sizes[:num_steps]


def stage_plan(c: RecipeConfig) -> list[StagePlan]:
    """Stage boundaries (steps) in whole checkpoint segments.

    Each stage whose fraction is below the next stage's gets at least
    one segment, so tiny runs still pass through every stage. A NaFlex
    Stage C covers `naflex_stretch` times the remaining batches, plus one
    step per batch of the longest length (trained as two half batches),
    rounded up to whole segments.
    """
    every = c.checkpoint_every
    segments = max(1, c.total_examples // c.batch_size // every)
    c_fraction = c.naflex_start if c.naflex else c.resolution_change_start
    c_segment = int(segments * c_fraction)
    if c_fraction < 1:
        c_segment = min(c_segment, segments - 1)
    b_segment = int(segments * c.self_distillation_start)
    if c.self_distillation_start < c_fraction:
        b_segment = min(b_segment, c_segment - 1)
    b_segment = max(b_segment, 1)
    c_segment = max(c_segment, b_segment)
    c_start = c_segment * every
    c_end = segments * every
    if c.naflex:
        batches = max(
            1, round((segments - c_segment) * every * c.naflex_stretch)
        )
        steps = batches
        if c.naflex_half_batch_at_longest:
            lengths = batch_sequence_lengths(
                batches, c.naflex_sequence_lengths, seed=c.seed, start=c_start
            )
            steps += int(np.sum(lengths == max(c.naflex_sequence_lengths)))
        c_end = c_start + math.ceil(steps / every) * every
    stages = [
        StagePlan("A", 0, b_segment * every),
        StagePlan("B", b_segment * every, c_start),
        StagePlan("C", c_start, c_end),
    ]
    if c.distillation_examples:
        super_batch = c.batch_size * c.super_batch_factor
        d_segments = max(1, c.distillation_examples // super_batch // every)
        stages.append(StagePlan("D", c_end, c_end + d_segments * every))
    return [stage for stage in stages if stage.end_step > stage.start_step]


class RecipeSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warmup + cosine over stages A-C, stretched after `stretch_from`.

    Steps after `stretch_from` advance the cosine by `1 / stretch` of a
    step, so a NaFlex Stage C covers the remaining schedule `stretch`
    times more slowly.
    """

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        warmup_steps: int,
        stretch_from: int,
        stretch: float = 1.0,
    ):
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.stretch_from = stretch_from
        self.stretch = stretch

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        late = keras.ops.maximum(step - self.stretch_from, 0.0)
        virtual = keras.ops.minimum(step, self.stretch_from) + late / (
            self.stretch
        )
        warmup = virtual / max(self.warmup_steps, 1)
        progress = (virtual - self.warmup_steps) / max(
            self.total_steps - self.warmup_steps, 1
        )
        progress = keras.ops.clip(progress, 0.0, 1.0)
        cosine = 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        factor = keras.ops.where(virtual < self.warmup_steps, warmup, cosine)
        return self.learning_rate * factor

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "stretch_from": self.stretch_from,
            "stretch": self.stretch,
        }


class SigLIP2Recipe:
    """Runs the SigLIP 2 stages in one resumable `fit`.

    Every argument is checked against the config here, before any
    training step: the backbone's resolution and patch size, the
    tokenizer, the crop sizes of the self-distillation views and the
    Stage D teacher.

    Args:
        config: a `RecipeConfig`.
        backbone: the `SigLIP2Backbone` to train (fixed-resolution, at
            `config.image_size`).
        tokenizer: text tokenizer layer (strings -> fixed-length ids).
        examples: `examples(start)` returns a `tf.data.Dataset` of
            reader-schema examples starting at example index `start`
            (e.g. `lambda start: generated_dataset(start=start)`).
        teacher: frozen `SigLIP2Backbone` for Stage D (any loaded one;
            width and depth may differ from the student's, as with the
            paper's So400m teacher, but it must read the same token ids
            and take fixed-resolution images).
    """

    def __init__(
        self,
        config: RecipeConfig,
        backbone: SigLIP2Backbone,
        tokenizer,
        examples: Callable,
        teacher: SigLIP2Backbone | None = None,
    ):
        if not isinstance(backbone, SigLIP2Backbone):
            raise TypeError(
                "`backbone` must be a `SigLIP2Backbone`; got "
                f"{type(backbone).__name__}."
            )
        if backbone.naflex:
            raise ValueError(
                "The recipe starts from a fixed-resolution backbone; NaFlex "
                "inputs are used from Stage C on."
            )
        self.config = config
        self.tokenizer = tokenizer
        self.examples = examples
        self.teacher = teacher
        self.plan = stage_plan(config)
        self._check_inputs(backbone, tokenizer, teacher)
        self.vocabulary = LocCaVocabulary(
            tokenizer.vocabulary_size(), config.num_location_bins
        )
        self._initial_backbone = backbone
        names = [stage.name for stage in self.plan]
        # Fixed-resolution Stage C keeps the self-distillation losses.
        self._c_distills = "B" in names and not config.naflex
        # Self-distillation runs from Stage B to the end of Stage B, or of
        # Stage C where it keeps the losses; its schedules span that.
        bounds = [
            (s.start_step, s.end_step)
            for s in self.plan
            if s.name == "B" or (s.name == "C" and self._c_distills)
        ]
        self._distillation_start = bounds[0][0] if bounds else 0
        self._distillation_steps = bounds[-1][1] - bounds[0][0] if bounds else 0
        c_stage = next((s for s in self.plan if s.name == "C"), None)
        self._c_step_sizes = None
        if config.naflex and c_stage is not None:
            self._c_step_sizes = naflex_step_sizes(
                config,
                c_stage.start_step,
                c_stage.end_step - c_stage.start_step,
            )
        # Every layer the stages add is created now, in a fixed order, so a
        # resumed process (same script, same seed) builds identical ones
        # without re-seeding anything.
        self.decoder = locca_decoder_for(
            backbone, self.vocabulary.size, config.decoder_length
        )
        self.stage_b_model = (
            self._stage_b_model(backbone) if "B" in names else None
        )

    def _check_inputs(self, backbone, tokenizer, teacher):
        c = self.config
        encoder = backbone.vision_encoder
        if encoder.image_size != c.image_size:
            raise ValueError(
                f"The backbone takes {encoder.image_size}-px images but "
                f"`config.image_size` is {c.image_size}."
            )
        text = backbone.text_encoder
        if tokenizer.vocabulary_size() > text.vocabulary_size:
            raise ValueError(
                f"The tokenizer has {tokenizer.vocabulary_size()} tokens; "
                f"the text encoder embeds only {text.vocabulary_size}."
            )
        length = getattr(tokenizer, "sequence_length", None)
        if length is not None and length != text.max_sequence_length:
            raise ValueError(
                f"The tokenizer makes {length}-token texts; the text "
                f"encoder takes {text.max_sequence_length}."
            )
        patch = encoder.patch_size
        c_patch = c.stage_c_patch_size or patch
        c_size = c.stage_c_image_size or c.image_size
        if c_size < c_patch:
            raise ValueError(
                f"Stage C images of {c_size} px are smaller than its "
                f"{c_patch}-px patches."
            )
        names = [stage.name for stage in self.plan]
        if "B" in names:
            crop_sizes = [(c.local_crop_size or c.image_size // 2, patch)]
            if not c.naflex:
                crop_sizes.append((c.local_crop_size or c_size // 2, c_patch))
            for size, p in crop_sizes:
                if size < p or size % p:
                    raise ValueError(
                        f"Local crops of {size} px are not a whole number "
                        f"of {p}-px patches; set `local_crop_size`."
                    )
        if "D" in names:
            if teacher is None:
                raise ValueError("Stage D needs a `teacher` backbone.")
            check_teacher(backbone, teacher)
            kept = num_kept(c.batch_size * c.super_batch_factor, c.filter_ratio)
            if kept < 1:
                raise ValueError("Stage D would keep no example.")

    # --- Planning -----------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.plan[-1].end_step

    def stage_at(self, step: int) -> StagePlan | None:
        for stage in self.plan:
            if stage.start_step <= step < stage.end_step:
                return stage
        return None

    def _examples_before(self, step: int) -> int:
        """Data position: examples consumed before `step`."""
        count = 0
        for stage in self.plan:
            done = min(step, stage.end_step) - stage.start_step
            if done <= 0:
                continue
            if stage.name == "C" and self._c_step_sizes is not None:
                count += int(self._c_step_sizes[:done].sum())
            else:
                count += done * self._stage_batch_size(stage)
        return count

    def _stage_batch_size(self, stage: StagePlan) -> int:
        if stage.name == "D":
            return self.config.batch_size * self.config.super_batch_factor
        return self.config.batch_size

    # --- Models, optimizers and data ------------------------------------

    def _schedule(self) -> RecipeSchedule:
        c = self.config
        steps = c.total_examples // c.batch_size
        c_stage = next((s for s in self.plan if s.name == "C"), None)
        c_start = steps if c_stage is None else c_stage.start_step
        stretch = 1.0
        if c.naflex and c_stage is not None and steps > c_start:
            # The cosine ends with Stage C, half-batch steps included.
            stretch = (c_stage.end_step - c_start) / (steps - c_start)
        return RecipeSchedule(
            c.learning_rate,
            total_steps=steps,
            warmup_steps=int(steps * c.warmup_fraction),
            stretch_from=c_start,
            stretch=stretch,
        )

    def _optimizer(self, stage: StagePlan):
        c = self.config
        if stage.name == "D":
            return stage_d_optimizer(
                total_steps=max(2, stage.end_step - stage.start_step),
                learning_rate=c.distillation_learning_rate,
                warmup_steps=0,
                beta_1=c.beta_1,
                beta_2=c.beta_2,
                global_clipnorm=c.global_clipnorm,
            )
        return siglip2_optimizer(
            total_steps=self.total_steps,
            learning_rate=c.learning_rate,
            weight_decay=c.weight_decay,
            beta_1=c.beta_1,
            beta_2=c.beta_2,
            global_clipnorm=c.global_clipnorm,
            schedule=self._schedule(),
        )

    def _stage_b_model(self, backbone: SigLIP2Backbone) -> StageBModel:
        c = self.config
        global_weight, masked_weight = self_distillation_weights(c.size)
        steps = self._distillation_steps
        return StageBModel(
            backbone,
            self.decoder,
            decoder_loss_weight=c.decoder_loss_weight,
            local_to_global_weight=global_weight,
            masked_prediction_weight=masked_weight,
            ema_momentum=c.ema_momentum,
            final_ema_momentum=c.final_ema_momentum,
            ema_momentum_steps=steps,
            mask_ratio=c.mask_ratio,
            head_hidden_dim=c.head_hidden_dim,
            head_bottleneck_dim=c.head_bottleneck_dim,
            num_prototypes=c.num_prototypes,
            num_patch_prototypes=c.num_patch_prototypes,
            student_temperature=c.student_temperature,
            teacher_temperature=c.teacher_temperature,
            warmup_teacher_temperature=c.warmup_teacher_temperature,
            teacher_temperature_warmup_steps=round(
                steps * c.teacher_temperature_warmup_fraction
            ),
            center_momentum=c.center_momentum,
            ring_loss=c.ring_loss,
            distillation_start_step=self._distillation_start,
            seed=c.seed,
            # One name: checkpoints address variables by path.
            name="stage_b",
        )

    def _stage_a_model(self, backbone: SigLIP2Backbone) -> StageAModel:
        return StageAModel(
            backbone,
            self.decoder,
            decoder_loss_weight=self.config.decoder_loss_weight,
            ring_loss=self.config.ring_loss,
        )

    def _resized(self) -> bool:
        c = self.config
        return not c.naflex and bool(
            c.stage_c_image_size or c.stage_c_patch_size
        )

    def _resize(self, backbone: SigLIP2Backbone) -> SigLIP2Backbone:
        c = self.config
        if c.stage_c_patch_size is not None:
            return with_patch_size(
                backbone, c.stage_c_patch_size, c.stage_c_image_size
            )
        return with_image_size(backbone, c.stage_c_image_size)

    def _naflex_backbone(self) -> SigLIP2Backbone:
        """The NaFlex form of the initial backbone (same encoders)."""
        backbone = self._initial_backbone
        config = backbone.get_config()
        return SigLIP2Backbone(
            backbone.vision_encoder,
            backbone.text_encoder,
            logit_scale_init=config["logit_scale_init"],
            logit_bias_init=config["logit_bias_init"],
            naflex=True,
            dtype=config["dtype"],
        )

    def _input_geometry(self, stage: StagePlan) -> tuple[int, int]:
        """`(image_size, patch_size)` of the images stage `stage` reads."""
        c = self.config
        encoder = self._initial_backbone.vision_encoder
        if stage.name in ("C", "D") and self._resized():
            return (
                c.stage_c_image_size or encoder.image_size,
                c.stage_c_patch_size or encoder.patch_size,
            )
        return encoder.image_size, encoder.patch_size

    def stage_batches(self, name: str):
        """The batches stage `name` trains on, from its first step.

        The stream `fit` feeds that stage (same examples, order, views and
        batch size: super-batches in Stage D), for ablations and
        controls, e.g. training a copy of the Stage C model on Stage D's
        data without ACID's selection.

        Args:
            name: a stage of the plan (`"A"`, `"B"`, `"C"` or `"D"`).

        Returns:
            A `tf.data.Dataset` of batches (dicts of model inputs).
        """
        stage = self._stage_named(name)
        return self._dataset(stage, stage.start_step)

    def stage_optimizer(self, name: str):
        """A new optimizer as `fit` builds it for stage `name` (schedule,
        learning rate, weight decay and clipping of that stage), for
        ablations and controls beside the recipe.

        Args:
            name: a stage of the plan (`"A"`, `"B"`, `"C"` or `"D"`).

        Returns:
            A `keras.optimizers.AdamW`, not built.
        """
        return self._optimizer(self._stage_named(name))

    def _stage_named(self, name: str) -> StagePlan:
        stages = {stage.name: stage for stage in self.plan}
        if name not in stages:
            raise ValueError(
                f"Stage {name!r} is not in this recipe's plan; its stages "
                f"are {list(stages)}."
            )
        return stages[name]

    def _dataset(self, stage: StagePlan, step: int):
        c = self.config
        image_size, patch_size = self._input_geometry(stage)
        position = self._examples_before(step)
        batch_size = self._stage_batch_size(stage)
        skip = 0
        naflex = stage.name == "C" and c.naflex
        if naflex:
            # Start at the logical batch holding `position` (its length
            # depends on its index); skip its first half if done.
            offset = position % batch_size
            position -= offset
            skip = 1 if offset else 0
        common = dict(
            tokenizer=self.tokenizer,
            batch_size=batch_size,
            seed=c.seed,
            start_index=position,
        )
        if stage.name == "D":
            common["decoder_vocabulary"] = None
        else:
            common["decoder_vocabulary"] = self.vocabulary
            common["decoder_length"] = c.decoder_length
        if naflex:
            image_kwargs = dict(
                naflex_patch_size=patch_size,
                sequence_lengths=c.naflex_sequence_lengths,
            )
        else:
            image_kwargs = dict(
                image_converter=SigLIP2ImageConverter(
                    image_size=image_size,
                    interpolation="bilinear",
                )
            )
        data = training_batches(
            self.examples(position), **common, **image_kwargs
        )
        if naflex and c.naflex_half_batch_at_longest:
            data = split_longest_batches(
                data, max(c.naflex_sequence_lengths)
            ).skip(skip)
        if stage.name == "B" or (stage.name == "C" and self._c_distills):
            data = add_self_distillation_views(
                data,
                global_size=image_size,
                local_size=c.local_crop_size or max(image_size // 2, 1),
                num_local_crops=c.num_local_crops,
                seed=c.seed,
                start_index=step,
            )
        return data.prefetch(2)

    # --- Running --------------------------------------------------------

    def fit(
        self,
        checkpoint_dir,
        callbacks: list | None = None,
        verbose: int | str = "auto",
        stop_after_steps: int | None = None,
        on_stage_end: Callable[[str, SigLIP2Backbone], None] | None = None,
    ) -> dict:
        """Trains (or resumes) through every stage.

        Args:
            checkpoint_dir: where checkpoints go; an existing checkpoint
                there is resumed (it must come from the same config).
            callbacks: extra Keras callbacks for every stage (a
                `UniformCollapseMonitor` always runs too).
            verbose: Keras `fit` verbosity.
            stop_after_steps: stop at the first checkpoint at or after
                this global step (for staged runs and tests; checkpoints
                come every `checkpoint_every` steps); resume later from
                it.
            on_stage_end: optional `fn(stage_name, backbone)`, called after
                the last step of each stage this call trains through
                (`"A"`, `"B"`, `"C"`, `"D"`), once that stage's final
                checkpoint is written, with the stage's backbone (the
                resized one after a fixed-res Stage C, the NaFlex one in a
                NaFlex Stage C). A run resumed from a stage's final
                checkpoint calls it for that stage first (the process that
                wrote it may or may not have). It must not modify the
                backbone; the recipe itself draws no random numbers for it.

        Returns:
            dict with `"histories"` (per stage name, the Keras history
            lists of the steps this call ran) and the final
            `SigLIP2Backbone` under `"backbone"`.

        Raises:
            ValueError: if the checkpoint in `checkpoint_dir` was written
                with another config, or is corrupt.
        """
        every = self.config.checkpoint_every
        if stop_after_steps is not None:
            if (
                not isinstance(stop_after_steps, int)
                or isinstance(stop_after_steps, bool)
                or stop_after_steps < 0
            ):
                raise ValueError(
                    "`stop_after_steps` must be an int >= 0 or None; got "
                    f"{stop_after_steps!r}."
                )
            # Runs stop at checkpoints: round up to the next one.
            stop_after_steps = -(-stop_after_steps // every) * every
        histories = {}
        backbone = None
        resuming = True
        # Warns if the self-distillation heads collapse (stages B and C).
        monitor = UniformCollapseMonitor(
            self.config.num_prototypes, self.config.num_patch_prototypes
        )
        while True:
            latest = ckpt.latest_checkpoint(checkpoint_dir)
            if latest is None:
                state, weights, optimizer_state = {"step": 0}, None, None
            else:
                state, weights, optimizer_state = ckpt.read_checkpoint(latest)
                self._check_checkpoint(state, latest)
            step = state["step"]
            stage = self.stage_at(step)
            if resuming and on_stage_end is not None:
                # The process that wrote a stage's final checkpoint may have
                # stopped before its `on_stage_end`.
                ended = self._stage_ending_at(step, state.get("stage"))
                if ended is not None:
                    backbone = self._restore(ended, state, weights)[0]
                    on_stage_end(ended.name, backbone)
            resuming = False
            if stage is None or (
                stop_after_steps is not None and step >= stop_after_steps
            ):
                break
            backbone, model = self._restore(stage, state, weights)
            optimizer = self._optimizer(stage)
            optimizer.build(model.trainable_variables)
            same_stage = state.get("stage") == stage.name
            # Resuming a stage restores the optimizer exactly; entering
            # stages B and C carries it over (new variables start fresh);
            # Stage D starts a new optimizer.
            if optimizer_state is not None and (
                same_stage or stage.name != "D"
            ):
                ckpt.load_optimizer_state(
                    optimizer,
                    model.trainable_variables,
                    optimizer_state,
                    strict=same_stage,
                )
            model.compile(optimizer=optimizer)
            end = stage.end_step
            if stop_after_steps is not None:
                end = min(end, stop_after_steps)
            if end // every <= step // every:
                # Would train no step and loop forever.
                raise RuntimeError(
                    f"Internal error: no checkpoint segment between step "
                    f"{step} and {end} (every {every})."
                )
            saver = _CheckpointCallback(
                self, checkpoint_dir, _saved_model(model), optimizer, stage
            )
            history = model.fit(
                self._dataset(stage, step),
                initial_epoch=step // every,
                epochs=end // every,
                steps_per_epoch=every,
                callbacks=[saver, monitor, *(callbacks or [])],
                verbose=verbose,
            )
            histories.setdefault(stage.name, {})
            for key, values in history.history.items():
                histories[stage.name].setdefault(key, []).extend(values)
            if on_stage_end is not None and end == stage.end_step:
                on_stage_end(stage.name, backbone)
        if backbone is None:
            last = self.stage_at(state["step"] - 1) or self.plan[0]
            backbone, _ = self._restore(last, state, weights)
        return {"histories": histories, "backbone": backbone}

    def _stage_ending_at(self, step: int, name) -> StagePlan | None:
        """The stage `name` if `step` is its end, else None."""
        for stage in self.plan:
            if stage.name == name and stage.end_step == step:
                return stage
        return None

    def config_json(self) -> dict:
        """The config as stored in checkpoints (JSON types)."""
        return json.loads(json.dumps(dataclasses.asdict(self.config)))

    def _check_checkpoint(self, state: dict, path):
        saved = state.get("config")
        current = self.config_json()
        if saved != current:
            if not isinstance(saved, dict):
                raise ValueError(
                    f"Checkpoint {path} holds no recipe config; it was not "
                    "written by `SigLIP2Recipe.fit`."
                )
            # A field added after the checkpoint was written counts as
            # equal when the run keeps its default.
            defaults = json.loads(
                json.dumps(
                    {
                        f.name: f.default
                        for f in dataclasses.fields(RecipeConfig)
                        if f.default is not dataclasses.MISSING
                    }
                )
            )
            saved = {
                **{k: v for k, v in defaults.items() if k in current},
                **saved,
            }
            keys = sorted(
                key
                for key in set(saved) | set(current)
                if saved.get(key) != current.get(key)
            )
            if not keys:
                return
            detail = ", ".join(
                f"{k}: {saved.get(k)!r} (checkpoint) vs "
                f"{current.get(k)!r} (now)"
                for k in keys
            )
            raise ValueError(
                f"Checkpoint {path} was written by a run with another "
                f"config; resume with the same config or use a new "
                f"directory. Differences: {detail}."
            )

    def _restore(self, stage: StagePlan, state: dict, weights):
        """Builds the stage's model and loads the checkpoint into it.

        Returns:
            `(backbone, model)`: the stage's student backbone and model.
        """
        c = self.config
        saved = state.get("stage")
        same = saved == stage.name
        initial = self._initial_backbone
        if stage.name == "A":
            model = self._stage_a_model(initial)
            _load(model, weights, same)
            return initial, model
        if stage.name == "B":
            _load(self.stage_b_model, weights, same)
            return initial, self.stage_b_model
        if stage.name == "C":
            if c.naflex:
                backbone = self._naflex_backbone()
                model = self._stage_a_model(backbone)
                _load(model, weights, same)
                return backbone, model
            if not self._resized():
                model = self.stage_b_model or self._stage_a_model(initial)
                _load(model, weights, same)
                return initial, model
            if same:
                backbone = self._resize(initial)
                model = self._stage_c_model(backbone)
                _load(model, weights, same)
                return backbone, model
            # Entering a resized Stage C: load the previous stage, then
            # resize the student (and the EMA teacher the same way).
            source = self.stage_b_model or self._stage_a_model(initial)
            _load(source, weights, same=True)
            backbone = self._resize(initial)
            model = self._stage_c_model(backbone)
            if weights is not None:
                skipped = set(ckpt.assign_weights(model, weights, strict=False))
                resized = {
                    v.path
                    for encoder in _vision_encoders(model)
                    for v in (
                        encoder.position_embedding.embeddings,
                        encoder.patch_embedding.kernel,
                    )
                }
                if not skipped <= resized:
                    raise ValueError(
                        "Checkpoint does not match the Stage C model: "
                        f"missing {sorted(skipped - resized)}."
                    )
                if isinstance(model, StageBModel):
                    resize_vision_weights(
                        self.stage_b_model.teacher_encoder,
                        model.teacher_encoder,
                    )
            return backbone, model
        # Stage D: the student in fixed-resolution form.
        backbone = self._resize(initial) if self._resized() else initial
        model = StageDModel(backbone, self.teacher, filter_ratio=c.filter_ratio)
        if weights is not None:
            skipped = ckpt.assign_weights(backbone, weights, strict=same)
            if skipped:
                raise ValueError(
                    f"Checkpoint misses student weights {skipped}."
                )
        return backbone, model

    def _stage_c_model(self, backbone: SigLIP2Backbone):
        if self._c_distills:
            return self._stage_b_model(backbone)
        return self._stage_a_model(backbone)


def _vision_encoders(model):
    encoders = [model.backbone.vision_encoder]
    if isinstance(model, StageBModel):
        encoders.append(model.teacher_encoder)
    return encoders


def _load(model, weights, same: bool):
    """Loads checkpoint weights: all of them when resuming the same stage;
    otherwise the ones the model shares with the previous stage (new
    variables keep their initial values)."""
    if weights is None:
        return
    ckpt.assign_weights(model, weights, strict=same)


def _saved_model(model):
    """What a checkpoint holds: the model, or for Stage D the student
    only (the teacher is given, frozen, and may share variable paths)."""
    if isinstance(model, StageDModel):
        return model.student_backbone
    return model


class _CheckpointCallback(keras.callbacks.Callback):
    """Saves an atomic checkpoint at the end of every segment (epoch)."""

    def __init__(self, recipe, directory, model, optimizer, stage):
        super().__init__()
        self.recipe = recipe
        self.directory = directory
        self.stage_model = model
        self.optimizer = optimizer
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.recipe.config.checkpoint_every
        state = {
            "step": step,
            "stage": self.stage.name,
            "examples_seen": self.recipe._examples_before(step),
            "seed": self.recipe.config.seed,
            "config": self.recipe.config_json(),
        }
        ckpt.save_checkpoint(
            self.directory, self.stage_model, self.optimizer, state
        )
