"""Multi-head dot-product attention with big_vision's parameter layout."""

import keras
from keras import ops


def padding_mask_to_attention_mask(padding_mask):
    """Expands a key validity mask for `keras.ops.dot_product_attention`.

    Args:
        padding_mask: bool/int tensor `(batch, key_length)`; true/1 marks a
            real token, false/0 a padded one.

    Returns:
        bool tensor `(batch, 1, 1, key_length)` that broadcasts over heads
        and queries.
    """
    return ops.cast(padding_mask, "bool")[:, None, None, :]


@keras.saving.register_keras_serializable(package="keras_siglip2")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention.

    Projection kernels use the layout of big_vision's flax
    `MultiHeadDotProductAttention`: query/key/value kernels are
    `(hidden_dim, num_heads, head_dim)` and the output kernel is
    `(num_heads, head_dim, hidden_dim)`, so checkpoints map without
    reshuffling heads.

    Args:
        num_heads: int. Number of attention heads.
        hidden_dim: int. Model width; must be divisible by `num_heads`.
        kernel_initializer: initializer for the four projections.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        query: float `(batch, query_length, hidden_dim)`.
        value: float `(batch, key_length, hidden_dim)`; also the keys.
        attention_mask: optional bool `(batch, key_length)` key validity
            mask, or any mask broadcastable to
            `(batch, num_heads, query_length, key_length)`.

    Returns:
        float `(batch, query_length, hidden_dim)`.

    Example:
    >>> layer = MultiHeadAttention(num_heads=2, hidden_dim=8)
    >>> layer(keras.ops.ones((1, 3, 8)), keras.ops.ones((1, 5, 8))).shape
    (1, 3, 8)
    """

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.head_dim = hidden_dim // num_heads
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        projection = dict(
            equation="btd,dnh->btnh",
            output_shape=(None, num_heads, self.head_dim),
            bias_axes="nh",
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
        )
        self.query_dense = keras.layers.EinsumDense(name="query", **projection)
        self.key_dense = keras.layers.EinsumDense(name="key", **projection)
        self.value_dense = keras.layers.EinsumDense(name="value", **projection)
        self.output_dense = keras.layers.EinsumDense(
            equation="btnh,nhd->btd",
            output_shape=(None, hidden_dim),
            bias_axes="d",
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="out",
        )

    def build(self, query_shape, value_shape=None, attention_mask_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        self.query_dense.build(query_shape)
        self.key_dense.build(value_shape)
        self.value_dense.build(value_shape)
        self.output_dense.build(
            (query_shape[0], query_shape[1], self.num_heads, self.head_dim)
        )
        self.built = True

    def call(self, query, value=None, attention_mask=None):
        value = query if value is None else value
        q = self.query_dense(query)
        k = self.key_dense(value)
        v = self.value_dense(value)
        if attention_mask is not None and len(attention_mask.shape) == 2:
            attention_mask = padding_mask_to_attention_mask(attention_mask)
        elif attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
        x = ops.dot_product_attention(
            q, k, v, mask=attention_mask, scale=self.head_dim**-0.5
        )
        return self.output_dense(x)

    def compute_output_shape(
        self, query_shape, value_shape=None, attention_mask_shape=None
    ):
        return tuple(query_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "hidden_dim": self.hidden_dim,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
