"""keras-hub presets: keras-hub's `SigLIPBackbone` and our own, both ways.

keras-hub ships SigLIP and SigLIP 2 as `keras_hub.models.SigLIPBackbone`
presets: a directory with `config.json` (a serialized Keras object) and
`model.weights.h5`. `load_preset` accepts
- a keras-hub `SigLIPBackbone` preset directory (e.g. written by its
  `save_to_preset`): keras-hub loads it, then the config and weights are
  translated into a `SigLIP2Backbone`;
- our own `SigLIP2Backbone.save_to_preset` directory, loaded as is;
- an HF transformers `SiglipModel`/`Siglip2Model` directory;
- a preset name from `keras_siglip2.models.presets` or a `kaggle://`/
  `hf://` handle, downloaded by keras-hub only then.

`save_keras_hub_preset` goes the other way, so keras-hub users can load
our weights with `keras_hub.models.SigLIPBackbone.from_preset(dir)`.

Numerics. keras-hub's model computes what ours does (pre-LN blocks, tanh
GELU, `1/sqrt(head_dim)` attention scaling, MAP head, last-token text
pooling, `exp(t) * cos + b` logits), with three differences that the
translation checks rather than approximates: its image tower's final
LayerNorm always uses epsilon 1e-6 (whatever `layer_norm_epsilon` says),
its MLP activation is configurable (we support the tanh GELU only), and
its text tower adds the whole position table, so it only accepts texts of
exactly `max_sequence_length` tokens (ours also accepts shorter ones). It
has no NaFlex mode and no tower without a MAP head.
"""

import copy
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import keras_hub

from keras_siglip2.convert.hf import load_hf_checkpoint
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.presets import PresetFiles
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

KERAS_HUB_CLASS = "keras_hub>SigLIPBackbone"
OUR_CLASS = "keras_siglip2>SigLIP2Backbone"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SHARDED_WEIGHTS_FILE = "model.weights.json"
# keras-hub hard-codes this epsilon in its image tower's final LayerNorm.
_KERAS_HUB_POST_NORM_EPSILON = 1e-6
_GELU_TANH = "gelu_approximate"
# keras-hub's integer `position_ids` buffers, the only non-float weights.
_POSITION_IDS = re.compile(r"sig_lip_(vision|text)_embedding/vars/\d+$")


# --- Variable pairing ---------------------------------------------------------


def _dense(ours, theirs):
    return [(ours.kernel, theirs.kernel), (ours.bias, theirs.bias)]


def _layer_norm(ours, theirs):
    return [(ours.gamma, theirs.gamma), (ours.beta, theirs.beta)]


def _attention(ours, theirs):
    pairs = []
    for name in ("query_dense", "key_dense", "value_dense", "output_dense"):
        pairs += _dense(getattr(ours, name), getattr(theirs, name))
    return pairs


def _mlp(ours, theirs):
    return _dense(ours.fc1, theirs.fc1) + _dense(ours.fc2, theirs.fc2)


def _block(ours, theirs):
    return (
        _layer_norm(ours.layer_norm_1, theirs.layer_norm1)
        + _attention(ours.attention, theirs.self_attn)
        + _layer_norm(ours.layer_norm_2, theirs.layer_norm2)
        + _mlp(ours.mlp, theirs.mlp)
    )


