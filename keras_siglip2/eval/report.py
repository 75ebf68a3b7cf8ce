"""Evaluation results as a printed table and as JSON.

Results are `{task: {metric: value}}` with flat metric names, as the
`evaluate_*` functions return them (`{"retrieval": {"image_to_text/R@1":
0.52, ...}}`). Values are floats (NaN for undefined) or ints (counts).
JSON has no NaN, so it is written as `null` and read back as NaN.
"""

import datetime
import json
import math
import os

import numpy as np
import tensorflow as tf

JSON_VERSION = 1


def _plain(value):
    """A JSON-ready Python value: numpy scalars unwrapped, NaN -> None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(
        f"Result values must be numbers or strings; got "
        f"{type(value).__name__}: {value!r}."
    )


def _check(results) -> None:
    if not isinstance(results, dict) or not all(
        isinstance(metrics, dict) for metrics in results.values()
    ):
        raise TypeError(
            "`results` must be {task: {metric: value}}; got "
            f"{type(results).__name__}."
        )


def _format_value(value) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool | int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(results: dict, title: str | None = None) -> str:
    """A plain-text table with one row per (task, metric).

    Args:
        results: `{task: {metric: value}}`.
        title: optional first line.

    Returns:
        str, without a trailing newline.

    Example:
    >>> print(format_table({"retrieval": {"image_to_text/R@1": 0.5}}))
    task       metric                value
    ---------  -----------------  --------
    retrieval  image_to_text/R@1    0.5000
    """
    _check(results)
    rows = [
        (task, metric, _format_value(value))
        for task, metrics in results.items()
        for metric, value in metrics.items()
    ]
    header = ("task", "metric", "value")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(3)]
    widths[2] = max(widths[2], 8)

    def line(row):
        return (
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
            f"{row[2]:>{widths[2]}}"
        )

    lines = [] if title is None else [title]
    lines += [line(header), line(tuple("-" * w for w in widths))]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def results_to_json(results: dict, metadata: dict | None = None) -> str:
    """JSON text: `{"version", "created", "metadata", "results"}`.

    Args:
        results: `{task: {metric: value}}`.
        metadata: optional flat dict (model, data, settings).
    """
    _check(results)
    document = {
        "version": JSON_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "metadata": {k: _plain(v) for k, v in (metadata or {}).items()},
        "results": {
            task: {metric: _plain(v) for metric, v in metrics.items()}
            for task, metrics in results.items()
        },
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)


def write_json(results: dict, path, metadata: dict | None = None) -> None:
    """Writes `results_to_json(results, metadata)` to `path` (folders are
    created)."""
    text = results_to_json(results, metadata)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(os.fspath(path), "w") as file:
        file.write(text + "\n")


def read_json(path) -> dict:
    """Reads a file of `write_json`; `null` metrics come back as NaN.

    Returns:
        dict with `"version"`, `"created"`, `"metadata"`, `"results"`.
    """
    with tf.io.gfile.GFile(os.fspath(path), "r") as file:
        document = json.load(file)
    if document.get("version") != JSON_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} is not a results file of version "
            f"{JSON_VERSION}; got version {document.get('version')!r}."
        )
    document["results"] = {
        task: {
            metric: math.nan if value is None else value
            for metric, value in metrics.items()
        }
        for task, metrics in document["results"].items()
    }
    return document
