"""Device meshes and layout maps for data-parallel and FSDP training.

SigLIP 2 trains with FSDP on TPU pods. In Keras this is a
`keras.distribution.ModelParallel` over a two-axis `DeviceMesh`:

- `"batch"`: data parallelism; each row of the mesh sees a slice of the
  global batch.
- `"model"`: every large weight (and its optimizer state) is split along
  one dimension over the devices of a row; XLA gathers it when needed.

`LAYOUT_RULES` names a layout for every kind of weight in the library
(towers, LocCa decoder, Stage B projection heads and EMA teacher) by a
regex on its path (e.g. `vision_encoder/encoderblock_0/attention/query/
kernel`), so new towers, decoders and heads built from the same layers are
covered without edits. A weight that no rule matches would be silently
replicated by Keras; `validate_layout_map` turns that into an error.

Example:
>>> distribution = configure_distribution(
...     "fsdp", mesh_shape=(1, 1),
...     devices=keras.distribution.list_devices()[:1], set_global=False)
>>> distribution.device_mesh.axis_names
('batch', 'model')
"""

import math
import operator
import re

import keras

BATCH_AXIS = "batch"
MODEL_AXIS = "model"
STRATEGIES = ("data_parallel", "fsdp")

# Layouts are fixed per kind of weight: Keras looks a layout up by path
# when the weight is created, before its shape is known. Kernels and tables
# are split along a model width rather than always their largest
# dimension: every SigLIP 2 width (768, 1024, 1152, 1536) is a multiple of
# 128, while the So400m MLP width (4304 = 16 x 269) and the LocCa
# vocabulary (256,000 + 1,004 = 4 x 64,251) split only a few ways. The
# empty layout `()` replicates a weight of any rank; `(.*/)?` matches any
# parent layers, or none.
LAYOUT_RULES = (
    # Attention projections (self and cross): (width, heads, head_dim),
    # (heads, head_dim, width).
    (r"(.*/)?(query|key|value)/kernel", (MODEL_AXIS, None, None)),
    (r"(.*/)?out/kernel", (None, None, MODEL_AXIS)),
    # MLP: (width, mlp_width), (mlp_width, width).
    (r"(.*/)?Dense_0/kernel", (MODEL_AXIS, None)),
    (r"(.*/)?Dense_1/kernel", (None, MODEL_AXIS)),
    # Patch embedding (patch, patch, 3, width).
    (r"(.*/)?embedding/kernel", (None, None, None, MODEL_AXIS)),
    # Projections from a width: text head (width, image_width), LocCa
    # image projection (image_width, width) and head (width, vocabulary).
    (r"(.*/)?(head|image_projection)/kernel", (MODEL_AXIS, None)),
    # Token tables (vocabulary, width) and position tables (positions,
    # width).
    (r"(.*/)?Embed_\d+/embeddings", (None, MODEL_AXIS)),
    (r"(.*/)?pos_embedding(/embeddings)?", (None, MODEL_AXIS)),
    # Stage B projection heads (student and EMA teacher): MLP layers
    # (in, head_width) split along the head width (DINO: 2048), the
    # bottleneck (head_width, bottleneck) along its input, the prototypes
    # (bottleneck, num_prototypes) along the 65,536 prototypes.
    (r"(.*/)?dense_\d+/kernel", (None, MODEL_AXIS)),
    (r"(.*/)?bottleneck/kernel", (MODEL_AXIS, None)),
    (r"(.*/)?prototypes", (None, MODEL_AXIS)),
    # Small weights: biases, LayerNorm, the MAP probe, temperature and bias;
    # Stage B's mask token, centres, switch step and flag, and the current
    # values of its schedules.
    (r"(.*/)?(bias|gamma|beta|probe)", ()),
    (r"(.*/)?(t|b)", ()),
    (
        r"(.*/)?(mask_token|\w+_center|teacher_initialized"
        r"|distillation_start_step|current_\w+)",
        (),
    ),
)


