"""Decoder cross-entropy, optionally chunked to bound memory.

With a 256k vocabulary, `(batch, length, vocabulary)` logits dominate
memory (batch 32k x 64 tokens would need 2 PB in fp32). The chunked form
projects `chunk_size` tokens at a time in a scan and rematerialises each
chunk in the backward pass, so at most one `(chunk_size, vocabulary)` block
of logits (and one head-gradient accumulator) is alive. It is
mathematically the plain loss.
"""

import keras
from keras import ops


def _token_losses(hidden, kernel, bias, targets):
    """Per-token `logsumexp(z) - z[target]`, in float32."""
    logits = ops.matmul(hidden, ops.cast(kernel, hidden.dtype))
    if bias is not None:
        logits = logits + ops.cast(bias, logits.dtype)
    logits = ops.cast(logits, "float32")
    target_logits = ops.take_along_axis(
        logits, ops.expand_dims(targets, -1), axis=-1
    )[..., 0]
    return ops.logsumexp(logits, axis=-1) - target_logits


def decoder_loss(
    hidden,
    kernel,
    bias,
    targets,
    weights=None,
    chunk_size: int | None = None,
):
    """Weighted mean softmax cross-entropy of a linear output head.

    Args:
        hidden: float `(batch, length, dim)` final decoder states.
        kernel: float `(dim, vocabulary)` output-head kernel.
        bias: float `(vocabulary,)` or None.
        targets: int `(batch, length)` target ids.
        weights: optional float `(batch, length)`; 0 excludes a position
            (prefix or padding). Defaults to all ones.
        chunk_size: int or None. Tokens per chunk; None computes the plain
            loss in one block.

    Returns:
        float32 scalar: `sum(weights * ce) / max(sum(weights), 1)`.
    """
    if len(hidden.shape) != 3 or tuple(targets.shape) != tuple(
        hidden.shape[:2]
    ):
        raise ValueError(
            "Expected `hidden` (batch, length, dim) and `targets` (batch, "
            f"length); got {tuple(hidden.shape)} and "
            f"{tuple(targets.shape)}."
        )
    dim = hidden.shape[-1]
    targets = ops.cast(targets, "int32")
    if weights is None:
        weights = ops.ones(ops.shape(targets), "float32")
    weights = ops.cast(weights, "float32")
    total_weight = ops.maximum(ops.sum(weights), 1.0)
    if chunk_size is None:
        losses = _token_losses(hidden, kernel, bias, targets)
        return ops.sum(losses * weights) / total_weight

    hidden = ops.reshape(hidden, (-1, dim))
    targets = ops.reshape(targets, (-1,))
    weights = ops.reshape(weights, (-1,))
    num_tokens = hidden.shape[0]
    if num_tokens is None:
        raise ValueError("Chunking needs static batch and length.")
    padding = -num_tokens % chunk_size
    if padding:
        hidden = ops.pad(hidden, ((0, padding), (0, 0)))
        targets = ops.pad(targets, ((0, padding),))
        weights = ops.pad(weights, ((0, padding),))

    def chunk_loss(hidden, targets, weights):
        losses = _token_losses(hidden, kernel, bias, targets)
        return ops.sum(losses * weights)

    # A scan (not an unrolled loop) so the backward pass accumulates the
    # head's gradient in one buffer; remat recomputes each chunk's logits.
    chunk_loss = keras.remat(chunk_loss)
    num_chunks = (num_tokens + padding) // chunk_size

    def step(total, chunk):
        return total + chunk_loss(*chunk), None

    total, _ = ops.scan(
        step,
        ops.zeros((), "float32"),
        (
            ops.reshape(hidden, (num_chunks, chunk_size, dim)),
            ops.reshape(targets, (num_chunks, chunk_size)),
            ops.reshape(weights, (num_chunks, chunk_size)),
        ),
    )
    return total / total_weight
