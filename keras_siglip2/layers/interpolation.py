"""Linear interpolation matrices: antialiased bilinear resizing as matmuls.

Resizing a small grid (a position-embedding table, a patch kernel) is a
product with two interpolation matrices, one per axis. Expressing it that way
keeps it backend-agnostic, differentiable, exact for static sizes and usable
with a per-example output size (padded to a static maximum), which NaFlex
needs.

The kernel is the triangle filter with half-pixel centres
(`align_corners=False`), normalised per output position. When shrinking with
`antialias=True` the filter support grows by the scale factor, which matches
`torch.nn.functional.interpolate(mode="bilinear", antialias=True)`,
`jax.image.resize(method="bilinear")` and PIL.
"""

import keras
from keras import ops


def linear_interpolation_weights(
    in_size: int,
    positions,
    out_size,
    antialias: bool = True,
):
    """Weights of output `positions` of a 1-D linear resize.

    Args:
        in_size: int. Length of the input axis.
        positions: int or float tensor of output indices, any shape `S`.
        out_size: int or tensor broadcastable to `S`: length of the output
            axis each position belongs to (it may differ per example).
        antialias: bool. Widen the filter when shrinking, so every input
            sample contributes (no aliasing).

    Returns:
        float32 tensor `S + (in_size,)`; each row sums to 1.
    """
    out_f = ops.maximum(ops.cast(out_size, "float32"), 1.0)
    scale = ops.cast(in_size, "float32") / out_f
    support = ops.maximum(scale, 1.0) if antialias else ops.ones_like(scale)
    centers = (ops.cast(positions, "float32") + 0.5) * scale
    inputs = ops.arange(in_size, dtype="float32") + 0.5
    distance = ops.abs(inputs - centers[..., None]) / support[..., None]
    weights = ops.relu(1.0 - distance)
    return weights / ops.maximum(
        ops.sum(weights, axis=-1, keepdims=True), 1e-12
    )


def linear_interpolation_matrix(
    in_size: int,
    out_size,
    max_out_size: int | None = None,
    antialias: bool = True,
    dtype: str = "float32",
):
    """Builds the `(max_out_size, in_size)` matrix of a 1-D linear resize.

    Args:
        in_size: int. Length of the input axis.
        out_size: int or scalar integer tensor. Length of the output axis; it
            may be a traced value when `max_out_size` is given.
        max_out_size: int or None. Static number of rows. Rows at or beyond
            `out_size` are zero. Defaults to `out_size`, which must then be a
            Python int.
        antialias: bool. See `linear_interpolation_weights`.
        dtype: string. Dtype of the result.

    Returns:
        Tensor of shape `(max_out_size, in_size)`; each valid row sums to 1.
    """
    if max_out_size is None:
        if not isinstance(out_size, int):
            raise TypeError(
                "`max_out_size` is required when `out_size` is a tensor; "
                f"got out_size={out_size!r}."
            )
        max_out_size = out_size
    if isinstance(out_size, int) and out_size < 1:
        raise ValueError(f"`out_size` must be >= 1; got {out_size}.")
    positions = ops.arange(max_out_size, dtype="float32")
    out_f = ops.cast(out_size, "float32")
    weights = linear_interpolation_weights(
        in_size, positions, ops.broadcast_to(out_f, (max_out_size,)), antialias
    )
    weights = ops.where((positions < out_f)[:, None], weights, 0.0)
    return ops.cast(weights, dtype)


def resize_grid(
    grid,
    height: int,
    width: int,
    antialias: bool = True,
):
    """Bilinearly resizes a `(grid_h, grid_w, channels)` grid.

    Args:
        grid: float tensor `(grid_h, grid_w, channels)`.
        height: int. Output rows.
        width: int. Output columns.
        antialias: bool. See `linear_interpolation_matrix`.

    Returns:
        Float tensor `(height, width, channels)` of the grid's dtype.
    """
    if len(grid.shape) != 3:
        raise ValueError(
            "`grid` must have shape (grid_h, grid_w, channels); got shape "
            f"{tuple(grid.shape)}."
        )
    grid_h, grid_w = int(grid.shape[0]), int(grid.shape[1])
    compute_dtype = "float32"
    rows = linear_interpolation_matrix(grid_h, height, antialias=antialias)
    cols = linear_interpolation_matrix(grid_w, width, antialias=antialias)
    out = ops.einsum(
        "oh,hwc,pw->opc", rows, ops.cast(grid, compute_dtype), cols
    )
    return ops.cast(out, keras.backend.standardize_dtype(grid.dtype))
