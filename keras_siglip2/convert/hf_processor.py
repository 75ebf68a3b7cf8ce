"""HF transformers processor files for a `SigLIP2Preprocessor`.

`save_hf_preprocessor` writes what `transformers.AutoProcessor` reads
beside a checkpoint, so that HF users get the inputs our preprocessor
gives:

- the tokenizer: the SentencePiece model (`tokenizer.model` for a
  `SigLIP2Tokenizer`, loaded by HF's `Siglip2Tokenizer`, which
  lower-cases, or `GemmaTokenizer` when ours does not; `spiece.model` for
  a `SigLIPTokenizer`, loaded by `SiglipTokenizer`) and
  `tokenizer_config.json` (no BOS, EOS, right padding,
  `model_max_length` = our `sequence_length`);
- the image processor (`preprocessor_config.json`): `SiglipImageProcessor`
  (fixed resolution: size, resampling filter, and the rescale and
  normalisation that give our `x * scale + offset`) or
  `Siglip2ImageProcessor` (NaFlex: patch size and sequence length), with
  the processor class that joins the two.

Settings HF's processors cannot express raise a `ValueError` that names
them rather than writing files that would preprocess differently:
resizing without antialiasing (HF's resampling always antialiases),
centre cropping, no resize, Lanczos-5, `truncation="cut"`, and literal
special tokens left unparsed (HF always parses them).

HF pads to `max_length` only when asked, as its processors' defaults do
(`padding="max_length"`); ours always pads to `sequence_length`. HF's
processors also bring call defaults of their own that override the saved
files: `max_length=64` (both), and for `Siglip2Processor`
`max_num_patches=256, patch_size=16`. Pass `max_length=sequence_length`
(and the NaFlex `max_num_patches` and `patch_size`) when they differ;
`processor.image_processor` alone uses the saved NaFlex sizes.
"""

import os
from pathlib import Path

import numpy as np

from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import SigLIPTokenizer
from keras_siglip2.utils.atomic_write import atomic_write
from keras_siglip2.utils.atomic_write import write_json_atomic

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# PIL's filter codes, which HF's `resample` holds.
_PIL_RESAMPLE = {"nearest": 0, "lanczos3": 1, "bilinear": 2, "bicubic": 3}


def hf_tokenizer_files(tokenizer) -> tuple[str, bytes, dict]:
    """`(vocabulary file name, its bytes, tokenizer_config.json)`.

    Args:
        tokenizer: a `SigLIP2Tokenizer` or `SigLIPTokenizer` with its
            SentencePiece model set.

    Raises:
        ValueError: another tokenizer, no model, or settings HF's
            tokenizer cannot reproduce.
    """
    if not isinstance(tokenizer, (SigLIP2Tokenizer, SigLIPTokenizer)):
        raise ValueError(
            "The tokenizer must be a SigLIP2Tokenizer or SigLIPTokenizer; "
            f"got {type(tokenizer).__name__}."
        )
    if tokenizer.proto is None:
        raise ValueError("The tokenizer has no SentencePiece model set.")
    if tokenizer.truncation != "sticky":
        raise ValueError(
            f"truncation={tokenizer.truncation!r}: HF's tokenizers keep the "
            "EOS of long texts, which is `truncation='sticky'`."
        )
    config = {
        "add_bos_token": False,
        "add_eos_token": True,
        "padding_side": "right",
        "model_max_length": tokenizer.sequence_length,
        "model_input_names": ["input_ids"],
    }
    if isinstance(tokenizer, SigLIPTokenizer):
        if not tokenizer.canonicalize:
            raise ValueError(
                "canonicalize=False: HF's SiglipTokenizer always "
                "canonicalises texts."
            )
        config.update(
            tokenizer_class="SiglipTokenizer",
            eos_token="</s>",
            pad_token="</s>",
            unk_token="<unk>",
        )
        return "spiece.model", tokenizer.proto, config
    if not tokenizer.parse_special_tokens:
        raise ValueError(
            "parse_special_tokens=False: HF's tokenizers always map literal "
            "special tokens in the text to their ids."
        )
    config.update(
        # `Siglip2Tokenizer` lower-cases, as the models were trained.
        tokenizer_class=(
            "Siglip2Tokenizer" if tokenizer.lowercase else "GemmaTokenizer"
        ),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return "tokenizer.model", tokenizer.proto, config


def hf_image_processor_config(converter: SigLIP2ImageConverter) -> dict:
    """`preprocessor_config.json` of HF's matching image processor.

    Raises:
        ValueError: another converter, or settings HF's image processors
            cannot reproduce.
    """
    if not isinstance(converter, SigLIP2ImageConverter):
        raise ValueError(
            "The image converter must be a SigLIP2ImageConverter; got "
            f"{type(converter).__name__}."
        )
    if not converter.antialias:
        raise ValueError(
            "antialias=False: HF's image processors always antialias when "
            "they downsample."
        )
    if converter.crop_to_aspect_ratio:
        raise ValueError(
            "crop_to_aspect_ratio=True: HF's SigLIP image processors do "
            "not crop."
        )
    if converter.interpolation not in _PIL_RESAMPLE:
        raise ValueError(
            f"interpolation={converter.interpolation!r} has no HF "
            f"equivalent; expected one of {sorted(_PIL_RESAMPLE)}."
        )
    # x * scale + offset == (x / 255 - mean) / std.
    scale = np.broadcast_to(np.asarray(converter.scale, "float64"), (3,))
    offset = np.broadcast_to(np.asarray(converter.offset, "float64"), (3,))
    if not np.all(scale > 0):
        raise ValueError(f"scale={converter.scale!r} must be positive.")
    std = 1.0 / (255.0 * scale)
    mean = -offset * std
    config = {
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": _PIL_RESAMPLE[converter.interpolation],
        "do_rescale": True,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": True,
        "image_mean": mean.tolist(),
        "image_std": std.tolist(),
    }
    if converter.naflex:
        return {
            "image_processor_type": "Siglip2ImageProcessor",
            "processor_class": "Siglip2Processor",
            "patch_size": converter.patch_size,
            "max_num_patches": converter.max_num_patches,
            **config,
        }
    if converter.image_size is None:
        raise ValueError(
            "image_size=None: HF's SiglipImageProcessor always resizes."
        )
    height, width = converter.image_size
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "size": {"height": height, "width": width},
        **config,
    }


