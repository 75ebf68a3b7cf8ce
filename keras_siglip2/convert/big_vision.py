"""big_vision `.npz` checkpoints of SigLIP / SigLIP 2, both ways.

big_vision trains SigLIP as a `two_towers` model: a `vit` image tower
(`naflex_vit` for NaFlex) named `img` and a
`proj.image_text.text_transformer` text tower named `txt`, plus the log
temperature `t` and the bias `b`. Its `.npz` files store the flax
parameter tree flattened with `/`, e.g.
`img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel`,
sometimes under a `params/` prefix, and sometimes with the blocks
"scanned": one `encoderblock/...` array per parameter with a leading depth
axis. Both forms load; saving writes one array per block.

Our layers keep flax's kernel layouts (`(D, H, Dh)` attention kernels,
`(in, out)` dense kernels, `(p, p, 3, D)` patch convolutions), so the
mapping is mostly names; only position tables and the scalars change
shape. The architecture is read from the array shapes. Files are read
with `allow_pickle=False`, and every array is checked before any weight
is assigned.
"""

import dataclasses
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import keras
import ml_dtypes
import numpy as np

from keras_siglip2.convert.checked_assign import assign_checked
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.utils.atomic_write import atomic_write

_PREFIX = "params/"
_IMAGE_BLOCKS = "img/Transformer"
_TEXT_BLOCKS = "txt/Encoder_0"
# Old text checkpoints added a second position table inside the encoder;
# big_vision's `text_transformer.load` sums it into the first.
_LEGACY_TEXT_POSEMB = "txt/Encoder_0/pos_embedding"


@dataclasses.dataclass(frozen=True)
class _Param:
    """One big_vision array and the Keras variable it becomes.

    Attributes:
        key: flattened big_vision name, without a `params/` prefix.
        variable: the Keras variable.
        to_keras: big_vision array -> variable value.
        to_big_vision: variable value -> big_vision array.
    """

    key: str
    variable: keras.Variable
    to_keras: Callable[[np.ndarray], np.ndarray]
    to_big_vision: Callable[[np.ndarray], np.ndarray]


def _same(array):
    return array


def _params(prefix, pairs):
    """Identity-mapped params from `(name, variable)` pairs."""
    return [
        _Param(f"{prefix}/{name}", variable, _same, _same)
        for name, variable in pairs
    ]


def _layer_norm(prefix, layer_norm):
    return _params(
        prefix, [("scale", layer_norm.gamma), ("bias", layer_norm.beta)]
    )


def _dense(prefix, dense):
    return _params(prefix, [("kernel", dense.kernel), ("bias", dense.bias)])


def _attention(prefix, attention):
    return (
        _dense(f"{prefix}/query", attention.query_dense)
        + _dense(f"{prefix}/key", attention.key_dense)
        + _dense(f"{prefix}/value", attention.value_dense)
        + _dense(f"{prefix}/out", attention.output_dense)
    )


def _mlp(prefix, mlp):
    return _dense(f"{prefix}/Dense_0", mlp.fc1) + _dense(
        f"{prefix}/Dense_1", mlp.fc2
    )


def _block(prefix, block):
    return (
        _layer_norm(f"{prefix}/LayerNorm_0", block.layer_norm_1)
        + _attention(
            f"{prefix}/MultiHeadDotProductAttention_0", block.attention
        )
        + _layer_norm(f"{prefix}/LayerNorm_1", block.layer_norm_2)
        + _mlp(f"{prefix}/MlpBlock_0", block.mlp)
    )


def _reshaped(key, variable, stored_shape):
    """A param stored as `stored_shape` and held as the variable's shape."""
    shape = tuple(variable.shape)
    return _Param(
        key,
        variable,
        lambda a: a.reshape(shape),
        lambda a: a.reshape(stored_shape),
    )


