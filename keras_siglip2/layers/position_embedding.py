"""Learned 2-D position embedding on the patch grid, resizable."""

import keras
from keras import ops

from keras_siglip2.layers.interpolation import linear_interpolation_weights
from keras_siglip2.layers.interpolation import resize_grid


@keras.saving.register_keras_serializable(package="keras_siglip2")
class PositionEmbedding2D(keras.layers.Layer):
    """Adds a learned embedding per patch-grid position.

    The table is stored as `(grid_h * grid_w, hidden_dim)`, row-major over
    the grid (the layout of HF and keras-hub). `resize` resamples it to
    another grid with antialiased bilinear interpolation, as HF and
    big_vision do for NaFlex and resolution changes.

    Args:
        grid_h: int. Rows of the patch grid.
        grid_w: int. Columns of the patch grid.
        hidden_dim: int. Embedding width.
        **kwargs: base layer arguments.

    Call arguments:
        x: float `(batch, grid_h * grid_w, hidden_dim)` patch embeddings.

    Returns:
        float `(batch, grid_h * grid_w, hidden_dim)`: `x` plus the table.

    Example:
    >>> layer = PositionEmbedding2D(grid_h=4, grid_w=4, hidden_dim=8)
    >>> layer(keras.ops.zeros((1, 16, 8))).shape
    (1, 16, 8)
    >>> layer.resize(2, 6).shape
    (12, 8)
    """

    def __init__(self, grid_h: int, grid_w: int, hidden_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.grid_h = grid_h
        self.grid_w = grid_w
        self.hidden_dim = hidden_dim

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.grid_h * self.grid_w, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(
                stddev=self.hidden_dim**-0.5
            ),
            name="embeddings",
        )
        self.built = True

    def call(self, x):
        if x.shape[1] is not None and x.shape[1] != self.grid_h * self.grid_w:
            raise ValueError(
                f"Expected {self.grid_h}x{self.grid_w}="
                f"{self.grid_h * self.grid_w} patches; got {x.shape[1]}. "
                "Resize the position embedding for other resolutions."
            )
        return x + ops.cast(self.embeddings, x.dtype)[None]

    def resize(self, grid_h: int, grid_w: int, antialias: bool = True):
        """Returns the table resampled to a `grid_h x grid_w` grid.

        Args:
            grid_h: int. Target rows.
            grid_w: int. Target columns.
            antialias: bool. Widen the filter when shrinking.

        Returns:
            float `(grid_h * grid_w, hidden_dim)`, row-major.
        """
        table = ops.reshape(
            self.embeddings, (self.grid_h, self.grid_w, self.hidden_dim)
        )
        resized = resize_grid(table, grid_h, grid_w, antialias=antialias)
        return ops.reshape(resized, (grid_h * grid_w, self.hidden_dim))

    def resize_per_example(self, spatial_shapes, length: int):
        """Resamples the table to each example's grid, flattened and padded.

        This is the NaFlex position embedding: example `b` gets the table
        resized (antialiased bilinear) to its `(h_b, w_b)` patch grid,
        flattened row-major into its first `h_b * w_b` positions. Padding
        positions get the embedding of grid cell (0, 0), as in HF and
        big_vision; they are masked downstream. Vectorised over the batch:
        one matmul, no per-example loop, a static output shape.

        Args:
            spatial_shapes: int `(batch, 2)`: patch-grid rows and columns of
                each example, with `h * w <= length`.
            length: int. Static sequence length (padded patch count).

        Returns:
            float `(batch, length, hidden_dim)`.
        """
        spatial_shapes = ops.cast(spatial_shapes, "float32")
        heights = spatial_shapes[:, 0:1]
        widths = spatial_shapes[:, 1:2]
        positions = ops.arange(length, dtype="float32")[None, :]
        rows = ops.floor(positions / widths)
        cols = positions - rows * widths
        valid = positions < heights * widths
        rows = ops.where(valid, rows, 0.0)
        cols = ops.where(valid, cols, 0.0)
        row_weights = linear_interpolation_weights(self.grid_h, rows, heights)
        col_weights = linear_interpolation_weights(self.grid_w, cols, widths)
        weights = row_weights[..., :, None] * col_weights[..., None, :]
        batch_size = ops.shape(spatial_shapes)[0]
        weights = ops.reshape(
            weights, (batch_size, length, self.grid_h * self.grid_w)
        )
        table = ops.cast(self.embeddings, "float32")
        resized = ops.matmul(weights, table)
        return ops.cast(resized, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "grid_h": self.grid_h,
                "grid_w": self.grid_w,
                "hidden_dim": self.hidden_dim,
            }
        )
        return config
