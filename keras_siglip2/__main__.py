"""Command line: `python -m keras_siglip2 {demo,convert,summary,eval}`.

- `demo [--output_dir DIR] [--steps N] [--batch_size B]` trains a
  SentencePiece vocabulary and a tiny `SigLIP2Backbone` on the generated
  dataset through the recipe's stages (A: sigmoid + LocCa, B, C with a
  resolution change) with resumable checkpoints in `DIR/checkpoints`,
  evaluates it (zero-shot, retrieval, dense probe) into
  `DIR/results.json`, saves and reloads it, then prints the parameter
  counts of the real SigLIP 2 sizes.
- `convert --from {hf,big_vision,keras_hub,keras} --to
  {keras,hf,keras_hub,big_vision} SRC DST` converts a checkpoint, with a
  progress bar over its tensors. `keras` is a `.keras` file (when the path
  ends in `.keras`) or our preset directory; `keras_hub` a keras-hub
  `SigLIPBackbone` preset directory (or, as a source, a preset name).
- `summary SRC` prints the architecture and parameter counts per tower of
  a checkpoint (`.npz`, `.keras`, a preset or HF directory) or of a preset
  name, without downloading it.
- `eval [--eval_model tiny|MODEL] [--eval_data generated|PATH] ...` scores
  a model: zero-shot classification (multilingual prompts), image<->text
  retrieval, referring expressions (a decoder trained on the frozen image
  tower) and a dense linear probe; prints a table and writes JSON
  (`--eval_output`). Offline on the generated dataset by default; on
  WebDataset/TFRecord/JSONL data with `--eval_data` (zero-shot with
  `--eval_class_names`, referring with `--eval_train_data`).
"""

import math
import os
import pathlib
import sys
import time
import zipfile
from collections.abc import Callable

import keras
import numpy as np
from absl import app
from absl import flags

from keras_siglip2 import eval as eval_lib
from keras_siglip2.convert.big_vision import load_big_vision_npz
from keras_siglip2.convert.big_vision import save_big_vision_npz
from keras_siglip2.convert.hf import load_hf_checkpoint
from keras_siglip2.convert.hf import save_hf_checkpoint
from keras_siglip2.convert.keras_hub import load_preset
from keras_siglip2.convert.keras_hub import save_keras_hub_preset
from keras_siglip2.data.generated import CLASS_NAMES as GENERATED_CLASS_NAMES
from keras_siglip2.data.generated import LANGUAGES as GENERATED_LANGUAGES
from keras_siglip2.data.generated import GeneratedConfig
from keras_siglip2.data.generated import generated_dataset
from keras_siglip2.data.generated import generated_examples
from keras_siglip2.data.generated import zero_shot_class_names
from keras_siglip2.data.readers import SkipCounter
from keras_siglip2.data.readers import jsonl_examples
from keras_siglip2.data.readers import tfrecord_examples
from keras_siglip2.data.readers import webdataset_examples
from keras_siglip2.data.vocabulary import train_demo_sentencepiece
from keras_siglip2.layers.contrastive_logits import ContrastiveLogits
from keras_siglip2.models.backbone import SigLIP2Backbone
from keras_siglip2.models.configs import BackboneConfig
from keras_siglip2.models.configs import get_config
from keras_siglip2.models.presets import PRESETS
from keras_siglip2.models.presets import get_preset
from keras_siglip2.models.text_encoder import SigLIP2TextEncoder
from keras_siglip2.models.tokenizer import SigLIP2Tokenizer
from keras_siglip2.models.vision_encoder import SigLIP2VisionEncoder
from keras_siglip2.training.recipe import RecipeConfig
from keras_siglip2.training.recipe import SigLIP2Recipe
from keras_siglip2.training.stage_a import StageAModel

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "siglip2_demo", "Where `demo` writes its checkpoint."
)
_STEPS = flags.DEFINE_integer(
    "steps",
    48,
    "Training steps of the `demo` recipe (stages A-C).",
    lower_bound=8,
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    16,
    "Image-text pairs per training batch of `demo`.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of `demo`.")
SOURCE_FORMATS = ("hf", "big_vision", "keras_hub", "keras")
TARGET_FORMATS = ("keras", "hf", "keras_hub", "big_vision")
_FROM = flags.DEFINE_enum(
    "from", None, SOURCE_FORMATS, "Source format of `convert`."
)
_TO = flags.DEFINE_enum(
    "to", None, TARGET_FORMATS, "Target format of `convert`."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    None,
    "`convert --from big_vision`: input size when it is not grid * patch "
    "(e.g. 384 for so400m/14 at 384 px).",
    lower_bound=1,
)

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


