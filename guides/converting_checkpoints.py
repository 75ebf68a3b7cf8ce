"""
Title: Converting SigLIP 2 checkpoints: HF, big_vision, keras-hub
Author: keras-siglip2 contributors
Date created: 2026/11/26
Last modified: 2026/11/26
Description: Load HF transformers, big_vision and keras-hub checkpoints,
write them back out, and check that the numbers survive each trip.
Accelerator: None
"""

# ## Introduction
#
# SigLIP 2 weights circulate in three formats besides this library's own,
# and `keras_siglip2.convert` reads and writes all of them:
#
# - **HF transformers** (`SiglipModel`, NaFlex `Siglip2Model`): a
#   directory with `config.json` and `model.safetensors`;
#   `load_hf_checkpoint` / `save_hf_checkpoint`.
# - **big_vision** (the authors' code): one `.npz` of named arrays;
#   `load_big_vision_npz` / `save_big_vision_npz`.
# - **keras-hub** (`SigLIPBackbone` presets, e.g. on Kaggle):
#   `SigLIP2Backbone.from_preset` / `save_keras_hub_preset`.
# - **this library**: a `.keras` file (`backbone.save`,
#   `keras.saving.load_model`) or a preset directory
#   (`backbone.save_to_preset`, `SigLIP2Backbone.from_preset`).
#
# Every loader checks the whole checkpoint against the architecture before
# assigning anything (a wrong shape or a missing or extra tensor is an
# error that names it), and nothing is ever unpickled. NaFlex models
# convert to and from HF (`Siglip2Model`) and big_vision; keras-hub has no
# NaFlex model.
#
# Each section below writes a small random checkpoint in a format, loads
# it, and compares the outputs of the two models on the same inputs.
# Nothing is downloaded.

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip2.convert import load_big_vision_npz  # noqa: E402
from keras_siglip2.convert import load_hf_checkpoint  # noqa: E402
from keras_siglip2.convert import save_big_vision_npz  # noqa: E402
from keras_siglip2.convert import save_hf_checkpoint  # noqa: E402
from keras_siglip2.convert import save_keras_hub_preset  # noqa: E402
from keras_siglip2.models import SigLIP2Backbone  # noqa: E402
from keras_siglip2.models import SigLIP2TextEncoder  # noqa: E402
from keras_siglip2.models import SigLIP2VisionEncoder  # noqa: E402

work_dir = Path(tempfile.mkdtemp(prefix="siglip2_convert_"))
IMAGE_SIZE, PATCH_SIZE, VOCABULARY, LENGTH = 32, 8, 100, 8

rng = np.random.default_rng(0)
inputs = {
    "images": rng.uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
        "float32"
    ),
    "token_ids": rng.integers(0, VOCABULARY, (3, LENGTH)).astype("int32"),
}


def outputs(backbone):
    """Image embeddings, text embeddings and logits, as numpy."""
    return [
        keras.ops.convert_to_numpy(x)
        for x in (
            backbone.get_vision_embeddings(inputs["images"]),
            backbone.get_text_embeddings(inputs["token_ids"]),
            backbone(inputs),
        )
    ]


def max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


# ## HF transformers
#
# `transformers` (with PyTorch) is a test-only dependency of this library
# (`pip install "keras-siglip2[test]"`); this section needs it and is
# skipped without it. A random `SiglipModel` saved with `save_pretrained`
# stands in for a downloaded `google/siglip2-*` checkpoint.

try:
    import torch
    import transformers
except ImportError:
    transformers = None
    print(
        "HF: skipped, `transformers` and `torch` are not installed (pip "
        'install "keras-siglip2[test]" to run this part).'
    )

