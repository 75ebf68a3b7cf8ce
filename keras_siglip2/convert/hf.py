"""HF transformers `SiglipModel`/`Siglip2Model` checkpoints.

`SiglipModel` (`model_type` "siglip") is the fixed-resolution layout of
SigLIP and SigLIP 2; `Siglip2Model` ("siglip2") is NaFlex, loaded as a
`SigLIP2Backbone(naflex=True)`. They differ only in the patch embedding
(a convolution vs a dense layer on flattened patches) and the position
table (resized per image in NaFlex).

A checkpoint directory is what `save_pretrained` writes: `config.json` and
`model.safetensors` (or sharded `model-*.safetensors` with
`model.safetensors.index.json`). Tensors are read with numpy; torch is not
needed. Every tensor is checked (names, shapes) before any weight is
assigned, so a bad checkpoint never leaves a half-loaded model.
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_siglip2.convert.safetensors_io import read_safetensors
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

# Buffers some transformers versions save; they hold no learned values.
_IGNORED_KEYS = (
    "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
)
_SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One HF tensor and the Keras variables it becomes.

    Attributes:
        key: HF state-dict key.
        variables: the Keras variables it maps to.
        to_keras: HF array -> tuple of arrays, one per variable.
    """

    key: str
    variables: tuple
    to_keras: Callable[[np.ndarray], tuple]


def _linear(weight):
    """HF `nn.Linear` weight `(out, in)` -> Keras kernel `(in, out)`."""
    return (weight.T,)


def _same(array):
    return (array,)


def _attention_entries(prefix, attention, names):
    """Entries for q/k/v/out of our `MultiHeadAttention`."""
    heads, head_dim = attention.num_heads, attention.head_dim
    width = attention.hidden_dim
    entries = []
    for dense, name in zip(
        (attention.query_dense, attention.key_dense, attention.value_dense),
        names[:3],
    ):
        entries += [
            _Entry(
                f"{prefix}.{name}.weight",
                (dense.kernel,),
                lambda w: (w.T.reshape(width, heads, head_dim),),
            ),
            _Entry(
                f"{prefix}.{name}.bias",
                (dense.bias,),
                lambda b: (b.reshape(heads, head_dim),),
            ),
        ]
    out = attention.output_dense
    entries += [
        _Entry(
            f"{prefix}.{names[3]}.weight",
            (out.kernel,),
            lambda w: (w.T.reshape(heads, head_dim, width),),
        ),
        _Entry(f"{prefix}.{names[3]}.bias", (out.bias,), _same),
    ]
    return entries


def _layer_norm_entries(prefix, layer_norm):
    return [
        _Entry(f"{prefix}.weight", (layer_norm.gamma,), _same),
        _Entry(f"{prefix}.bias", (layer_norm.beta,), _same),
    ]


def _dense_entries(prefix, dense):
    return [
        _Entry(f"{prefix}.weight", (dense.kernel,), _linear),
        _Entry(f"{prefix}.bias", (dense.bias,), _same),
    ]


def _mlp_entries(prefix, mlp):
    return _dense_entries(f"{prefix}.fc1", mlp.fc1) + _dense_entries(
        f"{prefix}.fc2", mlp.fc2
    )


def _block_entries(prefix, block):
    return (
        _layer_norm_entries(f"{prefix}.layer_norm1", block.layer_norm_1)
        + _attention_entries(
            f"{prefix}.self_attn",
            block.attention,
            ("q_proj", "k_proj", "v_proj", "out_proj"),
        )
        + _layer_norm_entries(f"{prefix}.layer_norm2", block.layer_norm_2)
        + _mlp_entries(f"{prefix}.mlp", block.mlp)
    )


def _map_head_entries(prefix, head):
    attention = head.attention
    heads, head_dim = attention.num_heads, attention.head_dim
    width = attention.hidden_dim
    qkv = (attention.query_dense, attention.key_dense, attention.value_dense)
    return [
        _Entry(f"{prefix}.probe", (head.probe,), _same),
        _Entry(
            f"{prefix}.attention.in_proj_weight",
            tuple(dense.kernel for dense in qkv),
            lambda w: tuple(
                part.T.reshape(width, heads, head_dim)
                for part in np.split(w, 3, axis=0)
            ),
        ),
        _Entry(
            f"{prefix}.attention.in_proj_bias",
            tuple(dense.bias for dense in qkv),
            lambda b: tuple(
                part.reshape(heads, head_dim) for part in np.split(b, 3)
            ),
        ),
        _Entry(
            f"{prefix}.attention.out_proj.weight",
            (attention.output_dense.kernel,),
            lambda w: (w.T.reshape(heads, head_dim, width),),
        ),
        _Entry(
            f"{prefix}.attention.out_proj.bias",
            (attention.output_dense.bias,),
            _same,
        ),
        *_layer_norm_entries(f"{prefix}.layernorm", head.layer_norm),
        *_mlp_entries(f"{prefix}.mlp", head.mlp),
    ]


