"""Stage D: ACID, active data curation by implicit distillation.

Every step receives a super-batch; a frozen teacher and the current student
score each example by learnability (student loss minus teacher loss) and
the student trains with the sigmoid loss on the most learnable ones.
"""

import keras
from keras import ops

from keras_siglip2.losses.distillation import learnability_scores
from keras_siglip2.losses.sigmoid import sigmoid_loss
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.training.optimizer import siglip2_optimizer
from keras_siglip2.training.stage_a import vision_inputs

# Paper, Sec. 2.5.
FILTER_RATIOS = {"B/16": 0.5, "B/32": 0.75}


def num_kept(super_batch_size: int, filter_ratio: float) -> int:
    """Examples kept from a super-batch: `round((1 - f) * n)`, at least 1.

    Args:
        super_batch_size: int.
        filter_ratio: float in [0, 1): the fraction filtered out.

    Returns:
        int.
    """
    _check_filter_ratio(filter_ratio)
    return max(1, round((1.0 - filter_ratio) * super_batch_size))


def super_batch_size(batch_size: int, filter_ratio: float) -> int:
    """Super-batch that leaves `batch_size` examples after filtering.

    Args:
        batch_size: int. Examples trained on per step.
        filter_ratio: float in [0, 1).

    Returns:
        int: `batch_size / (1 - filter_ratio)`, rounded.
    """
    _check_filter_ratio(filter_ratio)
    return round(batch_size / (1.0 - filter_ratio))


def _check_filter_ratio(filter_ratio):
    if not 0.0 <= filter_ratio < 1.0:
        raise ValueError(
            f"`filter_ratio` must be in [0, 1); got {filter_ratio}."
        )


def stage_d_optimizer(
    total_steps: int,
    learning_rate: float = 1e-5,
    warmup_steps: int | None = None,
    **kwargs,
) -> keras.optimizers.AdamW:
    """The paper's Stage D optimizer: lr 1e-5, no weight decay.

    The base optimizer (Adam, global-norm clip 1.0, warmup + cosine, see
    `siglip2_optimizer`) with `weight_decay=0`.

    Args:
        total_steps: int. Steps of Stage D.
        learning_rate: float. Peak learning rate (1e-5).
        warmup_steps: int or None. See `siglip2_optimizer`.
        **kwargs: other `siglip2_optimizer` arguments (betas, clipping).

    Returns:
        A `keras.optimizers.AdamW` that does not decay weights.
    """
    if kwargs.get("weight_decay", 0.0) != 0.0:
        raise ValueError(
            "Stage D trains without weight decay; got "
            f"weight_decay={kwargs['weight_decay']}."
        )
    kwargs["weight_decay"] = 0.0
    return siglip2_optimizer(
        total_steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        **kwargs,
    )


