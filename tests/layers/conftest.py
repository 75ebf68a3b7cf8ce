"""Numpy references of the transformer layers, written from the math.

The references take the layers' weights (read back as float64 numpy) and
compute in float64, so they share nothing with the Keras code but the
parameter layout. Tests share the tiny shapes of the `sizes` fixture
because JAX compiles the random initialisers once per weight shape, which
costs seconds each.
"""

import types

import numpy as np
import pytest

EPSILON = 1e-6


def _numpy(variable):
    return np.asarray(variable.value, "float64")


def _layer_norm(layer, x):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    normed = (x - mean) / np.sqrt(var + EPSILON)
    return normed * _numpy(layer.gamma) + _numpy(layer.beta)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _dense(layer, x):
    return x @ _numpy(layer.kernel) + _numpy(layer.bias)


def _mlp(layer, x):
    return _dense(layer.fc2, _gelu_tanh(_dense(layer.fc1, x)))


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _attention(layer, query, value, mask=None):
    """`mask`: bool `(batch, key_length)` or `(batch, 1|heads, q, k)`."""

    def project(dense, x):
        return np.einsum("btd,dnh->btnh", x, _numpy(dense.kernel)) + _numpy(
            dense.bias
        )

    q = project(layer.query_dense, query)
    k = project(layer.key_dense, value)
    v = project(layer.value_dense, value)
    head_dim = q.shape[-1]
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(head_dim)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.ndim == 2:
            mask = mask[:, None, None, :]
        logits = np.where(mask, logits, -np.inf)
    weights = _softmax(logits)
    out = np.einsum("bnqk,bknh->bqnh", weights, v)
    return np.einsum(
        "bqnh,nhd->bqd", out, _numpy(layer.output_dense.kernel)
    ) + (_numpy(layer.output_dense.bias))


def _encoder_block(layer, x, mask=None):
    y = _layer_norm(layer.layer_norm_1, x)
    x = x + _attention(layer.attention, y, y, mask)
    return x + _mlp(layer.mlp, _layer_norm(layer.layer_norm_2, x))


def _map_head(layer, x, mask=None):
    probe = np.broadcast_to(_numpy(layer.probe), (x.shape[0], 1, x.shape[2]))
    y = _attention(layer.attention, probe, x, mask)
    y = y + _mlp(layer.mlp, _layer_norm(layer.layer_norm, y))
    return y[:, 0]


@pytest.fixture
def reference():
    """Namespace of float64 numpy forward passes: `layer_norm`, `gelu_tanh`,
    `mlp`, `attention`, `encoder_block`, `map_head`."""
    return types.SimpleNamespace(
        layer_norm=_layer_norm,
        gelu_tanh=_gelu_tanh,
        mlp=_mlp,
        attention=_attention,
        encoder_block=_encoder_block,
        map_head=_map_head,
    )


def _randomize(layer, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.normal(size=variable.shape) * scale)
    return layer


@pytest.fixture
def randomize():
    """`randomize(layer, seed=0, scale=0.5)` sets every weight (biases,
    LayerNorm scales included) to `scale * N(0, 1)`."""
    return _randomize


@pytest.fixture
def sizes():
    return types.SimpleNamespace(
        batch=2, length=4, hidden=8, heads=2, intermediate=16
    )
