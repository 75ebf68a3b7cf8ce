"""Forward, one `fit` step, save and reload on every Keras backend.

Each backend runs in its own subprocess (a process has one backend), which
prints one `RESULT {json}` line that the test parses.
"""

import numpy as np
import pytest
from distribution_subprocess import run_code

SCRIPT = """
import json
import pathlib
import sys

import keras
import numpy as np

from keras_siglip2 import SigLIP2Backbone
from keras_siglip2 import SigLIP2TextEncoder
from keras_siglip2 import SigLIP2VisionEncoder

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
backbone = SigLIP2Backbone(
    SigLIP2VisionEncoder(
        image_size=16, patch_size=8, hidden_dim=16, num_layers=1,
        num_heads=2, intermediate_dim=32,
    ),
    SigLIP2TextEncoder(
        vocabulary_size=50, hidden_dim=16, num_layers=1, num_heads=2,
        intermediate_dim=32, max_sequence_length=8,
    ),
)
x = {
    "images": rng.uniform(-1, 1, (4, 16, 16, 3)).astype("float32"),
    "token_ids": rng.integers(0, 50, (4, 8)).astype("int32"),
}
to_numpy = keras.ops.convert_to_numpy
logits_before = to_numpy(backbone(x))
weights_before = [to_numpy(w) for w in backbone.trainable_weights]

backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
history = backbone.fit(x, batch_size=4, epochs=1, verbose=0)
weights_after = [to_numpy(w) for w in backbone.trainable_weights]
unchanged = [
    w.path
    for w, old, new in zip(
        backbone.trainable_weights, weights_before, weights_after
    )
    if np.array_equal(old, new)
]

path = pathlib.Path(sys.argv[1]) / "backbone.keras"
backbone.save(path)
reloaded = keras.saving.load_model(path)
logits = to_numpy(backbone(x))
logits_reloaded = to_numpy(reloaded(x))
result = {
    "backend": keras.backend.backend(),
    "logits_shape": list(logits_before.shape),
    "logits_before": logits_before.tolist(),
    "loss": float(history.history["loss"][0]),
    "num_trainable": len(weights_before),
    "unchanged": unchanged,
    "logits_change": float(np.max(np.abs(logits - logits_before))),
    "reload_max_abs_diff": float(np.max(np.abs(logits - logits_reloaded))),
    "saved": path.is_file(),
}
print("RESULT " + json.dumps(result))
"""


def _sigmoid_loss(logits: np.ndarray) -> float:
    """Oracle: `-mean_i sum_j log sigmoid(l_ij z_ij)`, l = 2 * eye - 1."""
    signs = 2.0 * np.eye(len(logits)) - 1.0
    return float(np.mean(np.sum(np.logaddexp(0.0, -signs * logits), -1)))


@pytest.mark.parametrize("backend", ["jax", "tensorflow", "torch"])
def test_forward_fit_save_reload(backend, tmp_path):
    result = run_code(SCRIPT, str(tmp_path), backend=backend, timeout=300)

    assert result["backend"] == backend
    assert result["logits_shape"] == [4, 4]
    # fit reports the loss of the step's forward pass: the initial weights.
    loss = result["loss"]
    assert np.isfinite(loss)
    expected = _sigmoid_loss(np.array(result["logits_before"]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert result["unchanged"] == [], result["unchanged"]
    assert result["num_trainable"] > 0
    assert result["logits_change"] > 0.0
    assert result["saved"]
    assert result["reload_max_abs_diff"] <= 1e-6
