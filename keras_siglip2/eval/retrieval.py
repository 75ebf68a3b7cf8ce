"""Image-text retrieval: recall at k in both directions.

Every image has one or more captions (COCO has five). The gallery of
image->text retrieval is all captions; an image counts as a hit at k if
*any* of its captions is among the k captions most similar to it. For
text->image retrieval every caption is a query on its own and hits at k
if its image is among the k most similar images. Similarity is the dot
product of L2-normalised embeddings (the logits' order: they only add a
positive scale and a bias). Ties are counted against the model, so a
constant model scores no better than its worst case.
"""

from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np

from keras_siglip2.eval.encoders import as_examples
from keras_siglip2.eval.encoders import l2_normalize

DEFAULT_KS = (1, 5, 10)


def retrieval_ranks(similarity, caption_image_ids):
    """Zero-based rank of the first correct match, per query.

    Args:
        similarity: float `(num_images, num_captions)`.
        caption_image_ids: int `(num_captions,)`: the image of each
            caption; every image needs at least one caption.

    Returns:
        `(image_ranks, caption_ranks)`: int64 `(num_images,)`, the number
        of wrong captions scoring at least as high as the image's best
        caption; int64 `(num_captions,)`, the number of other images
        scoring at least as high as the caption's image.
    """
    similarity = np.asarray(similarity, np.float64)
    ids = np.asarray(caption_image_ids)
    if similarity.ndim != 2 or ids.shape != similarity.shape[1:]:
        raise ValueError(
            "Expected `similarity` (num_images, num_captions) and "
            "`caption_image_ids` (num_captions,); got "
            f"{similarity.shape} and {ids.shape}."
        )
    num_images, num_captions = similarity.shape
    if ids.size and (ids.min() < 0 or ids.max() >= num_images):
        raise ValueError(
            f"`caption_image_ids` must be in [0, {num_images}); got values "
            f"in [{ids.min()}, {ids.max()}]."
        )
    correct = ids[None, :] == np.arange(num_images)[:, None]
    without = np.flatnonzero(~correct.any(axis=1))
    if without.size:
        raise ValueError(
            f"Images {without[:10].tolist()} have no caption; every image "
            "needs at least one."
        )
    best = np.where(correct, similarity, -np.inf).max(axis=1)
    image_ranks = np.sum(~correct & (similarity >= best[:, None]), axis=1)
    true = similarity[ids, np.arange(num_captions)]
    caption_ranks = np.sum(similarity >= true[None, :], axis=0) - 1
    return image_ranks, caption_ranks


def recall_at_k(
    similarity, caption_image_ids, ks: Sequence[int] = DEFAULT_KS
) -> dict:
    """Recall at k in both directions (see the module docstring).

    Args:
        similarity: float `(num_images, num_captions)`.
        caption_image_ids: int `(num_captions,)` image of each caption.
        ks: the k's.

    Returns:
        `{"image_to_text/R@k": ..., "text_to_image/R@k": ...}` in [0, 1].
    """
    image_ranks, caption_ranks = retrieval_ranks(similarity, caption_image_ids)
    results = {}
    for direction, ranks in (
        ("image_to_text", image_ranks),
        ("text_to_image", caption_ranks),
    ):
        for k in ks:
            results[f"{direction}/R@{k}"] = float(np.mean(ranks < k))
    return results


def caption_gallery(
    examples: Sequence[dict], max_captions_per_image: int | None = None
):
    """Flattens the captions of examples.

    Args:
        examples: dicts with `"captions"`.
        max_captions_per_image: keep at most this many per image.

    Returns:
        `(captions, caption_image_ids)`: list of str, int32 array.
    """
    captions, ids = [], []
    for index, example in enumerate(examples):
        texts = [str(c) for c in np.asarray(example["captions"]).ravel()]
        texts = texts[:max_captions_per_image]
        captions += texts
        ids += [index] * len(texts)
    return captions, np.asarray(ids, np.int32)


def evaluate_retrieval(
    encoder,
    examples: Iterable[dict],
    ks: Sequence[int] = DEFAULT_KS,
    max_captions_per_image: int | None = None,
) -> dict:
    """Image<->text recall at k of an encoder on captioned images.

    Args:
        encoder: has `encode_images` and `encode_texts` (see
            `keras_siglip2.eval.zero_shot.BackboneEncoder`).
        examples: dicts with `"image"` and `"captions"` (the readers'
            elements, generated examples); anything `as_examples` takes.
        ks: the k's.
        max_captions_per_image: use at most this many captions per image.

    Returns:
        flat dict: `"image_to_text/R@k"`, `"text_to_image/R@k"` for each
        k, `"num_images"`, `"num_captions"`.
    """
    examples = as_examples(examples)
    if not examples:
        raise ValueError("`examples` is empty.")
    captions, ids = caption_gallery(examples, max_captions_per_image)
    images = l2_normalize(encoder.encode_images([e["image"] for e in examples]))
    texts = l2_normalize(encoder.encode_texts(captions))
    results = recall_at_k(images @ texts.T, ids, ks)
    results["num_images"] = len(examples)
    results["num_captions"] = len(captions)
    return results
