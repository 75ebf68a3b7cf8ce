"""Stage B: Stage A plus self-distillation and masked prediction with an
EMA teacher (SILC local-to-global consistency, TIPS masked prediction)."""

import math
import warnings

import keras
from keras import ops

from keras_siglip2.losses.distillation import local_to_global_loss
from keras_siglip2.losses.distillation import masked_patch_loss
from keras_siglip2.losses.distillation import update_center
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.locca_decoder import LocCaDecoder
from keras_siglip2.training.ema import EMATeacher
from keras_siglip2.training.ema import frozen_copy
from keras_siglip2.training.stage_a import StageAModel

# Paper, Sec. 2.3: both losses are re-weighted per size to balance global
# and dense quality.
SIZE_FACTORS = {"base": 0.25, "large": 0.5, "so400m": 1.0, "giant": 0.5}
_SIZE_ALIASES = {"b": "base", "l": "large", "g": "giant"}
LOCAL_TO_GLOBAL_WEIGHT = 1.0
MASKED_PREDICTION_WEIGHT = 0.25


def self_distillation_weights(size: str) -> tuple[float, float]:
    """Paper weights of the two Stage B losses for a model size.

    `1.0` (local-to-global) and `0.25` (masked prediction), both times
    the size factor: B 0.25, L 0.5, So400m 1.0, g 0.5.

    Args:
        size: `"B"`, `"L"`, `"So400m"`, `"g"` (any case) or
            `"base"`, `"large"`, `"giant"`.

    Returns:
        `(local_to_global_weight, masked_prediction_weight)`.
    """
    key = _SIZE_ALIASES.get(size.lower(), size.lower())
    if key not in SIZE_FACTORS:
        raise ValueError(
            f"Unknown model size {size!r}; expected one of B, L, So400m, g."
        )
    factor = SIZE_FACTORS[key]
    return LOCAL_TO_GLOBAL_WEIGHT * factor, MASKED_PREDICTION_WEIGHT * factor


def teacher_temperature_at(
    step,
    final_temperature: float,
    warmup_temperature: float,
    warmup_steps: int,
):
    """DINO's teacher temperature: linear warm-up, then constant.

    `warmup + (final - warmup) * min(step / warmup_steps, 1)`, counted
    from the first self-distillation step (DINO and iBOT: 0.04 -> 0.07
    over their first 30 epochs).

    Args:
        step: int or int scalar tensor. Steps since self-distillation
            started (negative values count as 0).
        final_temperature: float. Temperature after the warm-up.
        warmup_temperature: float. Temperature at step 0.
        warmup_steps: int. Length of the warm-up (0: constant
            `final_temperature`).

    Returns:
        float32 scalar tensor.
    """
    if warmup_steps <= 0:
        return ops.convert_to_tensor(final_temperature, "float32")
    progress = ops.clip(
        ops.cast(step, "float32") / float(warmup_steps), 0.0, 1.0
    )
    return (
        warmup_temperature + (final_temperature - warmup_temperature) * progress
    )


def ema_momentum_at(
    step, base_momentum: float, final_momentum: float, total_steps: int
):
    """DINO's teacher momentum: cosine from `base` to `final`.

    `final - (final - base) * (1 + cos(pi * min(step / total, 1))) / 2`
    (DINO: 0.996 -> 1.0 over the whole training).

    Args:
        step: int or int scalar tensor. Steps since self-distillation
            started (negative values count as 0).
        base_momentum: float. Momentum at step 0.
        final_momentum: float. Momentum at `total_steps`.
        total_steps: int. Length of the schedule (0: constant
            `base_momentum`).

    Returns:
        float32 scalar tensor.
    """
    if total_steps <= 0:
        return ops.convert_to_tensor(base_momentum, "float32")
    progress = ops.clip(ops.cast(step, "float32") / float(total_steps), 0, 1)
    cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
    return final_momentum - (final_momentum - base_momentum) * cosine


