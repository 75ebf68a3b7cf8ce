"""The LocCa decoder: captioning and location tasks on image tokens."""

import keras
from keras import ops

from keras_siglip2.layers.decoder_block import TransformerDecoderBlock
from keras_siglip2.layers.initializers import RowChunkedRandomNormal


@keras.saving.register_keras_serializable(package="keras_siglip2")
class LocCaDecoder(keras.layers.Layer):
    """Transformer decoder cross-attending to the unpooled image tokens.

    SigLIP 2 trains it next to the sigmoid loss (LocCa): captioning,
    referring expression comprehension (text -> box tokens) and grounded
    captioning (box tokens -> text). Each example is decoded either
    autoregressively (causal self-attention) or, for parallel prediction,
    with full self-attention over mask-token inputs, chosen per example by
    `parallel`. Sequences are built by `keras_siglip2.data.locca`.

    `call` returns the final hidden states; `logits` applies the output
    head. Keeping them apart lets the loss be computed in chunks without
    materialising `(batch, length, vocabulary)` logits.

    Args:
        vocabulary_size: int. Decoder vocabulary (text tokens, location
            bins, task and mask tokens).
        hidden_dim: int. Width (the text encoder's width in SigLIP 2).
        num_layers: int. Depth (half the text encoder's in SigLIP 2).
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP hidden width.
        max_sequence_length: int. Longest decoder sequence.
        image_dim: int. Width of the image tokens it cross-attends to.
        layer_norm_epsilon: float.
        dropout: float.
        **kwargs: base layer arguments.

    Call arguments:
        token_ids: int `(batch, length)` decoder inputs.
        image_tokens: float `(batch, num_patches, image_dim)` unpooled image
            tokens; projected to `hidden_dim`.
        parallel: optional bool `(batch,)`; true for parallel prediction
            (no causal mask). Defaults to all autoregressive.
        image_mask: optional bool/int `(batch, num_patches)` validity of
            the image tokens (NaFlex padding).
        training: bool.

    Returns:
        float `(batch, length, hidden_dim)`.

    Example:
    >>> decoder = LocCaDecoder(
    ...     vocabulary_size=20, hidden_dim=8, num_layers=1, num_heads=2,
    ...     intermediate_dim=16, max_sequence_length=6, image_dim=12)
    >>> hidden = decoder(
    ...     keras.ops.ones((2, 6), "int32"), keras.ops.ones((2, 4, 12)))
    >>> decoder.logits(hidden).shape
    (2, 6, 20)
    """

    def __init__(
        self,
        vocabulary_size: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        intermediate_dim: int,
        max_sequence_length: int,
        image_dim: int,
        layer_norm_epsilon: float = 1e-6,
        dropout: float = 0.0,
        **kwargs,
    ):
        kwargs.setdefault("name", "locca_decoder")
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.image_dim = image_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            # Drawn in row blocks: the 256k-row table peaks at ~2x its size.
            embeddings_initializer=RowChunkedRandomNormal(hidden_dim**-0.5),
            dtype=self.dtype_policy,
            name="Embed_0",
        )
        self.image_projection = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="image_projection"
        )
        self.decoder_layers = [
            TransformerDecoderBlock(
                hidden_dim,
                num_heads,
                intermediate_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                dropout=dropout,
                dtype=self.dtype_policy,
                name=f"decoderblock_{i}",
            )
            for i in range(num_layers)
        ]
        self.decoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="decoder_norm",
        )
        self.head = keras.layers.Dense(
            vocabulary_size,
            kernel_initializer="zeros",
            dtype=self.dtype_policy,
            name="head",
        )

    def build(self, token_ids_shape):
        batch = token_ids_shape[0]
        self.token_embedding.build(token_ids_shape)
        self.position_embedding = self.add_weight(
            shape=(self.max_sequence_length, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(
                stddev=self.hidden_dim**-0.5
            ),
            name="pos_embedding",
        )
        self.image_projection.build((batch, None, self.image_dim))
        tokens_shape = (batch, token_ids_shape[1], self.hidden_dim)
        for layer in self.decoder_layers:
            layer.build(tokens_shape)
        self.decoder_norm.build(tokens_shape)
        self.head.build(tokens_shape)
        self.built = True

    def call(
        self,
        token_ids,
        image_tokens,
        parallel=None,
        image_mask=None,
        training=None,
    ):
        if len(token_ids.shape) != 2 or (
            token_ids.shape[1] is not None
            and token_ids.shape[1] > self.max_sequence_length
        ):
            raise ValueError(
                "`token_ids` must have shape (batch, length) with length <= "
                f"{self.max_sequence_length}; got {tuple(token_ids.shape)}."
            )
        length = ops.shape(token_ids)[1]
        x = self.token_embedding(token_ids)
        x = x + ops.cast(self.position_embedding[:length], x.dtype)[None]
        memory = self.image_projection(image_tokens)
        causal = ops.tril(ops.ones((length, length), "bool"))
        if parallel is None:
            mask = causal[None, None]
        else:
            parallel = ops.cast(parallel, "bool")[:, None, None, None]
            mask = ops.logical_or(causal[None, None], parallel)
        for layer in self.decoder_layers:
            x = layer(
                x,
                memory,
                self_attention_mask=mask,
                memory_mask=image_mask,
                training=training,
            )
        return self.decoder_norm(x)

    def logits(self, hidden):
        """Output-head logits `(..., vocabulary_size)` of hidden states."""
        return self.head(hidden)

    def generate(
        self,
        image_tokens,
        prompt_ids,
        prompt_lengths,
        num_steps: int,
        image_mask=None,
        allowed_token_mask=None,
    ):
        """Greedy autoregressive decoding after per-example prompts.

        The whole fixed-length buffer is re-encoded each step (no cache),
        so every step has the same shapes and compiles once.

        Args:
            image_tokens: float `(batch, num_patches, image_dim)`.
            prompt_ids: int `(batch, prompt_length)`: task token and
                prefix, right-padded.
            prompt_lengths: int `(batch,)` real prompt lengths (>= 1).
            num_steps: int. Tokens to generate.
            image_mask: optional `(batch, num_patches)` validity mask.
            allowed_token_mask: optional bool `(vocabulary_size,)`; only
                these tokens may be generated (e.g. location tokens for
                referring expressions).

        Returns:
            int32 `(batch, num_steps)` generated ids.
        """
        prompt_ids = ops.cast(prompt_ids, "int32")
        batch, prompt_length = prompt_ids.shape
        length = prompt_length + num_steps
        if length > self.max_sequence_length:
            raise ValueError(
                f"prompt ({prompt_length}) + num_steps ({num_steps}) "
                f"exceeds max_sequence_length ({self.max_sequence_length})."
            )
        tokens = ops.pad(prompt_ids, ((0, 0), (0, num_steps)))
        positions = ops.cast(prompt_lengths, "int32") - 1
        columns = ops.arange(length, dtype="int32")[None, :]
        generated = []
        for _ in range(num_steps):
            hidden = self(tokens, image_tokens, image_mask=image_mask)
            last = ops.take_along_axis(
                hidden, positions[:, None, None], axis=1
            )[:, 0]
            logits = ops.cast(self.logits(last), "float32")
            if allowed_token_mask is not None:
                logits = ops.where(allowed_token_mask[None], logits, -1e9)
            next_ids = ops.cast(ops.argmax(logits, axis=-1), "int32")
            generated.append(next_ids)
            positions = positions + 1
            tokens = ops.where(
                columns == positions[:, None], next_ids[:, None], tokens
            )
        return ops.stack(generated, axis=1)

    def compute_output_shape(self, token_ids_shape):
        return tuple(token_ids_shape) + (self.hidden_dim,)

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
                "image_dim": self.image_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout": self.dropout,
            }
        )
        return config


def locca_decoder_for(
    backbone,
    vocabulary_size: int,
    max_sequence_length: int,
    dtype=None,
) -> LocCaDecoder:
    """A LocCa decoder sized as in SigLIP 2 for `backbone`.

    Same width, heads and MLP as the text encoder, half its depth
    (at least 1).

    Args:
        backbone: the `SigLIP2Backbone` it will decode from (its text
            encoder sets the size, its image tower the memory width).
        vocabulary_size: int. Decoder vocabulary
            (`keras_siglip2.data.locca.LocCaVocabulary.size`).
        max_sequence_length: int. Decoder length.
        dtype: optional dtype policy.

    Returns:
        A `LocCaDecoder`.
    """
    text = backbone.text_encoder
    return LocCaDecoder(
        vocabulary_size=vocabulary_size,
        hidden_dim=text.hidden_dim,
        num_layers=max(1, text.num_layers // 2),
        num_heads=text.num_heads,
        intermediate_dim=text.intermediate_dim,
        max_sequence_length=max_sequence_length,
        image_dim=backbone.vision_encoder.hidden_dim,
        layer_norm_epsilon=text.layer_norm_epsilon,
        dtype=dtype,
    )
