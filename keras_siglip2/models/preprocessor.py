"""`SigLIP2Preprocessor`: images and texts to `SigLIP2Backbone` inputs."""

import keras
from keras_hub.models import Preprocessor
from keras_hub.src.utils.tensor_utils import (
    convert_preprocessing_outputs_python,
)
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer

TEXT_KEYS = ("prompts", "text")


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Preprocessor(Preprocessor):
    """Turns `{"images", "prompts"}` into `SigLIP2Backbone` inputs.

    Texts go through the tokenizer (lower-case, EOS, padded to 64 ids) and
    images through the image converter (resize, scale to `[-1, 1]`).
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
        `x` as a dict with `"images"`: float `(batch, size, size, 3)` and/or
        `"token_ids"`: int32 `(batch, sequence_length)`; packed with `y` and
        `sample_weight` when given.

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
