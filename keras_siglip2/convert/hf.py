"""HF transformers `SiglipModel`/`Siglip2Model` checkpoints, both ways.

`SiglipModel` (`model_type` "siglip") is the fixed-resolution layout of
SigLIP and SigLIP 2; `Siglip2Model` ("siglip2") is NaFlex, loaded as a
`SigLIP2Backbone(naflex=True)`. They differ only in the patch embedding
(a convolution vs a dense layer on flattened patches) and the position
table (resized per image in NaFlex).

A checkpoint directory is what `save_pretrained` writes: `config.json` and
`model.safetensors` (or sharded `model-*.safetensors` with
`model.safetensors.index.json`). Tensors are read with numpy; torch is not
needed. Every tensor is checked (names, shapes, dtypes) before any weight
is assigned, so a bad checkpoint never leaves a half-loaded model.

One table, `hf_weight_entries`, serves both directions: each entry holds
the transform to Keras and its inverse to HF, so `save_hf_checkpoint`
writes exactly what `load_hf_checkpoint` reads.
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from keras_siglip2.convert.checked_assign import assign_checked
from keras_siglip2.convert.hf_processor import hf_preprocessor_files
from keras_siglip2.convert.hf_processor import write_hf_files
from keras_siglip2.convert.safetensors_io import read_safetensors
from keras_siglip2.convert.safetensors_io import write_safetensors
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.utils.atomic_write import write_json_atomic

# Buffers some transformers versions save; they hold no learned values.
_IGNORED_KEYS = (
    "text_model.embeddings.position_ids",
    "vision_model.embeddings.position_ids",
)
_SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast")
# Gemma's special ids, for checkpoints with its 256k vocabulary.
_GEMMA_VOCABULARY_SIZE = 256_000
_GEMMA_TOKEN_IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One HF tensor and the Keras variables it becomes.

    Attributes:
        key: HF state-dict key.
        variables: the Keras variables it maps to.
        to_keras: HF array -> tuple of arrays, one per variable.
        to_hf: the inverse: one array per variable (positional) -> the HF
            array.
    """

    key: str
    variables: tuple
    to_keras: Callable[[np.ndarray], tuple]
    to_hf: Callable[..., np.ndarray]


def _linear(weight):
    """HF `nn.Linear` weight `(out, in)` -> Keras kernel `(in, out)`."""
    return (weight.T,)


def _linear_to_hf(kernel):
    return kernel.T


def _same(array):
    return (array,)


def _same_to_hf(array):
    return array


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
                lambda k: k.reshape(width, -1).T,
            ),
            _Entry(
                f"{prefix}.{name}.bias",
                (dense.bias,),
                lambda b: (b.reshape(heads, head_dim),),
                lambda b: b.reshape(-1),
            ),
        ]
    out = attention.output_dense
    entries += [
        _Entry(
            f"{prefix}.{names[3]}.weight",
            (out.kernel,),
            lambda w: (w.T.reshape(heads, head_dim, width),),
            lambda k: k.reshape(-1, width).T,
        ),
        _Entry(f"{prefix}.{names[3]}.bias", (out.bias,), _same, _same_to_hf),
    ]
    return entries


def _layer_norm_entries(prefix, layer_norm):
    return [
        _Entry(f"{prefix}.weight", (layer_norm.gamma,), _same, _same_to_hf),
        _Entry(f"{prefix}.bias", (layer_norm.beta,), _same, _same_to_hf),
    ]


