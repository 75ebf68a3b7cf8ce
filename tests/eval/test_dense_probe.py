"""Dense linear probe: per-patch labels, confusion matrix, mIoU.

Oracles: hand-computed patch labels (majority and centre, grids that do
not divide the map, partial coverage, maps smaller than the grid), a
hand-computed confusion matrix and mIoU (a class never predicted scores
0; a class in neither labels nor predictions is left out), a
loop-counting reference, and a perfect oracle feature (the one-hot patch
label, at any NaFlex grid) with which the probe must reach mIoU 1.
"""

import numpy as np
import pytest
from tiny_models import tiny_backbone

from keras_siglip2.data import generated
from keras_siglip2.eval import dense_probe
from keras_siglip2.eval.encoders import BackboneEncoder
from keras_siglip2.eval.encoders import as_examples

CLASS_MAP = np.array(
    [
        [1, 1, 2, 2],
        [1, 0, 2, 2],
        [0, 0, 3, 3],
        [0, 3, 3, 3],
    ]
)


def test_patch_labels_majority_and_centre():
    majority = dense_probe.patch_labels(CLASS_MAP, (2, 2))
    np.testing.assert_array_equal(majority, [[1, 2], [0, 3]])
    # Patch centres fall on pixels (1, 1), (1, 3), (3, 1), (3, 3).
    centre = dense_probe.patch_labels(CLASS_MAP, (2, 2), method="centre")
    np.testing.assert_array_equal(centre, [[0, 2], [3, 3]])


def test_patch_labels_uneven_grid():
    class_map = np.array(
        [
            [1, 2, 2],
            [1, 1, 2],
            [0, 3, 3],
            [0, 0, 3],
            [4, 4, 4],
        ]
    )
    # Pixel centres (i + 0.5) / 5 put rows 0-1 in patch row 0 and rows
    # 2-4 in patch row 1; columns 0 | 1-2 likewise for 3 columns.
    labels = dense_probe.patch_labels(class_map, (2, 2))
    # Bottom left {0, 0, 4}, bottom right {3, 3, 0, 3, 4, 4}.
    np.testing.assert_array_equal(labels, [[1, 2], [0, 3]])


def test_patch_labels_ties_go_to_the_smaller_class():
    labels = dense_probe.patch_labels(np.array([[2, 1], [1, 2]]), (1, 1))
    np.testing.assert_array_equal(labels, [[1]])


def test_patch_labels_partial_coverage():
    # The grid covers the top half only: rows {1, 1, 2, 2, 1, 0, 2, 2}.
    labels = dense_probe.patch_labels(CLASS_MAP, (1, 1), coverage=(0.5, 1.0))
    np.testing.assert_array_equal(labels, [[2]])


def test_patch_labels_map_smaller_than_grid_uses_centres():
    labels = dense_probe.patch_labels(np.array([[1, 2], [3, 4]]), (4, 4))
    expected = np.kron([[1, 2], [3, 4]], np.ones((2, 2), int))
    np.testing.assert_array_equal(labels, expected)


def test_patch_labels_rejects_unknown_method():
    with pytest.raises(ValueError, match="'mode'"):
        dense_probe.patch_labels(CLASS_MAP, (2, 2), method="mode")


LABELS = [0, 0, 1, 1, 2, 2]
PREDICTIONS = [0, 1, 1, 1, 0, 0]


def test_confusion_matrix_hand_computed():
    confusion = dense_probe.confusion_matrix(LABELS, PREDICTIONS, 4)
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(confusion, expected)


def test_mean_iou_hand_computed():
    confusion = dense_probe.confusion_matrix(LABELS, PREDICTIONS, 4)
    iou = dense_probe.per_class_iou(confusion)
    # Class 0: TP 1, FP 2, FN 1. Class 1: TP 2, FP 1. Class 2: never
    # predicted, IoU 0. Class 3: in neither, left out.
    np.testing.assert_allclose(iou[:3], [1 / 4, 2 / 3, 0.0])
    assert np.isnan(iou[3])
    assert dense_probe.mean_iou(confusion) == pytest.approx(
        (1 / 4 + 2 / 3 + 0) / 3
    )


def test_mean_iou_matches_counting_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    predictions = np.where(
        rng.random(500) < 0.6, labels, rng.integers(0, 5, 500)
    )
    confusion = dense_probe.confusion_matrix(labels, predictions, 7)
    ious = []
    for c in range(7):
        tp = np.sum((labels == c) & (predictions == c))
        union = np.sum((labels == c) | (predictions == c))
        if union:
            ious.append(tp / union)
    assert dense_probe.mean_iou(confusion) == pytest.approx(np.mean(ious))


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"`predictions` must be in \[0, 2\)"):
        dense_probe.confusion_matrix([0, 1], [0, 2], 2)


class PatchOracle:
    """Per-patch one-hot labels as features, on a per-image grid.

    Grids alternate between 4 x 4 and 3 x 5 (padded to 16 tokens, as
    NaFlex), so the probe has to follow `grid_shapes` and `mask`.
    """

    def __init__(self, examples, num_classes):
        self.maps = {e["image"].tobytes(): e["class_map"] for e in examples}
        self.num_classes = num_classes

    def encode_patches(self, images):
        features = np.zeros((len(images), 16, self.num_classes), np.float32)
        mask = np.zeros((len(images), 16), bool)
        grids = np.array(
            [(4, 4) if i % 2 else (3, 5) for i in range(len(images))]
        )
        for index, image in enumerate(images):
            labels = dense_probe.patch_labels(
                self.maps[np.asarray(image).tobytes()], grids[index]
            ).ravel()
            features[index, : len(labels)] = np.eye(self.num_classes)[labels]
            mask[index, : len(labels)] = True
        return {
            "features": features,
            "mask": mask,
            "grid_shapes": grids,
            "coverage": np.ones((len(images), 2), np.float32),
        }


@pytest.fixture(scope="module")
def splits():
    return [
        as_examples(generated.generated_examples(split, 0, 12, image_size=32))
        for split in ("train", "test")
    ]


def test_oracle_features_reach_miou_1(splits):
    train, test = splits
    names = generated.CLASS_NAMES
    oracle = PatchOracle(train + test, len(names))
    # Trained on the test images too, so no test class is unseen.
    results = dense_probe.evaluate_dense_probe(
        oracle, train + test, test, class_names=names, learning_rate=0.1
    )
    assert results["mIoU"] == 1.0
    assert results["patch_accuracy"] == 1.0
    assert results["IoU/background"] == 1.0
    assert results["num_train_patches"] == 12 * 16 + 12 * 15
    assert results["num_classes"] == len(names)


def test_examples_without_class_map_are_an_error():
    example = {"key": "k", "image": np.zeros((4, 4, 3), np.uint8)}
    with pytest.raises(ValueError, match="'k' has no 'class_map'"):
        dense_probe.patch_dataset(None, [example])


def test_tiny_model_on_generated_data_is_in_range(splits):
    backbone = tiny_backbone(600, 12)
    train, test = splits
    results = dense_probe.evaluate_dense_probe(
        BackboneEncoder(backbone),
        train,
        test,
        class_names=generated.CLASS_NAMES,
        epochs=3,
    )
    assert 0.0 <= results["mIoU"] <= 1.0
    assert 0.0 <= results["patch_accuracy"] <= 1.0
    assert results["num_train_patches"] == results["num_test_patches"] == 192
    for name in generated.CLASS_NAMES:
        iou = results[f"IoU/{name}"]
        assert np.isnan(iou) or 0.0 <= iou <= 1.0
