"""Command line: `python -m keras_siglip2 demo [--output_dir DIR]`.

`demo` builds a tiny random-init `SigLIP2Backbone`, runs it, trains it for
a few steps with the sigmoid loss, saves and reloads it, then prints the
parameter counts of the real SigLIP 2 sizes.
"""

import math
import pathlib
import time

import keras
import numpy as np
from absl import app
from absl import flags

from keras_siglip2.layers.contrastive_logits import ContrastiveLogits
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.configs import get_config
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "siglip2_demo", "Where `demo` writes its checkpoint."
)
_STEPS = flags.DEFINE_integer(
    "steps",
    3,
    "Training steps of `demo` (one batch per step).",
    lower_bound=1,
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    8,
    "Image-text pairs per training batch of `demo`.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of `demo`.")

TINY_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    intermediate_dim=256,
)
TINY_TEXT = dict(
    vocabulary_size=1000,
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    intermediate_dim=256,
    max_sequence_length=16,
)
TABLE_CONFIGS = (
    "base_patch16_256",
    "large_patch16_256",
    "so400m_patch16_256",
    "giant_patch16_256",
    "so400m_patch14_384",
)


def _random_batch(rng: np.random.Generator, num_images: int, num_texts: int):
    """Random images in [-1, 1] and random token ids for the tiny model."""
    size = TINY_VISION["image_size"]
    images = rng.uniform(-1.0, 1.0, (num_images, size, size, 3))
    token_ids = rng.integers(
        0,
        TINY_TEXT["vocabulary_size"],
        (num_texts, TINY_TEXT["max_sequence_length"]),
    )
    return {
        "images": images.astype("float32"),
        "token_ids": token_ids.astype("int32"),
    }


def _count(layer: keras.layers.Layer) -> int:
    return sum(math.prod(v.shape) for v in layer.weights)


def _architecture_param_counts(name: str) -> tuple[int, int, int]:
    """Parameter counts of a named architecture, without allocating it.

    Args:
        name: a config name such as `"so400m_patch14_384"`.

    Returns:
        `(image_tower, text_tower, total)`; the total adds the logit scale
        and bias.
    """
    config = get_config(name)
    image_size = config.vision["image_size"]
    length = config.text["max_sequence_length"]
    # Without `initialize_variables=False` the scope would draw every
    # initial value on exit, which takes minutes for the giant model.
    with keras.StatelessScope(initialize_variables=False):
        vision = SigLIP2VisionEncoder(**config.vision)
        vision.build((None, image_size, image_size, 3))
        text = SigLIP2TextEncoder(**config.text)
        text.build((None, length))
        logits = ContrastiveLogits()
        logits.build((None, vision.hidden_dim), (None, text.projection_dim))
        counts = (_count(vision), _count(text), _count(logits))
    # The never-initialised variables stay queued for initialisation by
    # the next stateless scope to close (JAX training opens them); drop them.
    keras.utils.clear_session(free_memory=False)
    return counts[0], counts[1], sum(counts)


def _print_header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def _tiny_model_demo(output_dir: pathlib.Path) -> None:
    rng = np.random.default_rng(_SEED.value)
    keras.utils.set_random_seed(_SEED.value)
    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(**TINY_VISION),
        SigLIP2TextEncoder(**TINY_TEXT),
    )
    _print_header("Tiny random-init SigLIP2Backbone")
    print(
        "image tower: {image_size} px, patch {patch_size}, width "
        "{hidden_dim}, {num_layers} layers, {num_heads} heads".format(
            **TINY_VISION
        )
    )
    print(
        "text tower: vocabulary {vocabulary_size}, {max_sequence_length} "
        "tokens, width {hidden_dim}, {num_layers} layers, {num_heads} "
        "heads".format(**TINY_TEXT)
    )
    inputs = _random_batch(rng, num_images=4, num_texts=6)
    image_embeddings = backbone.get_vision_embeddings(inputs["images"])
    text_embeddings = backbone.get_text_embeddings(inputs["token_ids"])
    logits = backbone(inputs)
    print(f"image embeddings: {tuple(image_embeddings.shape)}")
    print(f"text embeddings: {tuple(text_embeddings.shape)}")
    print(f"logits (images x texts): {tuple(logits.shape)}")
    print(
        f"parameters: image tower {backbone.vision_encoder.count_params():,}"
        f", text tower {backbone.text_encoder.count_params():,}"
        f", total {backbone.count_params():,}"
    )

    batch_size = _BATCH_SIZE.value
    _print_header(
        f"fit: sigmoid loss, Adam(1e-3), {_STEPS.value} steps of "
        f"{batch_size} random pairs"
    )
    train = _random_batch(rng, batch_size, batch_size)
    backbone.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = time.perf_counter()
    # One batch per epoch, so each epoch's loss is that step's loss.
    history = backbone.fit(
        train, batch_size=batch_size, epochs=_STEPS.value, verbose=0
    )
    for step, loss in enumerate(history.history["loss"], start=1):
        print(f"step {step}: loss {loss:.6f}")
    print(f"fit time: {time.perf_counter() - start:.1f} s")

    _print_header("save and reload")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "backbone.keras"
    backbone.save(path)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    reloaded = keras.saving.load_model(path)
    difference = np.max(
        np.abs(
            keras.ops.convert_to_numpy(backbone(inputs))
            - keras.ops.convert_to_numpy(reloaded(inputs))
        )
    )
    print(f"max abs difference of logits after reload: {difference:.3g}")


def _architecture_table() -> None:
    _print_header(
        "SigLIP 2 architectures: parameters (256k vocabulary, 64 tokens)"
    )
    print(
        f"{'config':<20} {'image tower':>15} {'text tower':>15} {'total':>15}"
    )
    for name in TABLE_CONFIGS:
        image, text, total = _architecture_param_counts(name)
        print(f"{name:<20} {image:>15,} {text:>15,} {total:>15,}")


def demo() -> None:
    """Runs the demo; see the module docstring."""
    start = time.perf_counter()
    print(
        f"keras-siglip2 demo (Keras {keras.__version__}, backend "
        f"{keras.backend.backend()})"
    )
    _tiny_model_demo(pathlib.Path(_OUTPUT_DIR.value))
    _architecture_table()
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


COMMANDS = {"demo": demo}


def main(argv: list[str]) -> None:
    commands = ", ".join(sorted(COMMANDS))
    if len(argv) != 2:
        raise app.UsageError(
            f"Expected one command ({commands}); got {argv[1:]}."
        )
    command = argv[1]
    if command not in COMMANDS:
        raise app.UsageError(
            f"Unknown command {command!r}; expected one of: {commands}."
        )
    COMMANDS[command]()


if __name__ == "__main__":
    app.run(main)
