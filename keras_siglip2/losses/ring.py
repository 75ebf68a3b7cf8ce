"""The sigmoid loss computed around a ring of devices.

The plain loss needs every image-text logit: under data parallelism each
device holds a `(local_batch, global_batch)` slice of the logits, which
grows with the global batch. The ring form (the SigLIP paper's chunked
implementation) keeps the images on their device and passes the text
embeddings from device to device (`jax.lax.ppermute` under
`jax.shard_map`); each device adds up the loss of one
`(local_batch, local_batch)` block at a time. The backward pass travels
the same ring, sending each text block's gradient along with it, so the
memory per device depends on the per-device batch only, not on the number
of devices.
"""

import functools

import keras
from keras import ops

from keras_siglip2.losses.sigmoid import sigmoid_loss


def _normalize(x):
    return ops.normalize(ops.cast(x, "float32"), axis=-1)


def global_sigmoid_loss(
    image_embeddings, text_embeddings, logit_scale, logit_bias
):
    """Sigmoid loss of embeddings through the full `(batch, batch)` logits.

    The reference form: under a data-parallel `jit` each device holds a
    `(local_batch, batch)` slice of the logits (XLA gathers the texts).

    Args:
        image_embeddings: float `(batch, dim)`, not normalised.
        text_embeddings: float `(batch, dim)`, not normalised; text `i`
            matches image `i`.
        logit_scale: float scalar `t'`; the logits are scaled by
            `exp(t')`.
        logit_bias: float scalar `b`.

    Returns:
        float32 scalar: `sigmoid_loss(exp(t') * <x_i, y_j> + b)`.
    """
    images = _normalize(image_embeddings)
    texts = _normalize(text_embeddings)
    scale = ops.exp(ops.cast(logit_scale, "float32"))
    logits = ops.matmul(images, ops.transpose(texts)) * scale
    return sigmoid_loss(logits + ops.cast(logit_bias, "float32"))


def _resolve_mesh(mesh, axis_name):
    """Returns `(jax_mesh, axis_name)`, or `None` for the plain loss."""
    if mesh is None:
        distribution = keras.distribution.distribution()
        if distribution is None:
            return None
        mesh = distribution.device_mesh
        axis_name = axis_name or distribution.batch_dim_name
    if isinstance(mesh, keras.distribution.DeviceMesh):
        mesh = mesh.backend_mesh
    axis_name = axis_name or "batch"
    if axis_name not in mesh.shape:
        raise ValueError(
            f"The mesh has no axis {axis_name!r}; its axes are "
            f"{tuple(mesh.shape)}."
        )
    if mesh.shape[axis_name] == 1:
        return None
    return mesh, axis_name


def _block(images, texts, scale, bias, positive):
    """Dot products, logits and label signs of one (images, texts) block."""
    import jax.numpy as jnp

    dots = images @ texts.T
    if positive:
        signs = 2.0 * jnp.eye(dots.shape[0], dtype=dots.dtype) - 1.0
    else:
        signs = -jnp.ones_like(dots)
    return dots, scale * dots + bias, signs


