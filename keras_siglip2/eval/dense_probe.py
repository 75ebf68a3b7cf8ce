"""Dense linear probe: per-patch segmentation mIoU on frozen features.

The frozen vision encoder's per-patch tokens (`sequence_output`, after
the final LayerNorm) are classified by a linear softmax layer trained
with Keras on the training images; each patch's label is read off the
class map (`patch_labels`: the majority class of the pixels whose centres
fall in the patch, or the class at the patch centre). On the test images
the mean intersection over union is computed from the patch confusion
matrix (`mean_iou`): IoU of class c = TP / (TP + FP + FN); a class that
occurs but is never predicted (or predicted but never occurs) scores 0;
a class absent from both labels and predictions is left out of the mean.
"""

from collections.abc import Iterable
from collections.abc import Sequence

import keras
import numpy as np

from keras_siglip2.eval.encoders import as_examples

PATCH_LABEL_METHODS = ("majority", "centre")


def patch_labels(
    class_map,
    grid_shape: tuple[int, int],
    method: str = "majority",
    coverage: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """The class of each patch of a grid laid over a class map.

    The grid spans the top-left `coverage` fraction of the map (1.0 unless
    the encoder drops pixels past the last whole patch); the map is taken
    in continuous coordinates, so the image may be resized to any input
    size (pixel `i` of `H` has its centre at `(i + 0.5) / H`).

    Args:
        class_map: int `(H, W)` class per pixel.
        grid_shape: `(rows, columns)` of patches.
        method: `"majority"`: the most frequent class among the pixels
            whose centres lie in the patch (ties to the smaller class id;
            a patch holding no pixel centre, when the map is smaller than
            the grid, falls back to `"centre"`); `"centre"`: the class of
            the pixel under the patch centre.
        coverage: `(height, width)` fractions of the map the grid covers.

    Returns:
        int32 `(rows, columns)`.
    """
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or not class_map.size:
        raise ValueError(
            f"`class_map` must be a non-empty (H, W) array; got shape "
            f"{class_map.shape}."
        )
    if method not in PATCH_LABEL_METHODS:
        raise ValueError(
            f"`method` must be one of {PATCH_LABEL_METHODS}; got {method!r}."
        )
    rows, columns = (int(s) for s in grid_shape)
    if rows < 1 or columns < 1:
        raise ValueError(f"`grid_shape` must be >= 1; got {grid_shape}.")
    height, width = class_map.shape
    cover_h, cover_w = coverage
    centre_y = np.minimum(
        ((np.arange(rows) + 0.5) / rows * cover_h * height).astype(int),
        height - 1,
    )
    centre_x = np.minimum(
        ((np.arange(columns) + 0.5) / columns * cover_w * width).astype(int),
        width - 1,
    )
    centre = class_map[np.ix_(centre_y, centre_x)].astype(np.int32)
    if method == "centre":
        return centre
    pixel_row = np.floor((np.arange(height) + 0.5) / height / cover_h * rows)
    pixel_col = np.floor((np.arange(width) + 0.5) / width / cover_w * columns)
    inside_rows = pixel_row < rows
    inside_cols = pixel_col < columns
    patch = (
        pixel_row[inside_rows].astype(np.int64)[:, None] * columns
        + pixel_col[inside_cols].astype(np.int64)[None, :]
    )
    classes = class_map[np.ix_(inside_rows, inside_cols)].astype(np.int64)
    num_classes = int(class_map.max()) + 1
    counts = np.bincount(
        (patch * num_classes + classes).ravel(),
        minlength=rows * columns * num_classes,
    ).reshape(rows * columns, num_classes)
    majority = np.argmax(counts, axis=1).reshape(rows, columns)
    empty = counts.sum(axis=1).reshape(rows, columns) == 0
    return np.where(empty, centre, majority).astype(np.int32)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """int64 `(num_classes, num_classes)`: rows true class, columns predicted.

    Args:
        labels: int `(...)` true classes in `[0, num_classes)`.
        predictions: int, the same shape.
        num_classes: int.
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    predictions = np.asarray(predictions).ravel().astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"`labels` and `predictions` differ in size: {labels.size} and "
            f"{predictions.size}."
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"`{name}` must be in [0, {num_classes}); got values in "
                f"[{values.min()}, {values.max()}]."
            )
    return np.bincount(
        labels * num_classes + predictions, minlength=num_classes**2
    ).reshape(num_classes, num_classes)


def per_class_iou(confusion) -> np.ndarray:
    """float64 `(num_classes,)` IoU per class; NaN if in neither labels
    nor predictions."""
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    safe = np.where(union > 0, union, 1.0)
    return np.where(union > 0, true_positives / safe, np.nan)


def mean_iou(confusion) -> float:
    """Mean of `per_class_iou` over the classes that occur (see module)."""
    iou = per_class_iou(confusion)
    if np.isnan(iou).all():
        raise ValueError("The confusion matrix is empty.")
    return float(np.nanmean(iou))


def fit_linear_probe(
    features,
    labels,
    num_classes: int,
    epochs: int = 20,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
) -> keras.Model:
    """Trains a linear softmax classifier on frozen features.

    The `Dense` layer starts at zero, so the fit is deterministic up to
    batch order (the problem is convex). Features are used as they are:
    the encoder's `sequence_output` is layer-normalised already.

    Args:
        features: float `(num, dim)`.
        labels: int `(num,)` in `[0, num_classes)`.
        num_classes: int.
        epochs: int. Passes over the data.
        batch_size: int.
        learning_rate: float. Adam's.

    Returns:
        A `keras.Model` mapping `(batch, dim)` features to logits.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            "Expected `features` (num, dim) and `labels` (num,); got "
            f"{features.shape} and {labels.shape}."
        )
    probe = keras.Sequential(
        [
            keras.Input((features.shape[1],)),
            keras.layers.Dense(num_classes, kernel_initializer="zeros"),
        ]
    )
    probe.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    probe.fit(features, labels, batch_size=batch_size, epochs=epochs, verbose=0)
    return probe


