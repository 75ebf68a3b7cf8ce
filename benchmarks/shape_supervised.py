"""Can the demo's image tower learn shape when trained on it directly?

The demo's models learn the colour of the generated objects and hardly
their shape (`demo_diagnostics.py`). This trains the demo's tiny image
tower (`TINY_VISION`, optionally with another patch size) plus a linear
head as a plain supervised classifier of the shape (or colour) of
single-object generated images, and prints train and test accuracy
every quarter of the run. If supervised training cannot learn shape in
a few thousand steps, neither can the contrastive recipe at the demo's
budget.

    python benchmarks/shape_supervised.py --steps 1200 --patch_size 8
    python benchmarks/shape_supervised.py --steps 2400 --patch_size 4 \
        --source_size 64
    python benchmarks/shape_supervised.py --target colour

`--source_size N` draws square N-px images (object extents 13-36% of
the side) instead of the demo's 24-64 px at aspect ratios 1:4 to 4:1;
every image is resized to `--image_size` (32, the demo's) with bilinear
antialiasing.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip2 import SigLIP2ImageConverter  # noqa: E402
from keras_siglip2 import SigLIP2VisionEncoder  # noqa: E402
from keras_siglip2 import __main__ as cli  # noqa: E402
from keras_siglip2.data.generated import COLORS  # noqa: E402
from keras_siglip2.data.generated import SHAPES  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--source_size", type=int, default=None)
    parser.add_argument(
        "--target", choices=("shape", "colour"), default="shape"
    )
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--test_images", type=int, default=512)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    overrides = {"num_objects": (1, 1)}
    if args.source_size is not None:
        overrides["image_size"] = args.source_size
    # Four passes over a quarter of the steps' worth of images.
    train = cli._generated_images(
        "train", args.steps * args.batch_size // 4, 0, **overrides
    )
    test = cli._generated_images("test", args.test_images, 0, **overrides)
    converter = SigLIP2ImageConverter(
        image_size=args.image_size, interpolation="bilinear"
    )
    shapes = len(SHAPES)

    def arrays(examples):
        images = np.stack(
            [
                keras.ops.convert_to_numpy(converter(e["image"]))
                for e in examples
            ]
        )
        labels = np.asarray([int(e["label"]) for e in examples])
        if args.target == "shape":
            return images, labels % shapes
        return images, labels // shapes

    (x_train, y_train), (x_test, y_test) = arrays(train), arrays(test)
    num_classes = shapes if args.target == "shape" else len(COLORS)
    encoder = SigLIP2VisionEncoder(
        **dict(
            cli.TINY_VISION,
            patch_size=args.patch_size,
            image_size=args.image_size,
        )
    )
    inputs = keras.Input((args.image_size, args.image_size, 3))
    logits = keras.layers.Dense(num_classes)(encoder(inputs)["pooled_output"])
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(
        f"{args.target} of {len(x_train)} training images "
        f"({'square ' + str(args.source_size) if args.source_size else 'demo'}"
        f" px -> {args.image_size} px), patch {args.patch_size}; chance "
        f"{1 / num_classes:.3f}"
    )
    print("| steps | train loss | train accuracy | test accuracy |")
    print("|---:|---:|---:|---:|")
    start = time.perf_counter()
    for quarter in range(1, 5):
        history = model.fit(
            x_train, y_train, batch_size=args.batch_size, epochs=1, verbose=0
        ).history
        predicted = model.predict(x_test, verbose=0).argmax(-1)
        print(
            f"| {quarter * args.steps // 4} | {history['loss'][-1]:.3f} | "
            f"{history['accuracy'][-1]:.3f} | "
            f"{np.mean(predicted == y_test):.3f} |",
            flush=True,
        )
    print(f"({time.perf_counter() - start:.0f} s of training)")


if __name__ == "__main__":
    main()