def _require_jax(what: str) -> None:
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"{what} needs the JAX backend (keras.distribution shards JAX "
            f"arrays); got backend {backend!r}. Set KERAS_BACKEND=jax."
        )


def get_device_mesh(
    mesh_shape: tuple[int, int] | None = None, devices=None
) -> keras.distribution.DeviceMesh:
    """Builds a `("batch", "model")` device mesh.

    Args:
        mesh_shape: `(batch_devices, model_devices)`; its product must equal
            the number of devices. Defaults to `(num_devices, 1)`.
        devices: optional list of devices; defaults to
            `keras.distribution.list_devices()`.

    Returns:
        A `keras.distribution.DeviceMesh` with axes `("batch", "model")`.
    """
    if devices is None:
        devices = keras.distribution.list_devices()
    num_devices = len(devices)
    if mesh_shape is None:
        mesh_shape = (num_devices, 1)
    original_shape = mesh_shape
    try:
        mesh_shape = tuple(operator.index(size) for size in mesh_shape)
    except TypeError:
        mesh_shape = None
    if mesh_shape is None or len(mesh_shape) != 2 or min(mesh_shape) < 1:
        raise ValueError(
            "`mesh_shape` must be two positive ints (batch_devices, "
            f"model_devices); got {original_shape}."
        )
    if math.prod(mesh_shape) != num_devices:
        raise ValueError(
            f"`mesh_shape` {mesh_shape} spans "
            f"{mesh_shape[0]} x {mesh_shape[1]} = {math.prod(mesh_shape)} "
            f"devices, but there are {num_devices} devices; the product "
            "must equal the device count (pass `devices` to use a subset)."
        )
    return keras.distribution.DeviceMesh(
        shape=mesh_shape,
        axis_names=(BATCH_AXIS, MODEL_AXIS),
        devices=devices,
    )


def get_layout_map(
    device_mesh: keras.distribution.DeviceMesh, rules=LAYOUT_RULES
) -> keras.distribution.LayoutMap:
    """Builds the FSDP `LayoutMap` of every SigLIP 2 weight.

    Args:
        device_mesh: a mesh with a `"model"` axis (see `get_device_mesh`).
        rules: sequence of `(regex, axes)`: a weight whose path fully
            matches `regex` gets the layout `axes` (one mesh axis name or
            `None` per dimension; `()` replicates). Regexes must not
            overlap. Defaults to `LAYOUT_RULES`.

    Returns:
        A `keras.distribution.LayoutMap`.
    """
    if MODEL_AXIS not in device_mesh.axis_names:
        raise ValueError(
            f"The mesh needs a {MODEL_AXIS!r} axis; got axes "
            f"{device_mesh.axis_names}."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in rules:
        layout_map[pattern] = tuple(axes)
    return layout_map


def validate_layout_map(model, layout_map) -> None:
    """Checks that a layout map places every weight of a model.

    Keras replicates a weight that no key matches, which quietly wastes
    memory at scale; this check makes it an error instead.

    Args:
        model: a built `keras.Model`/layer, or an iterable of variables
            (anything with `.path` and `.shape`).
        layout_map: a `keras.distribution.LayoutMap`.

    Raises:
        ValueError: listing the weights that match no key, match several
            keys, or whose layout does not fit their shape (wrong rank, or
            a sharded dimension not divisible by its mesh axis).
    """
    weights = model.weights if hasattr(model, "weights") else list(model)
    mesh = layout_map.device_mesh
    axis_sizes = dict(zip(mesh.axis_names, mesh.shape))
    unmatched, ambiguous, misfit = [], [], []
    for weight in weights:
        path, shape = weight.path, tuple(weight.shape)
        keys = [key for key in layout_map if re.fullmatch(key, path)]
        if not keys:
            unmatched.append(path)
            continue
        if len(keys) > 1:
            ambiguous.append(f"{path} (keys {keys})")
            continue
        axes = tuple(layout_map[keys[0]].axes)
        if axes and len(axes) != len(shape):
            misfit.append(f"{path}: layout {axes} for shape {shape}")
            continue
        for size, axis in zip(shape, axes):
            if axis is not None and size % axis_sizes[axis]:
                misfit.append(
                    f"{path}: dimension {size} of shape {shape} is not "
                    f"divisible by the {axis_sizes[axis]}-way {axis!r} axis"
                )
    problems = []
    if unmatched:
        problems.append(
            f"{len(unmatched)} weights match no layout key (add a rule): "
            + ", ".join(unmatched)
        )
    if ambiguous:
        problems.append(
            "weights match several layout keys: " + ", ".join(ambiguous)
        )
    if misfit:
        problems.append("layouts that do not fit: " + "; ".join(misfit))
    if problems:
        raise ValueError("Invalid layout map. " + " ".join(problems))


def check_global_batch_size(distribution, global_batch_size: int) -> None:
    """Raises `ValueError` unless the batch splits evenly over the mesh.

    Args:
        distribution: a `keras.distribution.Distribution`.
        global_batch_size: int. Examples per step, over all devices.
    """
    mesh = distribution.device_mesh
    batch_axis = distribution.batch_dim_name
    replicas = mesh.shape[list(mesh.axis_names).index(batch_axis)]
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} is not divisible "
            f"by the {replicas}-way {batch_axis!r} axis of the mesh "
            f"{tuple(mesh.shape)}; use a multiple of {replicas}."
        )


