"""The demo's figures: loss curves per stage and NaFlex patch grids.

Figures are drawn with matplotlib's object API on an Agg canvas (no
pyplot, no display, no global state) and written as PNG files.
"""

import os
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from keras_siglip2.data.naflex import naflex_preprocess

# One colour per stage band, light enough to read curves over.
_STAGE_COLORS = {
    "A": "#dbe9f6",
    "B": "#fde2c8",
    "C": "#d9f0d3",
    "D": "#e8dff5",
}


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start).

    Args:
        values: float `(num,)`.
        window: int >= 1.

    Returns:
        float64 `(num,)`; entry `i` averages `values[max(0, i - window
        + 1) : i + 1]`.
    """
    if window < 1:
        raise ValueError(f"`window` must be >= 1; got {window}.")
    values = np.asarray(values, np.float64)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _save(figure: Figure, path) -> None:
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(os.fspath(path), dpi=100)


def plot_loss_curves(
    runs: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    stages: Mapping[str, Sequence[tuple[str, int, int]]],
    path,
    window: int = 10,
) -> list[str]:
    """Per-step training losses over the stages, one panel per loss.

    Args:
        runs: `{run: {loss_name: [(step, value), ...]}}`, e.g. the
            fixed-resolution run and the NaFlex branch.
        stages: `{run: [(stage_name, start_step, end_step), ...]}`; the
            stages of the first run are shaded, and the stage boundaries of
            every run are drawn as vertical lines.
        path: PNG file to write.
        window: moving-average window of the drawn curves (the raw
            values are drawn faintly underneath).

    Returns:
        The names of the losses drawn, one panel each.
    """
    names = sorted({name for curves in runs.values() for name in curves})
    if not names:
        raise ValueError("No losses to plot.")
    # The total first, then each term.
    names.sort(key=lambda name: (name != "loss", name))
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(5 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    first_run = next(iter(stages), None)
    line_styles = ("-", "--", ":", "-.")
    for axis, name in zip(axes, names):
        if first_run is not None:
            for stage, start, end in stages[first_run]:
                axis.axvspan(
                    start, end, color=_STAGE_COLORS.get(stage, "#eeeeee")
                )
                axis.text(
                    (start + end) / 2,
                    1.0,
                    stage,
                    transform=axis.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=9,
                )
        for index, (run, curves) in enumerate(runs.items()):
            for _, start, _ in stages.get(run, ())[1:]:
                axis.axvline(start, color="grey", linewidth=0.6)
            points = sorted(curves.get(name, ()))
            if not points:
                continue
            steps = np.array([p[0] for p in points])
            values = np.array([p[1] for p in points])
            style = line_styles[index % len(line_styles)]
            (line,) = axis.plot(steps, smooth(values, window), style, label=run)
            axis.plot(steps, values, style, color=line.get_color(), alpha=0.2)
        axis.set_title(name)
        axis.set_xlabel("step")
        if len(runs) > 1:
            axis.legend(fontsize=8)
    for axis in axes[len(names) :]:
        axis.set_visible(False)
    figure.suptitle("Training losses per stage (shaded), per step")
    _save(figure, path)
    return names


def patch_grid_image(inputs: Mapping[str, np.ndarray], patch_size: int):
    """The image a NaFlex model sees, rebuilt from its patches.

    Args:
        inputs: one example of `naflex_preprocess`: `"patches"` float
            `(length, p * p * 3)` in `[-1, 1]`, `"spatial_shapes"` int
            `(2,)`.
        patch_size: int.

    Returns:
        float32 `(rows * p, columns * p, 3)` in `[0, 1]`.
    """
    rows, columns = (int(s) for s in np.asarray(inputs["spatial_shapes"]))
    patches = np.asarray(inputs["patches"])[: rows * columns]
    image = patches.reshape(rows, columns, patch_size, patch_size, 3)
    image = image.transpose(0, 2, 1, 3, 4).reshape(
        rows * patch_size, columns * patch_size, 3
    )
    return np.clip((image + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def plot_naflex_grids(
    images: Sequence[np.ndarray],
    patch_size: int,
    sequence_lengths: Sequence[int],
    path,
) -> list[list[tuple[int, int]]]:
    """NaFlex patch grids of images of different aspect ratios.

    Row `i` holds image `i` as generated, then as the model sees it at
    each sequence length (resized to a multiple of the patch size at
    about its aspect ratio, see `naflex_preprocess`), with the patch grid
    drawn over it.

    Args:
        images: uint8 `(H, W, 3)` arrays.
        patch_size: int.
        sequence_lengths: ints, one column each.
        path: PNG file to write.

    Returns:
        `grids[i][j]`: `(rows, columns)` of image `i` at length `j`.
    """
    if not images or not sequence_lengths:
        raise ValueError("Need at least one image and one sequence length.")
    columns = 1 + len(sequence_lengths)
    figure = Figure(
        figsize=(2.4 * columns, 2.4 * len(images)), layout="constrained"
    )
    axes = figure.subplots(len(images), columns, squeeze=False)
    grids = []
    for row, image in enumerate(images):
        image = np.asarray(image)
        height, width = image.shape[:2]
        axes[row, 0].imshow(image, interpolation="nearest")
        axes[row, 0].set_title(f"{height}x{width} px", fontsize=9)
        grids.append([])
        for column, length in enumerate(sequence_lengths, start=1):
            inputs = {
                key: np.asarray(value)
                for key, value in naflex_preprocess(
                    image, patch_size, length
                ).items()
            }
            seen = patch_grid_image(inputs, patch_size)
            rows, cols = (int(s) for s in inputs["spatial_shapes"])
            grids[-1].append((rows, cols))
            axis = axes[row, column]
            axis.imshow(seen, interpolation="nearest")
            for y in range(1, rows):
                axis.axhline(y * patch_size - 0.5, color="w", linewidth=0.6)
            for x in range(1, cols):
                axis.axvline(x * patch_size - 0.5, color="w", linewidth=0.6)
            axis.set_title(
                f"{rows}x{cols} = {rows * cols} of {length} patches",
                fontsize=9,
            )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"NaFlex inputs: native aspect ratio, patch {patch_size}, one "
        "column per sequence length"
    )
    _save(figure, path)
    return grids
