"""Zero-shot classification.

Zero-shot classification (CLIP/SigLIP protocol): each class name is put
into every prompt template ("a photo of a {}."), the texts are embedded
and L2-normalised, averaged over the templates and normalised again; an
image is assigned the class whose embedding has the largest dot product
with its normalised image embedding. Top-k accuracy counts ties against
the model (a constant model scores 0, not 100%).

Encoders and examples are described in `keras_siglip2.eval.encoders`.
"""

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

import numpy as np

from keras_siglip2.eval.encoders import _check_nonempty
from keras_siglip2.eval.encoders import as_examples
from keras_siglip2.eval.encoders import l2_normalize

# Templates per language of the generated dataset. Class names there are
# bare noun phrases ("red circle", "roter Kreis"), so the non-English
# templates avoid articles and cases that would have to agree with them.
MULTILINGUAL_TEMPLATES = {
    "en": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a picture of a {}.",
        "an image of the {}.",
        "a drawing of a {}.",
        "{}",
    ),
    "de": ("ein Foto: {}.", "ein Bild: {}.", "{} auf einem Foto.", "{}"),
    "fr": ("une photo : {}.", "une image : {}.", "{} sur une photo.", "{}"),
    "ru": ("фотография: {}.", "изображение: {}.", "{} на фотографии.", "{}"),
    "zh": ("一张{}的照片。", "{}的图片。", "一幅{}的画。", "{}"),
    "hi": ("{} की एक तस्वीर।", "{} का चित्र।", "{}"),
    "ar": ("صورة {}.", "رسم {}.", "{}"),
}
DEFAULT_TEMPLATES = MULTILINGUAL_TEMPLATES["en"]


def class_embeddings(
    encode_texts: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> np.ndarray:
    """Zero-shot classifier weights: prompt-averaged text embeddings.

    Args:
        encode_texts: maps a list of strings to `(num_texts, dim)`
            embeddings (e.g. `BackboneEncoder.encode_texts`).
        class_names: `num_classes` strings.
        templates: strings with a `{}` where the class name goes.

    Returns:
        float32 `(num_classes, dim)`: for each class, the mean over
        templates of the L2-normalised text embeddings, L2-normalised.
    """
    if not class_names:
        raise ValueError("`class_names` is empty.")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(
            "`templates` must be non-empty strings with a '{}' for the "
            f"class name; got {list(templates)!r}."
        )
    texts = [t.replace("{}", name) for name in class_names for t in templates]
    embeddings = l2_normalize(encode_texts(texts))
    embeddings = embeddings.reshape(len(class_names), len(templates), -1)
    return l2_normalize(embeddings.mean(axis=1))


def top_k_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict:
    """Top-k accuracy of class scores, ties counted as errors.

    The rank of the true class is the number of *other* classes scoring at
    least as high, so a tie with the true class costs a place.

    Args:
        scores: float `(num_examples, num_classes)`.
        labels: int `(num_examples,)` in `[0, num_classes)`.
        ks: the k's.

    Returns:
        `{"top{k}": accuracy in [0, 1]}`.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            "Expected `scores` (num_examples, num_classes) and `labels` "
            f"(num_examples,); got {scores.shape} and {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(
            f"`labels` must be in [0, {scores.shape[1]}); got values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    true = scores[np.arange(len(labels)), labels]
    ranks = np.sum(scores >= true[:, None], axis=1) - 1
    return {f"top{k}": float(np.mean(ranks < k)) for k in ks}


def example_labels(examples: Sequence[dict], class_names: Sequence[str]):
    """int32 labels: the `"label"` feature, else the first caption's class.

    Classification data in the reader formats stores the class name as
    the (first) caption; it must be one of `class_names`.
    """
    index = {name: i for i, name in enumerate(class_names)}
    labels = []
    for example in examples:
        if "label" in example:
            labels.append(int(example["label"]))
            continue
        caption = str(example["captions"][0]).strip()
        if caption not in index:
            raise ValueError(
                f"Example {str(example.get('key', ''))!r}: first caption "
                f"{caption!r} is not a class name; expected one of "
                f"{list(class_names)[:10]}{'...' if len(index) > 10 else ''}."
            )
        labels.append(index[caption])
    labels = np.asarray(labels, np.int32)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"`label` values must be in [0, {len(class_names)}); got "
            f"[{labels.min()}, {labels.max()}]."
        )
    return labels


def evaluate_zero_shot(
    encoder,
    examples: Iterable[dict],
    class_names: Sequence[str] | Mapping[str, Sequence[str]],
    templates: Sequence[str] | Mapping[str, Sequence[str]] = (
        DEFAULT_TEMPLATES
    ),
    ks: Sequence[int] = (1, 5),
) -> dict:
    """Zero-shot top-k accuracy of an encoder on labelled examples.

    With several languages (`class_names` a mapping from language to
    names, class `i` at index `i` in each), one classifier is built per
    language and all images are classified by each; images are encoded
    once.

    Args:
        encoder: has `encode_images` and `encode_texts` (see
            `BackboneEncoder`).
        examples: dicts with `"image"` and either `"label"` (int) or
            `"captions"` whose first entry is a class name (see
            `example_labels`); anything `as_examples` takes.
        class_names: names of the classes, or `{language: names}`.
        templates: prompt templates, or `{language: templates}` (then with
            the keys of `class_names`).
        ks: the k's of top-k (k >= the number of classes gives 1.0).

    Returns:
        flat dict: `"top1"`, `"top5"`, ... (per language
        `"{language}/top1"`, ... and their mean `"mean/top1"`, ...),
        `"num_examples"`, `"num_classes"`.
    """
    examples = as_examples(examples)
    _check_nonempty(examples, "examples")
    multilingual = isinstance(class_names, Mapping)
    names = class_names if multilingual else {"": class_names}
    if isinstance(templates, Mapping):
        if set(templates) != set(names):
            raise ValueError(
                "`templates` and `class_names` must have the same "
                f"languages; got {sorted(templates)} and {sorted(names)}."
            )
    else:
        templates = {language: templates for language in names}
    sizes = {len(n) for n in names.values()}
    if len(sizes) != 1:
        raise ValueError(
            "Every language needs the same number of class names; got "
            f"{ {lang: len(n) for lang, n in names.items()} }."
        )
    num_classes = sizes.pop()
    labels = example_labels(examples, next(iter(names.values())))
    images = l2_normalize(encoder.encode_images([e["image"] for e in examples]))
    results = {}
    for language, language_names in names.items():
        weights = class_embeddings(
            encoder.encode_texts, list(language_names), templates[language]
        )
        accuracy = top_k_accuracy(images @ weights.T, labels, ks)
        prefix = f"{language}/" if multilingual else ""
        results.update({prefix + k: v for k, v in accuracy.items()})
    if multilingual:
        for k in ks:
            results[f"mean/top{k}"] = float(
                np.mean([results[f"{lang}/top{k}"] for lang in names])
            )
    results["num_examples"] = len(examples)
    results["num_classes"] = num_classes
    return results
