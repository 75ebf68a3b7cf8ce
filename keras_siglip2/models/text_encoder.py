"""The SigLIP 2 text tower: a transformer pooled at the last token."""

import keras
from keras import ops

from keras_siglip2.layers.initializers import RowChunkedRandomNormal
from keras_siglip2.layers.transformer_encoder import TransformerEncoderBlock


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2TextEncoder(keras.layers.Layer):
    """Transformer text encoder with last-token pooling and a linear head.

    Token and learned position embeddings, `num_layers` pre-LN blocks and a
    final LayerNorm. The pooled output is the final state of the *last*
    position (which is usually padding: SigLIP pads right to a fixed length
    and attends over pads, like big_vision), followed by a linear head to
    `projection_dim`.

    Args:
        vocabulary_size: int. Size of the token vocabulary.
        hidden_dim: int. Token width.
        num_layers: int. Transformer blocks.
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP hidden width.
        max_sequence_length: int. Length of the position table (64).
        projection_dim: int or None. Width of the pooled embedding; defaults
            to `hidden_dim`. The g model projects to the image width.
        layer_norm_epsilon: float. LayerNorm epsilon.
        remat: bool. Rematerialise each transformer block in the
            backward pass (see `TransformerEncoderBlock`), for training at
            large batch; outputs are unchanged.
        **kwargs: base layer arguments.

    Call arguments:
        token_ids: int `(batch, length)` with `length <=
            max_sequence_length`.

    Returns:
        dict with `"sequence_output"`: float `(batch, length, hidden_dim)`
        and `"pooled_output"`: float `(batch, projection_dim)`.

    Example:
    >>> encoder = SigLIP2TextEncoder(
    ...     vocabulary_size=10, hidden_dim=8, num_layers=1, num_heads=2,
    ...     intermediate_dim=16, max_sequence_length=6)
    >>> ids = keras.ops.ones((2, 6), dtype="int32")
    >>> encoder(ids)["pooled_output"].shape
    (2, 8)
    """

    def __init__(
        self,
        vocabulary_size: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        intermediate_dim: int,
        max_sequence_length: int = 64,
        projection_dim: int | None = None,
        layer_norm_epsilon: float = 1e-6,
        remat: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", "text_encoder")
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.projection_dim = projection_dim or hidden_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.remat = remat

        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=RowChunkedRandomNormal(
                stddev=hidden_dim**-0.5
            ),
            dtype=self.dtype_policy,
            name="Embed_0",
        )
        self.encoder_layers = [
            TransformerEncoderBlock(
                hidden_dim,
                num_heads,
                intermediate_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                remat=remat,
                dtype=self.dtype_policy,
                name=f"encoderblock_{i}",
            )
            for i in range(num_layers)
        ]
        self.encoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="encoder_norm",
        )
        self.head = keras.layers.Dense(
            self.projection_dim, dtype=self.dtype_policy, name="head"
        )

    def _check_token_ids_shape(self, shape):
        if len(shape) != 2 or (
            shape[1] is not None and shape[1] > self.max_sequence_length
        ):
            raise ValueError(
                "`token_ids` must have shape (batch, length) with length <= "
                f"{self.max_sequence_length}; got shape {tuple(shape)}."
            )

    def build(self, token_ids_shape):
        self._check_token_ids_shape(token_ids_shape)
        self.token_embedding.build(token_ids_shape)
        self.position_embedding = self.add_weight(
            shape=(self.max_sequence_length, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(
                stddev=self.hidden_dim**-0.5
            ),
            name="pos_embedding",
        )
        tokens_shape = tuple(token_ids_shape) + (self.hidden_dim,)
        for layer in self.encoder_layers:
            layer.build(tokens_shape)
        self.encoder_norm.build(tokens_shape)
        self.head.build((token_ids_shape[0], self.hidden_dim))
        self.built = True

    def call(self, token_ids, training=None):
        self._check_token_ids_shape(token_ids.shape)
        length = ops.shape(token_ids)[1]
        x = self.token_embedding(token_ids)
        x = x + ops.cast(self.position_embedding[:length], x.dtype)[None]
        for layer in self.encoder_layers:
            x = layer(x, training=training)
        x = self.encoder_norm(x)
        pooled = self.head(x[:, -1])
        return {"sequence_output": x, "pooled_output": pooled}

    def compute_output_shape(self, token_ids_shape):
        batch, length = token_ids_shape
        return {
            "sequence_output": (batch, length, self.hidden_dim),
            "pooled_output": (batch, self.projection_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "max_sequence_length": self.max_sequence_length,
                "projection_dim": self.projection_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "remat": self.remat,
            }
        )
        return config
