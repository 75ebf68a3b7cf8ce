"""What the demo's models learn, and what ACID's selection keeps.

Reads the output directory of `python -m keras_siglip2 demo` and reports:

1. Zero-shot predictions split into colour and shape. The demo's 80
   zero-shot classes are colour x shape (10 x 8); a prediction counts as
   a colour hit if its colour is the label's, and as a shape hit if its
   shape is. Chance: 0.100 for colour, 0.125 for shape. A model that
   scores colour far above chance and shape near it sees colour only: it
   has nothing for a dense probe of shape classes to read, and squashing
   an image to a square (what NaFlex avoids) does not change its colours.
2. Linear probes of the pooled image embedding (frozen; standardised;
   softmax regression from `eval.dense_probe.fit_linear_probe`) for the
   colour and the shape of single-object images, trained on
   `--probe_train_images` training images and scored on the zero-shot
   test images, beside the same probes on the raw pixels (the image
   converter's output, flattened) and on a random-init student. A shape
   probe near chance means the image tower has not learned shape: the
   text side is not the bottleneck.
3. ACID's selection on a noisy stream: super-batches of the generated
   training data with `--mismatched_fraction` of the captions describing
   another image, scored by the Stage C student and the Stage D teacher
   (`StageDModel.select`, filter ratio 0.5); the fraction of mismatched
   and of non-English pairs in the super-batches and among the kept
   examples.

    python benchmarks/demo_diagnostics.py --run siglip2_demo
    python benchmarks/demo_diagnostics.py --run siglip2_demo \
        --teacher other_teacher.keras

Prints Markdown tables; paste them into benchmarks/RESULTS.md.
"""

import argparse
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip2 import SigLIP2ImageConverter  # noqa: E402
from keras_siglip2 import __main__ as cli  # noqa: E402
from keras_siglip2.data.generated import COLORS  # noqa: E402
from keras_siglip2.data.generated import SHAPES  # noqa: E402
from keras_siglip2.data.generated import generated_examples  # noqa: E402
from keras_siglip2.data.generated import zero_shot_class_names  # noqa: E402
from keras_siglip2.eval.dense_probe import fit_linear_probe  # noqa: E402
from keras_siglip2.eval.encoders import BackboneEncoder  # noqa: E402
from keras_siglip2.eval.encoders import l2_normalize  # noqa: E402
from keras_siglip2.eval.zero_shot import class_embeddings  # noqa: E402
from keras_siglip2.training.stage_d import StageDModel  # noqa: E402