@keras.saving.register_keras_serializable(package="keras_siglip2")
class StageDModel(keras.Model):
    """SigLIP 2 Stage D (ACID): sigmoid loss on the most learnable examples.

    Each input batch is a super-batch of `n` image-text pairs. The student
    (in inference mode, without gradient) and the frozen teacher compute
    their sigmoid logits over the whole super-batch; each example's loss
    is its row of the sigmoid loss (image `i` against every text of the
    super-batch, the per-example form of the loss ACID uses for sigmoid
    models), and its learnability is student loss minus teacher loss. The
    `num_kept(n, filter_ratio)` highest-scoring examples are gathered with
    `top_k` (static shapes: XLA compiles one step) and the student is
    trained with the sigmoid loss on this sub-batch of images and their
    texts.

    `filter_ratio` is the fraction of the super-batch filtered out, as in
    JEST/ACID ("filtering ratio"): 0.5 (B/16) keeps half of a super-batch
    twice the training batch; 0.75 (B/32) keeps a quarter of one four
    times the batch. `super_batch_size(batch, f)` gives the super-batch.

    The teacher is any loaded `SigLIP2Backbone` (the paper's is an So400m
    fine-tuned on curated data); its width and depth may differ from the
    student's, but it must read the same inputs: the same tokenizer
    (vocabulary and text length) and, for NaFlex, the same patch size.
    Fixed-resolution images are resized (bilinear, antialiased) to the
    teacher's resolution if it differs.

    Train with `stage_d_optimizer` (lr 1e-5, no weight decay).

    Reported metrics: `sigmoid_loss` (on the kept sub-batch),
    `learnability` (mean over kept examples) and
    `super_batch_learnability` (mean over the super-batch).

    Args:
        student_backbone: the `SigLIP2Backbone` being trained.
        teacher_backbone: a `SigLIP2Backbone`; frozen by this model.
        filter_ratio: float in [0, 1). Fraction of each super-batch
            discarded.
        **kwargs: `keras.Model` arguments.
    """

    def __init__(
        self,
        student_backbone: SigLIP2Backbone,
        teacher_backbone: SigLIP2Backbone,
        filter_ratio: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_filter_ratio(filter_ratio)
        check_teacher(student_backbone, teacher_backbone)
        self.student_backbone = student_backbone
        self.teacher_backbone = teacher_backbone
        self.teacher_backbone.trainable = False
        self.filter_ratio = filter_ratio
        self.sigmoid_loss_tracker = keras.metrics.Mean(name="sigmoid_loss")
        self.learnability_tracker = keras.metrics.Mean(name="learnability")
        self.super_batch_learnability_tracker = keras.metrics.Mean(
            name="super_batch_learnability"
        )
        # Both backbones are built at construction.
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    def _backbone_inputs(self, backbone, inputs):
        vision = vision_inputs(backbone, inputs)
        if not backbone.naflex:
            size = backbone.vision_encoder.image_size
            if tuple(vision.shape[1:3]) != (size, size):
                vision = ops.image.resize(
                    vision,
                    (size, size),
                    interpolation="bilinear",
                    antialias=True,
                )
            vision = {"images": vision}
        return {**vision, "token_ids": inputs["token_ids"]}

    def select(self, inputs):
        """Learnability of every example and the indices kept.

        Args:
            inputs: the super-batch dict (backbone inputs).

        Returns:
            `(scores, indices)`: float32 `(n,)` learnability and int
            `(num_kept,)` indices of the kept examples, most learnable
            first.
        """
        student = self.student_backbone(
            self._backbone_inputs(self.student_backbone, inputs),
            training=False,
        )
        teacher = self.teacher_backbone(
            self._backbone_inputs(self.teacher_backbone, inputs),
            training=False,
        )
        scores = learnability_scores(student, teacher)
        size = scores.shape[0]
        if size is None:
            size = ops.shape(scores)[0]
            keep = ops.maximum(
                1,
                ops.cast(
                    ops.round(
                        ops.cast(size, "float32") * (1.0 - self.filter_ratio)
                    ),
                    "int32",
                ),
            )
        else:
            keep = num_kept(size, self.filter_ratio)
        _, indices = ops.top_k(scores, keep)
        return scores, indices

    def call(self, inputs, training=False):
        scores, indices = self.select(inputs)
        student_inputs = self._backbone_inputs(self.student_backbone, inputs)
        subset = {
            key: ops.take(value, indices, axis=0)
            for key, value in student_inputs.items()
        }
        logits = self.student_backbone(subset, training=training)
        return {"logits": logits, "learnability": scores, "selected": indices}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = sigmoid_loss(y_pred["logits"])
        scores = y_pred["learnability"]
        self.sigmoid_loss_tracker.update_state(loss)
        self.learnability_tracker.update_state(
            ops.mean(ops.take(scores, y_pred["selected"], axis=0))
        )
        self.super_batch_learnability_tracker.update_state(ops.mean(scores))
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student_backbone": keras.layers.serialize(
                    self.student_backbone
                ),
                "teacher_backbone": keras.layers.serialize(
                    self.teacher_backbone
                ),
                "filter_ratio": self.filter_ratio,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student_backbone", "teacher_backbone"):
            config[key] = keras.layers.deserialize(config[key])
        return cls(**config)


def check_teacher(student, teacher):
    for backbone, role in ((student, "student"), (teacher, "teacher")):
        if not isinstance(backbone, SigLIP2Backbone):
            raise TypeError(
                f"The {role} must be a `SigLIP2Backbone`; got "
                f"{type(backbone).__name__}."
            )
    s_text, t_text = student.text_encoder, teacher.text_encoder
    for attribute in ("vocabulary_size", "max_sequence_length"):
        if getattr(s_text, attribute) != getattr(t_text, attribute):
            raise ValueError(
                "Teacher and student must share the tokenizer; the "
                f"teacher's text `{attribute}` is "
                f"{getattr(t_text, attribute)}, the student's "
                f"{getattr(s_text, attribute)}."
            )
    if student.naflex != teacher.naflex:
        raise ValueError(
            "Teacher and student must both take NaFlex inputs or both "
            f"fixed-resolution images; got naflex={teacher.naflex} "
            f"(teacher) and {student.naflex} (student)."
        )
    s_patch = student.vision_encoder.patch_size
    t_patch = teacher.vision_encoder.patch_size
    if student.naflex and s_patch != t_patch:
        raise ValueError(
            "NaFlex teacher and student must share the patch size; got "
            f"{t_patch} (teacher) and {s_patch} (student)."
        )
