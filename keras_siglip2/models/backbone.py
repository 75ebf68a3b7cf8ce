"""`SigLIP2Backbone`: the two towers and the image-text logits."""

import math

import keras
import numpy as np
from keras import ops
from keras_hub.models import Backbone

from keras_siglip2.layers.contrastive_logits import ContrastiveLogits
from keras_siglip2.losses.sigmoid import sigmoid_loss
from keras_siglip2.models.configs import get_config
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder


def _concrete_array(x) -> np.ndarray | None:
    """Returns `x` as numpy if it holds concrete values, else None."""
    if isinstance(x, (np.ndarray, list, tuple)):
        return np.asarray(x)
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            return np.asarray(x)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(x, tf.Tensor) and hasattr(x, "numpy"):
            return x.numpy()
    elif keras.backend.backend() == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    return None


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2Backbone(Backbone):
    """SigLIP 2 image and text towers joined by sigmoid image-text logits.

    The functional model maps `{"images", "token_ids"}` (or, with
    `naflex=True`, `{"patches", "patch_mask", "spatial_shapes",
    "token_ids"}` at any sequence length) to the `(num_images, num_texts)`
    logits
    `exp(t') * <normalize(img), normalize(txt)> + b`. Without a compiled
    loss, `fit` trains with the pairwise sigmoid loss (image `i` matches
    text `i`), so `backbone.compile(optimizer); backbone.fit(x)` works.

    Args:
        vision_encoder: a `SigLIP2VisionEncoder`.
        text_encoder: a `SigLIP2TextEncoder` whose `projection_dim` equals
            the vision encoder's `hidden_dim`.
        logit_scale_init: float. Initial log temperature `t'` (log 10).
        logit_bias_init: float. Initial bias `b` (-10).
        naflex: bool. Take NaFlex patch inputs instead of square images.
            The vision encoder's `image_size // patch_size` grid is then the
            size of the position table that is resized per example (16 x 16
            in the released NaFlex models).
        dtype: string or `keras.DTypePolicy`. Compute/variable dtype.
        **kwargs: `keras.Model` arguments (`name`, ...).

    Example:
    >>> vision = SigLIP2VisionEncoder(
    ...     image_size=16, patch_size=8, hidden_dim=8, num_layers=1,
    ...     num_heads=2, intermediate_dim=16)
    >>> text = SigLIP2TextEncoder(
    ...     vocabulary_size=10, hidden_dim=8, num_layers=1, num_heads=2,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> backbone = SigLIP2Backbone(vision, text)
    >>> logits = backbone({
    ...     "images": np.zeros((2, 16, 16, 3), "float32"),
    ...     "token_ids": np.ones((3, 6), "int32")})
    >>> logits.shape
    (2, 3)
    """

    def __init__(
        self,
        vision_encoder: SigLIP2VisionEncoder,
        text_encoder: SigLIP2TextEncoder,
        logit_scale_init: float = math.log(10.0),
        logit_bias_init: float = -10.0,
        naflex: bool = False,
        dtype=None,
        **kwargs,
    ):
        if text_encoder.projection_dim != vision_encoder.hidden_dim:
            raise ValueError(
                "The text encoder's `projection_dim` "
                f"({text_encoder.projection_dim}) must equal the vision "
                f"encoder's `hidden_dim` ({vision_encoder.hidden_dim})."
            )
        # === Layers ===
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.contrastive_logits = ContrastiveLogits(
            logit_scale_init=logit_scale_init,
            logit_bias_init=logit_bias_init,
            dtype=dtype,
            name="contrastive_logits",
        )

        # === Functional Model ===
        if naflex:
            patch_dim = vision_encoder.patch_size**2 * 3
            vision_inputs = {
                "patches": keras.Input(shape=(None, patch_dim), name="patches"),
                "patch_mask": keras.Input(
                    shape=(None,), dtype="int32", name="patch_mask"
                ),
                "spatial_shapes": keras.Input(
                    shape=(2,), dtype="int32", name="spatial_shapes"
                ),
            }
            vision_outputs = vision_encoder(vision_inputs)
        else:
            size = vision_encoder.image_size
            image_input = keras.Input(shape=(size, size, 3), name="images")
            vision_inputs = {"images": image_input}
            vision_outputs = vision_encoder(image_input)
        token_id_input = keras.Input(
            shape=(text_encoder.max_sequence_length,),
            dtype="int32",
            name="token_ids",
        )
        image_embeddings = vision_outputs["pooled_output"]
        text_embeddings = text_encoder(token_id_input)["pooled_output"]
        logits = self.contrastive_logits(image_embeddings, text_embeddings)
        super().__init__(
            inputs={**vision_inputs, "token_ids": token_id_input},
            outputs=logits,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.logit_scale_init = logit_scale_init
        self.logit_bias_init = logit_bias_init
        self.naflex = naflex

    @classmethod
    def from_config_name(cls, name: str, **kwargs) -> "SigLIP2Backbone":
        """Builds a randomly initialised backbone by architecture name.

        Args:
            name: e.g. `"so400m_patch14_384"`; see
                `keras_siglip2.models.configs.config_names()`.
            **kwargs: `vocabulary_size`, `max_sequence_length` (forwarded to
                the config) and backbone arguments such as `dtype`.

        Returns:
            A `SigLIP2Backbone`.
        """
        config_kwargs = {
            key: kwargs.pop(key)
            for key in ("vocabulary_size", "max_sequence_length")
            if key in kwargs
        }
        config = get_config(name, **config_kwargs)
        dtype = kwargs.get("dtype")
        return cls(
            SigLIP2VisionEncoder(**config.vision, dtype=dtype),
            SigLIP2TextEncoder(**config.text, dtype=dtype),
            **kwargs,
        )

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a backbone from a preset directory, name or handle.

        Accepts keras-hub's SigLIP/SigLIP 2 preset names (see
        `keras_siglip2.models.presets.preset_names()`; downloaded by
        keras-hub only when asked), `kaggle://`/`hf://` handles, and local
        directories written by keras-hub's `SigLIPBackbone.save_to_preset`,
        by our `save_to_preset`, or by HF `save_pretrained`. keras-hub
        configs and weights are translated into our classes.

        Args:
            preset: string or path.
            load_weights: bool. If false, random weights.
            **kwargs: `dtype`, `progress`; see
                `keras_siglip2.convert.keras_hub.load_preset`.

        Returns:
            A `SigLIP2Backbone`.
        """
        # `convert/` builds on `models/`; importing it at call time keeps
        # the module graph acyclic.
        from keras_siglip2.convert.keras_hub import load_preset

        return load_preset(preset, load_weights=load_weights, **kwargs)

    def get_vision_embeddings(self, images, training=None):
        """Pooled image embeddings, before L2 normalisation.

        Args:
            images: float `(batch, image_size, image_size, 3)` in `[-1, 1]`,
                or a NaFlex dict (`"patches"`, `"patch_mask"`,
                `"spatial_shapes"`; see `SigLIP2VisionEncoder`).
            training: bool.

        Returns:
            float `(batch, hidden_dim)`.
        """
        if isinstance(images, dict):
            self.validate_naflex_inputs(images)
        else:
            self.vision_encoder._check_images_shape(tuple(images.shape))
        outputs = self.vision_encoder(images, training=training)
        return outputs["pooled_output"]

    def get_text_embeddings(self, token_ids, training=None):
        """Pooled text embeddings, before L2 normalisation.

        Args:
            token_ids: int `(batch, max_sequence_length)`, right-padded.
            training: bool.

        Returns:
            float `(batch, projection_dim)`.
        """
        self.validate_token_ids(token_ids)
        if isinstance(token_ids, (np.ndarray, list, tuple)):
            token_ids = ops.convert_to_tensor(np.asarray(token_ids), "int32")
        outputs = self.text_encoder(token_ids, training=training)
        return outputs["pooled_output"]

    def validate_naflex_inputs(self, inputs: dict) -> None:
        """Raises `ValueError` for inconsistent NaFlex inputs.

        Checks shapes always, and for concrete (non-traced) values that
        every grid is non-empty and fits the sequence, and that
        `patch_mask` marks exactly the first `h * w` patches of each
        example.

        Args:
            inputs: NaFlex dict (see `SigLIP2VisionEncoder`).
        """
        self.vision_encoder._check_naflex_shapes(
            {key: value.shape for key, value in inputs.items()}
        )
        shapes = _concrete_array(inputs["spatial_shapes"])
        mask = _concrete_array(inputs["patch_mask"])
        if shapes is None or mask is None:
            return
        counts = shapes.astype(np.int64).prod(axis=-1)
        length = mask.shape[1]
        if (shapes < 1).any() or (counts > length).any():
            raise ValueError(
                "Each `spatial_shapes` row (h, w) needs h, w >= 1 and "
                f"h * w <= {length}; got {shapes.tolist()}."
            )
        expected = np.arange(length)[None, :] < counts[:, None]
        if not np.array_equal(mask.astype(bool), expected):
            bad = np.nonzero((mask.astype(bool) != expected).any(-1))[0]
            raise ValueError(
                "`patch_mask` must mark the first h * w patches of each "
                f"example per `spatial_shapes`; examples {bad.tolist()} "
                "disagree."
            )

    def validate_token_ids(self, token_ids) -> None:
        """Raises `ValueError` for ids of the wrong dtype or range.

        Only concrete (non-traced) inputs are checked for range; traced
        inputs are checked for rank and length by the encoder.

        Args:
            token_ids: int `(batch, length)`.
        """
        values = _concrete_array(token_ids)
        if values is None:
            return
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"`token_ids` must be integers; got dtype {values.dtype}."
            )
        vocabulary_size = self.text_encoder.vocabulary_size
        if values.size and (
            values.min() < 0 or values.max() >= vocabulary_size
        ):
            raise ValueError(
                "`token_ids` must be in [0, "
                f"{vocabulary_size}); got values in [{values.min()}, "
                f"{values.max()}]."
            )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if self.loss is not None:
            return super().compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=training,
            )
        loss = sigmoid_loss(y_pred, labels=y)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vision_encoder": keras.layers.serialize(self.vision_encoder),
                "text_encoder": keras.layers.serialize(self.text_encoder),
                "logit_scale_init": self.logit_scale_init,
                "logit_bias_init": self.logit_bias_init,
                "naflex": self.naflex,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = config.copy()
        for key in ("vision_encoder", "text_encoder"):
            if isinstance(config[key], dict):
                config[key] = keras.layers.deserialize(config[key])
        return super().from_config(config)
