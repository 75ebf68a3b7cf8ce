"""Initializers for large tables."""

import random

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_siglip2")
class RowChunkedRandomNormal(keras.initializers.Initializer):
    """Normal initializer that draws a large table a block of rows at a
    time.

    Drawing a `(256000, 768)` table in one go materialises the random bits
    and the scaled copy next to the result (about 3x the table's 750 MiB at
    peak on JAX); drawing blocks of rows and concatenating them peaks at
    about 2x. The values are `N(0, stddev**2)` like `RandomNormal`.

    Args:
        stddev: float. Standard deviation.
        rows_per_chunk: int. Rows drawn per block.
        seed: optional int. Block `i` uses seed `seed + i`; without a seed
            one is drawn from Python's `random` (seeded by
            `keras.utils.set_random_seed`).

    Example:
    >>> init = RowChunkedRandomNormal(0.02, rows_per_chunk=4, seed=1)
    >>> init((10, 3)).shape
    (10, 3)
    """

    def __init__(self, stddev: float, rows_per_chunk: int = 16384, seed=None):
        if rows_per_chunk < 1:
            raise ValueError(
                f"`rows_per_chunk` must be >= 1; got {rows_per_chunk}."
            )
        self.stddev = stddev
        self.rows_per_chunk = rows_per_chunk
        self.seed = seed

    def __call__(self, shape, dtype=None):
        seed = self.seed
        if seed is None:
            seed = random.randint(0, 2**30)
        rows, rest = shape[0], tuple(shape[1:])
        blocks = [
            keras.random.normal(
                (min(self.rows_per_chunk, rows - start),) + rest,
                stddev=self.stddev,
                dtype=dtype,
                seed=seed + i,
            )
            for i, start in enumerate(range(0, rows, self.rows_per_chunk))
        ]
        return blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, 0)

    def get_config(self):
        return {
            "stddev": self.stddev,
            "rows_per_chunk": self.rows_per_chunk,
            "seed": self.seed,
        }