def configure_distribution(
    strategy: str = "fsdp",
    mesh_shape: tuple[int, int] | None = None,
    global_batch_size: int | None = None,
    devices=None,
    set_global: bool = True,
):
    """Sets up data-parallel or FSDP training in one call.

    Call it before building the model: Keras places each weight on the mesh
    when the weight is created.

    Args:
        strategy: `"data_parallel"` (weights replicated, batch split over
            all devices) or `"fsdp"` (batch split over the `"batch"` axis,
            weights split over the `"model"` axis by `LAYOUT_RULES`).
        mesh_shape: `(batch_devices, model_devices)`. Defaults to
            `(num_devices, 1)` for data parallel and `(1, num_devices)`
            for FSDP. Data parallel needs `model_devices == 1`.
        global_batch_size: optional int, checked to split evenly over the
            batch axis.
        devices: optional list of devices (defaults to all).
        set_global: bool. Whether to make it the global distribution
            (`keras.distribution.set_distribution`); otherwise use
            `with distribution.scope():`.

    Returns:
        A `keras.distribution.DataParallel` or `ModelParallel`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {STRATEGIES}; got {strategy!r}."
        )
    _require_jax("configure_distribution")
    if devices is None:
        devices = keras.distribution.list_devices()
    if mesh_shape is None:
        n = len(devices)
        mesh_shape = (n, 1) if strategy == "data_parallel" else (1, n)
    mesh = get_device_mesh(mesh_shape, devices)
    if strategy == "data_parallel":
        if mesh.shape[1] != 1:
            raise ValueError(
                "Data parallelism replicates every weight, so the model "
                f"axis must be 1; got `mesh_shape` {tuple(mesh.shape)}. "
                "Use strategy='fsdp' to shard weights."
            )
        batch_mesh = keras.distribution.DeviceMesh(
            shape=(mesh.shape[0],), axis_names=(BATCH_AXIS,), devices=devices
        )
        distribution = keras.distribution.DataParallel(device_mesh=batch_mesh)
    else:
        distribution = keras.distribution.ModelParallel(
            layout_map=get_layout_map(mesh), batch_dim_name=BATCH_AXIS
        )
    if global_batch_size is not None:
        check_global_batch_size(distribution, global_batch_size)
    if set_global:
        keras.distribution.set_distribution(distribution)
    return distribution
