"""Patch embedding: a stride-p convolution, or a dense layer on patches."""

import keras
from keras import ops


def patchify(images, patch_size: int):
    """Cuts images into flattened, non-overlapping patches.

    Patches are ordered row-major over the patch grid; each patch is
    flattened in `(row, column, channel)` order, the order HF's
    `Siglip2ImageProcessor` and big_vision's NaFlex use.

    Args:
        images: float `(batch, height, width, channels)` with static height
            and width. Rows and columns past the last whole patch are
            dropped, as a "valid" stride-p convolution does (so400m/14 at
            384 px uses 27 x 27 patches).
        patch_size: int.

    Returns:
        float `(batch, (height // p) * (width // p), p * p * channels)`.
    """
    _, height, width, channels = images.shape
    if height is None or width is None:
        raise ValueError(
            f"`images` needs a static height and width; got shape "
            f"{tuple(images.shape)}."
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    images = images[:, : grid_h * patch_size, : grid_w * patch_size]
    x = ops.reshape(
        images, (-1, grid_h, patch_size, grid_w, patch_size, channels)
    )
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(
        x, (-1, grid_h * grid_w, patch_size * patch_size * channels)
    )


@keras.saving.register_keras_serializable(package="keras_siglip2")
class PatchEmbedding(keras.layers.Layer):
    """Linear embedding of `patch_size x patch_size` patches.

    One kernel of shape `(p, p, channels, hidden_dim)` serves two forms:
    `call(images)` applies it as a convolution with kernel = stride = p
    (fixed-resolution images), and `embed_patches(patches)` as a dense layer
    on already-flattened patches (NaFlex). Both give the same result on the
    same pixels.

    Args:
        hidden_dim: int. Output width.
        patch_size: int. Patch side in pixels.
        num_channels: int. Image channels.
        **kwargs: base layer arguments.

    Call arguments:
        images: float `(batch, height, width, num_channels)`.

    Returns:
        float `(batch, (height // p) * (width // p), hidden_dim)`.

    Example:
    >>> layer = PatchEmbedding(hidden_dim=8, patch_size=4)
    >>> layer(keras.ops.ones((2, 8, 12, 3))).shape
    (2, 6, 8)
    """

    def __init__(
        self,
        hidden_dim: int,
        patch_size: int,
        num_channels: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size
        self.num_channels = num_channels

    def build(self, input_shape=None):
        p = self.patch_size
        self.kernel = self.add_weight(
            shape=(p, p, self.num_channels, self.hidden_dim),
            initializer="lecun_normal",
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.hidden_dim,), initializer="zeros", name="bias"
        )
        self.built = True

    def call(self, images):
        x = ops.conv(
            images,
            ops.cast(self.kernel, images.dtype),
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
        )
        x = x + ops.cast(self.bias, x.dtype)
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], -1, self.hidden_dim))

    def embed_patches(self, patches):
        """Embeds flattened patches with the same weights.

        Args:
            patches: float `(batch, num_patches, p * p * num_channels)` in
                the order produced by `patchify`.

        Returns:
            float `(batch, num_patches, hidden_dim)`.
        """
        kernel = ops.reshape(
            ops.cast(self.kernel, patches.dtype), (-1, self.hidden_dim)
        )
        bias = ops.cast(self.bias, patches.dtype)
        return ops.matmul(patches, kernel) + bias

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[:3]
        if height is None or width is None:
            return (batch, None, self.hidden_dim)
        p = self.patch_size
        return (batch, (height // p) * (width // p), self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size,
                "num_channels": self.num_channels,
            }
        )
        return config