def big_vision_weight_entries(backbone: SigLIP2Backbone) -> list[_Param]:
    """Lists every big_vision array of `backbone` and its variable.

    Args:
        backbone: a built `SigLIP2Backbone`.

    Returns:
        list of params covering every weight of the backbone exactly once,
        keyed without the `params/` prefix.
    """
    vision, text = backbone.vision_encoder, backbone.text_encoder
    width = vision.hidden_dim
    patch = vision.patch_embedding
    grid = vision.grid_size
    if backbone.naflex:
        # `nn.Dense` on patches flattened as (row, col, channel).
        kernel = _reshaped("img/embedding/kernel", patch.kernel, (-1, width))
        posemb_shape = (grid, grid, width)
    else:
        kernel = _Param("img/embedding/kernel", patch.kernel, _same, _same)
        posemb_shape = (1, grid * grid, width)
    params = [
        kernel,
        _Param("img/embedding/bias", patch.bias, _same, _same),
        _reshaped(
            "img/pos_embedding",
            vision.position_embedding.embeddings,
            posemb_shape,
        ),
    ]
    for i, block in enumerate(vision.encoder_layers):
        params += _block(f"{_IMAGE_BLOCKS}/encoderblock_{i}", block)
    params += _layer_norm(f"{_IMAGE_BLOCKS}/encoder_norm", vision.encoder_norm)
    if vision.head is not None:
        head = vision.head
        params += _params("img/MAPHead_0", [("probe", head.probe)])
        params += _attention(
            "img/MAPHead_0/MultiHeadDotProductAttention_0", head.attention
        )
        params += _layer_norm("img/MAPHead_0/LayerNorm_0", head.layer_norm)
        params += _mlp("img/MAPHead_0/MlpBlock_0", head.mlp)
    params += [
        _Param(
            "txt/Embed_0/embedding",
            text.token_embedding.embeddings,
            _same,
            _same,
        ),
        _reshaped(
            "txt/pos_embedding",
            text.position_embedding,
            (1, text.max_sequence_length, text.hidden_dim),
        ),
    ]
    for i, block in enumerate(text.encoder_layers):
        params += _block(f"{_TEXT_BLOCKS}/encoderblock_{i}", block)
    params += _layer_norm(f"{_TEXT_BLOCKS}/encoder_norm", text.encoder_norm)
    params += _dense("txt/head", text.head)
    logits = backbone.contrastive_logits
    params += [
        _reshaped("t", logits.logit_scale, (1,)),
        _reshaped("b", logits.logit_bias, (1,)),
    ]
    return params


def read_big_vision_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every array of an `.npz` file, refusing pickled data.

    Args:
        path: `.npz` file.

    Returns:
        dict from stored name to array.

    Raises:
        ValueError: naming the file (and the array) if it is missing,
            not an `.npz` archive, truncated, corrupt, or holds objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such .npz file.")
    errors = (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error)
    try:
        npz = np.load(path, allow_pickle=False)
    except errors as e:
        raise ValueError(f"{path}: not a readable .npz file: {e}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: an .npy array, not an .npz archive of named arrays."
        )
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except errors as e:
                raise ValueError(
                    f"{path}: corrupt or truncated .npz file (array "
                    f"{key!r}): {e}"
                ) from None
    return arrays


def _unscan(params: dict, source: str) -> dict:
    """Splits scanned `encoderblock/...` arrays into `encoderblock_{i}`."""
    out = {}
    depths = {}
    for key, array in params.items():
        match = re.fullmatch(
            r"(img/Transformer|txt/Encoder_0)/encoderblock/(.+)", key
        )
        if match is None:
            out[key] = array
            continue
        tower, rest = match.groups()
        if array.ndim == 0:
            raise ValueError(
                f"{source}: scanned array {key!r} has no depth axis."
            )
        depths.setdefault(tower, {})[key] = array.shape[0]
        for i in range(array.shape[0]):
            out[f"{tower}/encoderblock_{i}/{rest}"] = array[i]
    for tower, sizes in depths.items():
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"{source}: scanned {tower} blocks disagree on depth: {sizes}."
            )
        if any(re.match(rf"{tower}/encoderblock_\d+/", k) for k in params):
            raise ValueError(
                f"{source}: {tower} has both scanned `encoderblock/` and "
                "per-block `encoderblock_i/` arrays."
            )
    return out


def _normalize_keys(arrays: dict, source: str) -> dict:
    """Strips the `params/` prefix, unscans, merges legacy text posembs."""
    if arrays and all(key.startswith(_PREFIX) for key in arrays):
        arrays = {key[len(_PREFIX) :]: a for key, a in arrays.items()}
    params = _unscan(arrays, source)
    if _LEGACY_TEXT_POSEMB in params and "txt/pos_embedding" in params:
        extra = params.pop(_LEGACY_TEXT_POSEMB)
        params["txt/pos_embedding"] = params["txt/pos_embedding"] + extra
    return params


