"""Pre-LayerNorm transformer encoder block."""

import keras

from keras_siglip2.layers.attention import MultiHeadAttention
from keras_siglip2.layers.mlp import MlpBlock


@keras.saving.register_keras_serializable(package="keras_siglip2")
class TransformerEncoderBlock(keras.layers.Layer):
    """`x + MHA(LN(x))`, then `x + MLP(LN(x))`.

    Args:
        hidden_dim: int. Token width.
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP hidden width.
        layer_norm_epsilon: float. LayerNorm epsilon (1e-6 in SigLIP).
        dropout: float. Dropout on both residual branches while training.
        remat: bool. Rematerialise the block in the backward pass
            (`keras.remat`, i.e. `jax.checkpoint` on JAX): only the block's
            input is kept for the gradient, and its activations are
            recomputed, trading about one extra forward for memory at
            large batch. No effect on outputs. On JAX's CPU backend the
            saving needs `XLA_FLAGS=--xla_disable_hlo_passes=
            cse_barrier_expander` set before JAX starts: XLA:CPU's
            `cse_barrier_expander` pass removes the optimization barriers
            that keep the recomputation apart, and with them the saving
            (measured: a 6-layer width-384 gradient step at batch 48 peaks
            3.5 GiB either way without the flag, 1.0 GiB with it;
            `benchmarks/remat_memory.py`).
        **kwargs: base layer arguments.

    Call arguments:
        x: float `(batch, length, hidden_dim)`.
        attention_mask: optional bool/int `(batch, length)` key validity
            mask (padded keys are ignored) or a mask broadcastable to
            `(batch, num_heads, length, length)`.
        training: bool.

    Returns:
        float `(batch, length, hidden_dim)`.

    Example:
    >>> block = TransformerEncoderBlock(8, num_heads=2, intermediate_dim=16)
    >>> block(keras.ops.ones((2, 5, 8))).shape
    (2, 5, 8)
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        intermediate_dim: int,
        layer_norm_epsilon: float = 1e-6,
        dropout: float = 0.0,
        remat: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout
        self.remat = remat
        self.layer_norm_1 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="ln_0"
        )
        self.attention = MultiHeadAttention(
            num_heads, hidden_dim, dtype=self.dtype_policy, name="attention"
        )
        self.layer_norm_2 = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="ln_1"
        )
        self.mlp = MlpBlock(
            hidden_dim, intermediate_dim, dtype=self.dtype_policy, name="mlp"
        )
        self.dropout_layer = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        self.layer_norm_1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.layer_norm_2.build(input_shape)
        self.mlp.build(input_shape)
        self.built = True

    def call(self, x, attention_mask=None, training=None):
        if self.remat:
            return keras.remat(
                lambda x, mask: self._forward(x, mask, training)
            )(x, attention_mask)
        return self._forward(x, attention_mask, training)

    def _forward(self, x, attention_mask, training):
        y = self.layer_norm_1(x)
        y = self.attention(y, y, attention_mask=attention_mask)
        x = x + self.dropout_layer(y, training=training)
        y = self.mlp(self.layer_norm_2(x))
        return x + self.dropout_layer(y, training=training)

    def compute_output_shape(self, x_shape, attention_mask_shape=None):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
                "remat": self.remat,
            }
        )
        return config