def variable_pairs(backbone: SigLIP2Backbone, keras_hub_backbone) -> list:
    """Pairs every weight of ours with keras-hub's; layouts are identical.

    Args:
        backbone: a `SigLIP2Backbone`.
        keras_hub_backbone: a `keras_hub.models.SigLIPBackbone` of the same
            architecture.

    Returns:
        list of `(our_variable, keras_hub_variable)`.

    Raises:
        ValueError: if a weight of either model is left unpaired (e.g. a
            keras-hub version with a different layout).
    """
    vision, text = backbone.vision_encoder, backbone.text_encoder
    their_vision = keras_hub_backbone.vision_encoder
    their_text = keras_hub_backbone.text_encoder
    embedding = their_vision.embedding
    pairs = [
        (vision.patch_embedding.kernel, embedding.patch_embedding.kernel),
        (vision.patch_embedding.bias, embedding.patch_embedding.bias),
        (
            vision.position_embedding.embeddings,
            embedding.position_embedding.embeddings,
        ),
    ]
    for ours, theirs in zip(vision.encoder_layers, their_vision.encoder_layers):
        pairs += _block(ours, theirs)
    pairs += _layer_norm(vision.encoder_norm, their_vision.post_layer_norm)
    head, their_head = vision.head, their_vision.head
    pairs += [(head.probe, their_head.probe)]
    pairs += _attention(head.attention, their_head.attention)
    pairs += _layer_norm(head.layer_norm, their_head.layer_norm)
    pairs += _mlp(head.mlp, their_head.mlp)
    their_embedding = their_text.embedding
    pairs += [
        (
            text.token_embedding.embeddings,
            their_embedding.token_embedding.embeddings,
        ),
        (
            text.position_embedding,
            their_embedding.position_embedding.embeddings,
        ),
    ]
    for ours, theirs in zip(text.encoder_layers, their_text.encoder_layers):
        pairs += _block(ours, theirs)
    pairs += _layer_norm(text.encoder_norm, their_text.post_layer_norm)
    pairs += _dense(text.head, their_text.head)
    logits, their_logits = (
        backbone.contrastive_logits,
        keras_hub_backbone.siglip_head,
    )
    pairs += [
        (logits.logit_scale, their_logits.logit_scale),
        (logits.logit_bias, their_logits.logit_bias),
    ]
    _check_coverage(backbone, keras_hub_backbone, pairs)
    return pairs


def _check_coverage(backbone, keras_hub_backbone, pairs):
    ours = {id(a) for a, _ in pairs}
    theirs = {id(b) for _, b in pairs}
    left = [v.path for v in backbone.weights if id(v) not in ours]
    left += [
        v.path
        for v in keras_hub_backbone.weights
        if id(v) not in theirs and not v.path.endswith("position_ids")
    ]
    if left or len(ours) != len(pairs) or len(theirs) != len(pairs):
        raise ValueError(
            "Cannot pair the weights of SigLIP2Backbone and keras-hub's "
            f"SigLIPBackbone; unpaired: {left}."
        )


def _copy(pairs, forward, progress=None):
    """Checks every shape, then assigns; `forward` copies keras-hub->ours."""
    mismatched = [
        f"{b.path}: {tuple(b.shape)} vs ours {tuple(a.shape)}"
        for a, b in pairs
        if tuple(a.shape) != tuple(b.shape)
    ]
    if mismatched:
        raise ValueError(f"Weight shapes disagree: {mismatched}.")
    for done, (ours, theirs) in enumerate(pairs, start=1):
        source, target = (theirs, ours) if forward else (ours, theirs)
        target.assign(keras.ops.convert_to_numpy(source))
        if progress is not None:
            progress(done, len(pairs))


# --- keras-hub -> ours --------------------------------------------------------


def _check_activation(encoder, name):
    if encoder.intermediate_activation != _GELU_TANH:
        raise ValueError(
            f"keras-hub {name} uses `intermediate_activation` "
            f"{encoder.intermediate_activation!r}; only {_GELU_TANH!r} "
            "(tanh-approximate GELU, as SigLIP) is supported."
        )