def colour_and_shape(backbone, tokenizer, examples) -> dict[str, float]:
    """Zero-shot top-1 and its colour and shape hit rates."""
    labels = np.asarray([int(e["label"]) for e in examples])
    encoder = BackboneEncoder(backbone, tokenizer, batch_size=32)
    images = l2_normalize(encoder.encode_images([e["image"] for e in examples]))
    weights = class_embeddings(encoder.encode_texts, zero_shot_class_names())
    predicted = np.argmax(images @ weights.T, axis=1)
    shapes = len(SHAPES)
    return {
        "top1": float(np.mean(predicted == labels)),
        "colour": float(np.mean(predicted // shapes == labels // shapes)),
        "shape": float(np.mean(predicted % shapes == labels % shapes)),
    }


def probe_accuracies(train_features, test_features, train, test) -> dict:
    """Test accuracy of linear colour and shape probes on features."""
    train_features = np.asarray(train_features, np.float32)
    test_features = np.asarray(test_features, np.float32)
    mean = train_features.mean(0)
    std = train_features.std(0) + 1e-6
    train_features = (train_features - mean) / std
    test_features = (test_features - mean) / std
    shapes = len(SHAPES)
    train_labels = np.asarray([int(e["label"]) for e in train])
    test_labels = np.asarray([int(e["label"]) for e in test])
    results = {}
    for name, of, num_classes in (
        ("colour", lambda y: y // shapes, len(COLORS)),
        ("shape", lambda y: y % shapes, shapes),
    ):
        probe = fit_linear_probe(
            train_features, of(train_labels), num_classes, epochs=30
        )
        logits = keras.ops.convert_to_numpy(probe(test_features))
        results[name] = float(np.mean(logits.argmax(-1) == of(test_labels)))
    return results


def selection(student, teacher, tokenizer, args) -> dict[str, float]:
    """Mismatched and non-English fractions, super-batch vs kept."""
    size = student.vision_encoder.image_size
    converter = SigLIP2ImageConverter(image_size=size, interpolation="bilinear")
    model = StageDModel(student, teacher, filter_ratio=0.5)
    examples = list(
        generated_examples(
            "train",
            args.seed,
            args.super_batch * args.super_batches,
            side_range=cli.DEMO_SIDE_RANGE,
            mismatched_fraction=args.mismatched_fraction,
        )
    )
    totals = {"mismatched": [0, 0], "non-English": [0, 0]}
    for start in range(0, len(examples), args.super_batch):
        batch = examples[start : start + args.super_batch]
        images = np.concatenate(
            [
                keras.ops.convert_to_numpy(
                    converter(e["image"][None].astype("float32"))
                )
                for e in batch
            ]
        )
        token_ids = np.asarray(tokenizer([e["captions"][0] for e in batch]))
        _, kept = model.select({"images": images, "token_ids": token_ids})
        kept = keras.ops.convert_to_numpy(kept)
        flags = {
            "mismatched": np.asarray([not e["captions_match"] for e in batch]),
            "non-English": np.asarray([e["language"] != "en" for e in batch]),
        }
        for name, flag in flags.items():
            totals[name][0] += int(flag.sum())
            totals[name][1] += int(flag[kept].sum())
    supers = len(examples) // args.super_batch
    kept_count = supers * len(kept)
    results = {}
    for name, (total, kept_total) in totals.items():
        results[f"{name} super-batch"] = total / len(examples)
        results[f"{name} kept"] = kept_total / kept_count
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="siglip2_demo")
    parser.add_argument(
        "--teacher", default=None, help="default: RUN/teacher.keras"
    )
    parser.add_argument("--mismatched_fraction", type=float, default=0.5)
    parser.add_argument("--super_batch", type=int, default=64)
    parser.add_argument("--super_batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--test_images", type=int, default=256, help="zero-shot images"
    )
    parser.add_argument(
        "--probe_train_images",
        type=int,
        default=2048,
        help="training images of the linear probes",
    )
    args = parser.parse_args()
    run = pathlib.Path(args.run)
    teacher_path = pathlib.Path(args.teacher or run / "teacher.keras")

    tokenizer = cli.demo_tokenizer()
    teacher = keras.saving.load_model(teacher_path)
    student = cli._tiny_backbone(tokenizer.vocabulary_size(), "stage_c")
    student.load_weights(run / "stage_c.weights.h5")
    final = keras.saving.load_model(run / "backbone.keras")
    single = cli._generated_images(
        "test", args.test_images, 0, num_objects=(1, 1)
    )

    print("| model | zero-shot top-1 | colour right | shape right |")
    print("|---|---:|---:|---:|")
    for name, backbone in (
        (f"teacher ({teacher_path.name})", teacher),
        ("Stage C student", student),
        ("final (D) student", final),
    ):
        scores = colour_and_shape(backbone, tokenizer, single)
        print(
            f"| {name} | {scores['top1']:.3f} | {scores['colour']:.3f} | "
            f"{scores['shape']:.3f} |"
        )
    print("| chance | 0.0125 | 0.100 | 0.125 |")
    print()
    probe_train = cli._generated_images(
        "train", args.probe_train_images, args.seed, num_objects=(1, 1)
    )
    size = student.vision_encoder.image_size
    converter = SigLIP2ImageConverter(image_size=size, interpolation="bilinear")

    def pixels(examples):
        return np.stack(
            [
                keras.ops.convert_to_numpy(converter(e["image"])).ravel()
                for e in examples
            ]
        )

    keras.utils.set_random_seed(args.seed)
    random_student = cli._tiny_backbone(tokenizer.vocabulary_size(), "init")
    print(
        f"Linear probes ({len(probe_train)} training images, "
        f"{len(single)} test images, one object each):"
    )
    print()
    print("| features | colour right | shape right |")
    print("|---|---:|---:|")
    rows = [("raw pixels", pixels(probe_train), pixels(single))]
    for name, backbone in (
        ("random-init student", random_student),
        (f"teacher ({teacher_path.name})", teacher),
        ("Stage C student", student),
        ("final (D) student", final),
    ):
        encoder = BackboneEncoder(backbone, tokenizer, batch_size=64)
        rows.append(
            (
                name,
                encoder.encode_images([e["image"] for e in probe_train]),
                encoder.encode_images([e["image"] for e in single]),
            )
        )
    for name, train_features, test_features in rows:
        scores = probe_accuracies(
            train_features, test_features, probe_train, single
        )
        print(
            f"| probe: {name} | {scores['colour']:.3f} | "
            f"{scores['shape']:.3f} |"
        )
    print("| probe: chance | 0.100 | 0.125 |")
    print()
    fractions = selection(student, teacher, tokenizer, args)
    print(
        f"ACID selection (Stage C student, teacher {teacher_path.name}, "
        f"{args.super_batches} super-batches of {args.super_batch}, "
        f"mismatched_fraction {args.mismatched_fraction}):"
    )
    print()
    print("| pairs | in the super-batches | among the kept half |")
    print("|---|---:|---:|")
    for name in ("mismatched", "non-English"):
        print(
            f"| {name} | {fractions[f'{name} super-batch']:.3f} | "
            f"{fractions[f'{name} kept']:.3f} |"
        )


if __name__ == "__main__":
    main()
