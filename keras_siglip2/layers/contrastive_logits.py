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
        float32 `(num_images, num_texts)` logits (whatever the compute
        dtype).

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
        # Always float32: under mixed precision a bfloat16 bias of -10 would
        # have a resolution of 0.06.
        image_embeddings = ops.normalize(
            ops.cast(image_embeddings, "float32"), axis=-1
        )
        text_embeddings = ops.normalize(
            ops.cast(text_embeddings, "float32"), axis=-1
        )
        logits = ops.matmul(image_embeddings, ops.transpose(text_embeddings))
        scale = ops.exp(ops.cast(self.logit_scale, "float32"))
        return logits * scale + ops.cast(self.logit_bias, "float32")

    def compute_output_shape(
        self, image_embeddings_shape, text_embeddings_shape
    ):
        return (image_embeddings_shape[0], text_embeddings_shape[0])

    def compute_output_spec(self, image_embeddings, text_embeddings):
        shape = self.compute_output_shape(
            image_embeddings.shape, text_embeddings.shape
        )
        return keras.KerasTensor(shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "logit_scale_init": self.logit_scale_init,
                "logit_bias_init": self.logit_bias_init,
            }
        )
        return config