def hf_preprocessor_files(preprocessor) -> dict[str, bytes | dict]:
    """The HF processor files of a preprocessor, checked, not written.

    Args:
        preprocessor: a `SigLIP2Preprocessor` with a tokenizer and an
            image converter.

    Returns:
        File name to its bytes (the SentencePiece model) or JSON object.

    Raises:
        ValueError: a missing part, or settings HF cannot reproduce (see
            the module docstring), naming them.
    """
    for part in ("tokenizer", "image_converter"):
        if getattr(preprocessor, part, None) is None:
            raise ValueError(f"The preprocessor has no {part}.")
    name, vocabulary, tokenizer_config = hf_tokenizer_files(
        preprocessor.tokenizer
    )
    image_config = hf_image_processor_config(preprocessor.image_converter)
    tokenizer_config["processor_class"] = image_config["processor_class"]
    return {
        name: vocabulary,
        TOKENIZER_CONFIG_FILE: tokenizer_config,
        IMAGE_PROCESSOR_FILE: image_config,
    }


def write_hf_files(files: dict[str, bytes | dict], path) -> None:
    """Writes `hf_preprocessor_files` output into the directory `path`,
    each file atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            with atomic_write(path / name) as f:
                f.write(content)
        else:
            write_json_atomic(path / name, content)


def save_hf_preprocessor(preprocessor, path: str | os.PathLike) -> None:
    """Writes a preprocessor's tokenizer and image-processor files for HF.

    `transformers.AutoProcessor.from_pretrained(path)` then gives a
    `SiglipProcessor` or `Siglip2Processor` whose
    `processor(text=..., images=..., max_length=sequence_length)` (NaFlex:
    also `max_num_patches=..., patch_size=...`, see the module docstring)
    matches our preprocessor: ids exactly, pixels up to the resizing
    differences `SigLIP2ImageConverter` documents. Everything is checked
    before anything is written; each file is written atomically.

    Args:
        preprocessor: a `SigLIP2Preprocessor` with a tokenizer and an
            image converter.
        path: the directory (created if needed), usually the one
            `save_hf_checkpoint` writes the model to.

    Raises:
        ValueError: a missing part, or settings HF cannot reproduce (see
            the module docstring), naming them.
    """
    write_hf_files(hf_preprocessor_files(preprocessor), path)