def _recipe_demo(output_dir: pathlib.Path) -> None:
    keras.utils.set_random_seed(_SEED.value)
    _print_header("Data and tokenizer")
    proto = train_demo_sentencepiece(vocab_size=TINY_TEXT["vocabulary_size"])
    tokenizer = SigLIP2Tokenizer(
        proto=proto, sequence_length=TINY_TEXT["max_sequence_length"]
    )
    print(
        f"generated grounded multilingual dataset; SentencePiece vocabulary "
        f"of {tokenizer.vocabulary_size()} pieces trained on its captions"
    )
    backbone = SigLIP2Backbone(
        SigLIP2VisionEncoder(**TINY_VISION),
        SigLIP2TextEncoder(
            **{**TINY_TEXT, "vocabulary_size": tokenizer.vocabulary_size()}
        ),
    )
    _print_header("Tiny SigLIP2Backbone")
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
    examples = list(
        generated_examples(
            "test", seed=_SEED.value, num_examples=6, image_size=32
        )
    )
    images = np.stack([e["image"] for e in examples]).astype("float32")
    images = images / 127.5 - 1.0
    token_ids = np.asarray(tokenizer([e["captions"][0] for e in examples]))
    inputs = {"images": images[:4], "token_ids": token_ids}
    print(
        "image embeddings: "
        f"{tuple(backbone.get_vision_embeddings(inputs['images']).shape)}"
    )
    print(
        "text embeddings: "
        f"{tuple(backbone.get_text_embeddings(token_ids).shape)}"
    )
    print(f"logits (images x texts): {tuple(backbone(inputs).shape)}")
    print(
        f"parameters: image tower {backbone.vision_encoder.count_params():,}"
        f", text tower {backbone.text_encoder.count_params():,}"
        f", total {backbone.count_params():,}"
    )

    batch_size = _BATCH_SIZE.value
    config = RecipeConfig(
        total_examples=_STEPS.value * batch_size,
        batch_size=batch_size,
        checkpoint_every=max(1, _STEPS.value // 8),
        image_size=TINY_VISION["image_size"],
        stage_c_image_size=TINY_VISION["image_size"] + 16,
        decoder_length=24,
        num_location_bins=64,
        num_local_crops=4,
        local_crop_size=16,
        head_hidden_dim=128,
        head_bottleneck_dim=32,
        num_prototypes=256,
        num_patch_prototypes=128,
        seed=_SEED.value,
    )
    recipe = SigLIP2Recipe(
        config,
        backbone,
        tokenizer,
        lambda start: generated_dataset(
            "train", seed=_SEED.value, start=start, side_range=(24, 64)
        ),
    )
    _print_header(
        f"Recipe: {_STEPS.value} steps of {batch_size} examples, stages "
        + ", ".join(
            f"{s.name} [{s.start_step}, {s.end_step})" for s in recipe.plan
        )
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = recipe.fit(output_dir / "checkpoints", verbose=1)
    print(f"recipe time: {time.perf_counter() - start:.1f} s")
    for stage, history in result["histories"].items():
        for name, values in history.items():
            print(
                f"stage {stage} {name}: first {values[0]:.4f} "
                f"last {values[-1]:.4f}"
            )
    backbone = result["backbone"]

    _print_header("Evaluation on held-out generated data")
    image_size = backbone.vision_encoder.image_size
    encoder = eval_lib.BackboneEncoder(backbone, tokenizer, batch_size=32)
    test = _generated("test", 64, image_size, num_captions=3)
    single = _generated("test", 64, image_size, num_objects=(1, 1))
    train = _generated("train", 64, image_size)
    results = {
        "zero_shot": eval_lib.evaluate_zero_shot(
            encoder, single, zero_shot_class_names("en")
        ),
        "retrieval": eval_lib.evaluate_retrieval(encoder, test),
        "dense_probe": eval_lib.evaluate_dense_probe(
            encoder,
            train,
            test,
            class_names=GENERATED_CLASS_NAMES,
            epochs=10,
        ),
    }
    print(eval_lib.format_table(results, title="demo metrics"))
    eval_lib.write_json(results, output_dir / "results.json")
    print(f"wrote {output_dir / 'results.json'}")

    _print_header("save and reload")
    path = output_dir / "backbone.keras"
    backbone.save(path)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")
    reloaded = keras.saving.load_model(path)
    images = np.zeros((2, image_size, image_size, 3), "float32")
    check = {"images": images, "token_ids": token_ids[:2]}
    difference = np.max(
        np.abs(
            keras.ops.convert_to_numpy(backbone(check))
            - keras.ops.convert_to_numpy(reloaded(check))
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
    _recipe_demo(pathlib.Path(_OUTPUT_DIR.value))
    _architecture_table()
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


class _ProgressBar:
    """`progress(done, total)` callback drawing a `keras.utils.Progbar`."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.verbose:
            return
        if self.bar is None or done == 1:
            self.bar = keras.utils.Progbar(total, unit_name="tensor")
        self.bar.update(done)


def _load_keras(path: str) -> SigLIP2Backbone:
    if path.endswith(".keras"):
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot load: {e}") from None
        if not isinstance(model, SigLIP2Backbone):
            raise ValueError(
                f"{path} holds a {type(model).__name__}, not a SigLIP2Backbone."
            )
        return model
    return load_preset(path)


def load_checkpoint(
    source_format: str,
    path: str,
    image_size: int | None = None,
    progress=None,
) -> SigLIP2Backbone:
    """Loads a backbone from any supported format.

    Args:
        source_format: one of `SOURCE_FORMATS`.
        path: checkpoint path (or, for `keras_hub`, a preset name).
        image_size: input size of a fixed-resolution big_vision model.
        progress: optional `progress(done, total)` callback.

    Returns:
        A `SigLIP2Backbone`.
    """
    if source_format == "hf":
        return load_hf_checkpoint(path, progress=progress)
    if source_format == "big_vision":
        return load_big_vision_npz(
            path, image_size=image_size, progress=progress
        )
    if source_format == "keras_hub":
        return load_preset(path, progress=progress)
    if source_format == "keras":
        return _load_keras(path)
    raise ValueError(
        f"Unknown source format {source_format!r}; expected one of "
        f"{SOURCE_FORMATS}."
    )


def save_checkpoint(
    backbone: SigLIP2Backbone, target_format: str, path: str, progress=None
) -> None:
    """Writes a backbone in any supported format.

    Args:
        backbone: a `SigLIP2Backbone`.
        target_format: one of `TARGET_FORMATS`.
        path: output path.
        progress: optional `progress(done, total)` callback.
    """
    if target_format == "keras":
        if path.endswith(".keras"):
            backbone.save(path)
        else:
            backbone.save_to_preset(path)
    elif target_format == "hf":
        save_hf_checkpoint(backbone, path, progress=progress)
    elif target_format == "keras_hub":
        save_keras_hub_preset(backbone, path, progress=progress)
    elif target_format == "big_vision":
        save_big_vision_npz(backbone, path, progress=progress)
    else:
        raise ValueError(
            f"Unknown target format {target_format!r}; expected one of "
            f"{TARGET_FORMATS}."
        )


def convert_checkpoint(
    source_format: str,
    target_format: str,
    source: str,
    target: str,
    image_size: int | None = None,
    verbose: bool = True,
) -> SigLIP2Backbone:
    """Converts `source` (in `source_format`) to `target`.

    Args:
        source_format: one of `SOURCE_FORMATS`.
        target_format: one of `TARGET_FORMATS`.
        source: input path or preset name.
        target: output path.
        image_size: input size of a fixed-resolution big_vision model.
        verbose: print progress bars and what was done.

    Returns:
        The converted `SigLIP2Backbone`.
    """
    start = time.perf_counter()
    if verbose:
        print(f"reading {source} ({source_format})", flush=True)
    backbone = load_checkpoint(
        source_format, source, image_size, _ProgressBar(verbose)
    )
    if verbose:
        print(f"writing {target} ({target_format})", flush=True)
    save_checkpoint(backbone, target_format, target, _ProgressBar(verbose))
    if verbose:
        print(
            f"converted {backbone.count_params():,} parameters in "
            f"{time.perf_counter() - start:.1f} s"
        )
    return backbone


def _preset_tower_counts(config: BackboneConfig) -> tuple[int, int, int]:
    """Tower parameter counts of an architecture, without allocating it."""
    vision_config, text_config = config.vision, config.text
    size = vision_config["image_size"]
    with keras.StatelessScope(initialize_variables=False):
        vision = SigLIP2VisionEncoder(**vision_config)
        vision.build((None, size, size, 3))
        text = SigLIP2TextEncoder(**text_config)
        text.build((None, text_config["max_sequence_length"]))
        counts = (_count(vision), _count(text), 2)
    keras.utils.clear_session(free_memory=False)
    return counts


def _summary_lines(vision, text, naflex, counts) -> list[str]:
    """Architecture and parameter-count lines from encoder configs."""
    image, text_count, logits = counts
    resolution = (
        f"NaFlex, {vision['image_size'] // vision['patch_size']}^2 "
        "position grid"
        if naflex
        else f"{vision['image_size']} px"
    )
    pooling = "MAP head" if vision.get("use_head", True) else "mean pooling"
    return [
        f"image tower: {resolution}, patch {vision['patch_size']}, width "
        f"{vision['hidden_dim']}, {vision['num_layers']} layers, "
        f"{vision['num_heads']} heads, MLP {vision['intermediate_dim']}, "
        f"{pooling}",
        f"text tower: vocabulary {text['vocabulary_size']:,}, "
        f"{text['max_sequence_length']} tokens, width {text['hidden_dim']}, "
        f"{text['num_layers']} layers, {text['num_heads']} heads, MLP "
        f"{text['intermediate_dim']}, projection "
        f"{text.get('projection_dim') or text['hidden_dim']}",
        "parameters:",
        f"  {'image tower':<12} {image:>15,}",
        f"  {'text tower':<12} {text_count:>15,}",
        f"  {'logits':<12} {logits:>15,}",
        f"  {'total':<12} {image + text_count + logits:>15,}",
    ]


def _source_format(source: str) -> str:
    path = pathlib.Path(source)
    if source.endswith(".npz"):
        return "big_vision"
    if source.endswith(".keras"):
        return "keras"
    if path.is_dir():
        return "preset"
    if os.sep in source or path.exists():
        raise ValueError(
            f"{source}: not a `.npz` or `.keras` file, or a preset/HF "
            "checkpoint directory."
        )
    # Neither a file nor a directory: a misspelt preset name, which
    # `get_preset` reports with its closest matches.
    get_preset(source)
    return "preset"


def summarize(source: str) -> str:
    """Describes a checkpoint or preset name: architecture and counts.

    Args:
        source: a preset name (described from the preset table, nothing
            is downloaded), an `.npz` or `.keras` file, or a preset or HF
            checkpoint directory (loaded).

    Returns:
        The text `summary` prints.
    """
    if source in PRESETS:
        preset = PRESETS[source]
        lines = [
            f"{source}: {preset.description}",
            f"weights: {preset.kaggle_handle} (not downloaded)",
        ]
        if preset.note:
            lines.append(f"note: {preset.note}")
        config = preset.config
        counts = _preset_tower_counts(config)
        return "\n".join(
            lines + _summary_lines(config.vision, config.text, False, counts)
        )
    source_format = _source_format(source)
    if source_format == "big_vision":
        backbone = load_big_vision_npz(source)
    elif source_format == "keras":
        backbone = _load_keras(source)
    else:
        backbone = load_preset(source)
    kind = "NaFlex" if backbone.naflex else "fixed-resolution"
    counts = (
        backbone.vision_encoder.count_params(),
        backbone.text_encoder.count_params(),
        backbone.contrastive_logits.count_params(),
    )
    lines = [f"{source}: {kind} SigLIP2Backbone ({source_format})"]
    return "\n".join(
        lines
        + _summary_lines(
            backbone.vision_encoder.get_config(),
            backbone.text_encoder.get_config(),
            backbone.naflex,
            counts,
        )
    )


def _exit_on_value_error(run: Callable[[], None]) -> None:
    """Bad checkpoints and names are user errors: one line, no trace."""
    try:
        run()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def convert(source: str, target: str) -> None:
    """Runs `convert`; see the module docstring."""
    missing = [f"--{flag.name}" for flag in (_FROM, _TO) if flag.value is None]
    if missing:
        raise app.UsageError(f"`convert` needs {' and '.join(missing)}.")
    _exit_on_value_error(
        lambda: convert_checkpoint(
            _FROM.value,
            _TO.value,
            source,
            target,
            image_size=_IMAGE_SIZE.value,
        )
    )


def summary(source: str) -> None:
    """Runs `summary`; see the module docstring."""
    _exit_on_value_error(lambda: print(summarize(source)))


# === eval ===

EVAL_TASKS = ("zero_shot", "retrieval", "referring", "dense_probe")
DATA_FORMATS = ("auto", "webdataset", "tfrecord", "jsonl")
_EVAL_MODEL = flags.DEFINE_string(
    "eval_model",
    "tiny",
    "`eval`: `tiny` (a random-init tiny model), a `.keras` file (a "
    "SigLIP2Backbone or a Stage A model), a `.npz` or a preset/HF "
    "directory or preset name.",
)
_EVAL_TOKENIZER = flags.DEFINE_string(
    "eval_tokenizer",
    None,
    "`eval`: SentencePiece model file. Default for `tiny` and `.keras` "
    "models: the demo vocabulary trained on the generated texts.",
)
_EVAL_DATA = flags.DEFINE_string(
    "eval_data",
    "generated",
    "`eval`: `generated` (offline, the `test` split) or a path/glob of "
    "test data in a reader format (WebDataset tars, TFRecords, JSONL).",
)
_EVAL_TRAIN_DATA = flags.DEFINE_string(
    "eval_train_data",
    None,
    "`eval`: training data of the referring-expression decoder (a path "
    "or glob, same format as --eval_data); `generated` data uses its "
    "`train` split.",
)
_EVAL_DATA_FORMAT = flags.DEFINE_enum(
    "eval_data_format",
    "auto",
    DATA_FORMATS,
    "`eval`: format of --eval_data/--eval_train_data; `auto` goes by the "
    "file extension.",
)
_EVAL_CLASS_NAMES = flags.DEFINE_string(
    "eval_class_names",
    None,
    "`eval` zero-shot on reader-format data: a file with one class name "
    "per line; each example's first caption is its class name.",
)
_EVAL_TASKS = flags.DEFINE_list(
    "eval_tasks",
    ["all"],
    f"`eval`: `all` or some of {', '.join(EVAL_TASKS)}.",
)
_EVAL_NUM_EXAMPLES = flags.DEFINE_integer(
    "eval_num_examples",
    128,
    "`eval`: test examples (at most, for reader data).",
    lower_bound=1,
)
_EVAL_NUM_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "eval_num_train_examples",
    256,
    "`eval`: training examples of the decoder and the dense probe.",
    lower_bound=1,
)
_EVAL_DECODER_STEPS = flags.DEFINE_integer(
    "eval_decoder_steps",
    300,
    "`eval`: training steps of the referring-expression decoder.",
    lower_bound=1,
)
_EVAL_PROBE_EPOCHS = flags.DEFINE_integer(
    "eval_probe_epochs", 20, "`eval`: epochs of the dense probe.", lower_bound=1
)
_EVAL_LOCATION_BINS = flags.DEFINE_integer(
    "eval_location_bins",
    1000,
    "`eval`: location tokens per box coordinate of the decoder.",
    lower_bound=2,
)
_EVAL_BATCH_SIZE = flags.DEFINE_integer(
    "eval_batch_size", 32, "`eval`: batch size.", lower_bound=1
)
_EVAL_MAX_NUM_PATCHES = flags.DEFINE_integer(
    "eval_max_num_patches",
    None,
    "`eval` of NaFlex models: sequence length (default: the position "
    "table's patch count).",
    lower_bound=1,
)
_EVAL_SEED = flags.DEFINE_integer("eval_seed", 0, "`eval`: random seed.")
_EVAL_OUTPUT = flags.DEFINE_string(
    "eval_output",
    "siglip2_eval/results.json",
    "`eval`: where to write the results as JSON.",
)


def _eval_backbone(source: str) -> SigLIP2Backbone:
    """The backbone `eval` scores (see --eval_model)."""
    if source == "tiny":
        keras.utils.set_random_seed(_EVAL_SEED.value)
        return SigLIP2Backbone(
            SigLIP2VisionEncoder(**TINY_VISION),
            SigLIP2TextEncoder(**TINY_TEXT),
        )
    if source.endswith(".keras"):
        model = keras.saving.load_model(source, safe_mode=True)
        if isinstance(model, StageAModel):
            model = model.backbone
        if not isinstance(model, SigLIP2Backbone):
            raise ValueError(
                f"{source} holds a {type(model).__name__}, not a "
                "SigLIP2Backbone or StageAModel."
            )
        return model
    if _source_format(source) == "big_vision":
        return load_big_vision_npz(source)
    return load_preset(source)


def _eval_tokenizer(source: str, backbone: SigLIP2Backbone):
    text = backbone.text_encoder
    if _EVAL_TOKENIZER.value is not None:
        proto = _EVAL_TOKENIZER.value
    elif source == "tiny" or source.endswith(".keras"):
        print(
            f"tokenizer: the demo vocabulary ({text.vocabulary_size} "
            "pieces, trained on the generated texts)"
        )
        proto = train_demo_sentencepiece(
            vocab_size=text.vocabulary_size, seed=_EVAL_SEED.value
        )
    else:
        raise app.UsageError(
            f"`eval` of {source} needs --eval_tokenizer (the model's "
            "SentencePiece file, e.g. Gemma's tokenizer.model)."
        )
    return SigLIP2Tokenizer(
        proto=proto, sequence_length=text.max_sequence_length
    )


def _reader_format(path: str) -> str:
    if _EVAL_DATA_FORMAT.value != "auto":
        return _EVAL_DATA_FORMAT.value
    name = path.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if name.endswith(".jsonl"):
        return "jsonl"
    if ".tfrecord" in name or ".tfrec" in name:
        return "tfrecord"
    raise app.UsageError(
        f"Cannot tell the format of {path!r} from its extension; pass "
        f"--eval_data_format ({', '.join(DATA_FORMATS[1:])})."
    )


def _read_examples(path: str, limit: int, counter: SkipCounter) -> list:
    readers = {
        "webdataset": webdataset_examples,
        "tfrecord": tfrecord_examples,
        "jsonl": jsonl_examples,
    }
    reader = readers[_reader_format(path)]
    return eval_lib.as_examples(reader(path, skip_counter=counter), limit)


def _eval_tasks(user_data: bool) -> tuple[list[str], dict[str, str]]:
    """The tasks to run, and the reasons others are skipped."""
    requested = _EVAL_TASKS.value
    explicit = requested != ["all"]
    tasks = list(requested) if explicit else list(EVAL_TASKS)
    unknown = sorted(set(tasks) - set(EVAL_TASKS))
    if unknown:
        raise app.UsageError(
            f"Unknown --eval_tasks {unknown}; expected `all` or some of "
            f"{', '.join(EVAL_TASKS)}."
        )
    unavailable = {}
    if user_data:
        if _EVAL_CLASS_NAMES.value is None:
            unavailable["zero_shot"] = "needs --eval_class_names"
        if _EVAL_TRAIN_DATA.value is None:
            unavailable["referring"] = "needs --eval_train_data"
        unavailable["dense_probe"] = (
            "needs per-pixel class maps, which the reader formats lack"
        )
    blocked = [task for task in tasks if task in unavailable]
    if explicit and blocked:
        raise app.UsageError(
            "; ".join(f"{task} {unavailable[task]}" for task in blocked)
        )
    skipped = {task: unavailable[task] for task in blocked}
    return [task for task in tasks if task not in skipped], skipped


def _generated(split: str, count: int, image_size, **overrides) -> list:
    config = GeneratedConfig(image_size=image_size, **overrides)
    return eval_lib.as_examples(
        generated_examples(split, _EVAL_SEED.value, count, config=config)
    )


def _run_eval() -> None:
    start = time.perf_counter()
    print(
        f"keras-siglip2 eval (Keras {keras.__version__}, backend "
        f"{keras.backend.backend()})"
    )
    source = _EVAL_MODEL.value
    user_data = _EVAL_DATA.value != "generated"
    tasks, skipped = _eval_tasks(user_data)
    backbone = _eval_backbone(source)
    tokenizer = _eval_tokenizer(source, backbone)
    encoder = eval_lib.BackboneEncoder(
        backbone,
        tokenizer,
        batch_size=_EVAL_BATCH_SIZE.value,
        max_num_patches=_EVAL_MAX_NUM_PATCHES.value,
    )
    vision = backbone.vision_encoder
    image_size = None if backbone.naflex else vision.image_size
    num_test = _EVAL_NUM_EXAMPLES.value
    num_train = _EVAL_NUM_TRAIN_EXAMPLES.value
    counter = SkipCounter()
    needs_train = {"referring", "dense_probe"} & set(tasks)
    if user_data:
        test = _read_examples(_EVAL_DATA.value, num_test, counter)
        train = (
            _read_examples(_EVAL_TRAIN_DATA.value, num_train, counter)
            if needs_train
            else []
        )
    else:
        test = _generated("test", num_test, image_size, num_captions=3)
        train = (
            _generated("train", num_train, image_size, num_captions=3)
            if needs_train
            else []
        )
    print(
        f"model: {source}; data: {_EVAL_DATA.value} ({len(test)} test, "
        f"{len(train)} train examples)"
    )
    results = {}

    def run(name, score):
        _print_header(name)
        task_start = time.perf_counter()
        results[name] = score()
        print(f"{name}: {time.perf_counter() - task_start:.1f} s")

    if "zero_shot" in tasks:
        if user_data:
            with open(_EVAL_CLASS_NAMES.value, encoding="utf-8") as file:
                names = [line.strip() for line in file if line.strip()]
            run(
                "zero_shot",
                lambda: eval_lib.evaluate_zero_shot(encoder, test, names),
            )
        else:
            names = {
                language: zero_shot_class_names(language)
                for language in GENERATED_LANGUAGES
            }
            for split, name in (
                ("test", "zero_shot"),
                ("compositional", "zero_shot_compositional"),
            ):
                # One object per image, so the label is the whole scene.
                images = _generated(
                    split, num_test, image_size, num_objects=(1, 1)
                )
                run(
                    name,
                    lambda images=images: eval_lib.evaluate_zero_shot(
                        encoder,
                        images,
                        names,
                        eval_lib.MULTILINGUAL_TEMPLATES,
                    ),
                )
    if "retrieval" in tasks:
        run("retrieval", lambda: eval_lib.evaluate_retrieval(encoder, test))
    if "referring" in tasks:
        run(
            "referring",
            lambda: eval_lib.evaluate_referring(
                encoder,
                train,
                test,
                num_location_bins=_EVAL_LOCATION_BINS.value,
                steps=_EVAL_DECODER_STEPS.value,
                batch_size=_EVAL_BATCH_SIZE.value,
                seed=_EVAL_SEED.value,
            ),
        )
    if "dense_probe" in tasks:
        run(
            "dense_probe",
            lambda: eval_lib.evaluate_dense_probe(
                encoder,
                train,
                test,
                class_names=GENERATED_CLASS_NAMES,
                epochs=_EVAL_PROBE_EPOCHS.value,
            ),
        )
    for task, reason in skipped.items():
        print(f"skipped {task}: {reason}")
    if counter.total:
        print(f"skipped records: {counter.counts}")
    _print_header("results")
    print(eval_lib.format_table(results))
    metadata = {
        "model": source,
        "data": _EVAL_DATA.value,
        "train_data": (_EVAL_TRAIN_DATA.value or "")
        if user_data
        else "generated",
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "seed": _EVAL_SEED.value,
        "decoder_steps": _EVAL_DECODER_STEPS.value,
        "probe_epochs": _EVAL_PROBE_EPOCHS.value,
        "location_bins": _EVAL_LOCATION_BINS.value,
        "skipped": "; ".join(f"{t}: {r}" for t, r in skipped.items()),
        "skipped_records": counter.total,
        "seconds": round(time.perf_counter() - start, 1),
    }
    eval_lib.write_json(results, _EVAL_OUTPUT.value, metadata)
    print(f"\nwrote {_EVAL_OUTPUT.value}")
    print(f"done in {time.perf_counter() - start:.1f} s")


def evaluate() -> None:
    """Runs `eval`; see the module docstring."""
    _exit_on_value_error(_run_eval)


COMMANDS = {
    "demo": demo,
    "convert": convert,
    "summary": summary,
    "eval": evaluate,
}
ARGUMENTS = {
    "demo": (),
    "convert": ("SRC", "DST"),
    "summary": ("SRC",),
    "eval": (),
}


def _usage(command: str) -> str:
    return " ".join([command, *ARGUMENTS[command]])


def main(argv: list[str]) -> None:
    commands = ", ".join(COMMANDS)
    if len(argv) < 2:
        raise app.UsageError(
            f"Expected one command ({commands}); got {argv[1:]}."
        )
    command, arguments = argv[1], argv[2:]
    if command not in COMMANDS:
        raise app.UsageError(
            f"Unknown command {command!r}; expected one of: {commands}."
        )
    if len(arguments) != len(ARGUMENTS[command]):
        raise app.UsageError(
            f"Usage: {_usage(command)}; got arguments {arguments}."
        )
    COMMANDS[command](*arguments)


if __name__ == "__main__":
    app.run(main)
