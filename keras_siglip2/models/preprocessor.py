"""`SigLIP2Preprocessor`: images and texts to `SigLIP2Backbone` inputs."""

import keras
from keras_hub.models import Preprocessor
from keras_hub.src.utils.tensor_utils import (
    convert_preprocessing_outputs_python,
)
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.image_converter import load_image_converter
from keras_siglip2.models.presets import PresetFiles
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.tokenizer import load_tokenizer

TEXT_KEYS = ("prompts", "text")
PREPROCESSOR_FILE = "preprocessor.json"
_OURS = "keras_siglip2>SigLIP2Preprocessor"
_KERAS_HUB = "keras_hub>SigLIPPreprocessor"


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Preprocessor(Preprocessor):
    """Turns `{"images", "prompts"}` into `SigLIP2Backbone` inputs.

    Texts go through the tokenizer (lower-case, EOS, padded to 64 ids) and
    images through the image converter (resize, scale to `[-1, 1]`; or, with
    a NaFlex converter, patches, mask and grid shapes for a
    `SigLIP2Backbone(naflex=True)`).
    Either key may be left out, e.g. to embed only texts; the numbers of
    images and texts need not match (zero-shot classification pairs every
    image with every text).

    Works eagerly (Python strings and numpy arrays in, backend tensors out)
    and inside `tf.data.Dataset.map` (on batches or single examples).
    Labels and sample weights, if given, pass through unchanged.

    Args:
        tokenizer: a `SigLIP2Tokenizer` (or `SigLIPTokenizer`), or None.
        image_converter: a `SigLIP2ImageConverter`, or None to pass images
            through unchanged (already resized and scaled).
        **kwargs: base layer arguments.

    Call arguments:
        x: dict with `"images"`: `(batch, height, width, 3)` pixel values
            in `[0, 255]` (or one `(height, width, 3)` image) and/or
            `"prompts"` (or `"text"`): a string or a batch of strings.
        y: optional labels, passed through.
        sample_weight: optional sample weights, passed through.

    Returns:
        `x` as a dict with `"images"`: float `(batch, size, size, 3)` (a
        NaFlex converter gives `"patches"`, `"patch_mask"` and
        `"spatial_shapes"` instead) and/or `"token_ids"`: int32 `(batch,
        sequence_length)`; packed with `y` and `sample_weight` when given.

    Example:
    >>> preprocessor = SigLIP2Preprocessor(
    ...     SigLIP2Tokenizer(proto="gemma.model"),
    ...     SigLIP2ImageConverter(image_size=224))  # doctest: +SKIP
    >>> inputs = preprocessor({
    ...     "images": np.zeros((2, 300, 400, 3), "uint8"),
    ...     "prompts": ["a cat", "a dog"]})  # doctest: +SKIP
    >>> logits = backbone(inputs)  # doctest: +SKIP
    """

    backbone_cls = SigLIP2Backbone
    tokenizer_cls = SigLIP2Tokenizer
    image_converter_cls = SigLIP2ImageConverter

    def __init__(self, tokenizer=None, image_converter=None, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads a preprocessor from a preset directory, name or handle.

        Accepts keras-hub's SigLIP/SigLIP 2 preset names (see
        `keras_siglip2.models.presets.preset_names()`; keras-hub downloads
        the few files needed, only when asked), `kaggle://`/`hf://`
        handles, our `save_to_preset` directories and keras-hub ones
        (written by `SigLIPPreprocessor.save_to_preset`, or by
        `SigLIPBackbone` and `SigLIPTokenizer`/`GemmaTokenizer`
        `save_to_preset`) and HF checkpoint directories (with the
        SentencePiece model, or only a Gemma `tokenizer.json`). The
        tokenizer comes from `load_tokenizer` (so SigLIP presets get a
        `SigLIPTokenizer`) and the image converter
        from `load_image_converter` (sized from `image_converter.json` or
        the backbone's `config.json`; NaFlex for NaFlex backbones).

        Args:
            preset: string or path.
            **kwargs: `tokenizer` and/or `image_converter` to use instead
                of the preset's, and base layer arguments.

        Returns:
            A `SigLIP2Preprocessor`.

        Raises:
            ValueError: unknown names (with close matches), missing or
                unreadable files, naming them; nothing partially loaded is
                returned.
        """
        files = PresetFiles(preset)
        registered, config = files.registered_json(
            PREPROCESSOR_FILE, required=False
        )
        if registered not in (None, _OURS, _KERAS_HUB):
            raise ValueError(
                f"{files.name}: `{PREPROCESSOR_FILE}` holds a "
                f"{registered!r}; expected {_OURS!r} or {_KERAS_HUB!r}."
            )
        # Ours may have been saved without either part.
        ours = registered == _OURS
        if "tokenizer" not in kwargs:
            kwargs["tokenizer"] = (
                None
                if ours and config.get("tokenizer") is None
                else load_tokenizer(preset)
            )
        if "image_converter" not in kwargs:
            kwargs["image_converter"] = (
                None
                if ours and config.get("image_converter") is None
                else load_image_converter(preset)
            )
        if ours and "name" in config:
            kwargs.setdefault("name", config["name"])
        return cls(**kwargs)

    @property
    def sequence_length(self):
        """Length of the token ids, from the tokenizer."""
        return (
            None if self.tokenizer is None else self.tokenizer.sequence_length
        )

    def _split_inputs(self, x):
        if not isinstance(x, dict):
            raise TypeError(
                "SigLIP2Preprocessor expects a dict with 'images' and/or "
                f"'prompts' (or 'text'); got {type(x).__name__}."
            )
        unknown = sorted(set(x) - {"images", *TEXT_KEYS})
        if unknown:
            raise ValueError(
                f"Unexpected keys {unknown}; expected 'images' and/or "
                "'prompts' (or 'text')."
            )
        text_keys = [key for key in TEXT_KEYS if key in x]
        if len(text_keys) > 1:
            raise ValueError(
                "Pass texts as 'prompts' or 'text', not both; got keys "
                f"{sorted(x)}."
            )
        if not text_keys and "images" not in x:
            raise ValueError(
                "Expected 'images' and/or 'prompts' (or 'text'); got an "
                "empty dict."
            )
        texts = x[text_keys[0]] if text_keys else None
        return x.get("images"), texts

    def _call_python(self, x, y=None, sample_weight=None):
        images, texts = self._split_inputs(x)
        outputs = {}
        if images is not None:
            if self.image_converter is not None:
                images = self.image_converter(images)
            if isinstance(images, dict):
                outputs.update(images)
            else:
                outputs["images"] = images
        if texts is not None:
            if self.tokenizer is None:
                raise ValueError(
                    "Got texts but this preprocessor has no tokenizer."
                )
            outputs["token_ids"] = self.tokenizer(texts)
        outputs = convert_preprocessing_outputs_python(outputs)
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    @preprocessing_function
    def _call_tf(self, x, y=None, sample_weight=None):
        return self._call_python(x, y=y, sample_weight=sample_weight)

    def call(self, x, y=None, sample_weight=None):
        if self._use_tf_workflow():
            return self._call_tf(x, y=y, sample_weight=sample_weight)
        return self._call_python(x, y=y, sample_weight=sample_weight)