def hf_weight_entries(backbone: SigLIP2Backbone) -> list[_Entry]:
    """Lists every HF tensor of `backbone` and the variables it maps to.

    Args:
        backbone: a built `SigLIP2Backbone`.

    Returns:
        list of entries covering every weight of the backbone exactly once.
    """
    vision, text = backbone.vision_encoder, backbone.text_encoder
    patch = vision.patch_embedding
    if backbone.naflex:
        # `nn.Linear(p * p * 3, D)` on patches flattened as (row, col, ch).
        def patch_to_keras(w):
            return (w.T.reshape(patch.kernel.shape),)
    else:
        # `nn.Conv2d` kernel `(D, 3, p, p)`.
        def patch_to_keras(w):
            return (w.transpose(2, 3, 1, 0),)

    entries = [
        _Entry(
            "vision_model.embeddings.patch_embedding.weight",
            (patch.kernel,),
            patch_to_keras,
        ),
        _Entry(
            "vision_model.embeddings.patch_embedding.bias",
            (patch.bias,),
            _same,
        ),
        _Entry(
            "vision_model.embeddings.position_embedding.weight",
            (vision.position_embedding.embeddings,),
            _same,
        ),
    ]
    for i, block in enumerate(vision.encoder_layers):
        entries += _block_entries(f"vision_model.encoder.layers.{i}", block)
    entries += _layer_norm_entries(
        "vision_model.post_layernorm", vision.encoder_norm
    )
    if vision.head is not None:
        entries += _map_head_entries("vision_model.head", vision.head)
    entries += [
        _Entry(
            "text_model.embeddings.token_embedding.weight",
            (text.token_embedding.embeddings,),
            _same,
        ),
        _Entry(
            "text_model.embeddings.position_embedding.weight",
            (text.position_embedding,),
            _same,
        ),
    ]
    for i, block in enumerate(text.encoder_layers):
        entries += _block_entries(f"text_model.encoder.layers.{i}", block)
    entries += _layer_norm_entries(
        "text_model.final_layer_norm", text.encoder_norm
    )
    entries += _dense_entries("text_model.head", text.head)
    logits = backbone.contrastive_logits
    entries += [
        _Entry(
            "logit_scale", (logits.logit_scale,), lambda t: (t.reshape(()),)
        ),
        _Entry("logit_bias", (logits.logit_bias,), lambda b: (b.reshape(()),)),
    ]
    return entries


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        return read_safetensors(single)
    if index.exists():
        tensors = {}
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        for shard in shards:
            tensors.update(read_safetensors(path / shard))
        return tensors
    if (path / "pytorch_model.bin").exists():
        raise ValueError(
            f"{path} holds only `pytorch_model.bin`, a pickle, which is "
            "never loaded here. Re-save it with "
            "`save_pretrained(..., safe_serialization=True)`."
        )
    raise ValueError(f"{path}: no `model.safetensors` found.")


def _check_activation(section: str, config: dict) -> None:
    activation = config.get("hidden_act", "gelu_pytorch_tanh")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"Unsupported {section} `hidden_act` {activation!r}; expected "
            f"one of {_SUPPORTED_ACTIVATIONS} (tanh-approximate GELU)."
        )


