"""Atomic, pickle-free training checkpoints.

A checkpoint is a directory `step_{step:09d}` holding `weights.npz`
(every model variable by path), `optimizer.npz` (the optimizer's
iteration count and per-variable slots, by variable path) and
`state.json` (step, stage, examples seen, seed and any other JSON state)
and `manifest.json` (size and SHA-256 of the three). It is written to a
hidden temporary directory, fsynced and renamed into place, and `LATEST`
is replaced atomically afterwards, so a process killed at any moment (or
a write failing, e.g. on a full disk) leaves either the previous or the
new checkpoint, never a partial one; reading verifies the manifest, so a
file damaged later never loads as valid. Arrays are read with
`allow_pickle=False`.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

_SLOTS = ("_momentums", "_velocities", "_velocity_hats")
_LATEST = "LATEST"
_MANIFEST = "manifest.json"
_FILES = ("weights.npz", "optimizer.npz", "state.json")


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def _fsync_directory(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unique_paths(variables) -> dict[str, object]:
    by_path = {}
    for variable in variables:
        if variable.path in by_path:
            raise ValueError(
                f"Two variables share the path {variable.path!r}; "
                "checkpoints address variables by path."
            )
        by_path[variable.path] = variable
    return by_path


def optimizer_state(optimizer, variables) -> dict[str, np.ndarray]:
    """The optimizer's iterations and slots, keyed by variable path.

    Args:
        optimizer: a built Keras optimizer (Adam family).
        variables: the trainable variables it updates.

    Returns:
        dict of numpy arrays.
    """
    state = {"iterations": keras.ops.convert_to_numpy(optimizer.iterations)}
    for variable in variables:
        index = optimizer._get_variable_index(variable)
        for slot in _SLOTS:
            values = getattr(optimizer, slot, None)
            if values:
                state[f"{slot}/{variable.path}"] = keras.ops.convert_to_numpy(
                    values[index]
                )
    return state


def load_optimizer_state(
    optimizer, variables, state: dict, strict: bool = True
) -> list[str]:
    """Restores `optimizer_state` output into a built optimizer.

    Args:
        optimizer: a built Keras optimizer.
        variables: its trainable variables.
        state: from `optimizer_state` (or a checkpoint).
        strict: raise if a variable has no saved slots (or a shape
            differs); otherwise keep fresh slots for it (used when a stage
            adds or reshapes variables).

    Returns:
        Paths of the variables whose slots were not restored.
    """
    skipped = []
    for variable in variables:
        index = optimizer._get_variable_index(variable)
        for slot in _SLOTS:
            values = getattr(optimizer, slot, None)
            if not values:
                continue
            key = f"{slot}/{variable.path}"
            saved = state.get(key)
            if saved is None or saved.shape != tuple(values[index].shape):
                if strict:
                    raise ValueError(
                        f"Optimizer state has no slot {key!r} of shape "
                        f"{tuple(values[index].shape)}."
                    )
                skipped.append(variable.path)
                continue
            values[index].assign(saved)
    optimizer.iterations.assign(state["iterations"])
    return sorted(set(skipped))


def save_checkpoint(
    directory,
    model: keras.Model,
    optimizer,
    state: dict,
    keep: int = 2,
) -> Path:
    """Writes a checkpoint atomically and marks it as the latest.

    Args:
        directory: checkpoint root.
        model: the model whose variables are saved.
        optimizer: its built optimizer.
        state: JSON-serialisable dict; must hold an int `"step"`.
        keep: how many checkpoints to keep.

    Returns:
        The checkpoint's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{int(state['step']):09d}"
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-"))
    try:
        weights = {
            path: keras.ops.convert_to_numpy(variable)
            for path, variable in _unique_paths(model.variables).items()
        }
        for name, arrays in (
            ("weights.npz", weights),
            (
                "optimizer.npz",
                optimizer_state(optimizer, model.trainable_variables),
            ),
        ):
            with open(tmp / name, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
        with open(tmp / "state.json", "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        manifest = {name: _digest(tmp / name) for name in _FILES}
        with open(tmp / _MANIFEST, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_directory(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_directory(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = directory / f".{_LATEST}.tmp"
    try:
        with open(latest_tmp, "w") as f:
            f.write(final.name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, directory / _LATEST)
        _fsync_directory(directory)
    except BaseException:
        latest_tmp.unlink(missing_ok=True)
        raise
    checkpoints = sorted(directory.glob("step_*"))
    for old in checkpoints[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory) -> Path | None:
    """The checkpoint `LATEST` points to, or None."""
    marker = Path(directory) / _LATEST
    if not marker.exists():
        return None
    path = Path(directory) / marker.read_text().strip()
    if not (path / _MANIFEST).exists():
        raise ValueError(
            f"{marker} points to a missing or incomplete checkpoint {path}."
        )
    return path


def verify_checkpoint(path) -> None:
    """Raises `ValueError` unless every file matches the manifest."""
    path = Path(path)
    try:
        with open(path / _MANIFEST) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path}: missing or corrupt checkpoint manifest ({e})."
        ) from None
    if not isinstance(manifest, dict) or set(manifest) != set(_FILES):
        raise ValueError(f"{path}: corrupt checkpoint manifest.")
    for name in _FILES:
        file = path / name
        if not file.exists() or _digest(file) != manifest[name]:
            raise ValueError(
                f"{path / name}: corrupt checkpoint file (size or SHA-256 "
                "differs from the manifest)."
            )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt checkpoint file ({e}).") from None


def read_checkpoint(path) -> tuple[dict, dict, dict]:
    """Reads `(state, weights, optimizer_state)` of a checkpoint.

    Raises:
        ValueError: if a file is missing or differs from the manifest.
    """
    path = Path(path)
    verify_checkpoint(path)
    with open(path / "state.json") as f:
        state = json.load(f)
    return (
        state,
        _load_npz(path / "weights.npz"),
        _load_npz(path / "optimizer.npz"),
    )


def assign_weights(model: keras.Model, weights: dict, strict: bool = True):
    """Assigns `{path: array}` to a model's variables, checked first.

    Args:
        model: the model.
        weights: arrays by variable path.
        strict: every variable must be present with its shape; otherwise
            missing/reshaped ones are left as they are.

    Returns:
        Paths of the variables not assigned.
    """
    variables = _unique_paths(model.variables)
    skipped, problems = [], []
    for path, variable in variables.items():
        value = weights.get(path)
        if value is None or value.shape != tuple(variable.shape):
            skipped.append(path)
            found = None if value is None else value.shape
            problems.append(f"{path}: {found} vs {tuple(variable.shape)}")
    if strict and problems:
        raise ValueError(
            "Checkpoint does not match the model: " + "; ".join(problems)
        )
    for path, variable in variables.items():
        if path not in skipped:
            variable.assign(weights[path])
    return skipped