def random_patch_mask(batch_size, num_patches: int, mask_ratio, seed):
    """Marks exactly `round(mask_ratio * num_patches)` random patches per
    example.

    Args:
        batch_size: int or int scalar tensor.
        num_patches: int. Patches per example.
        mask_ratio: float in [0, 1].
        seed: a `keras.random.SeedGenerator` or int.

    Returns:
        bool `(batch_size, num_patches)`.
    """
    num_masked = int(round(mask_ratio * num_patches))
    noise = keras.random.uniform((batch_size, num_patches), seed=seed)
    # The rank of each patch's noise; argsort of argsort has no ties.
    ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
    return ranks < num_masked


def apply_mask_token(tokens, mask, mask_token):
    """Replaces masked patch embeddings by the mask token.

    Args:
        tokens: float `(batch, num_patches, hidden_dim)`.
        mask: bool `(batch, num_patches)`.
        mask_token: float `(hidden_dim,)`.

    Returns:
        float `(batch, num_patches, hidden_dim)`.
    """
    mask_token = ops.cast(mask_token, tokens.dtype)
    return ops.where(mask[..., None], mask_token[None, None, :], tokens)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class ProjectionHead(keras.layers.Layer):
    """DINO projection head: MLP, L2-normalised bottleneck, prototypes.

    `num_layers - 1` GELU layers of width `hidden_dim`, a linear layer to
    `bottleneck_dim`, L2 normalisation, then a weight-normalised linear
    layer without bias (each prototype's weight vector has unit norm; the
    gain is fixed at 1, DINO's `norm_last_layer=True`). Works on pooled
    `(batch, dim)` and per-patch `(batch, patches, dim)` features.

    Args:
        hidden_dim: int. MLP width (DINO: 2048).
        bottleneck_dim: int. Bottleneck width (DINO: 256).
        num_prototypes: int. Output width `K` (DINO: 65536).
        num_layers: int. MLP layers including the bottleneck (DINO: 3).
        **kwargs: base layer arguments.

    Returns:
        float `(..., num_prototypes)`: cosine scores in [-1, 1].

    Example:
    >>> head = ProjectionHead(hidden_dim=8, bottleneck_dim=4,
    ...                       num_prototypes=6)
    >>> head(keras.ops.ones((2, 5))).shape
    (2, 6)
    """

    def __init__(
        self,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
        num_layers: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"`num_layers` must be >= 1; got {num_layers}.")
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.num_prototypes = num_prototypes
        self.num_layers = num_layers
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.dense_layers = [
            keras.layers.Dense(
                hidden_dim,
                activation="gelu",
                kernel_initializer=init,
                dtype=self.dtype_policy,
                name=f"dense_{i}",
            )
            for i in range(num_layers - 1)
        ]
        self.bottleneck = keras.layers.Dense(
            bottleneck_dim,
            kernel_initializer=init,
            dtype=self.dtype_policy,
            name="bottleneck",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = shape[:-1] + (self.hidden_dim,)
        self.bottleneck.build(shape)
        self.prototypes = self.add_weight(
            shape=(self.bottleneck_dim, self.num_prototypes),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="prototypes",
        )
        self.built = True

    def call(self, x):
        for layer in self.dense_layers:
            x = layer(x)
        x = _l2_normalize(self.bottleneck(x))
        prototypes = _l2_normalize(ops.cast(self.prototypes, x.dtype), axis=0)
        return ops.matmul(x, prototypes)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.num_prototypes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "bottleneck_dim": self.bottleneck_dim,
                "num_prototypes": self.num_prototypes,
                "num_layers": self.num_layers,
            }
        )
        return config


def _l2_normalize(x, axis=-1):
    return x * ops.rsqrt(
        ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12)
    )