def patch_dataset(encoder, examples: Sequence[dict], method: str = "majority"):
    """Frozen patch features and their labels, flattened over images.

    Args:
        encoder: has `encode_patches(images)` (see `BackboneEncoder`).
        examples: dicts with `"image"` and `"class_map"` `(H, W)`.
        method: see `patch_labels`.

    Returns:
        `(features, labels)`: float32 `(num_patches, dim)`, int32
        `(num_patches,)`.
    """
    for example in examples:
        if "class_map" not in example:
            raise ValueError(
                f"Example {str(example.get('key', ''))!r} has no "
                "'class_map'; the dense probe needs per-pixel classes "
                "(the generated dataset has them, the reader formats "
                "do not)."
            )
    patches = encoder.encode_patches([e["image"] for e in examples])
    features, labels = [], []
    for index, example in enumerate(examples):
        rows, columns = patches["grid_shapes"][index]
        count = rows * columns
        if patches["mask"][index].sum() != count:
            raise ValueError(
                f"Image {index}: the mask has {patches['mask'][index].sum()} "
                f"valid patches, the grid {rows} x {columns}."
            )
        features.append(patches["features"][index, :count])
        labels.append(
            patch_labels(
                example["class_map"],
                (rows, columns),
                method,
                tuple(patches["coverage"][index]),
            ).ravel()
        )
    return np.concatenate(features), np.concatenate(labels)


def evaluate_dense_probe(
    encoder,
    train_examples: Iterable[dict],
    test_examples: Iterable[dict],
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    method: str = "majority",
    epochs: int = 20,
    batch_size: int = 256,
    learning_rate: float = 1e-2,
) -> dict:
    """Per-patch segmentation mIoU of a linear probe (see module).

    Args:
        encoder: has `encode_patches(images)` (see `BackboneEncoder`).
        train_examples: dicts with `"image"` and `"class_map"` (generated
            examples); anything `as_examples` takes.
        test_examples: the same, to score.
        class_names: optional names of the classes (for per-class keys);
            their count is the number of classes.
        num_classes: int; default `len(class_names)`, else one more than
            the largest label seen.
        method: per-patch labels, see `patch_labels`.
        epochs, batch_size, learning_rate: probe training.

    Returns:
        flat dict: `"mIoU"`, `"patch_accuracy"`, `"IoU/{class}"` (NaN for
        a class in neither test labels nor predictions),
        `"num_train_patches"`, `"num_test_patches"`, `"num_classes"`.
    """
    train_examples = as_examples(train_examples)
    test_examples = as_examples(test_examples)
    if not train_examples or not test_examples:
        raise ValueError("`train_examples` and `test_examples` are needed.")
    train_x, train_y = patch_dataset(encoder, train_examples, method)
    test_x, test_y = patch_dataset(encoder, test_examples, method)
    if num_classes is None:
        num_classes = (
            len(class_names)
            if class_names is not None
            else int(max(train_y.max(), test_y.max())) + 1
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"{len(class_names)} `class_names` for {num_classes} classes."
        )
    probe = fit_linear_probe(
        train_x, train_y, num_classes, epochs, batch_size, learning_rate
    )
    logits = probe.predict(test_x, batch_size=batch_size, verbose=0)
    predictions = np.argmax(logits, axis=-1)
    confusion = confusion_matrix(test_y, predictions, num_classes)
    names = class_names or [str(c) for c in range(num_classes)]
    results = {
        "mIoU": mean_iou(confusion),
        "patch_accuracy": float(np.trace(confusion) / confusion.sum()),
    }
    for name, iou in zip(names, per_class_iou(confusion)):
        results[f"IoU/{name}"] = float(iou)
    results["num_train_patches"] = len(train_y)
    results["num_test_patches"] = len(test_y)
    results["num_classes"] = num_classes
    return results