def backbone_from_keras_hub(
    keras_hub_backbone,
    dtype=None,
    progress: Callable[[int, int], None] | None = None,
) -> SigLIP2Backbone:
    """Translates a keras-hub `SigLIPBackbone` into a `SigLIP2Backbone`.

    Args:
        keras_hub_backbone: a `keras_hub.models.SigLIPBackbone`.
        dtype: optional dtype policy of the result (default: Keras').
        progress: optional `progress(done, total)` called per weight.

    Returns:
        A `SigLIP2Backbone` with the same weights and outputs.

    Raises:
        ValueError: for keras-hub configurations ours cannot reproduce
            exactly (see the module docstring).
    """
    their_vision = keras_hub_backbone.vision_encoder
    their_text = keras_hub_backbone.text_encoder
    _check_activation(their_vision, "vision encoder")
    _check_activation(their_text, "text encoder")
    if their_vision.layer_norm_epsilon != _KERAS_HUB_POST_NORM_EPSILON:
        raise ValueError(
            "keras-hub's image tower uses `layer_norm_epsilon` "
            f"{their_vision.layer_norm_epsilon} in its blocks but "
            f"{_KERAS_HUB_POST_NORM_EPSILON} in its final LayerNorm; ours "
            "uses one epsilon per tower, so this model cannot be "
            "translated exactly."
        )
    if their_text.embedding_dim != their_text.hidden_dim:
        raise ValueError(
            f"keras-hub text `embedding_dim` ({their_text.embedding_dim}) "
            f"must equal `hidden_dim` ({their_text.hidden_dim})."
        )
    shape = tuple(their_vision.image_shape)
    # `image_shape` is (H, W, 3), or (3, H, W) for channels_first.
    height, width = shape[:2] if shape[-1] == 3 else shape[1:]
    if height != width:
        raise ValueError(f"Only square images are supported; got {shape}.")
    vision = SigLIP2VisionEncoder(
        image_size=height,
        patch_size=their_vision.patch_size,
        hidden_dim=their_vision.hidden_dim,
        num_layers=their_vision.num_layers,
        num_heads=their_vision.num_heads,
        intermediate_dim=their_vision.intermediate_dim,
        layer_norm_epsilon=their_vision.layer_norm_epsilon,
        dtype=dtype,
    )
    text = SigLIP2TextEncoder(
        vocabulary_size=their_text.vocabulary_size,
        hidden_dim=their_text.hidden_dim,
        num_layers=their_text.num_layers,
        num_heads=their_text.num_heads,
        intermediate_dim=their_text.intermediate_dim,
        max_sequence_length=their_text.max_sequence_length,
        projection_dim=their_text.projection_dim,
        layer_norm_epsilon=their_text.layer_norm_epsilon,
        dtype=dtype,
    )
    backbone = SigLIP2Backbone(vision, text, dtype=dtype)
    _copy(
        variable_pairs(backbone, keras_hub_backbone),
        forward=True,
        progress=progress,
    )
    return backbone


# --- ours -> keras-hub --------------------------------------------------------


def to_keras_hub_backbone(
    backbone: SigLIP2Backbone,
    progress: Callable[[int, int], None] | None = None,
):
    """Builds a keras-hub `SigLIPBackbone` holding our weights.

    Args:
        backbone: a fixed-resolution `SigLIP2Backbone` with a MAP head and
            image-tower LayerNorm epsilon 1e-6.
        progress: optional `progress(done, total)` called per weight.

    Returns:
        A `keras_hub.models.SigLIPBackbone` with the same outputs.

    Raises:
        ValueError: for NaFlex backbones, backbones without a MAP head, or
            an image-tower epsilon keras-hub cannot express.
    """
    vision, text = backbone.vision_encoder, backbone.text_encoder
    if backbone.naflex:
        raise ValueError(
            "keras-hub's SigLIPBackbone has no NaFlex mode; export NaFlex "
            "backbones to HF (`Siglip2Model`) or big_vision instead."
        )
    if not vision.use_head:
        raise ValueError(
            "keras-hub's SigLIPBackbone always pools with a MAP head; this "
            "backbone has `use_head=False`."
        )
    if vision.layer_norm_epsilon != _KERAS_HUB_POST_NORM_EPSILON:
        raise ValueError(
            "keras-hub's image tower fixes its final LayerNorm epsilon at "
            f"{_KERAS_HUB_POST_NORM_EPSILON}; this backbone uses "
            f"{vision.layer_norm_epsilon}."
        )
    dtype = backbone.vision_encoder.dtype_policy.name
    their_vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=vision.patch_size,
        hidden_dim=vision.hidden_dim,
        num_layers=vision.num_layers,
        num_heads=vision.num_heads,
        intermediate_dim=vision.intermediate_dim,
        intermediate_activation=_GELU_TANH,
        layer_norm_epsilon=vision.layer_norm_epsilon,
        image_shape=(vision.image_size, vision.image_size, 3),
        data_format="channels_last",
        dtype=dtype,
    )
    their_text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=text.vocabulary_size,
        embedding_dim=text.hidden_dim,
        hidden_dim=text.hidden_dim,
        num_layers=text.num_layers,
        num_heads=text.num_heads,
        intermediate_dim=text.intermediate_dim,
        intermediate_activation=_GELU_TANH,
        layer_norm_epsilon=text.layer_norm_epsilon,
        max_sequence_length=text.max_sequence_length,
        projection_dim=text.projection_dim,
        dtype=dtype,
    )
    keras_hub_backbone = keras_hub.models.SigLIPBackbone(
        their_vision, their_text, dtype=dtype
    )
    _copy(
        variable_pairs(backbone, keras_hub_backbone),
        forward=False,
        progress=progress,
    )
    return keras_hub_backbone


