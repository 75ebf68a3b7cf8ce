"""What the demo's models learn, and what ACID's selection keeps.

Reads the output directory of `python -m keras_siglip2 demo` and reports:

1. Zero-shot predictions split into colour and shape. The demo's 80
   zero-shot classes are colour x shape (10 x 8); a prediction counts as
   a colour hit if its colour is the label's, and as a shape hit if its
   shape is. Chance: 0.100 for colour, 0.125 for shape. A model that
   scores colour far above chance and shape near it sees colour only: it
   has nothing for a dense probe of shape classes to read, and squashing
   an image to a square (what NaFlex avoids) does not change its colours.
2. ACID's selection on a noisy stream: super-batches of the generated
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
from keras_siglip2.data.generated import SHAPES  # noqa: E402
from keras_siglip2.data.generated import generated_examples  # noqa: E402
from keras_siglip2.data.generated import zero_shot_class_names  # noqa: E402
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