def _shape(params, key, ndim, source):
    if key not in params:
        raise ValueError(
            f"{source}: cannot infer the architecture; missing array {key!r}."
        )
    shape = params[key].shape
    if len(shape) != ndim:
        raise ValueError(
            f"{source}: {key!r} has shape {shape}; expected {ndim} dimensions."
        )
    return shape


def _depth(params, tower, source):
    indices = {
        int(m.group(1))
        for key in params
        if (m := re.match(rf"{tower}/encoderblock_(\d+)/", key))
    }
    if not indices or indices != set(range(len(indices))):
        raise ValueError(
            f"{source}: {tower} blocks must be numbered 0..n-1; found "
            f"{sorted(indices)}."
        )
    return len(indices)


def _tower_sizes(params, tower, source):
    """`(num_layers, num_heads, intermediate_dim)` from block 0's shapes."""
    block = f"{tower}/encoderblock_0"
    query = _shape(
        params,
        f"{block}/MultiHeadDotProductAttention_0/query/kernel",
        3,
        source,
    )
    mlp = _shape(params, f"{block}/MlpBlock_0/Dense_0/kernel", 2, source)
    return _depth(params, tower, source), query[1], mlp[1]


def backbone_from_big_vision_params(
    params: dict,
    image_size: int | None = None,
    layer_norm_epsilon: float = 1e-6,
    dtype=None,
    source: str = "checkpoint",
) -> SigLIP2Backbone:
    """Builds a random-init backbone with the architecture of `params`.

    Args:
        params: normalized big_vision arrays (no prefix, not scanned).
        image_size: int. Input side of a fixed-resolution model; by
            default grid * patch. Give it for sizes that leave pixels over
            (so400m/14 at 384 px has a 27 x 27 grid). Ignored for NaFlex.
        layer_norm_epsilon: float. Not stored in checkpoints; 1e-6 in
            SigLIP and SigLIP 2.
        dtype: optional dtype policy.
        source: name for error messages.

    Returns:
        A `SigLIP2Backbone`.
    """
    kernel = params.get("img/embedding/kernel")
    if kernel is None or kernel.ndim not in (2, 4):
        raise ValueError(
            f"{source}: `img/embedding/kernel` must be a (p, p, 3, D) "
            "convolution or a (p * p * 3, D) NaFlex dense kernel; got "
            f"{None if kernel is None else kernel.shape}."
        )
    naflex = kernel.ndim == 2
    width = kernel.shape[-1]
    if naflex:
        patch_size = math.isqrt(kernel.shape[0] // 3)
        if 3 * patch_size**2 != kernel.shape[0]:
            raise ValueError(
                f"{source}: NaFlex `img/embedding/kernel` rows "
                f"{kernel.shape[0]} are not p * p * 3."
            )
        posemb = _shape(params, "img/pos_embedding", 3, source)
        grid = posemb[0]
        if posemb[1] != grid:
            raise ValueError(
                f"{source}: NaFlex `img/pos_embedding` must be a square "
                f"(g, g, D) grid; got {posemb}."
            )
        image_size = grid * patch_size
    else:
        patch_size = kernel.shape[0]
        posemb = _shape(params, "img/pos_embedding", 3, source)
        grid = math.isqrt(posemb[1])
        if grid * grid != posemb[1]:
            raise ValueError(
                f"{source}: `img/pos_embedding` has {posemb[1]} positions, "
                "not a square grid."
            )
        if image_size is None:
            image_size = grid * patch_size
        elif image_size // patch_size != grid:
            raise ValueError(
                f"`image_size` {image_size} with patch {patch_size} gives a "
                f"{image_size // patch_size}-patch grid; {source} has "
                f"{grid}."
            )
    depth, heads, mlp = _tower_sizes(params, _IMAGE_BLOCKS, source)
    vision = SigLIP2VisionEncoder(
        image_size=image_size,
        patch_size=patch_size,
        hidden_dim=width,
        num_layers=depth,
        num_heads=heads,
        intermediate_dim=mlp,
        layer_norm_epsilon=layer_norm_epsilon,
        use_head="img/MAPHead_0/probe" in params,
        dtype=dtype,
    )
    vocabulary_size, text_width = _shape(
        params, "txt/Embed_0/embedding", 2, source
    )
    length = _shape(params, "txt/pos_embedding", 3, source)[1]
    projection = _shape(params, "txt/head/kernel", 2, source)[1]
    depth, heads, mlp = _tower_sizes(params, _TEXT_BLOCKS, source)
    text = SigLIP2TextEncoder(
        vocabulary_size=vocabulary_size,
        hidden_dim=text_width,
        num_layers=depth,
        num_heads=heads,
        intermediate_dim=mlp,
        max_sequence_length=length,
        projection_dim=projection,
        layer_norm_epsilon=layer_norm_epsilon,
        dtype=dtype,
    )
    return SigLIP2Backbone(vision, text, naflex=naflex, dtype=dtype)


def assign_big_vision_params(
    backbone: SigLIP2Backbone,
    params: dict[str, np.ndarray],
    source: str = "checkpoint",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Assigns normalized big_vision arrays to a backbone, all or nothing.

    Args:
        backbone: a backbone with the checkpoint's architecture.
        params: dict from big_vision name (no prefix, unscanned) to array.
        source: name of the checkpoint, for error messages.
        progress: optional `progress(done, total)` called per array.

    Raises:
        ValueError: listing missing, unexpected, mis-shaped or non-float
            arrays; nothing is assigned in that case.
    """
    assign_checked(
        (
            (param.key, (param.variable,), _as_tuple(param.to_keras))
            for param in big_vision_weight_entries(backbone)
        ),
        params,
        source,
        noun="arrays",
        progress=progress,
    )


def _as_tuple(to_keras):
    return lambda array: (to_keras(array),)


def load_big_vision_npz(
    path: str | os.PathLike,
    image_size: int | None = None,
    layer_norm_epsilon: float = 1e-6,
    dtype=None,
    progress: Callable[[int, int], None] | None = None,
) -> SigLIP2Backbone:
    """Loads a big_vision SigLIP / SigLIP 2 `.npz` checkpoint.

    The architecture (widths, depths, heads, MLP sizes, patch size, grid,
    vocabulary, text length, NaFlex or not) is read from the array
    shapes. Keys may carry a `params/` prefix and blocks may be scanned.

    Args:
        path: `.npz` file written by big_vision (or `save_big_vision_npz`).
        image_size: int. Input side for fixed-resolution models whose size
            is not grid * patch (e.g. 384 for so400m/14 at 384 px).
        layer_norm_epsilon: float. LayerNorm epsilon (1e-6).
        dtype: optional dtype policy, e.g. `"bfloat16"`.
        progress: optional `progress(done, total)` called per array.

    Returns:
        A `SigLIP2Backbone` holding the checkpoint's weights.

    Raises:
        ValueError: for unreadable files or arrays that do not form a
            SigLIP model, naming the file and the arrays.

    Example:
    ```python
    backbone = load_big_vision_npz("webli_en_b16_224_63724782.npz")
    ```
    """
    source = str(path)
    params = _normalize_keys(read_big_vision_npz(path), source)
    backbone = backbone_from_big_vision_params(
        params,
        image_size=image_size,
        layer_norm_epsilon=layer_norm_epsilon,
        dtype=dtype,
        source=source,
    )
    assign_big_vision_params(backbone, params, source, progress=progress)
    return backbone


def save_big_vision_npz(
    backbone: SigLIP2Backbone,
    path: str | os.PathLike,
    prefix: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Writes a backbone as a big_vision `two_towers` `.npz` checkpoint.

    One array per block (not scanned). bfloat16 weights are written as
    float32, which `.npz` stores without pickling. The file is written
    next to `path` and renamed into place.

    Args:
        backbone: a `SigLIP2Backbone`.
        path: output file (conventionally ending in `.npz`).
        prefix: prepended to every name, e.g. `"params/"`.
        progress: optional `progress(done, total)` called per array.
    """
    path = Path(path)
    entries = big_vision_weight_entries(backbone)
    arrays = {}
    for done, entry in enumerate(entries, start=1):
        value = keras.ops.convert_to_numpy(entry.variable)
        if value.dtype == ml_dtypes.bfloat16:
            value = value.astype("float32")
        arrays[prefix + entry.key] = entry.to_big_vision(value)
        if progress is not None:
            progress(done, len(entries))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
