"""Self-distillation losses (DINO / iBOT) and ACID learnability scores.

Stage B matches a student to an EMA teacher on prototype logits: both
networks map features through a projection head to `K` prototype scores;
the teacher's scores are centred and sharpened into a target distribution,
and the student is trained with the cross-entropy to it:

    target = softmax((t - center) / teacher_temperature)   (no gradient)
    loss = -sum_k target_k * log_softmax(s / student_temperature)_k

`center` is an exponential moving average of the teacher's scores
(`update_center`), as in DINO; centring and sharpening together keep the
teacher from collapsing to a uniform or a one-hot output.

Stage D (ACID) scores examples by learnability, the student's per-example
sigmoid loss minus the teacher's, and keeps the most learnable ones.
"""

from keras import ops


def teacher_targets(teacher_logits, center, temperature: float):
    """Centred, sharpened teacher distribution (no gradient).

    Args:
        teacher_logits: float `(..., K)` teacher prototype scores.
        center: float `(K,)` running centre of the teacher scores.
        temperature: float. Teacher temperature (DINO: 0.04 to 0.07).

    Returns:
        float32 `(..., K)`, rows summing to 1.
    """
    logits = ops.cast(teacher_logits, "float32")
    center = ops.cast(center, "float32")
    return ops.stop_gradient(
        ops.softmax((logits - center) / temperature, axis=-1)
    )


def distillation_cross_entropy(
    student_logits,
    teacher_logits,
    center,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
):
    """Per-element cross-entropy from the teacher target to the student.

    Args:
        student_logits: float `(..., K)`.
        teacher_logits: float `(..., K)`, broadcastable to the student's.
        center: float `(K,)`.
        student_temperature: float (DINO: 0.1).
        teacher_temperature: float (DINO: 0.04).

    Returns:
        float32 `(...)`: `-sum_k target_k log p_student_k`.
    """
    targets = teacher_targets(teacher_logits, center, teacher_temperature)
    log_probs = ops.log_softmax(
        ops.cast(student_logits, "float32") / student_temperature, axis=-1
    )
    return -ops.sum(targets * log_probs, axis=-1)


def local_to_global_loss(
    student_local_logits,
    teacher_global_logits,
    center,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
):
    """SILC/DINO local-to-global consistency.

    Every local crop the student sees is matched to the teacher's view of
    the global image; the loss is the mean over images and crops.

    Args:
        student_local_logits: float `(batch, num_crops, K)`: the student's
            head output on each local crop.
        teacher_global_logits: float `(batch, K)`: the teacher's head
            output on the global view.
        center: float `(K,)`.
        student_temperature: float.
        teacher_temperature: float.

    Returns:
        float32 scalar.
    """
    if len(student_local_logits.shape) != 3:
        raise ValueError(
            "`student_local_logits` must have shape (batch, num_crops, K); "
            f"got shape {tuple(student_local_logits.shape)}."
        )
    ce = distillation_cross_entropy(
        student_local_logits,
        teacher_global_logits[:, None, :],
        center,
        student_temperature,
        teacher_temperature,
    )
    return ops.mean(ce)


def masked_patch_loss(
    student_patch_logits,
    teacher_patch_logits,
    mask,
    center,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
):
    """iBOT/TIPS masked prediction: patch-level self-distillation.

    At every masked position the student (which saw a mask token there)
    predicts the teacher's distribution for the unmasked patch. As in
    iBOT, the cross-entropy is averaged over each image's masked patches,
    then over images.

    Args:
        student_patch_logits: float `(batch, num_patches, K)`.
        teacher_patch_logits: float `(batch, num_patches, K)`.
        mask: bool/int `(batch, num_patches)`, true where the student's
            patch was replaced by the mask token.
        center: float `(K,)`: the patch centre (separate from the global
            one, as in iBOT).
        student_temperature: float.
        teacher_temperature: float.

    Returns:
        float32 scalar.
    """
    ce = distillation_cross_entropy(
        student_patch_logits,
        teacher_patch_logits,
        center,
        student_temperature,
        teacher_temperature,
    )
    weights = ops.cast(mask, "float32")
    per_image = ops.sum(ce * weights, axis=-1) / ops.maximum(
        ops.sum(weights, axis=-1), 1.0
    )
    return ops.mean(per_image)


def update_center(center, teacher_logits, momentum: float = 0.9):
    """DINO centre update: `m * center + (1 - m) * mean(teacher_logits)`.

    The mean is over every leading axis (images, and patches for the
    patch centre).

    Args:
        center: float `(K,)`.
        teacher_logits: float `(..., K)`.
        momentum: float. Centre momentum (DINO: 0.9).

    Returns:
        float32 `(K,)`.
    """
    logits = ops.cast(teacher_logits, "float32")
    num_prototypes = logits.shape[-1]
    batch_mean = ops.mean(ops.reshape(logits, (-1, num_prototypes)), axis=0)
    return momentum * ops.cast(center, "float32") + (
        1.0 - momentum
    ) * ops.stop_gradient(batch_mean)


def per_example_sigmoid_loss(logits):
    """Per-image row of the pairwise sigmoid loss.

    `loss_i = -sum_j log sigmoid(l_ij z_ij)` with `l_ij = +1` on the
    diagonal and -1 elsewhere; `sigmoid_loss` is the mean of these rows.

    Args:
        logits: float `(batch, batch)`, image `i` matching text `i`.

    Returns:
        float32 `(batch,)`.
    """
    logits = ops.cast(logits, "float32")
    signs = 2.0 * ops.eye(ops.shape(logits)[0], dtype="float32") - 1.0
    return -ops.sum(ops.log_sigmoid(signs * logits), axis=-1)


def learnability_scores(student_logits, teacher_logits):
    """ACID learnability: student loss minus teacher loss, per example.

    High for examples the teacher finds easy and the student does not
    (learnable); near zero for examples both find easy, or both find hard
    (noisy, e.g. mismatched pairs).

    Args:
        student_logits: float `(batch, batch)` student logits over the
            super-batch.
        teacher_logits: float `(batch, batch)` teacher logits over the same
            super-batch.

    Returns:
        float32 `(batch,)`, without gradient.
    """
    return ops.stop_gradient(
        per_example_sigmoid_loss(student_logits)
        - per_example_sigmoid_loss(teacher_logits)
    )
