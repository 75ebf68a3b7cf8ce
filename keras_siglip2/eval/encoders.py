"""The encoder every evaluation runs, and example handling.

The evaluations (`zero_shot`, `retrieval`, `referring`, `dense_probe`)
take an *encoder*: any object with `encode_images(images)`,
`encode_texts(texts)` and `encode_patches(images)`. `BackboneEncoder`
runs a `SigLIP2Backbone`; tests pass oracle encoders through the same
functions. Examples are dicts in the readers' element structure
(`keras_siglip2.data.readers`), e.g. from `generated_examples`,
`webdataset_examples`, or a `read_*` / generated `tf.data.Dataset` (see
`as_examples`).
"""

import itertools
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_siglip2.data.naflex import naflex_preprocess_batch
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.image_converter import SigLIP2ImageConverter


def _decoded(value) -> np.ndarray:
    """Numpy value with byte strings decoded to `str` (UTF-8)."""
    value = np.asarray(value)
    if value.dtype.kind in "SO":
        return np.vectorize(
            lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v),
            otypes=[str],
        )(value)
    return value


def as_examples(data, limit: int | None = None) -> list[dict]:
    """A list of numpy examples from a dataset or an iterable of dicts.

    Args:
        data: a `tf.data.Dataset` of dicts (e.g. `read_webdataset`,
            `generated_dataset`) or an iterable of dicts of numpy values
            (e.g. `generated_examples`, `jsonl_examples`), or a list.
        limit: optional number of examples to take.

    Returns:
        list of dicts of numpy arrays; strings as `str`.
    """
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    return [
        {key: _decoded(value) for key, value in example.items()}
        for example in itertools.islice(data, limit)
    ]


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12) -> np.ndarray:
    """`x / max(||x||, epsilon)` along `axis`, as float32 numpy."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, epsilon)


def _batches(items: Sequence, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _pad_rows(tree, size: int):
    """Pads every array of `tree` to `size` rows by repeating row 0.

    Repeating a real row (rather than zeros) keeps padded NaFlex rows
    valid, so they never produce NaNs that a backend might propagate.
    """
    if isinstance(tree, dict):
        return {key: _pad_rows(value, size) for key, value in tree.items()}
    missing = size - len(tree)
    if missing == 0:
        return tree
    return np.concatenate([tree, np.repeat(tree[:1], missing, axis=0)])


def _stack_outputs(chunks: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def _check_nonempty(items, name):
    if len(items) == 0:
        raise ValueError(f"`{name}` is empty; nothing to encode.")


class BackboneEncoder:
    """Runs a `SigLIP2Backbone` on raw images and strings, in batches.

    Images (uint8 `(H, W, 3)`, any size) are preprocessed as the backbone
    expects: resized to the square input and scaled to `[-1, 1]` by
    `SigLIP2ImageConverter` (fixed resolution), or NaFlex-patchified to
    `max_num_patches` (NaFlex backbones). Texts go through the tokenizer.
    Every batch is padded to `batch_size`, so a jitted backend compiles
    once. The backbone is never trained here.

    Args:
        backbone: a `SigLIP2Backbone`.
        tokenizer: a `SigLIP2Tokenizer` (or any callable mapping a list of
            strings to int `(batch, max_sequence_length)` ids); needed by
            `encode_texts`.
        batch_size: int. Images or texts per forward pass.
        max_num_patches: int. NaFlex sequence length; defaults to the
            number of patches of the position table (`grid_size ** 2`).
            Fixed-resolution backbones take none.

    Example:
    >>> encoder = BackboneEncoder(backbone, tokenizer)  # doctest: +SKIP
    >>> encoder.encode_images([image]).shape  # doctest: +SKIP
    (1, 768)
    """

    def __init__(
        self,
        backbone: SigLIP2Backbone,
        tokenizer=None,
        batch_size: int = 32,
        max_num_patches: int | None = None,
    ):
        if not isinstance(backbone, SigLIP2Backbone):
            raise TypeError(
                "`backbone` must be a SigLIP2Backbone; got "
                f"{type(backbone).__name__}."
            )
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")
        vision = backbone.vision_encoder
        if not backbone.naflex and max_num_patches is not None:
            raise ValueError(
                "`max_num_patches` is for NaFlex backbones; this one takes "
                f"fixed {vision.image_size} px images."
            )
        length = getattr(tokenizer, "sequence_length", None)
        expected = backbone.text_encoder.max_sequence_length
        if length is not None and length != expected:
            raise ValueError(
                f"The tokenizer's `sequence_length` ({length}) must equal "
                f"the text encoder's `max_sequence_length` ({expected})."
            )
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_num_patches = (
            (max_num_patches or vision.grid_size**2)
            if backbone.naflex
            else None
        )
        self._convert = None
        if not backbone.naflex:
            converter = SigLIP2ImageConverter(image_size=vision.image_size)
            # Eagerly, every new image size would be a new compilation
            # (JAX) or dispatch; one TF graph takes every size.
            self._convert = tf.function(
                lambda image: converter(image),
                input_signature=[tf.TensorSpec((None, None, 3), tf.float32)],
            )
        self._models = {}

    def image_inputs(self, images: Sequence[np.ndarray]):
        """Backbone image inputs for uint8 `(H, W, 3)` images.

        Returns:
            float32 `(batch, image_size, image_size, 3)` in `[-1, 1]`, or
            the NaFlex dict of `naflex_preprocess_batch`.
        """
        if self.backbone.naflex:
            return naflex_preprocess_batch(
                images,
                self.backbone.vision_encoder.patch_size,
                self.max_num_patches,
            )
        return np.stack(
            [
                self._convert(np.asarray(image, np.float32)).numpy()
                for image in images
            ]
        )

    def _vision_model(self, with_sequence: bool) -> keras.Model:
        key = ("vision", with_sequence)
        if key not in self._models:
            vision = self.backbone.vision_encoder
            if self.backbone.naflex:
                patch_dim = vision.patch_size**2 * 3
                inputs = {
                    "patches": keras.Input((None, patch_dim), name="patches"),
                    "patch_mask": keras.Input(
                        (None,), dtype="int32", name="patch_mask"
                    ),
                    "spatial_shapes": keras.Input(
                        (2,), dtype="int32", name="spatial_shapes"
                    ),
                }
            else:
                size = vision.image_size
                inputs = keras.Input((size, size, 3), name="images")
            outputs = vision(inputs)
            if not with_sequence:
                outputs = {"pooled_output": outputs["pooled_output"]}
            self._models[key] = keras.Model(inputs, outputs)
        return self._models[key]

    def _text_model(self) -> keras.Model:
        if "text" not in self._models:
            text = self.backbone.text_encoder
            token_ids = keras.Input((text.max_sequence_length,), dtype="int32")
            pooled = text(token_ids)["pooled_output"]
            self._models["text"] = keras.Model(token_ids, pooled)
        return self._models["text"]

    def _run(self, model, make_inputs, items) -> list:
        chunks = []
        for chunk in _batches(list(items), self.batch_size):
            inputs = make_inputs(chunk)
            outputs = model.predict_on_batch(_pad_rows(inputs, self.batch_size))
            if not isinstance(outputs, dict):
                outputs = {"output": outputs}
            chunks.append(
                {
                    key: np.asarray(value, np.float32)[: len(chunk)]
                    for key, value in outputs.items()
                }
            )
            if isinstance(inputs, dict):
                chunks[-1]["patch_mask"] = inputs["patch_mask"]
                chunks[-1]["spatial_shapes"] = inputs["spatial_shapes"]
        return chunks

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled image embeddings, before L2 normalisation.

        Args:
            images: uint8 `(H, W, 3)` arrays, any sizes.

        Returns:
            float32 `(num_images, dim)`.
        """
        _check_nonempty(images, "images")
        chunks = self._run(self._vision_model(False), self.image_inputs, images)
        return _stack_outputs(chunks)["pooled_output"]

    def encode_patches(self, images: Sequence[np.ndarray]) -> dict:
        """Per-patch features of the vision encoder (`sequence_output`).

        Args:
            images: uint8 `(H, W, 3)` arrays, any sizes.

        Returns:
            dict of numpy arrays: `"features"` float32 `(num_images,
            length, dim)`; `"mask"` bool `(num_images, length)` (False for
            NaFlex padding); `"grid_shapes"` int32 `(num_images, 2)` patch
            rows and columns (valid tokens are the first `rows * columns`,
            row-major); `"coverage"` float32 `(num_images, 2)`: the
            fraction of the image's height and width that the patch grid
            covers (below 1 when the input side is not a multiple of the
            patch size and the encoder drops the remainder).
        """
        _check_nonempty(images, "images")
        chunks = self._run(self._vision_model(True), self.image_inputs, images)
        outputs = _stack_outputs(chunks)
        count = len(outputs["sequence_output"])
        vision = self.backbone.vision_encoder
        if self.backbone.naflex:
            mask = outputs["patch_mask"].astype(bool)
            grid_shapes = outputs["spatial_shapes"].astype(np.int32)
            coverage = np.ones((count, 2), np.float32)
        else:
            grid = vision.grid_size
            mask = np.ones((count, grid * grid), bool)
            grid_shapes = np.full((count, 2), grid, np.int32)
            covered = grid * vision.patch_size / vision.image_size
            coverage = np.full((count, 2), covered, np.float32)
        return {
            "features": outputs["sequence_output"],
            "mask": mask,
            "grid_shapes": grid_shapes,
            "coverage": coverage,
        }

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int32 `(num_texts, max_sequence_length)` token ids."""
        if self.tokenizer is None:
            raise ValueError(
                "This BackboneEncoder has no tokenizer; pass `tokenizer=`."
            )
        ids = np.asarray(
            keras.ops.convert_to_numpy(self.tokenizer(list(texts))), np.int32
        )
        self.backbone.validate_token_ids(ids)
        return ids

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled text embeddings, before L2 normalisation.

        Args:
            texts: strings.

        Returns:
            float32 `(num_texts, dim)`.
        """
        _check_nonempty(texts, "texts")
        chunks = self._run(self._text_model(), self.tokenize, texts)
        return _stack_outputs(chunks)["output"]