@functools.lru_cache(maxsize=32)
def _ring_loss_fn(mesh, axis_name, global_batch):
    """Builds the `custom_vjp` ring loss of normalised embeddings."""
    import jax
    from jax import lax
    from jax.sharding import PartitionSpec

    num_devices = mesh.shape[axis_name]
    ring = [(i, (i + 1) % num_devices) for i in range(num_devices)]
    rows, replicated = PartitionSpec(axis_name), PartitionSpec()

    def block_loss(images, texts, scale, bias, positive):
        _, logits, signs = _block(images, texts, scale, bias, positive)
        return -jax.nn.log_sigmoid(signs * logits).sum()

    def forward(images, texts, scale, bias):
        loss = block_loss(images, texts, scale, bias, True)

        def step(_, carry):
            texts, loss = carry
            texts = lax.ppermute(texts, axis_name, ring)
            return texts, loss + block_loss(images, texts, scale, bias, False)

        _, loss = lax.fori_loop(1, num_devices, step, (texts, loss))
        return lax.psum(loss, axis_name) / global_batch

    def block_grads(images, texts, scale, bias, g, positive):
        dots, logits, signs = _block(images, texts, scale, bias, positive)
        # d/dz of -log sigmoid(s * z) is -s * sigmoid(-s * z).
        dz = -signs * jax.nn.sigmoid(-signs * logits) * g
        return (
            scale * (dz @ texts),
            scale * (dz.T @ images),
            (dz * dots).sum(),
            dz.sum(),
        )

    def backward(images, texts, scale, bias, g):
        g = g / global_batch
        d_images, d_texts, d_scale, d_bias = block_grads(
            images, texts, scale, bias, g, True
        )

        def step(_, carry):
            texts, d_texts, d_images, d_scale, d_bias = carry
            # The gradient of a text block travels with the block.
            texts, d_texts = lax.ppermute((texts, d_texts), axis_name, ring)
            grads = block_grads(images, texts, scale, bias, g, False)
            return (
                texts,
                d_texts + grads[1],
                d_images + grads[0],
                d_scale + grads[2],
                d_bias + grads[3],
            )

        carry = (texts, d_texts, d_images, d_scale, d_bias)
        carry = lax.fori_loop(1, num_devices, step, carry)
        _, d_texts, d_images, d_scale, d_bias = carry
        # One more hop brings each text gradient back to its device.
        d_texts = lax.ppermute(d_texts, axis_name, ring)
        return (
            d_images,
            d_texts,
            lax.psum(d_scale, axis_name),
            lax.psum(d_bias, axis_name),
        )

    sharded_forward = jax.shard_map(
        forward,
        mesh=mesh,
        in_specs=(rows, rows, replicated, replicated),
        out_specs=replicated,
    )
    sharded_backward = jax.shard_map(
        backward,
        mesh=mesh,
        in_specs=(rows, rows, replicated, replicated, replicated),
        out_specs=(rows, rows, replicated, replicated),
    )

    @jax.custom_vjp
    def ring_loss(images, texts, scale, bias):
        return sharded_forward(images, texts, scale, bias)

    def ring_loss_fwd(images, texts, scale, bias):
        loss = sharded_forward(images, texts, scale, bias)
        return loss, (images, texts, scale, bias)

    def ring_loss_bwd(residuals, g):
        return sharded_backward(*residuals, g)

    ring_loss.defvjp(ring_loss_fwd, ring_loss_bwd)
    return ring_loss


def ring_sigmoid_loss(
    image_embeddings,
    text_embeddings,
    logit_scale,
    logit_bias,
    mesh=None,
    axis_name: str | None = None,
):
    """Sigmoid loss over the global batch without the global logits.

    Equals `global_sigmoid_loss` (and so `sigmoid_loss` of the backbone's
    logits): `-1/B sum_i sum_j log sigmoid(l_ij z_ij)` with
    `z_ij = exp(t') <x_i, y_j> + b` over the global batch `B`, `l_ij = +1`
    for `i == j` and -1 otherwise, and so are its gradients. Each of the
    `n` devices of the mesh's batch axis holds `B / n` examples and at most
    one `(B / n, B / n)` logit block at a time.

    Falls back to `global_sigmoid_loss` on non-JAX backends, with no mesh
    and no `keras.distribution` set, or when the batch axis has one device.

    Args:
        image_embeddings: float `(batch, dim)`, not normalised; split over
            the batch axis.
        text_embeddings: float `(batch, dim)`, not normalised; text `i`
            matches image `i`.
        logit_scale: float scalar `t'` (log temperature).
        logit_bias: float scalar `b`.
        mesh: optional `jax.sharding.Mesh` or `keras.distribution.
            DeviceMesh`. Defaults to the mesh of the current
            `keras.distribution`.
        axis_name: the mesh axis that splits the batch. Defaults to the
            distribution's batch axis, else `"batch"`.

    Returns:
        float32 scalar.
    """
    for name, x in (("image", image_embeddings), ("text", text_embeddings)):
        if len(x.shape) != 2:
            raise ValueError(
                f"`{name}_embeddings` must have shape (batch, dim); got "
                f"shape {tuple(x.shape)}."
            )
    if tuple(image_embeddings.shape) != tuple(text_embeddings.shape):
        raise ValueError(
            "Image and text embeddings must have the same shape (batch, "
            f"dim); got {tuple(image_embeddings.shape)} and "
            f"{tuple(text_embeddings.shape)}."
        )
    resolved = None
    if keras.backend.backend() == "jax":
        resolved = _resolve_mesh(mesh, axis_name)
    if resolved is None:
        return global_sigmoid_loss(
            image_embeddings, text_embeddings, logit_scale, logit_bias
        )
    mesh, axis_name = resolved
    batch, num_devices = image_embeddings.shape[0], mesh.shape[axis_name]
    if batch % num_devices:
        raise ValueError(
            f"The global batch {batch} is not divisible by the "
            f"{num_devices} devices of the mesh axis {axis_name!r}."
        )
    images = _normalize(image_embeddings)
    texts = _normalize(text_embeddings)
    scale = ops.exp(ops.cast(logit_scale, "float32"))
    bias = ops.cast(logit_bias, "float32")
    return _ring_loss_fn(mesh, axis_name, batch)(images, texts, scale, bias)
