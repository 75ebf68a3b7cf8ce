"""The SigLIP 2 image tower: a ViT with learned position embeddings and a
MAP head."""

import keras
from keras import ops

from keras_siglip2.layers.map_head import MAPHead
from keras_siglip2.layers.patch_embedding import PatchEmbedding
from keras_siglip2.layers.position_embedding import PositionEmbedding2D
from keras_siglip2.layers.transformer_encoder import TransformerEncoderBlock


@keras.saving.register_keras_serializable(package="keras_siglip2")
class SigLIP2VisionEncoder(keras.layers.Layer):
    """ViT image encoder for fixed-resolution or NaFlex inputs.

    Patch embedding, learned position embedding, `num_layers` pre-LN
    blocks, a final LayerNorm and a MAP head that pools the tokens.

    Two input forms share the same weights:
    - fixed resolution: square images; the position table is added as is;
    - NaFlex: a dict of padded, flattened patches of any aspect ratio
      (see `keras_siglip2.data.naflex`); the position table is resized to
      each example's patch grid and padded tokens are masked in every
      attention and in the MAP head, so they never affect real outputs.

    Args:
        image_size: int. Side of the square input image in pixels.
        patch_size: int. Side of a patch in pixels. The grid has
            `image_size // patch_size` patches a side; leftover pixels are
            ignored, as in the released so400m/14 at 384 px.
        hidden_dim: int. Token width.
        num_layers: int. Transformer blocks.
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP hidden width.
        layer_norm_epsilon: float. LayerNorm epsilon.
        use_head: bool. Whether to pool with a MAP head. Without it,
            `pooled_output` is the mean of the tokens.
        remat: bool. Rematerialise each transformer block in the
            backward pass (see `TransformerEncoderBlock`), for training at
            large batch; outputs are unchanged.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: float images `(batch, image_size, image_size, 3)` scaled to
            `[-1, 1]`, or a NaFlex dict with `"patches"`: float
            `(batch, length, patch_size**2 * 3)`, `"patch_mask"`: bool/int
            `(batch, length)` (1 for real patches, a prefix) and
            `"spatial_shapes"`: int `(batch, 2)` patch-grid rows and
            columns.

    Returns:
        dict with `"sequence_output"`: float `(batch, num_patches,
        hidden_dim)` (after the final LayerNorm) and `"pooled_output"`:
        float `(batch, hidden_dim)`. For NaFlex inputs the sequence output
        has `length` tokens, padded ones included.

    Example:
    >>> encoder = SigLIP2VisionEncoder(
    ...     image_size=16, patch_size=8, hidden_dim=8, num_layers=1,
    ...     num_heads=2, intermediate_dim=16)
    >>> encoder(keras.ops.ones((2, 16, 16, 3)))["pooled_output"].shape
    (2, 8)
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        intermediate_dim: int,
        layer_norm_epsilon: float = 1e-6,
        use_head: bool = True,
        remat: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", "vision_encoder")
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.remat = remat
        self.use_head = use_head
        self.grid_size = image_size // patch_size

        self.patch_embedding = PatchEmbedding(
            hidden_dim, patch_size, dtype=self.dtype_policy, name="embedding"
        )
        self.position_embedding = PositionEmbedding2D(
            self.grid_size,
            self.grid_size,
            hidden_dim,
            dtype=self.dtype_policy,
            name="pos_embedding",
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
        self.head = (
            MAPHead(
                hidden_dim,
                num_heads,
                intermediate_dim,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=self.dtype_policy,
                name="MAPHead_0",
            )
            if use_head
            else None
        )

    def _check_images_shape(self, shape):
        expected = (self.image_size, self.image_size, 3)
        if len(shape) != 4 or tuple(shape[1:]) != expected:
            raise ValueError(
                "`images` must have shape (batch, "
                f"{self.image_size}, {self.image_size}, 3); got shape "
                f"{tuple(shape)}."
            )

    def _check_naflex_shapes(self, shapes):
        missing = {"patches", "patch_mask", "spatial_shapes"} - set(shapes)
        if missing:
            raise ValueError(
                f"NaFlex inputs miss {sorted(missing)}; got keys "
                f"{sorted(shapes)}."
            )
        patch_dim = self.patch_size**2 * 3
        patches = tuple(shapes["patches"])
        if len(patches) != 3 or patches[2] != patch_dim:
            raise ValueError(
                "`patches` must have shape (batch, length, "
                f"{patch_dim}); got shape {patches}."
            )
        if tuple(shapes["patch_mask"])[1:] != patches[1:2]:
            raise ValueError(
                "`patch_mask` must have shape (batch, length) = "
                f"{patches[:2]}; got shape {tuple(shapes['patch_mask'])}."
            )
        if tuple(shapes["spatial_shapes"])[1:] != (2,):
            raise ValueError(
                "`spatial_shapes` must have shape (batch, 2); got shape "
                f"{tuple(shapes['spatial_shapes'])}."
            )

    def build(self, input_shape):
        if isinstance(input_shape, dict):
            self._check_naflex_shapes(input_shape)
            batch, length = input_shape["patches"][:2]
            patch_shape = (batch, self.patch_size, self.patch_size, 3)
        else:
            self._check_images_shape(input_shape)
            batch, length = input_shape[0], self.grid_size**2
            patch_shape = input_shape
        self.patch_embedding.build(patch_shape)
        tokens_shape = (batch, length, self.hidden_dim)
        self.position_embedding.build(tokens_shape)
        for layer in self.encoder_layers:
            layer.build(tokens_shape)
        self.encoder_norm.build(tokens_shape)
        if self.head is not None:
            self.head.build(tokens_shape)
        self.built = True

    def encode_tokens(self, tokens, attention_mask=None, training=None):
        """Runs the blocks, final norm and pooling on embedded tokens.

        Args:
            tokens: float `(batch, length, hidden_dim)`: patch embeddings
                with position embeddings added.
            attention_mask: optional bool/int `(batch, length)`; padded
                tokens are masked as keys and in the MAP head.
            training: bool.

        Returns:
            The same dict as `call`.
        """
        x = tokens
        for layer in self.encoder_layers:
            x = layer(x, attention_mask=attention_mask, training=training)
        x = self.encoder_norm(x)
        if self.head is not None:
            pooled = self.head(x, attention_mask=attention_mask)
        elif attention_mask is None:
            pooled = ops.mean(x, axis=1)
        else:
            weights = ops.cast(attention_mask, x.dtype)[..., None]
            pooled = ops.sum(x * weights, axis=1) / ops.maximum(
                ops.sum(weights, axis=1), 1.0
            )
        return {"sequence_output": x, "pooled_output": pooled}

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            self._check_naflex_shapes({k: v.shape for k, v in inputs.items()})
            patches = inputs["patches"]
            length = patches.shape[1] or ops.shape(patches)[1]
            x = self.patch_embedding.embed_patches(patches)
            x = x + self.position_embedding.resize_per_example(
                inputs["spatial_shapes"], length
            )
            return self.encode_tokens(
                x, attention_mask=inputs["patch_mask"], training=training
            )
        self._check_images_shape(inputs.shape)
        x = self.patch_embedding(inputs)
        x = self.position_embedding(x)
        return self.encode_tokens(x, training=training)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            batch, length = input_shape["patches"][:2]
        else:
            batch, length = input_shape[0], self.grid_size**2
        return {
            "sequence_output": (batch, length, self.hidden_dim),
            "pooled_output": (batch, self.hidden_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "remat": self.remat,
                "use_head": self.use_head,
            }
        )
        return config