def backbone_from_hf_config(config: dict, dtype=None) -> SigLIP2Backbone:
    """Builds a randomly initialised backbone from an HF config dict.

    Args:
        config: the parsed `config.json` of a `SiglipModel` or
            `Siglip2Model`.
        dtype: optional dtype policy for the backbone.

    Returns:
        A `SigLIP2Backbone` with the checkpoint's architecture.
    """
    model_type = config.get("model_type")
    if model_type not in ("siglip", "siglip2"):
        raise ValueError(
            f"Unknown `model_type` {model_type!r}; expected 'siglip' (HF "
            "`SiglipModel`) or 'siglip2' (NaFlex `Siglip2Model`)."
        )
    naflex = model_type == "siglip2"
    vision_config = config.get("vision_config", {})
    text_config = config.get("text_config", {})
    _check_activation("vision_config", vision_config)
    _check_activation("text_config", text_config)
    if vision_config.get("num_channels", 3) != 3:
        raise ValueError(
            "Only 3-channel images are supported; `num_channels` is "
            f"{vision_config['num_channels']}."
        )
    vision_width = vision_config.get("hidden_size", 768)
    patch_size = vision_config.get("patch_size", 16)
    if naflex:
        num_patches = vision_config.get("num_patches", 256)
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(
                "NaFlex `num_patches` must be a square (a square position "
                f"grid); got {num_patches}."
            )
        image_size = grid * patch_size
    else:
        image_size = vision_config.get("image_size", 224)
    vision = SigLIP2VisionEncoder(
        image_size=image_size,
        patch_size=patch_size,
        hidden_dim=vision_width,
        num_layers=vision_config.get("num_hidden_layers", 12),
        num_heads=vision_config.get("num_attention_heads", 12),
        intermediate_dim=vision_config.get("intermediate_size", 3072),
        layer_norm_epsilon=vision_config.get("layer_norm_eps", 1e-6),
        use_head=vision_config.get("vision_use_head", True),
        dtype=dtype,
    )
    text_width = text_config.get("hidden_size", 768)
    text = SigLIP2TextEncoder(
        vocabulary_size=text_config.get("vocab_size", 32000),
        hidden_dim=text_width,
        num_layers=text_config.get("num_hidden_layers", 12),
        num_heads=text_config.get("num_attention_heads", 12),
        intermediate_dim=text_config.get("intermediate_size", 3072),
        max_sequence_length=text_config.get("max_position_embeddings", 64),
        projection_dim=text_config.get("projection_size") or text_width,
        layer_norm_epsilon=text_config.get("layer_norm_eps", 1e-6),
        dtype=dtype,
    )
    return SigLIP2Backbone(vision, text, naflex=naflex, dtype=dtype)


def assign_hf_weights(
    backbone: SigLIP2Backbone,
    tensors: dict[str, np.ndarray],
    source: str = "checkpoint",
) -> None:
    """Assigns HF checkpoint tensors to a backbone, all or nothing.

    Args:
        backbone: a backbone with the checkpoint's architecture.
        tensors: dict from HF key to array.
        source: name of the checkpoint, for error messages.

    Raises:
        ValueError: listing missing, unexpected or mis-shaped tensors;
            nothing is assigned in that case.
    """
    entries = hf_weight_entries(backbone)
    expected = {entry.key for entry in entries}
    present = set(tensors) - set(_IGNORED_KEYS)
    problems = []
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    values = []
    for entry in entries:
        if entry.key not in tensors:
            continue
        array = np.asarray(tensors[entry.key])
        try:
            parts = entry.to_keras(array)
        except (ValueError, IndexError):
            parts = None
        wanted = [tuple(v.shape) for v in entry.variables]
        if parts is None or [p.shape for p in parts] != wanted:
            problems.append(
                f"{entry.key}: shape {array.shape} does not fit the "
                f"model's {' + '.join(map(str, wanted))}"
            )
            continue
        values.append((entry.variables, parts))
    if problems:
        raise ValueError(
            f"{source} does not match the model: " + "; ".join(problems)
        )
    for variables, parts in values:
        for variable, part in zip(variables, parts):
            variable.assign(part)


def load_hf_checkpoint(path: str | os.PathLike, dtype=None) -> SigLIP2Backbone:
    """Loads an HF transformers `SiglipModel` or `Siglip2Model` checkpoint.

    Fixed-resolution SigLIP and SigLIP 2 checkpoints (`SiglipModel`) load
    as a fixed-resolution backbone; NaFlex `Siglip2Model` checkpoints as a
    `naflex=True` backbone that takes patch inputs.

    Args:
        path: directory written by `save_pretrained` (`config.json` and
            safetensors weights).
        dtype: optional dtype policy, e.g. `"bfloat16"`.

    Returns:
        A `SigLIP2Backbone` holding the checkpoint's weights.

    Raises:
        ValueError: unknown `model_type`, missing files, corrupt files, or
            tensors that do not match the configuration.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"{path}: no `config.json` found.")
    config = _read_json(path / "config.json")
    backbone = backbone_from_hf_config(config, dtype=dtype)
    assign_hf_weights(backbone, _read_tensors(path), source=str(path))
    return backbone
