"""The SigLIP pairwise sigmoid loss."""

import keras
from keras import ops


def sigmoid_loss(logits, labels=None):
    """Pairwise sigmoid loss `-mean_i sum_j log sigmoid(l_ij * z_ij)`.

    `l_ij` is +1 for matching image-text pairs and -1 otherwise. As in
    big_vision, the loss is summed over texts and averaged over images (not
    divided by the number of pairs). `log sigmoid` is evaluated stably, so
    logits of any magnitude give finite values and gradients.

    Args:
        logits: float `(num_images, num_texts)`.
        labels: optional `(num_images, num_texts)`, 1 for positive pairs and
            0 for negatives. Defaults to the identity (image `i` matches
            text `i`), which needs a square `logits`.

    Returns:
        float scalar.
    """
    if len(logits.shape) != 2:
        raise ValueError(
            "`logits` must have shape (num_images, num_texts); got shape "
            f"{tuple(logits.shape)}."
        )
    logits = ops.cast(logits, "float32")
    if labels is None:
        rows, cols = logits.shape
        if rows is not None and cols is not None and rows != cols:
            raise ValueError(
                "Default labels need square `logits` (image i matches text "
                f"i); got shape {tuple(logits.shape)}. Pass `labels`."
            )
        labels = ops.eye(ops.shape(logits)[0], dtype="float32")
    signs = 2.0 * ops.cast(labels, "float32") - 1.0
    per_image = ops.sum(ops.log_sigmoid(signs * logits), axis=-1)
    return -ops.mean(per_image)


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigmoidLoss(keras.losses.Loss):
    """`keras.losses.Loss` form of `sigmoid_loss`.

    `y_true` holds the pair labels (1 positive, 0 negative) with the shape
    of `y_pred`, the `(num_images, num_texts)` logits. The loss is already
    a scalar over the whole batch, so per-example `sample_weight` is not
    supported (it raises rather than being silently ignored).
    """

    def __init__(
        self, name: str = "sigmoid_loss", reduction: str = "sum", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                "`SigmoidLoss` does not take `sample_weight`: the loss couples "
                "every image with every text of the batch."
            )
        return super().__call__(y_true, y_pred)

    def call(self, y_true, y_pred):
        return sigmoid_loss(y_pred, labels=y_true)
