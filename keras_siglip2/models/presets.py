"""Named SigLIP and SigLIP 2 checkpoints, published as keras-hub presets.

Every entry is a preset of keras-hub's `SigLIPBackbone` (Kaggle handle
`keras/siglip`), which `SigLIP2Backbone.from_preset(name)` downloads
through keras-hub and translates into our classes; nothing is downloaded
until then. The names, handles, model cards and keras-hub parameter
counts are copied from keras-hub's preset metadata (keras-hub 0.32); the
architecture fields and `params` are ours and are checked against it by
the tests.

`params` counts learned weights. keras-hub's `keras_hub_params` also
counts its integer `position_ids` buffers (patch grid size squared plus
the 64 text positions), so the two differ by that much; `note` explains
the entries where keras-hub's metadata does not follow that rule.

`PresetFiles` reads the files of a preset (a local directory, a name from
this table or a handle), downloading single files through keras-hub only
when they are read; the tokenizer, image converter and preprocessor
`from_preset` methods build on it.
"""

import dataclasses
import difflib
import json
import os
from pathlib import Path

from keras_siglip2.models.configs import SIZES
from keras_siglip2.models.configs import TEXT_SIZE
from keras_siglip2.models.configs import BackboneConfig

_SIGLIP_CARD = (
    "https://huggingface.co/collections/google/siglip-659d5e62f0ae1a57ae0e83ba"
)
_SIGLIP2_CARD = (
    "https://huggingface.co/collections/google/siglip2-67b5dcef38c175486e240107"
)
_MEDSIGLIP_CARD = (
    "https://huggingface.co/google/medsiglip-448#medsiglip-model-card"
)
_SIZE_NAMES = {"base": "B", "large": "L", "so400m": "So400m", "giant": "g"}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A published checkpoint: where it lives and what it is.

    Attributes:
        name: keras-hub preset name, e.g. `"siglip2_base_patch16_224"`.
        family: `"SigLIP"`, `"SigLIP 2"` or `"MedSigLIP"`.
        size: image tower size, a key of `configs.SIZES`.
        patch_size: int. Patch side in pixels.
        image_size: int. Input side in pixels.
        vocabulary_size: int. 32k (English SigLIP), 250k (multilingual
            SigLIP) or 256k (Gemma, SigLIP 2).
        params: int. Learned weights of our `SigLIP2Backbone`.
        keras_hub_params: int. The count keras-hub's metadata lists.
        kaggle_handle: where keras-hub downloads it from.
        model_card: the upstream model card.
        max_sequence_length: int. Text tokens (64).
        note: caveats about keras-hub's metadata, if any.
    """

    name: str
    family: str
    size: str
    patch_size: int
    image_size: int
    vocabulary_size: int
    params: int
    keras_hub_params: int
    kaggle_handle: str
    model_card: str
    max_sequence_length: int = 64
    note: str = ""

    @property
    def description(self) -> str:
        """One line: family, size, patch, resolution, vocabulary."""
        text = TEXT_SIZE[self.size]
        tower = "" if text == self.size else f" with an {text} text tower"
        return (
            f"{self.family} {_SIZE_NAMES[self.size]}/{self.patch_size} at "
            f"{self.image_size} px{tower}, {self.vocabulary_size:,}-token "
            f"vocabulary, {self.max_sequence_length} tokens; "
            f"{self.params / 1e6:,.0f}M parameters."
        )

    @property
    def config(self) -> BackboneConfig:
        """The architecture, as keyword arguments of our encoders."""
        vision = dict(
            SIZES[self.size],
            image_size=self.image_size,
            patch_size=self.patch_size,
        )
        text = dict(
            SIZES[TEXT_SIZE[self.size]],
            vocabulary_size=self.vocabulary_size,
            max_sequence_length=self.max_sequence_length,
            projection_dim=vision["hidden_dim"],
        )
        return BackboneConfig(vision=vision, text=text)


def _preset(name, family, size, patch, image, vocab, params, kh_params, **kw):
    handle = f"kaggle://keras/siglip/keras/{name}/{kw.pop('version', 1)}"
    card = {"SigLIP": _SIGLIP_CARD, "SigLIP 2": _SIGLIP2_CARD}[family]
    return Preset(
        name=name,
        family=family,
        size=size,
        patch_size=patch,
        image_size=image,
        vocabulary_size=vocab,
        params=params,
        keras_hub_params=kh_params,
        kaggle_handle=handle,
        model_card=card,
        **kw,
    )


_V1 = "SigLIP"
_V2 = "SigLIP 2"

PRESETS = {
    preset.name: preset
    for preset in [
        # SigLIP (v1), English: 32k sentencepiece vocabulary.
        _preset(
            "siglip_base_patch16_224",
            _V1,
            "base",
            16,
            224,
            32_000,
            203_155_970,
            203_156_230,
        ),
        _preset(
            "siglip_base_patch16_256",
            _V1,
            "base",
            16,
            256,
            32_000,
            203_202_050,
            203_202_370,
        ),
        _preset(
            "siglip_base_patch16_384",
            _V1,
            "base",
            16,
            384,
            32_000,
            203_447_810,
            203_448_450,
        ),
        _preset(
            "siglip_base_patch16_512",
            _V1,
            "base",
            16,
            512,
            32_000,
            203_791_874,
            203_792_962,
        ),
        _preset(
            "siglip_large_patch16_256",
            _V1,
            "large",
            16,
            256,
            32_000,
            652_150_786,
            652_151_106,
        ),
        _preset(
            "siglip_large_patch16_384",
            _V1,
            "large",
            16,
            384,
            32_000,
            652_478_466,
            652_479_106,
        ),
        _preset(
            "siglip_so400m_patch14_224",
            _V1,
            "so400m",
            14,
            224,
            32_000,
            877_415_602,
            877_360_578,
            note=(
                "keras-hub lists 877,360,578 parameters; the architecture "
                "has 877,415,602 (+320 position ids)."
            ),
        ),
        _preset(
            "siglip_so400m_patch14_384",
            _V1,
            "so400m",
            14,
            384,
            32_000,
            877_960_498,
            877_961_291,
        ),
        # SigLIP (v1), multilingual: 250k vocabulary.
        _preset(
            "siglip_so400m_patch16_256_i18n",
            _V1,
            "so400m",
            16,
            256,
            250_000,
            1_128_758_962,
            1_128_759_282,
        ),
        _preset(
            "siglip_base_patch16_256_multilingual",
            _V1,
            "base",
            16,
            256,
            250_000,
            370_626_050,
            370_626_370,
        ),
        # SigLIP 2: Gemma 256k vocabulary, fixed resolution.
        _preset(
            "siglip2_base_patch16_224",
            _V2,
            "base",
            16,
            224,
            256_000,
            375_187_970,
            375_188_230,
        ),
        _preset(
            "siglip2_base_patch16_256",
            _V2,
            "base",
            16,
            256,
            256_000,
            375_234_050,
            375_234_370,
        ),
        _preset(
            "siglip2_base_patch32_256",
            _V2,
            "base",
            32,
            256,
            256_000,
            376_856_066,
            376_856_194,
        ),
        _preset(
            "siglip2_base_patch16_384",
            _V2,
            "base",
            16,
            384,
            256_000,
            375_479_810,
            376_856_194,
            note=(
                "keras-hub lists 376,856,194 parameters, the count of "
                "siglip2_base_patch32_256; the architecture has "
                "375,479,810 (+640 position ids)."
            ),
        ),
        _preset(
            "siglip2_large_patch16_256",
            _V2,
            "large",
            16,
            256,
            256_000,
            881_526_786,
            881_527_106,
        ),
        _preset(
            "siglip2_large_patch16_384",
            _V2,
            "large",
            16,
            384,
            256_000,
            881_854_466,
            881_855_106,
        ),
        _preset(
            "siglip2_large_patch16_512",
            _V2,
            "large",
            16,
            512,
            256_000,
            882_313_218,
            882_314_306,
        ),
        _preset(
            "siglip2_giant_opt_patch16_256",
            _V2,
            "giant",
            16,
            256,
            256_000,
            1_871_393_906,
            1_871_394_226,
            version=2,
        ),
        _preset(
            "siglip2_giant_opt_patch16_384",
            _V2,
            "giant",
            16,
            384,
            256_000,
            1_871_885_426,
            1_871_886_066,
        ),
        _preset(
            "siglip2_so400m_patch14_224",
            _V2,
            "so400m",
            14,
            224,
            256_000,
            1_135_463_602,
            1_135_463_922,
        ),
        _preset(
            "siglip2_so400m_patch14_384",
            _V2,
            "so400m",
            14,
            384,
            256_000,
            1_136_008_498,
            1_136_009_291,
            note="keras-hub's description says image size 224; it is 384.",
        ),
        _preset(
            "siglip2_so400m_patch16_256",
            _V2,
            "so400m",
            16,
            256,
            256_000,
            1_135_670_962,
            1_135_671_282,
        ),
        _preset(
            "siglip2_so400m_patch16_384",
            _V2,
            "so400m",
            16,
            384,
            256_000,
            1_136_039_602,
            1_136_040_242,
        ),
        _preset(
            "siglip2_so400m_patch16_512",
            _V2,
            "so400m",
            16,
            512,
            256_000,
            1_136_555_698,
            1_136_555_698,
            note=(
                "keras-hub's count leaves out its 1,088 integer position "
                "ids, unlike its other entries."
            ),
        ),
    ]
}
# MedSigLIP (so400m/14 at 448 px, 32k vocabulary) is a separate Kaggle
# model (`keras/medsiglip`) fine-tuned on medical data.
PRESETS["medsiglip_900m_448"] = Preset(
    name="medsiglip_900m_448",
    family="MedSigLIP",
    size="so400m",
    patch_size=14,
    image_size=448,
    vocabulary_size=32_000,
    params=878_300_338,
    keras_hub_params=878_301_426,
    kaggle_handle="kaggle://keras/medsiglip/keras/medsiglip_900m_448/1",
    model_card=_MEDSIGLIP_CARD,
    note="keras-hub lists it with official name SigLIP2.",
)


def preset_names(family: str | None = None) -> list[str]:
    """Names of the known presets.

    Args:
        family: optional filter: `"SigLIP"`, `"SigLIP 2"` or `"MedSigLIP"`.

    Returns:
        sorted list of names.
    """
    return sorted(
        name
        for name, preset in PRESETS.items()
        if family is None or preset.family == family
    )


def get_preset(name: str) -> Preset:
    """Looks up a preset by name.

    Args:
        name: e.g. `"siglip2_so400m_patch14_384"`.

    Returns:
        The `Preset`.

    Raises:
        ValueError: for unknown names, listing the closest known names.
    """
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, PRESETS, n=5, cutoff=0.6)
    hint = (
        f" Did you mean: {', '.join(close)}?"
        if close
        else " Known presets: " + ", ".join(preset_names()) + "."
    )
    raise ValueError(f"Unknown preset {name!r}.{hint}")


# --- Reading preset files -----------------------------------------------------


class PresetFiles:
    """The files of a preset: a local directory, a name or a handle.

    Local directories are read in place. Names from `PRESETS` resolve to
    their Kaggle handle; handles (`kaggle://`, `hf://`) are downloaded file
    by file through keras-hub, only when a file is asked for.

    Args:
        preset: string or path: a directory, a name from `preset_names()`
            or a `kaggle://`/`hf://` handle.

    Raises:
        ValueError: unknown names (listing close matches) and paths that
            are not directories.
    """

    def __init__(self, preset):
        if isinstance(preset, os.PathLike) or (
            isinstance(preset, str) and os.path.isdir(preset)
        ):
            self.local = Path(preset)
            self.handle = None
            if not self.local.is_dir():
                raise ValueError(f"{preset}: no such preset directory.")
        elif not isinstance(preset, str):
            raise TypeError(
                "`preset` must be a string or a path; got "
                f"{type(preset).__name__}."
            )
        elif "://" in preset:
            self.local, self.handle = None, preset
        elif os.sep in preset or os.path.exists(preset):
            raise ValueError(f"{preset}: no such preset directory.")
        else:
            self.local, self.handle = None, get_preset(preset).kaggle_handle
        self.name = str(self.local if self.local is not None else self.handle)

    def path(self, file: str, required: bool = True) -> str | None:
        """Local path of `file` (e.g. `"tokenizer.json"`).

        Args:
            file: path relative to the preset root.
            required: if true, a missing file raises; else gives None.

        Returns:
            The local path, or None for a missing optional file.

        Raises:
            ValueError: a missing required file, naming it.
        """
        if self.local is not None:
            path = self.local / file
            found = str(path) if path.is_file() else None
        else:
            # Looked up at call time so that tests can stand in for the
            # download.
            from keras_hub.src.utils import preset_utils

            try:
                found = preset_utils.get_file(self.handle, file)
            except FileNotFoundError:
                found = None
        if found is None and required:
            raise ValueError(f"{self.name}: no `{file}` found.")
        return found

    def json(self, file: str, required: bool = True) -> dict | None:
        """The JSON object in `file`, or None for a missing optional file.

        Raises:
            ValueError: a missing required file, invalid JSON or a JSON
                value that is not an object, naming the file.
        """
        path = self.path(file, required)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                value = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e}).") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a JSON object.")
        return value

    def registered_json(self, file: str, required: bool = True):
        """`(registered_name, config)` of a serialized Keras object file.

        Returns:
            `(None, None)` for a missing optional file.

        Raises:
            ValueError: as `json`, and for a file without a
                `registered_name` string and a `config` object.
        """
        value = self.json(file, required)
        if value is None:
            return None, None
        registered = value.get("registered_name")
        config = value.get("config")
        if not isinstance(registered, str) or not isinstance(config, dict):
            raise ValueError(
                f"{self.name}: `{file}` is not a serialized Keras object "
                "(no `registered_name` string and `config` object)."
            )
        return registered, config
