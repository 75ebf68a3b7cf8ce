"""The SigLIP 2 recipe: every stage in one resumable `fit`.

`SigLIP2Recipe(config, ...).fit(checkpoint_dir)` trains through the stages
by fraction of the total examples, as in the paper:

- Stage A (from 0): sigmoid image-text loss + LocCa decoder;
- Stage B (from 80%): + local-to-global self-distillation and masked
  prediction with an EMA teacher (copied from the student at the switch);
- Stage C: fixed-resolution runs switch resolution (and optionally patch
  size) at 95% and continue with the Stage A losses (the paper keeps the
  self-distillation losses too; not yet here); NaFlex runs switch at 90% to
  NaFlex inputs, one sequence length per batch, with the remaining
  schedule stretched x3.75 and without self-distillation;
- Stage D (optional): ACID distillation from a teacher backbone, at
  learning rate 1e-5 without weight decay.

Every `checkpoint_every` steps an atomic checkpoint stores the model,
optimizer, step, stage and data position (the data pipeline is a pure
function of the example index, and every random choice of the model is
re-seeded per stage), so a run killed at any point resumes to the same
final weights as an uninterrupted one. Stage switches go through a
checkpoint, so resuming and switching are the same code path.
"""

import dataclasses
import json
import math
from collections.abc import Callable

import keras

