"""Multihead attention pooling (MAP) head."""

import keras
from keras import ops

from keras_siglip2.layers.attention import MultiHeadAttention
from keras_siglip2.layers.mlp import MlpBlock


@keras.saving.register_keras_serializable(package="keras_siglip2")
class MAPHead(keras.layers.Layer):
    """Pools tokens with one learned probe query, then `x + MLP(LN(x))`.

    Args:
        hidden_dim: int. Token width.
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP hidden width.
        layer_norm_epsilon: float. LayerNorm epsilon.
        **kwargs: base layer arguments.

    Call arguments:
        x: float `(batch, length, hidden_dim)`.
        attention_mask: optional bool/int `(batch, length)`; padded tokens
            (false/0) are not pooled.

    Returns:
        float `(batch, hidden_dim)`.

    Example:
    >>> head = MAPHead(8, num_heads=2, intermediate_dim=16)
    >>> head(keras.ops.ones((2, 5, 8))).shape
    (2, 8)
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        intermediate_dim: int,
        layer_norm_epsilon: float = 1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.attention = MultiHeadAttention(
            num_heads, hidden_dim, dtype=self.dtype_policy, name="attention"
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="ln"
        )
        self.mlp = MlpBlock(
            hidden_dim, intermediate_dim, dtype=self.dtype_policy, name="mlp"
        )

    def build(self, input_shape):
        self.probe = self.add_weight(
            shape=(1, 1, self.hidden_dim),
            initializer="glorot_uniform",
            name="probe",
        )
        probe_shape = (input_shape[0], 1, self.hidden_dim)
        self.attention.build(probe_shape, input_shape)
        self.layer_norm.build(probe_shape)
        self.mlp.build(probe_shape)
        self.built = True

    def call(self, x, attention_mask=None):
        batch_size = ops.shape(x)[0]
        probe = ops.broadcast_to(
            ops.cast(self.probe, x.dtype), (batch_size, 1, self.hidden_dim)
        )
        y = self.attention(probe, x, attention_mask=attention_mask)
        y = y + self.mlp(self.layer_norm(y))
        return y[:, 0]

    def compute_output_shape(self, x_shape, attention_mask_shape=None):
        return (x_shape[0], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