@keras.saving.register_keras_serializable(package="keras_siglip2")
class StageBModel(StageAModel):
    """SigLIP 2 Stage B: Stage A plus two self-distillation losses.

    `loss = sigmoid + LocCa + active * (w_lg * local_to_global +
    w_mp * masked_prediction)`.

    - Teacher: a frozen copy of the student's image tower and of its two
      projection heads (`teacher_encoder`, `teacher_global_head`,
      `teacher_patch_head`; non-trainable, never touched by gradients).
      It is copied from the student at the switch point and then follows
      it by EMA after every optimizer step.
    - Local-to-global (SILC/DINO): the student encodes each of the
      `num_crops` local crops, the teacher the global view; the pooled
      (MAP-head) features go through `global_head` / its teacher copy and
      are matched with DINO's centred, sharpened cross-entropy.
    - Masked prediction (TIPS): the student encodes the same global view
      with `mask_ratio` of its patch embeddings replaced by a learned
      `mask_token` (before position embeddings and the transformer); its
      per-patch features go through `patch_head` and are matched to the
      teacher's unmasked per-patch features at the masked positions. The
      loss is iBOT's patch-level cross-entropy with its own head and
      centre: TIPS adopts iBOT's masked image modelling, and the
      SigLIP 2 paper gives no further detail.

    The extra views (`keras_siglip2.data.augment`) are separate inputs, so
    the image-text and decoder losses keep their own images.

    Switching stage inside one compiled `fit`: the teacher is copied from
    the student at the first train step with `optimizer.iterations >=
    distillation_start_step` (a non-trainable variable the recipe may set)
    and `teacher_initialized` (non-trainable flag) is set; the
    self-distillation terms count only once it is set. `initialize_teacher()`
    does the same eagerly. Before the switch the extra forward passes still
    run (their weight is 0), so a recipe should feed the views only in
    Stage B.

    Inputs are Stage A's dict plus `"global_view"`: float `(batch,
    image_size, image_size, 3)` and `"local_crops"`: float `(batch,
    num_crops, crop_size, crop_size, 3)` in `[-1, 1]` with `crop_size` a
    multiple of the patch size (the position table is resized to the
    crops' grid).

    Args:
        backbone: a `SigLIP2Backbone`.
        decoder: a `LocCaDecoder`.
        decoder_loss_weight: float. Weight of the decoder loss.
        decoder_chunk_size: int or None. See `StageAModel`.
        local_to_global_weight: float. Paper: 1.0 times the size factor
            (`self_distillation_weights`).
        masked_prediction_weight: float. Paper: 0.25 times the size factor.
        ema_momentum: float. Teacher EMA momentum per step (DINO: 0.996);
            the start of the cosine schedule if `ema_momentum_steps > 0`.
        final_ema_momentum: float or None. End of the cosine momentum
            schedule (DINO: 1.0); None: `ema_momentum` throughout.
        ema_momentum_steps: int. Length of the momentum schedule in
            steps from the switch (`ema_momentum_at`); 0: constant.
        mask_ratio: float. Fraction of student patches masked (0.5).
        head_hidden_dim: int. Projection-head MLP width (DINO: 2048).
        head_bottleneck_dim: int. Projection-head bottleneck (DINO: 256).
        num_prototypes: int. Prototypes of the global head (DINO: 65536).
        num_patch_prototypes: int. Prototypes of the patch head (iBOT:
            8192).
        student_temperature: float (DINO/iBOT: 0.1).
        teacher_temperature: float. Teacher temperature after the
            warm-up (0.04 by default; DINO/iBOT: 0.07 after warming up
            from 0.04).
        warmup_teacher_temperature: float or None. Teacher temperature
            at the switch, raised linearly to `teacher_temperature` over
            `teacher_temperature_warmup_steps` (`teacher_temperature_at`);
            None: `teacher_temperature` throughout.
        teacher_temperature_warmup_steps: int. Warm-up length in steps
            from the switch (0: no warm-up).
        center_momentum: float. Momentum of both centres (0.9).
        distillation_start_step: int. Optimizer step at which the teacher
            is copied in-step (0: the first step of this model).
        seed: int or None. Seed of the patch masks.
        **kwargs: `keras.Model` arguments.
    """

    def __init__(
        self,
        backbone: SigLIP2Backbone,
        decoder: LocCaDecoder,
        decoder_loss_weight: float = 1.0,
        decoder_chunk_size: int | None = None,
        local_to_global_weight: float = LOCAL_TO_GLOBAL_WEIGHT,
        masked_prediction_weight: float = MASKED_PREDICTION_WEIGHT,
        ema_momentum: float = 0.996,
        final_ema_momentum: float | None = None,
        ema_momentum_steps: int = 0,
        mask_ratio: float = 0.5,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        num_prototypes: int = 65536,
        num_patch_prototypes: int = 8192,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float | None = None,
        teacher_temperature_warmup_steps: int = 0,
        center_momentum: float = 0.9,
        distillation_start_step: int = 0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(
            backbone,
            decoder,
            decoder_loss_weight=decoder_loss_weight,
            decoder_chunk_size=decoder_chunk_size,
            **kwargs,
        )
        if final_ema_momentum is None:
            final_ema_momentum = ema_momentum
        if warmup_teacher_temperature is None:
            warmup_teacher_temperature = teacher_temperature
        for name, value in (
            ("ema_momentum", ema_momentum),
            ("final_ema_momentum", final_ema_momentum),
            ("mask_ratio", mask_ratio),
            ("center_momentum", center_momentum),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1]; got {value}.")
        for name, value in (
            ("student_temperature", student_temperature),
            ("teacher_temperature", teacher_temperature),
            ("warmup_teacher_temperature", warmup_teacher_temperature),
        ):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0; got {value}.")
        for name, value in (
            ("ema_momentum_steps", ema_momentum_steps),
            (
                "teacher_temperature_warmup_steps",
                teacher_temperature_warmup_steps,
            ),
        ):
            if int(value) != value or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0; got {value}.")
        self.local_to_global_weight = local_to_global_weight
        self.masked_prediction_weight = masked_prediction_weight
        self.ema_momentum = ema_momentum
        self.final_ema_momentum = final_ema_momentum
        self.ema_momentum_steps = int(ema_momentum_steps)
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature_warmup_steps = int(
            teacher_temperature_warmup_steps
        )
        self.mask_ratio = mask_ratio
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.num_prototypes = num_prototypes
        self.num_patch_prototypes = num_patch_prototypes
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.seed = seed

        encoder = backbone.vision_encoder
        width = encoder.hidden_dim
        dtype = encoder.dtype_policy
        head_args = dict(
            hidden_dim=head_hidden_dim,
            bottleneck_dim=head_bottleneck_dim,
            dtype=dtype,
        )
        self.global_head = ProjectionHead(
            num_prototypes=num_prototypes, name="global_head", **head_args
        )
        self.patch_head = ProjectionHead(
            num_prototypes=num_patch_prototypes,
            name="patch_head",
            **head_args,
        )
        self.global_head.build((None, width))
        self.patch_head.build((None, width))
        size = encoder.image_size
        self.teacher_encoder = frozen_copy(
            encoder, "teacher_vision_encoder", (None, size, size, 3)
        )
        self.teacher_global_head = frozen_copy(
            self.global_head, "teacher_global_head", (None, width)
        )
        self.teacher_patch_head = frozen_copy(
            self.patch_head, "teacher_patch_head", (None, width)
        )
        self._ema = EMATeacher(
            [encoder, self.global_head, self.patch_head],
            [
                self.teacher_encoder,
                self.teacher_global_head,
                self.teacher_patch_head,
            ],
        )
        # iBOT initialises the mask token at zero.
        self.mask_token = self.add_weight(
            shape=(width,), initializer="zeros", name="mask_token"
        )
        self.global_center = self.add_weight(
            shape=(num_prototypes,),
            initializer="zeros",
            trainable=False,
            name="global_center",
        )
        self.patch_center = self.add_weight(
            shape=(num_patch_prototypes,),
            initializer="zeros",
            trainable=False,
            name="patch_center",
        )
        self.teacher_initialized = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="teacher_initialized",
        )
        self.distillation_start_step = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(distillation_start_step),
            trainable=False,
            name="distillation_start_step",
        )
        # The teacher temperature of the current step (set by the train
        # step from the optimizer's iterations, read by `compute_loss`).
        self.current_teacher_temperature = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(warmup_teacher_temperature),
            trainable=False,
            name="current_teacher_temperature",
        )
        self.seed_generator = keras.random.SeedGenerator(
            seed, name="mask_seed_generator"
        )
        self.local_to_global_tracker = keras.metrics.Mean(
            name="local_to_global_loss"
        )
        self.masked_prediction_tracker = keras.metrics.Mean(
            name="masked_prediction_loss"
        )
        # Every part is built above.
        self.built = True

    def initialize_teacher(self):
        """Copies the student into the teacher now and starts distillation."""
        self._ema.copy_where(True)
        self.teacher_initialized.assign(1)

    def call(self, inputs, training=False):
        crops = inputs["local_crops"]
        if len(crops.shape) != 5:
            raise ValueError(
                "`local_crops` must have shape (batch, num_crops, size, "
                f"size, 3); got shape {tuple(crops.shape)}."
            )
        positions = self._position_table(*crops.shape[2:4])
        outputs = super().call(inputs, training=training)
        outputs.update(self._distillation_outputs(inputs, positions, training))
        return outputs

    def _distillation_outputs(self, inputs, positions, training):
        encoder = self.backbone.vision_encoder
        global_view = inputs["global_view"]
        crops = inputs["local_crops"]
        _, num_crops, crop_h, crop_w, channels = crops.shape

        teacher = self.teacher_encoder(global_view, training=False)
        teacher_global = ops.stop_gradient(
            self.teacher_global_head(teacher["pooled_output"])
        )
        teacher_patches = ops.stop_gradient(
            self.teacher_patch_head(teacher["sequence_output"])
        )

        flat_crops = ops.reshape(crops, (-1, crop_h, crop_w, channels))
        tokens = encoder.patch_embedding(flat_crops)
        tokens = tokens + ops.cast(positions, tokens.dtype)
        pooled = encoder.encode_tokens(tokens, training=training)[
            "pooled_output"
        ]
        local = self.global_head(pooled)
        local = ops.reshape(local, (-1, num_crops, self.num_prototypes))

        tokens = encoder.patch_embedding(global_view)
        mask = random_patch_mask(
            ops.shape(tokens)[0],
            encoder.grid_size**2,
            self.mask_ratio,
            self.seed_generator,
        )
        tokens = encoder.position_embedding(
            apply_mask_token(tokens, mask, self.mask_token)
        )
        sequence = encoder.encode_tokens(tokens, training=training)[
            "sequence_output"
        ]
        return {
            "local_student": local,
            "global_teacher": teacher_global,
            "patch_student": self.patch_head(sequence),
            "patch_teacher": teacher_patches,
            "masked_patches": mask,
        }

    def _position_table(self, height, width):
        encoder = self.backbone.vision_encoder
        patch = encoder.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"Local crops of {height}x{width} px are not a whole number "
                f"of {patch}-px patches."
            )
        grid_h, grid_w = height // patch, width // patch
        table = encoder.position_embedding
        if (grid_h, grid_w) == (table.grid_h, table.grid_w):
            return table.embeddings
        return table.resize(grid_h, grid_w)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        total = super().compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        temperatures = dict(
            student_temperature=self.student_temperature,
            teacher_temperature=ops.convert_to_tensor(
                self.current_teacher_temperature
            ),
        )
        local_to_global = local_to_global_loss(
            y_pred["local_student"],
            y_pred["global_teacher"],
            self.global_center,
            **temperatures,
        )
        masked_prediction = masked_patch_loss(
            y_pred["patch_student"],
            y_pred["patch_teacher"],
            y_pred["masked_patches"],
            self.patch_center,
            **temperatures,
        )
        active = ops.equal(self.teacher_initialized, 1)
        if training:
            # DINO: the loss uses the centre from before this batch.
            for center, teacher in (
                (self.global_center, y_pred["global_teacher"]),
                (self.patch_center, y_pred["patch_teacher"]),
            ):
                center.assign(
                    ops.where(
                        active,
                        update_center(
                            center.value, teacher, self.center_momentum
                        ),
                        center.value,
                    )
                )
        self.local_to_global_tracker.update_state(local_to_global)
        self.masked_prediction_tracker.update_state(masked_prediction)
        distillation = (
            self.local_to_global_weight * local_to_global
            + self.masked_prediction_weight * masked_prediction
        )
        return total + ops.cast(active, total.dtype) * ops.cast(
            distillation, total.dtype
        )

    def train_step(self, *args):
        """Keras' train step, then the teacher's EMA update.

        On JAX the step is stateless, `train_step(state, data) -> (logs,
        state)`, and the teacher entries of the non-trainable values are
        replaced; on TensorFlow and PyTorch, `train_step(data) -> logs`
        updates the teacher variables in place.
        """
        if keras.backend.backend() == "jax":
            return self._stateless_train_step(*args)
        (data,) = args
        switch = self._switch_condition(
            self.teacher_initialized,
            self.distillation_start_step,
            self.optimizer.iterations,
        )
        self._ema.copy_where(switch)
        self.teacher_initialized.assign(
            ops.cast(
                ops.where(switch, 1, self.teacher_initialized.value), "int32"
            )
        )
        temperature, momentum = self.schedules_at(
            self.optimizer.iterations, self.distillation_start_step
        )
        self.current_teacher_temperature.assign(temperature)
        logs = super().train_step(data)
        self._ema.update_where(ops.equal(self.teacher_initialized, 1), momentum)
        return logs

    def schedules_at(self, iterations, start_step):
        """Teacher temperature and EMA momentum of optimizer step
        `iterations` (0-based), counted from `start_step`.

        Args:
            iterations: int scalar (tensor). Steps done before this one.
            start_step: int scalar (tensor). First self-distillation step.

        Returns:
            `(teacher_temperature, ema_momentum)` float32 scalars.
        """
        step = ops.cast(iterations, "int32") - ops.cast(start_step, "int32")
        temperature = teacher_temperature_at(
            step,
            self.teacher_temperature,
            self.warmup_teacher_temperature,
            self.teacher_temperature_warmup_steps,
        )
        momentum = ema_momentum_at(
            step,
            self.ema_momentum,
            self.final_ema_momentum,
            self.ema_momentum_steps,
        )
        return temperature, momentum

    def _stateless_train_step(self, state, data):
        trainable, non_trainable, optimizer_values, metrics = state
        index = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
        flag = index[id(self.teacher_initialized)]
        start = index[id(self.distillation_start_step)]
        temperature_index = index[id(self.current_teacher_temperature)]
        iterations = optimizer_values[
            [id(v) for v in self.optimizer.variables].index(
                id(self.optimizer.iterations)
            )
        ]
        switch = self._switch_condition(
            non_trainable[flag], non_trainable[start], iterations
        )
        non_trainable = self._ema.stateless_copy_where(
            self, trainable, non_trainable, switch
        )
        non_trainable[flag] = ops.cast(
            ops.where(switch, 1, non_trainable[flag]), "int32"
        )
        temperature, momentum = self.schedules_at(
            iterations, non_trainable[start]
        )
        non_trainable[temperature_index] = ops.cast(
            temperature, non_trainable[temperature_index].dtype
        )
        logs, state = super().train_step(
            (trainable, non_trainable, optimizer_values, metrics), data
        )
        trainable, non_trainable, optimizer_values, metrics = state
        non_trainable = self._ema.stateless_update_where(
            self,
            trainable,
            non_trainable,
            ops.equal(non_trainable[flag], 1),
            momentum,
        )
        return logs, (trainable, non_trainable, optimizer_values, metrics)

    @staticmethod
    def _switch_condition(initialized, start_step, iterations):
        return ops.logical_and(
            ops.equal(initialized, 0),
            ops.greater_equal(
                ops.cast(iterations, "int32"), ops.cast(start_step, "int32")
            ),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "local_to_global_weight": self.local_to_global_weight,
                "masked_prediction_weight": self.masked_prediction_weight,
                "ema_momentum": self.ema_momentum,
                "final_ema_momentum": self.final_ema_momentum,
                "ema_momentum_steps": self.ema_momentum_steps,
                "mask_ratio": self.mask_ratio,
                "head_hidden_dim": self.head_hidden_dim,
                "head_bottleneck_dim": self.head_bottleneck_dim,
                "num_prototypes": self.num_prototypes,
                "num_patch_prototypes": self.num_patch_prototypes,
                "student_temperature": self.student_temperature,
                "teacher_temperature": self.teacher_temperature,
                "warmup_teacher_temperature": (self.warmup_teacher_temperature),
                "teacher_temperature_warmup_steps": (
                    self.teacher_temperature_warmup_steps
                ),
                "center_momentum": self.center_momentum,
                "distillation_start_step": int(
                    keras.ops.convert_to_numpy(self.distillation_start_step)
                ),
                "seed": self.seed,
            }
        )
        return config