from keras_siglip2.data.augment import add_self_distillation_views
from keras_siglip2.data.locca import LocCaVocabulary
from keras_siglip2.data.pipeline import training_batches
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.locca_decoder import locca_decoder_for
from keras_siglip2.models.resolution import with_image_size
from keras_siglip2.models.resolution import with_patch_size
from keras_siglip2.training import checkpoint as ckpt
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.stage_a import StageAModel
from keras_siglip2.training.stage_b import StageBModel
from keras_siglip2.training.stage_b import self_distillation_weights

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
        distillation_examples: examples of Stage D (0: no Stage D).
        distillation_learning_rate: Stage D learning rate (1e-5).
        filter_ratio: fraction of each super-batch discarded in Stage D
            (ACID's filtering ratio: 0.5 for B/16, 0.75 for B/32 with a
            4x super-batch).
        super_batch_factor: super-batch size over batch size in Stage D.
        size: model size, for the self-distillation loss weights
            (`self_distillation_weights`).
        ema_momentum: EMA teacher momentum in Stage B.
        num_local_crops: local crops per image in Stage B (8).
        local_crop_size: side of the local crops (None: half the image).
        head_hidden_dim, head_bottleneck_dim, num_prototypes,
            num_patch_prototypes: Stage B projection heads (DINO/iBOT).
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
    distillation_examples: int = 0
    distillation_learning_rate: float = 1e-5
    filter_ratio: float = 0.5
    super_batch_factor: int = 2
    size: str = "base"
    ema_momentum: float = 0.996
    num_local_crops: int = 8
    local_crop_size: int | None = None
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    num_prototypes: int = 65536
    num_patch_prototypes: int = 8192
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
        starts = (
            self.self_distillation_start,
            self.naflex_start if self.naflex else self.resolution_change_start,
        )
        if not 0 < starts[0] <= starts[1] <= 1:
            raise ValueError(
                "Stage fractions must satisfy 0 < self_distillation_start <= "
                f"stage C start <= 1; got {starts}."
            )


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage: its name and `[start_step, end_step)`."""

    name: str
    start_step: int
    end_step: int


def stage_plan(c: RecipeConfig) -> list[StagePlan]:
    """Stage boundaries (steps) in whole checkpoint segments.

    Each stage whose fraction is below the next stage's gets at least
    one segment, so tiny runs still pass through every stage.
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
    end_segment = segments
    if c.naflex:
        end_segment = c_segment + max(
            1, round((segments - c_segment) * c.naflex_stretch)
        )
    stages = [
        StagePlan("A", 0, b_segment * every),
        StagePlan("B", b_segment * every, c_segment * every),
        StagePlan("C", c_segment * every, end_segment * every),
    ]
    if c.distillation_examples:
        super_batch = c.batch_size * c.super_batch_factor
        d_segments = max(1, c.distillation_examples // super_batch // every)
        stages.append(
            StagePlan(
                "D",
                end_segment * every,
                (end_segment + d_segments) * every,
            )
        )
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

    Args:
        config: a `RecipeConfig`.
        backbone: the `SigLIP2Backbone` to train (fixed-resolution; its
            image size should be `config.image_size`).
        tokenizer: text tokenizer layer (strings -> fixed-length ids).
        examples: `examples(start)` returns a `tf.data.Dataset` of
            reader-schema examples starting at example index `start`
            (e.g. `lambda start: generated_dataset(start=start)`).
        teacher: optional frozen `SigLIP2Backbone` for Stage D.
    """

    def __init__(
        self,
        config: RecipeConfig,
        backbone: SigLIP2Backbone,
        tokenizer,
        examples: Callable,
        teacher: SigLIP2Backbone | None = None,
    ):
        if backbone.naflex:
            raise ValueError(
                "The recipe starts from a fixed-resolution backbone; NaFlex "
                "inputs are used from Stage C on."
            )
        if config.distillation_examples and teacher is None:
            raise ValueError("Stage D needs a `teacher` backbone.")
        self.config = config
        self.tokenizer = tokenizer
        self.examples = examples
        self.teacher = teacher
        self.vocabulary = LocCaVocabulary(
            tokenizer.vocabulary_size(), config.num_location_bins
        )
        self._initial_backbone = backbone
        # Every layer the stages add is created now, in a fixed order, so a
        # resumed process (same script, same seed) builds identical ones.
        # (Re-seeding later with `keras.utils.set_random_seed` would also
        # reset TensorFlow's resources, which breaks the tokenizer.)
        self.decoder = locca_decoder_for(
            backbone, self.vocabulary.size, config.decoder_length
        )
        self.plan = stage_plan(config)
        b_stage = [s for s in self.plan if s.name == "B"]
        global_weight, masked_weight = self_distillation_weights(config.size)
        self.stage_b_model = (
            StageBModel(
                backbone,
                self.decoder,
                decoder_loss_weight=config.decoder_loss_weight,
                local_to_global_weight=global_weight,
                masked_prediction_weight=masked_weight,
                ema_momentum=config.ema_momentum,
                head_hidden_dim=config.head_hidden_dim,
                head_bottleneck_dim=config.head_bottleneck_dim,
                num_prototypes=config.num_prototypes,
                num_patch_prototypes=config.num_patch_prototypes,
                distillation_start_step=b_stage[0].start_step,
                seed=config.seed,
            )
            if b_stage
            else None
        )

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
            if done > 0:
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
        c_start = next(
            (s.start_step for s in self.plan if s.name == "C"), steps
        )
        return RecipeSchedule(
            c.learning_rate,
            total_steps=steps,
            warmup_steps=int(steps * c.warmup_fraction),
            stretch_from=c_start,
            stretch=c.naflex_stretch if c.naflex else 1.0,
        )

    def _optimizer(self, stage: StagePlan):
        c = self.config
        if stage.name == "D":
            return siglip2_optimizer(
                total_steps=max(2, stage.end_step - stage.start_step),
                learning_rate=c.distillation_learning_rate,
                warmup_steps=0,
                weight_decay=0.0,
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

    def _resize(self, backbone: SigLIP2Backbone) -> SigLIP2Backbone:
        c = self.config
        if c.stage_c_patch_size is not None:
            return with_patch_size(
                backbone, c.stage_c_patch_size, c.stage_c_image_size
            )
        return with_image_size(backbone, c.stage_c_image_size)

    def _model(self, stage: StagePlan, backbone: SigLIP2Backbone):
        if stage.name == "B":
            return self.stage_b_model
        if stage.name == "D":
            from keras_siglip2.training.stage_d import StageDModel

            return StageDModel(
                backbone, self.teacher, filter_ratio=self.config.filter_ratio
            )
        return StageAModel(
            backbone,
            self.decoder,
            decoder_loss_weight=self.config.decoder_loss_weight,
        )

    def _dataset(self, stage: StagePlan, backbone, step: int):
        c = self.config
        position = self._examples_before(step)
        batch_size = self._stage_batch_size(stage)
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
        if stage.name == "C" and c.naflex:
            image_kwargs = dict(
                naflex_patch_size=backbone.vision_encoder.patch_size,
                sequence_lengths=c.naflex_sequence_lengths,
            )
        else:
            image_kwargs = dict(
                image_converter=SigLIP2ImageConverter(
                    image_size=backbone.vision_encoder.image_size,
                    interpolation="bilinear",
                )
            )
        data = training_batches(
            self.examples(position), **common, **image_kwargs
        )
        if stage.name == "B":
            size = backbone.vision_encoder.image_size
            data = add_self_distillation_views(
                data,
                global_size=size,
                local_size=c.local_crop_size or max(size // 2, 1),
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
                there is resumed.
            callbacks: extra Keras callbacks for every stage.
            verbose: Keras `fit` verbosity.
            stop_after_steps: stop once this global step is reached (for
                staged runs and tests); resume later from the checkpoint.
            on_stage_end: optional `fn(stage_name, backbone)`, called after
                the last step of each stage this call trains through
                (`"A"`, `"B"`, `"C"`, `"D"`; a resumed run calls it for
                the stages it finishes), once that stage's final
                checkpoint is written, with the stage's backbone (the
                resized one after a fixed-res Stage C, the NaFlex one in a
                NaFlex Stage C). It must not modify the backbone; the
                recipe itself draws no random numbers for it.

        Returns:
            dict with the per-stage Keras histories and the final
            `SigLIP2Backbone` under `"backbone"`.
        """
        histories = {}
        backbone = None
        while True:
            latest = ckpt.latest_checkpoint(checkpoint_dir)
            if latest is None:
                state, weights, optimizer_state = {"step": 0}, None, None
            else:
                state, weights, optimizer_state = ckpt.read_checkpoint(latest)
            step = state["step"]
            stage = self.stage_at(step)
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
            every = self.config.checkpoint_every
            saver = _CheckpointCallback(
                self, checkpoint_dir, model, optimizer, stage
            )
            history = model.fit(
                self._dataset(stage, backbone, step),
                initial_epoch=step // every,
                epochs=end // every,
                steps_per_epoch=every,
                callbacks=[saver, *(callbacks or [])],
                verbose=verbose,
            )
            histories.setdefault(stage.name, {})
            for key, values in history.history.items():
                histories[stage.name].setdefault(key, []).extend(values)
            if on_stage_end is not None and end == stage.end_step:
                on_stage_end(stage.name, backbone)
        if backbone is None:
            stage = self.plan[-1]
            backbone, _ = self._restore(stage, state, weights)
        return {"histories": histories, "backbone": backbone}

    def _restore(self, stage: StagePlan, state: dict, weights):
        """Builds the stage's model and loads the checkpoint into it."""
        c = self.config
        saved_stage = state.get("stage")
        backbone = self._initial_backbone
        needs_resize = (
            stage.name in ("C", "D")
            and not c.naflex
            and (c.stage_c_image_size or c.stage_c_patch_size)
        )
        if needs_resize and saved_stage in ("C", "D"):
            backbone = self._resize(backbone)
        model = self._model(stage, backbone)
        if weights is not None:
            if needs_resize and saved_stage not in ("C", "D"):
                # Load the pre-resolution-change weights, then resize.
                ckpt.assign_weights(
                    self._model(self.plan[0], backbone), weights, strict=False
                )
                backbone = self._resize(backbone)
                model = self._model(stage, backbone)
            else:
                ckpt.assign_weights(
                    model, weights, strict=saved_stage == stage.name
                )
        return backbone, model


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
            "config": json.loads(
                json.dumps(dataclasses.asdict(self.recipe.config))
            ),
        }
        ckpt.save_checkpoint(
            self.directory, self.stage_model, self.optimizer, state
        )