def save_keras_hub_preset(
    backbone: SigLIP2Backbone,
    preset_dir: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Writes a keras-hub `SigLIPBackbone` preset of our weights.

    The files are written to a temporary directory next to `preset_dir`,
    then each is renamed into place.

    Args:
        backbone: see `to_keras_hub_backbone`.
        preset_dir: output directory, created if needed.
        progress: optional `progress(done, total)` called per weight.

    Example:
    ```python
    save_keras_hub_preset(backbone, "siglip2_keras_hub")
    keras_hub.models.SigLIPBackbone.from_preset("siglip2_keras_hub")
    ```
    """
    keras_hub_backbone = to_keras_hub_backbone(backbone, progress)
    preset_dir = Path(preset_dir)
    preset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=preset_dir.parent, prefix=".preset."))
    try:
        keras_hub_backbone.save_to_preset(str(tmp))
        preset_dir.mkdir(exist_ok=True)
        for path in tmp.iterdir():
            os.replace(path, preset_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- Loading presets ----------------------------------------------------------


def _read_config(preset_dir: Path) -> dict:
    path = preset_dir / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{preset_dir}: no `{CONFIG_FILE}` found.")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object.")
    return config


def _weights_file(preset_dir: Path) -> Path:
    for name in (WEIGHTS_FILE, SHARDED_WEIGHTS_FILE):
        if (preset_dir / name).is_file():
            return preset_dir / name
    raise ValueError(
        f"{preset_dir}: no `{WEIGHTS_FILE}` (or sharded "
        f"`{SHARDED_WEIGHTS_FILE}`) found."
    )


def _is_float(dataset) -> bool:
    dtype = dataset.dtype
    if dtype.kind == "f":
        return True
    # Keras stores bfloat16 as 2-byte opaque data tagged with an attribute.
    return (
        dtype.kind == "V"
        and dtype.itemsize == 2
        and dataset.attrs.get("dtype") in ("bfloat16", b"bfloat16")
    )


def _check_weight_dtypes(path: Path, allow_position_ids: bool) -> None:
    """Refuses unreadable `.weights.h5` files and non-float weights."""
    files = [path]
    if path.name == SHARDED_WEIGHTS_FILE:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: not a sharded weights index ({e})."
            ) from None
        names = set()
        for value in weight_map.values():
            names.update(value if isinstance(value, list) else [value])
        files = [path.parent / name for name in sorted(names)]
    for file in files:
        bad = []
        try:
            with h5py.File(file, "r") as f:

                def visit(name, obj, bad=bad):
                    if not isinstance(obj, h5py.Dataset) or _is_float(obj):
                        return
                    if (
                        allow_position_ids
                        and obj.dtype.kind in "iu"
                        and _POSITION_IDS.search(name)
                    ):
                        return
                    bad.append(f"{name} ({obj.dtype})")

                f.visititems(visit)
        except OSError as e:
            raise ValueError(
                f"{file}: not a readable weights file ({e})."
            ) from None
        if bad:
            raise ValueError(f"{file}: non-float weights: {bad}.")


def _guarded(load: Callable, preset_dir: Path):
    """Runs a Keras/keras-hub load, naming the preset on failure."""
    try:
        return load()
    except (ValueError, TypeError, OSError, KeyError) as e:
        raise ValueError(f"{preset_dir}: cannot load the preset: {e}") from None


def _load_ours(preset_dir: Path, config: dict, load_weights: bool, dtype):
    """Our `save_to_preset` output: config (safe mode), then weights."""
    if dtype is not None:
        # Each encoder stores its own dtype policy; override all three.
        config = copy.deepcopy(config)
        backbone_config = config["config"]
        for sub in (backbone_config, *_encoder_configs(backbone_config)):
            sub["dtype"] = dtype
    backbone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    if not isinstance(backbone, SigLIP2Backbone):
        raise ValueError(f"expected a SigLIP2Backbone; got {type(backbone)}.")
    if load_weights:
        backbone.load_weights(str(_weights_file(preset_dir)))
    return backbone


def _encoder_configs(backbone_config: dict) -> list[dict]:
    configs = []
    for key in ("vision_encoder", "text_encoder"):
        encoder = backbone_config.get(key)
        if not isinstance(encoder, dict) or "config" not in encoder:
            raise ValueError(f"`{key}` is not a serialized layer.")
        configs.append(encoder["config"])
    return configs


def _load_local(
    preset_dir: Path, load_weights: bool, dtype, progress
) -> SigLIP2Backbone:
    config = _read_config(preset_dir)
    registered = config.get("registered_name")
    if registered is None and config.get("model_type") in ("siglip", "siglip2"):
        return load_hf_checkpoint(preset_dir, dtype=dtype, progress=progress)
    if registered not in (OUR_CLASS, KERAS_HUB_CLASS):
        raise ValueError(
            f"{preset_dir / CONFIG_FILE}: a preset of {registered!r}; "
            f"expected {OUR_CLASS!r} or {KERAS_HUB_CLASS!r}."
        )
    if load_weights:
        _check_weight_dtypes(
            _weights_file(preset_dir),
            allow_position_ids=registered == KERAS_HUB_CLASS,
        )
    if registered == OUR_CLASS:
        return _guarded(
            lambda: _load_ours(preset_dir, config, load_weights, dtype),
            preset_dir,
        )
    # keras-hub's loader deserializes with Keras' safe mode on.
    keras_hub_backbone = _guarded(
        lambda: keras_hub.models.SigLIPBackbone.from_preset(
            str(preset_dir), load_weights=load_weights, dtype=dtype
        ),
        preset_dir,
    )
    return backbone_from_keras_hub(
        keras_hub_backbone, dtype=dtype, progress=progress
    )


def _load_remote(handle: str, load_weights, dtype, progress):
    """A Kaggle/HF handle: keras-hub downloads, then we translate."""
    loaded = keras_hub.models.Backbone.from_preset(
        handle, load_weights=load_weights, dtype=dtype
    )
    if isinstance(loaded, SigLIP2Backbone):
        return loaded
    if not isinstance(loaded, keras_hub.models.SigLIPBackbone):
        raise ValueError(
            f"{handle} is a {type(loaded).__name__} preset, not SigLIP."
        )
    return backbone_from_keras_hub(loaded, dtype=dtype, progress=progress)


def load_preset(
    preset: str | os.PathLike,
    load_weights: bool = True,
    dtype=None,
    progress: Callable[[int, int], None] | None = None,
) -> SigLIP2Backbone:
    """Loads a `SigLIP2Backbone` from a preset directory, name or handle.

    Args:
        preset: a local directory (keras-hub `SigLIPBackbone` preset, our
            `save_to_preset` output, or an HF checkpoint), a name from
            `keras_siglip2.models.presets.preset_names()` (e.g.
            `"siglip2_base_patch16_224"`, downloaded from Kaggle by
            keras-hub), or a `kaggle://`/`hf://` handle.
        load_weights: bool. If false, random weights with the preset's
            architecture.
        dtype: optional dtype policy, e.g. `"bfloat16"`.
        progress: optional `progress(done, total)` called per translated
            weight.

    Returns:
        A `SigLIP2Backbone`.

    Raises:
        ValueError: unknown names (with close matches), missing or
            unreadable files, non-float weights, or weights that do not
            match the config; nothing partially loaded is returned.
    """
    files = PresetFiles(preset)
    if files.local is not None:
        return _load_local(files.local, load_weights, dtype, progress)
    return _load_remote(files.handle, load_weights, dtype, progress)
