"""All-or-nothing assignment of checkpoint arrays to Keras variables."""

from collections.abc import Callable
from collections.abc import Iterable

import ml_dtypes
import numpy as np

FLOAT_DTYPES = (
    np.dtype("float16"),
    np.dtype(ml_dtypes.bfloat16),
    np.dtype("float32"),
    np.dtype("float64"),
)


def assign_checked(
    mapping: Iterable[tuple[str, tuple, Callable]],
    arrays: dict[str, np.ndarray],
    source: str,
    noun: str = "tensors",
    ignored: Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Checks every array against the model, then assigns them all.

    Args:
        mapping: `(key, variables, to_keras)` per checkpoint array;
            `to_keras(array)` returns one value per variable.
        arrays: the checkpoint, by key.
        source: name of the checkpoint, for error messages.
        noun: what the checkpoint holds ("tensors", "arrays").
        ignored: keys that may be present and are skipped.
        progress: optional `progress(done, total)` after each array.

    Raises:
        ValueError: listing missing, unexpected, mis-shaped or non-float
            arrays; nothing is assigned in that case.
    """
    mapping = list(mapping)
    expected = {key for key, _, _ in mapping}
    present = set(arrays) - set(ignored)
    problems = []
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if missing:
        problems.append(f"missing {noun}: {missing}")
    if unexpected:
        problems.append(f"unexpected {noun}: {unexpected}")
    values = []
    for key, variables, to_keras in mapping:
        if key not in arrays:
            continue
        array = np.asarray(arrays[key])
        if array.dtype not in FLOAT_DTYPES:
            problems.append(f"{key}: dtype {array.dtype} is not a float dtype")
            continue
        try:
            parts = to_keras(array)
        except (ValueError, IndexError):
            parts = None
        wanted = [tuple(v.shape) for v in variables]
        if parts is None or [p.shape for p in parts] != wanted:
            problems.append(
                f"{key}: shape {array.shape} does not fit the model's "
                f"{' + '.join(map(str, wanted))}"
            )
            continue
        values.append((variables, parts))
    if problems:
        raise ValueError(
            f"{source} does not match the model: " + "; ".join(problems)
        )
    for done, (variables, parts) in enumerate(values, start=1):
        for variable, part in zip(variables, parts):
            variable.assign(part)
        if progress is not None:
            progress(done, len(values))