if transformers is not None:
    config = transformers.SiglipConfig(
        vision_config=dict(
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        text_config=dict(
            vocab_size=VOCABULARY,
            max_position_embeddings=LENGTH,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
    )
    torch.manual_seed(0)
    hf_model = transformers.SiglipModel(config).eval()
    hf_model.save_pretrained(work_dir / "hf")
    print("HF checkpoint files:", sorted(os.listdir(work_dir / "hf")))

    def hf_outputs(model):
        with torch.no_grad():
            pixel_values = torch.tensor(inputs["images"]).permute(0, 3, 1, 2)
            input_ids = torch.tensor(inputs["token_ids"], dtype=torch.long)
            return [
                x.numpy()
                for x in (
                    model.vision_model(pixel_values).pooler_output,
                    model.text_model(input_ids).pooler_output,
                    model(
                        pixel_values=pixel_values, input_ids=input_ids
                    ).logits_per_image,
                )
            ]

    # Images are channels-last here and channels-first in PyTorch; the
    # converter transposes the patch-embedding kernel accordingly.
    from_hf = load_hf_checkpoint(work_dir / "hf")
    print(
        "HF -> keras: max abs difference "
        f"{max_difference(outputs(from_hf), hf_outputs(hf_model)):.2e}"
    )

    # And back: `save_hf_checkpoint` writes a directory that transformers
    # loads with `from_pretrained`. Given `preprocessor=` (a
    # `SigLIP2Preprocessor`), it also writes the tokenizer and image
    # processor files, so `transformers.AutoProcessor.from_pretrained`
    # gives HF users our token ids and pixels (`python -m keras_siglip2
    # convert --to hf --processor PRESET ...` on the command line).
    save_hf_checkpoint(from_hf, work_dir / "hf_export")
    reloaded = transformers.AutoModel.from_pretrained(
        work_dir / "hf_export"
    ).eval()
    print(
        f"keras -> HF: {type(reloaded).__name__}, max abs difference "
        f"{max_difference(hf_outputs(reloaded), outputs(from_hf)):.2e}"
    )

# ## big_vision
#
# big_vision (the authors' JAX code) saves a flat `.npz` of named arrays,
# `img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel` and so on.
# The loader reads the whole architecture from the array shapes, accepts a
# `params/` prefix and scanned (stacked) blocks, and opens the file with
# `allow_pickle=False`. Here a model of ours is written in that layout.

backbone = SigLIP2Backbone(
    SigLIP2VisionEncoder(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
    ),
    SigLIP2TextEncoder(
        vocabulary_size=VOCABULARY,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
        max_sequence_length=LENGTH,
    ),
)
save_big_vision_npz(backbone, work_dir / "siglip2.npz", prefix="params/")
with np.load(work_dir / "siglip2.npz", allow_pickle=False) as arrays:
    names = sorted(arrays.files)
    print(f"big_vision npz: {len(names)} arrays, e.g.")
    for name in names[:3]:
        print(f"  {name} {arrays[name].shape}")

from_big_vision = load_big_vision_npz(work_dir / "siglip2.npz")
print(
    "keras -> big_vision -> keras: max abs difference "
    f"{max_difference(outputs(from_big_vision), outputs(backbone)):.2e}"
)

# Released big_vision checkpoints whose input size is not `grid * patch`
# (so400m/14 at 384 px: a 27 x 27 grid of 14 px patches covers 378 px)
# need `image_size=384`, which the shapes cannot tell.

# ## keras-hub
#
# keras-hub's `SigLIPBackbone` presets (the Kaggle ones, or any directory
# written by its `save_to_preset`) load with `SigLIP2Backbone.from_preset`:
# keras-hub reads the preset, then its configuration and weights are
# translated into this library's classes.

keras_hub_backbone = keras_hub.models.SigLIPBackbone(
    keras_hub.models.SigLIPVisionEncoder(
        patch_size=PATCH_SIZE,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
    ),
    keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=VOCABULARY,
        embedding_dim=32,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
        max_sequence_length=LENGTH,
    ),
)
keras_hub_backbone.save_to_preset(str(work_dir / "keras_hub"))


def keras_hub_outputs(model):
    out = model(inputs)
    return [
        keras.ops.convert_to_numpy(x)
        for x in (
            model.get_vision_embeddings(inputs["images"]),
            model.get_text_embeddings(inputs["token_ids"]),
            out["vision_logits"],
        )
    ]


from_keras_hub = SigLIP2Backbone.from_preset(work_dir / "keras_hub")
difference = max_difference(
    outputs(from_keras_hub), keras_hub_outputs(keras_hub_backbone)
)
print(
    f"keras-hub -> keras: {type(from_keras_hub).__name__}, max abs "
    f"difference {difference:.2e}"
)

# And back, for keras-hub users: `save_keras_hub_preset` writes a preset
# that keras-hub itself loads.

save_keras_hub_preset(from_keras_hub, work_dir / "keras_hub_export")
round_trip = keras_hub.models.SigLIPBackbone.from_preset(
    str(work_dir / "keras_hub_export")
)
difference = max_difference(
    keras_hub_outputs(round_trip), outputs(from_keras_hub)
)
print(
    f"keras -> keras-hub: {type(round_trip).__name__}, max abs difference "
    f"{difference:.2e}"
)

# ## The command line
#
# The same conversions run from the shell, with a progress bar over the
# tensors:
#
# ```shell
# python -m keras_siglip2 convert --from big_vision --to hf SRC.npz DST_DIR
# python -m keras_siglip2 convert --from hf --to keras SRC_DIR model.keras
# python -m keras_siglip2 convert --from keras_hub --to big_vision \
#     siglip2_base_patch16_224 siglip2_b16.npz
# python -m keras_siglip2 summary siglip2_so400m_patch14_384
# ```
#
# `--from keras_hub` also takes a preset name (downloaded by keras-hub),
# and `summary` describes a preset name without downloading it, or any
# checkpoint file or directory. Here the `.npz` written above becomes a
# `.keras` file:

command = [sys.executable, "-m", "keras_siglip2"]
keras_file = str(work_dir / "from_npz.keras")
subprocess.run(
    [
        *command,
        "convert",
        "--from",
        "big_vision",
        "--to",
        "keras",
        str(work_dir / "siglip2.npz"),
        keras_file,
    ],
    check=True,
)
from_cli = keras.saving.load_model(keras_file)
print(
    "CLI big_vision -> .keras: max abs difference "
    f"{max_difference(outputs(from_cli), outputs(backbone)):.2e}"
)
subprocess.run([*command, "summary", keras_file], check=True)
