"""Image-text logits with a learned temperature and bias."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_siglip2")
class ContrastiveLogits(keras.layers.Layer):
    """`z_ij = exp(t') * <x_i, y_j> + b` on L2-normalised embeddings.

    Args:
        logit_scale_init: float. Initial `t'` (the log temperature);
            SigLIP uses `log(10)`.
        logit_bias_init: float. Initial bias `b`; SigLIP uses -10.
        **kwargs: base layer arguments.

    Call arguments:
        image_embeddings: float `(num_images, dim)`, not normalised.
        text_embeddings: float `(num_texts, dim)`, not normalised.

    Returns:
        float `(num_images, num_texts)` logits.

    Example:
    >>> layer = ContrastiveLogits()
    >>> layer(keras.ops.ones((2, 4)), keras.ops.ones((3, 4))).shape
    (2, 3)
    """

    def __init__(
        self,
        logit_scale_init: float = math.log(10.0),
        logit_bias_init: float = -10.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.logit_scale_init = logit_scale_init
        self.logit_bias_init = logit_bias_init

    def build(self, image_embeddings_shape, text_embeddings_shape=None):
        self.logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.logit_scale_init),
            name="t",
        )
        self.logit_bias = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.logit_bias_init),
            name="b",
        )
        self.built = True

    def call(self, image_embeddings, text_embeddings):
        image_embeddings = ops.normalize(image_embeddings, axis=-1)
        text_embeddings = ops.normalize(text_embeddings, axis=-1)
        dtype = image_embeddings.dtype
        logits = ops.matmul(image_embeddings, ops.transpose(text_embeddings))
        scale = ops.exp(ops.cast(self.logit_scale, dtype))
        return logits * scale + ops.cast(self.logit_bias, dtype)

    def compute_output_shape(
        self, image_embeddings_shape, text_embeddings_shape
    ):
        return (image_embeddings_shape[0], text_embeddings_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "logit_scale_init": self.logit_scale_init,
                "logit_bias_init": self.logit_bias_init,
            }
        )
        return config
