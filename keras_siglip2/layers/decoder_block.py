"""Pre-LayerNorm transformer decoder block with cross-attention."""

import keras

from keras_siglip2.layers.attention import MultiHeadAttention
from keras_siglip2.layers.mlp import MlpBlock


@keras.saving.register_keras_serializable(package="keras_siglip2")
class TransformerDecoderBlock(keras.layers.Layer):
    """Self-attention, cross-attention to a memory, then an MLP.

    `x + SelfMHA(LN(x))`, `x + CrossMHA(LN(x), memory)`, `x + MLP(LN(x))`.

    Args:
        hidden_dim: int. Token width (the memory must have this width too).
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP hidden width.
        layer_norm_epsilon: float.
        dropout: float. Dropout on the residual branches while training.
        **kwargs: base layer arguments.

    Call arguments:
        x: float `(batch, length, hidden_dim)`.
        memory: float `(batch, memory_length, hidden_dim)`, e.g. the
            unpooled image tokens.
        self_attention_mask: optional bool mask broadcastable to
            `(batch, num_heads, length, length)` (e.g. causal).
        memory_mask: optional bool/int `(batch, memory_length)`; padded
            memory tokens (NaFlex) are not attended.
        training: bool.

    Returns:
        float `(batch, length, hidden_dim)`.

    Example:
    >>> block = TransformerDecoderBlock(8, num_heads=2, intermediate_dim=16)
    >>> block(keras.ops.ones((2, 3, 8)), keras.ops.ones((2, 5, 8))).shape
    (2, 3, 8)
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        intermediate_dim: int,
        layer_norm_epsilon: float = 1e-6,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )

        self.self_attention_norm = norm("ln_0")
        self.self_attention = MultiHeadAttention(
            num_heads, hidden_dim, dtype=self.dtype_policy, name="self_attn"
        )
        self.cross_attention_norm = norm("ln_1")
        self.cross_attention = MultiHeadAttention(
            num_heads, hidden_dim, dtype=self.dtype_policy, name="cross_attn"
        )
        self.mlp_norm = norm("ln_2")
        self.mlp = MlpBlock(
            hidden_dim, intermediate_dim, dtype=self.dtype_policy, name="mlp"
        )
        self.dropout_layer = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        memory_shape = (input_shape[0], None, self.hidden_dim)
        self.self_attention_norm.build(input_shape)
        self.self_attention.build(input_shape, input_shape)
        self.cross_attention_norm.build(input_shape)
        self.cross_attention.build(input_shape, memory_shape)
        self.mlp_norm.build(input_shape)
        self.mlp.build(input_shape)
        self.built = True

    def call(
        self,
        x,
        memory,
        self_attention_mask=None,
        memory_mask=None,
        training=None,
    ):
        y = self.self_attention_norm(x)
        y = self.self_attention(y, y, attention_mask=self_attention_mask)
        x = x + self.dropout_layer(y, training=training)
        y = self.cross_attention_norm(x)
        y = self.cross_attention(y, memory, attention_mask=memory_mask)
        x = x + self.dropout_layer(y, training=training)
        y = self.mlp(self.mlp_norm(x))
        return x + self.dropout_layer(y, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config