def _dense_entries(prefix, dense):
    return [
        _Entry(f"{prefix}.weight", (dense.kernel,), _linear, _linear_to_hf),
        _Entry(f"{prefix}.bias", (dense.bias,), _same, _same_to_hf),
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
        _Entry(f"{prefix}.probe", (head.probe,), _same, _same_to_hf),
        _Entry(
            f"{prefix}.attention.in_proj_weight",
            tuple(dense.kernel for dense in qkv),
            lambda w: tuple(
                part.T.reshape(width, heads, head_dim)
                for part in np.split(w, 3, axis=0)
            ),
            lambda *kernels: np.concatenate(
                [k.reshape(width, -1).T for k in kernels], axis=0
            ),
        ),
        _Entry(
            f"{prefix}.attention.in_proj_bias",
            tuple(dense.bias for dense in qkv),
            lambda b: tuple(
                part.reshape(heads, head_dim) for part in np.split(b, 3)
            ),
            lambda *biases: np.concatenate([b.reshape(-1) for b in biases]),
        ),
        _Entry(
            f"{prefix}.attention.out_proj.weight",
            (attention.output_dense.kernel,),
            lambda w: (w.T.reshape(heads, head_dim, width),),
            lambda k: k.reshape(-1, width).T,
        ),
        _Entry(
            f"{prefix}.attention.out_proj.bias",
            (attention.output_dense.bias,),
            _same,
            _same_to_hf,
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

        def patch_to_hf(kernel):
            return kernel.reshape(-1, kernel.shape[-1]).T
    else:
        # `nn.Conv2d` kernel `(D, 3, p, p)`.
        def patch_to_keras(w):
            return (w.transpose(2, 3, 1, 0),)

        def patch_to_hf(kernel):
            return kernel.transpose(3, 2, 0, 1)

    entries = [
        _Entry(
            "vision_model.embeddings.patch_embedding.weight",
            (patch.kernel,),
            patch_to_keras,
            patch_to_hf,
        ),
        _Entry(
            "vision_model.embeddings.patch_embedding.bias",
            (patch.bias,),
            _same,
            _same_to_hf,
        ),
        _Entry(
            "vision_model.embeddings.position_embedding.weight",
            (vision.position_embedding.embeddings,),
            _same,
            _same_to_hf,
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
            _same_to_hf,
        ),
        _Entry(
            "text_model.embeddings.position_embedding.weight",
            (text.position_embedding,),
            _same,
            _same_to_hf,
        ),
    ]
    for i, block in enumerate(text.encoder_layers):
        entries += _block_entries(f"text_model.encoder.layers.{i}", block)
    entries += _layer_norm_entries(
        "text_model.final_layer_norm", text.encoder_norm
    )
    entries += _dense_entries("text_model.head", text.head)
    logits = backbone.contrastive_logits
    # HF stores the scalars as `(1,)` parameters.
    entries += [
        _Entry(
            "logit_scale",
            (logits.logit_scale,),
            lambda t: (t.reshape(()),),
            lambda t: t.reshape(1),
        ),
        _Entry(
            "logit_bias",
            (logits.logit_bias,),
            lambda b: (b.reshape(()),),
            lambda b: b.reshape(1),
        ),
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
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Assigns HF checkpoint tensors to a backbone, all or nothing.

    Args:
        backbone: a backbone with the checkpoint's architecture.
        tensors: dict from HF key to array.
        source: name of the checkpoint, for error messages.
        progress: optional `progress(done, total)` called after each
            tensor is assigned.

    Raises:
        ValueError: listing missing, unexpected, mis-shaped or non-float
            tensors; nothing is assigned in that case.
    """
    assign_checked(
        (
            (entry.key, entry.variables, entry.to_keras)
            for entry in hf_weight_entries(backbone)
        ),
        tensors,
        source,
        noun="tensors",
        ignored=_IGNORED_KEYS,
        progress=progress,
    )


def load_hf_checkpoint(
    path: str | os.PathLike,
    dtype=None,
    progress: Callable[[int, int], None] | None = None,
) -> SigLIP2Backbone:
    """Loads an HF transformers `SiglipModel` or `Siglip2Model` checkpoint.

    Fixed-resolution SigLIP and SigLIP 2 checkpoints (`SiglipModel`) load
    as a fixed-resolution backbone; NaFlex `Siglip2Model` checkpoints as a
    `naflex=True` backbone that takes patch inputs.

    Args:
        path: directory written by `save_pretrained` (`config.json` and
            safetensors weights).
        dtype: optional dtype policy, e.g. `"bfloat16"`.
        progress: optional `progress(done, total)` called per tensor.

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
    assign_hf_weights(
        backbone, _read_tensors(path), source=str(path), progress=progress
    )
    return backbone


def hf_config(backbone: SigLIP2Backbone, dtype: str | None = None) -> dict:
    """The HF `config.json` of a backbone.

    Args:
        backbone: a `SigLIP2Backbone`.
        dtype: the stored weights' dtype name; defaults to the image
            tower's variable dtype.

    Returns:
        A `SiglipConfig` dict (`model_type` "siglip") for fixed-resolution
        backbones, a `Siglip2Config` dict ("siglip2") for NaFlex ones.
    """
    vision, text = backbone.vision_encoder, backbone.text_encoder
    model_type = "siglip2" if backbone.naflex else "siglip"
    vision_config = dict(
        model_type=f"{model_type}_vision_model",
        hidden_size=vision.hidden_dim,
        intermediate_size=vision.intermediate_dim,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        num_channels=3,
        patch_size=vision.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=vision.layer_norm_epsilon,
        attention_dropout=0.0,
        vision_use_head=vision.use_head,
    )
    if backbone.naflex:
        vision_config["num_patches"] = vision.grid_size**2
    else:
        vision_config["image_size"] = vision.image_size
    # Token ids do not change the model's outputs; they are only known for
    # Gemma's vocabulary, so other vocabularies leave them unset.
    token_ids = dict.fromkeys(_GEMMA_TOKEN_IDS)
    if text.vocabulary_size == _GEMMA_VOCABULARY_SIZE:
        token_ids = dict(_GEMMA_TOKEN_IDS)
    text_config = dict(
        model_type=f"{model_type}_text_model",
        vocab_size=text.vocabulary_size,
        hidden_size=text.hidden_dim,
        intermediate_size=text.intermediate_dim,
        num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads,
        max_position_embeddings=text.max_sequence_length,
        projection_size=text.projection_dim,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=text.layer_norm_epsilon,
        attention_dropout=0.0,
        **token_ids,
    )
    return dict(
        architectures=["Siglip2Model" if backbone.naflex else "SiglipModel"],
        model_type=model_type,
        dtype=dtype or backbone.vision_encoder.variable_dtype,
        initializer_factor=1.0,
        text_config=text_config,
        vision_config=vision_config,
    )


def save_hf_checkpoint(
    backbone: SigLIP2Backbone,
    path: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
    preprocessor=None,
) -> None:
    """Writes a backbone as an HF transformers checkpoint directory.

    `transformers.AutoModel.from_pretrained(path)` then loads it as a
    `SiglipModel` (fixed resolution) or `Siglip2Model` (NaFlex), and
    `load_hf_checkpoint(path)` loads it back exactly. With a
    `preprocessor`, its tokenizer and image-processor files are written
    too (`save_hf_preprocessor`), so `transformers.AutoProcessor` loads
    the matching processor. Each file is written atomically (temporary
    file, then rename).

    Args:
        backbone: a `SigLIP2Backbone`.
        path: output directory, created if needed.
        progress: optional `progress(done, total)` called per tensor.
        preprocessor: optional `SigLIP2Preprocessor` for this backbone.

    Raises:
        ValueError: a preprocessor that does not fit the backbone
            (vocabulary size, text length, image size, patch size, NaFlex
            or not) or that HF cannot reproduce; checked before anything
            is written.

    Example:
    ```python
    save_hf_checkpoint(backbone, "siglip2_hf", preprocessor=preprocessor)
    model = transformers.AutoModel.from_pretrained("siglip2_hf")
    processor = transformers.AutoProcessor.from_pretrained("siglip2_hf")
    ```
    """
    processor_files = {}
    if preprocessor is not None:
        # Raises on what HF cannot express before any file is written.
        processor_files = hf_preprocessor_files(preprocessor)
        _check_preprocessor_fits(backbone, preprocessor)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    entries = hf_weight_entries(backbone)
    tensors = {}
    for done, entry in enumerate(entries, start=1):
        values = [keras.ops.convert_to_numpy(v) for v in entry.variables]
        tensors[entry.key] = np.ascontiguousarray(entry.to_hf(*values))
        if progress is not None:
            progress(done, len(entries))
    write_safetensors(
        path / "model.safetensors", tensors, metadata={"format": "pt"}
    )
    dtypes = {array.dtype.name for array in tensors.values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    write_json_atomic(path / "config.json", hf_config(backbone, dtype))
    write_hf_files(processor_files, path)


def _check_preprocessor_fits(backbone: SigLIP2Backbone, preprocessor):
    tokenizer, converter = preprocessor.tokenizer, preprocessor.image_converter
    text, vision = backbone.text_encoder, backbone.vision_encoder
    problems = []
    if tokenizer.vocabulary_size() != text.vocabulary_size:
        problems.append(
            f"the tokenizer has {tokenizer.vocabulary_size()} pieces, the "
            f"text tower {text.vocabulary_size} embeddings"
        )
    if tokenizer.sequence_length > text.max_sequence_length:
        problems.append(
            f"the tokenizer gives {tokenizer.sequence_length} ids, the "
            f"text tower takes at most {text.max_sequence_length}"
        )
    if bool(converter.naflex) != bool(backbone.naflex):
        kinds = {True: "NaFlex", False: "fixed-resolution"}
        problems.append(
            f"the image converter is {kinds[bool(converter.naflex)]}, the "
            f"backbone {kinds[bool(backbone.naflex)]}"
        )
    elif backbone.naflex and converter.patch_size != vision.patch_size:
        problems.append(
            f"the image converter cuts {converter.patch_size}-px patches, "
            f"the backbone {vision.patch_size}-px"
        )
    elif not backbone.naflex and converter.image_size != (
        vision.image_size,
        vision.image_size,
    ):
        problems.append(
            f"the image converter gives {converter.image_size} images, the "
            f"backbone takes {vision.image_size}-px"
        )
    if problems:
        raise ValueError(
            "The preprocessor does not fit the backbone: "
            + "; ".join(problems)
            + "."
        )