class UniformCollapseMonitor(keras.callbacks.Callback):
    """Warns when Stage B's self-distillation sits at the uniform output.

    The local-to-global and masked-prediction losses are cross-entropies
    against the teacher's centred, sharpened distribution over `K`
    prototypes. If that distribution is uniform the loss is at least
    `ln K`, and the student matching it reaches exactly `ln K`: the heads
    have collapsed and teach nothing. This happens with small heads (a
    few hundred prototypes) at DINO's teacher temperatures (0.04 -> 0.07);
    a lower `teacher_temperature` avoids it (see `RecipeConfig`). Both
    losses start near `ln K` (student and teacher are near uniform at
    initialisation), so a loss must stay within `tolerance` of `ln K` for
    `patience` epochs in a row before it warns, once per loss.

    Args:
        num_prototypes: int. `K` of the local-to-global head.
        num_patch_prototypes: int. `K` of the masked-prediction head.
        tolerance: float. Relative distance to `ln K` that counts as
            collapsed.
        patience: int. Consecutive epochs at `ln K` before warning.
    """

    LOSSES = ("local_to_global_loss", "masked_prediction_loss")

    def __init__(
        self,
        num_prototypes: int,
        num_patch_prototypes: int,
        tolerance: float = 0.01,
        patience: int = 2,
    ):
        super().__init__()
        if min(num_prototypes, num_patch_prototypes) < 2:
            raise ValueError(
                "`num_prototypes` and `num_patch_prototypes` must be >= 2; "
                f"got {num_prototypes} and {num_patch_prototypes}."
            )
        if patience < 1:
            raise ValueError(f"`patience` must be >= 1; got {patience}.")
        self.uniform_loss = dict(
            zip(
                self.LOSSES,
                (math.log(num_prototypes), math.log(num_patch_prototypes)),
            )
        )
        self.tolerance = tolerance
        self.patience = patience
        self.epochs_at_uniform = dict.fromkeys(self.LOSSES, 0)
        self.warned = set()

    def on_epoch_end(self, epoch, logs=None):
        for name, uniform in self.uniform_loss.items():
            value = (logs or {}).get(name)
            if value is None:
                continue
            value = float(value)
            # Only near ln K: far above it the teacher is peaked and the
            # student disagrees with it (early training), not collapsed.
            if abs(value - uniform) <= self.tolerance * uniform:
                self.epochs_at_uniform[name] += 1
            else:
                self.epochs_at_uniform[name] = 0
            if (
                self.epochs_at_uniform[name] >= self.patience
                and name not in self.warned
            ):
                self.warned.add(name)
                warnings.warn(
                    f"`{name}` has been {value:.4f} for "
                    f"{self.epochs_at_uniform[name]} epochs, at ln K = "
                    f"{uniform:.4f}: the self-distillation head has "
                    "collapsed to the uniform output and teaches nothing. "
                    "Lower the teacher temperature (`teacher_temperature`, "
                    "`warmup_teacher_temperature`) or use more prototypes.",
                    stacklevel=2,
                )
