"""The transformer MLP block: Dense, tanh-approximate GELU, Dense."""

import keras


@keras.saving.register_keras_serializable(package="keras_siglip2")
class MlpBlock(keras.layers.Layer):
    """Two dense layers with a tanh-approximate GELU in between.

    Args:
        hidden_dim: int. Input and output width.
        intermediate_dim: int. Width of the hidden layer.
        **kwargs: base layer arguments.

    Call arguments:
        x: float `(..., hidden_dim)`.

    Returns:
        float `(..., hidden_dim)`.

    Example:
    >>> block = MlpBlock(hidden_dim=8, intermediate_dim=16)
    >>> block(keras.ops.ones((2, 8))).shape
    (2, 8)
    """

    def __init__(self, hidden_dim: int, intermediate_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.fc1 = keras.layers.Dense(
            intermediate_dim, dtype=self.dtype_policy, name="Dense_0"
        )
        self.fc2 = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="Dense_1"
        )

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.built = True

    def call(self, x):
        x = self.fc1(x)
        x = keras.activations.gelu(x, approximate=True)
        return self.fc2(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim,
            }
        )
        return config
