"""The generated grounded multilingual dataset.

Oracles: the scene description itself (every caption, box, mask, class map
and position must agree with the objects drawn), the pixels (colours under
each mask), independent re-generation (determinism) and Unicode script
ranges for the non-Latin languages.
"""

import collections
import functools

import numpy as np
import pytest

from keras_siglip2.data import generated as g

SMALL = dict(side_range=(24, 64))


@functools.cache
def _examples(split="train", seed=0, count=60, **overrides):
    config = dict(SMALL, **overrides)
    return tuple(g.generated_examples(split, seed, count, **config))


def _decoded(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.asarray([v.decode() for v in value.ravel()], dtype=str)
    return value


def test_deterministic_and_random_access():
    first = g.generate_example("train", 7, 12, **SMALL)
    again = g.generate_example("train", 7, 12, **SMALL)
    streamed = list(g.generated_examples("train", 7, 2, start=11, **SMALL))[1]
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        np.testing.assert_array_equal(first[name], streamed[name])
    other_seed = g.generate_example("train", 8, 12, **SMALL)
    assert other_seed["image"].shape != first["image"].shape or not (
        np.array_equal(other_seed["image"], first["image"])
    )


def test_splits_are_disjoint_streams():
    images = {
        split: [e["image"].tobytes() for e in _examples(split, count=20)]
        for split in ("train", "validation", "test")
    }
    seen = set()
    for split, blobs in images.items():
        assert len(set(blobs)) == len(blobs), split
        assert not seen & set(blobs), split
        seen |= set(blobs)


def test_tf_data_matches_python_iterator():
    dataset = g.generated_dataset("test", 3, num_examples=3, start=5, **SMALL)
    specs = {name: (dtype, shape) for name, dtype, shape in g.FEATURES}
    assert set(dataset.element_spec) == set(specs)
    for name, spec in dataset.element_spec.items():
        assert spec.dtype == specs[name][0], name
    expected = list(g.generated_examples("test", 3, 3, start=5, **SMALL))
    for element, reference in zip(dataset.as_numpy_iterator(), expected):
        for name in specs:
            np.testing.assert_array_equal(
                _decoded(element[name]), reference[name], err_msg=name
            )
    batch = next(iter(dataset.ragged_batch(3)))
    assert batch["boxes"].shape[0] == 3


@pytest.mark.parametrize("split", ["train", "compositional"])
def test_schema_and_grounding(split):
    for example in _examples(split, text_fraction=0.5):
        image, masks = example["image"], example["masks"]
        height, width, channels = image.shape
        count = len(example["boxes"])
        assert channels == 3 and image.dtype == np.uint8
        assert masks.shape == (count, height, width)
        assert example["class_map"].shape == (height, width)
        for name in (
            "refexps",
            "grounded_captions",
            "object_shapes",
            "object_colors",
            "object_sizes",
            "object_positions",
            "object_classes",
        ):
            assert example[name].shape == (count,), name
        assert example["captions"].shape == (1,)
        assert 1 <= count <= 4
        boxes = example["boxes"]
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2] > boxes[:, 0]).all()
        assert (boxes[:, 3] > boxes[:, 1]).all()
        assert example["label"] == example["object_classes"][0]
        sides = np.asarray([height, width, height, width])
        for i in range(count):
            shape = example["object_shapes"][i]
            color = example["object_colors"][i]
            mask = masks[i].astype(bool)
            assert mask.sum() > 0
            assert example["object_classes"][i] == color * len(g.SHAPES) + shape
            # Visible pixels lie in the box, and their class is the shape's.
            ymin, xmin, ymax, xmax = np.round(boxes[i] * sides).astype(int)
            inside = np.zeros_like(mask)
            inside[ymin:ymax, xmin:xmax] = True
            assert not (mask & ~inside).any()
            assert (example["class_map"][mask] == shape + 1).all()
            # The pixels are the named colour (up to jitter and noise).
            mean = image[mask].reshape(-1, 3).mean(axis=0)
            np.testing.assert_allclose(mean, g.COLOR_RGB[color], atol=25)
            # The position is the 3 x 3 cell of the box centre.
            cy, cx = (ymin + ymax) / 2 / height, (xmin + xmax) / 2 / width
            cell = int(cy * 3) * 3 + int(cx * 3)
            assert example["object_positions"][i] == cell
            # The size class is the extent relative to the shorter side.
            extent = max(ymax - ymin, xmax - xmin) / min(height, width)
            low, high = g.SIZE_RANGES[example["object_sizes"][i]]
            assert low - 0.1 <= extent <= high + 0.05
        objects = example["class_map"] > 0
        text_pixels = example["class_map"] == g.CLASS_NAMES.index("text")
        assert (objects & ~text_pixels).sum() == masks.sum()
        assert len(set(example["object_positions"].tolist())) == count


def test_held_out_pairs():
    held_out = set(g.HELD_OUT_PAIRS)
    assert len(held_out) == 8
    assert len({c for c, _ in held_out}) == len({s for _, s in held_out}) == 8
    for split in ("train", "test"):
        for example in _examples(split):
            pairs = zip(example["object_colors"], example["object_shapes"])
            assert not held_out & set(pairs)
    for example in _examples("compositional"):
        pairs = zip(example["object_colors"], example["object_shapes"])
        assert set(pairs) <= held_out
    free = _examples("train", count=30, hold_out_pairs=False)
    assert all(len(e["boxes"]) for e in free)


def test_english_texts_describe_the_objects():
    examples = [
        e
        for e in _examples(count=60, num_captions=3, text_fraction=0.5)
        if e["language"] == "en"
    ]
    assert len(examples) > 40
    for example in examples:
        full, short, no_position = example["captions"]
        colors = [g.COLORS[c] for c in example["object_colors"]]
        shapes = [g.SHAPES[s] for s in example["object_shapes"]]
        sizes = [g.SIZES[s] for s in example["object_sizes"]]
        for color, shape, size in zip(colors, shapes, sizes):
            assert f"{color} {shape}" in short
            assert f"{size} {color} {shape}" in full
            assert f"{size} {color} {shape}" in no_position
        for refexp, grounded, color, shape, size in zip(
            example["refexps"],
            example["grounded_captions"],
            colors,
            shapes,
            sizes,
        ):
            assert refexp.startswith("the ") and f"{color} {shape}" in refexp
            assert grounded.endswith(f"{size} {color} {shape}")
        # Referring expressions single out their object.
        assert len(set(example["refexps"].tolist())) == len(colors)
        if example["text"]:
            for caption in example["captions"]:
                assert f'"{example["text"]}"' in caption
        else:
            assert not (example["text_box"]).any()


def test_mismatched_captions_describe_another_scene():
    clean = _examples(count=80, num_captions=3, english_fraction=1.0)
    noisy = _examples(
        count=80, num_captions=3, english_fraction=1.0, mismatched_fraction=0.4
    )
    assert all(e["captions_match"] == 1 for e in clean)
    mismatched = [i for i, e in enumerate(noisy) if not e["captions_match"]]
    # 80 draws at 0.4: 32 expected, standard deviation 4.4.
    assert 18 <= len(mismatched) <= 46
    described = 0
    for index, (a, b) in enumerate(zip(clean, noisy)):
        # Everything but the captions is the clean example's.
        for name in a:
            if name not in ("captions", "captions_match"):
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        if index not in mismatched:
            np.testing.assert_array_equal(a["captions"], b["captions"])
            continue
        short = b["captions"][1]
        pairs = zip(a["object_colors"], a["object_shapes"])
        names = {f"{g.COLORS[c]} {g.SHAPES[s]}" for c, s in pairs}
        described += all(name in short for name in names)
        assert b["captions"][0] != a["captions"][0]
    # Another scene's caption names all of this image's objects only by
    # chance.
    assert described <= len(mismatched) // 4


def test_two_object_relation():
    example = next(
        e
        for e in _examples(count=60)
        if e["language"] == "en" and len(e["boxes"]) == 2
    )
    caption = example["captions"][0]
    relation = next(
        r
        for r in ("to the left of", "to the right of", "above", "below")
        if r in caption
    )
    centres = (example["boxes"][:, :2] + example["boxes"][:, 2:]) / 2
    names = [
        f"{g.COLORS[c]} {g.SHAPES[s]}"
        for c, s in zip(example["object_colors"], example["object_shapes"])
    ]
    first = 0 if caption.find(names[0]) < caption.find(names[1]) else 1
    dy, dx = centres[first] - centres[1 - first]
    expected = {
        "to the left of": dx < 0,
        "to the right of": dx > 0,
        "above": dy < 0,
        "below": dy > 0,
    }
    assert expected[relation], (caption, centres)


SCRIPTS = {
    "ru": (0x0400, 0x04FF),
    "zh": (0x4E00, 0x9FFF),
    "hi": (0x0900, 0x097F),
    "ar": (0x0600, 0x06FF),
}


def test_language_mixture_and_scripts():
    languages = collections.Counter(
        str(g._scene("train", 0, i, g.GeneratedConfig())["language"])
        for i in range(1000)
    )
    assert 0.86 <= languages["en"] / 1000 <= 0.94
    assert set(languages) == set(g.LANGUAGES)
    config = g.GeneratedConfig(english_fraction=0.0, languages=("ru", "zh"))
    for index in range(20):
        scene = g._scene("train", 0, index, config)
        low, high = SCRIPTS[scene["language"]]
        for text in scene["captions"] + scene["refexps"]:
            assert any(low <= ord(ch) <= high for ch in text), text
    for example in _examples(count=30, english_fraction=0.0):
        language = str(example["language"])
        if language in SCRIPTS:
            low, high = SCRIPTS[language]
            caption = example["captions"][0]
            assert any(low <= ord(ch) <= high for ch in caption)
        assert language != "en"


def test_generated_texts_match_examples():
    texts = list(g.generated_texts("validation", 2, 5, **SMALL))
    expected = []
    for example in g.generated_examples("validation", 2, 5, **SMALL):
        expected += example["captions"].tolist()
        expected += example["refexps"].tolist()
        expected += example["grounded_captions"].tolist()
    assert texts == expected


def test_aspect_ratios_and_sizes():
    ratios = []
    for index in range(300):
        scene = g._scene("train", 0, index, g.GeneratedConfig())
        height, width = scene["height"], scene["width"]
        assert 32 <= height <= 128 and 32 <= width <= 128
        ratios.append(width / height)
    assert min(ratios) <= 0.4 and max(ratios) >= 2.5
    assert 0.8 <= np.median(ratios) <= 1.25
    example = g.generate_example("train", 0, 0, image_size=40)
    assert example["image"].shape == (40, 40, 3)
    example = g.generate_example("train", 0, 0, image_size=(20, 50))
    assert example["image"].shape == (20, 50, 3)


def test_rendered_text():
    examples = _examples(count=20, image_size=(48, 96), text_fraction=1.0)
    with_text = [e for e in examples if e["text"]]
    assert len(with_text) >= 15
    for example in with_text:
        height, width = example["class_map"].shape
        ymin, xmin, ymax, xmax = np.round(
            example["text_box"] * [height, width, height, width]
        ).astype(int)
        text = example["class_map"] == g.CLASS_NAMES.index("text")
        assert text.any() and not text[:ymin].any() and not text[ymax:].any()
        assert not text[:, :xmin].any() and not text[:, xmax:].any()
        # Glyphs are 5 x 7 pixels (times the scale) with 1-pixel gaps.
        scale = (ymax - ymin) // 7
        assert (xmax - xmin + scale) % (6 * scale) == 0


def test_font_glyphs_are_distinct():
    glyphs = {char: bitmap.tobytes() for char, bitmap in g.FONT.items()}
    assert len(set(glyphs.values())) == len(glyphs) == 36
    assert all(bitmap.shape == (7, 5) for bitmap in g.FONT.values())
    assert set("".join(g.WORDS)) <= set(g.FONT)


def test_zero_shot_class_names():
    for language in g.LANGUAGES:
        names = g.zero_shot_class_names(language)
        assert len(names) == len(set(names)) == len(g.COLORS) * len(g.SHAPES)
    names = g.zero_shot_class_names("en")
    assert names[0] == "red circle" and names[len(g.SHAPES)] == "orange circle"
    example = _examples()[0]
    label = example["label"]
    assert names[label] in example["grounded_captions"][0]
    with pytest.raises(ValueError, match="xx"):
        g.zero_shot_class_names("xx")


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_objects=(0, 2)),
        dict(num_objects=(1, 10)),
        dict(side_range=(64, 32)),
        dict(image_size=4),
        dict(english_fraction=1.5),
        dict(english_fraction=0.5, languages=("en",)),
        dict(english_fraction=0.9, languages=("de", "fr")),
        dict(languages=("en", "xx")),
        dict(text_fraction=-0.1),
        dict(num_captions=4),
        dict(aspect_ratio_range=(0.0, 2.0)),
        dict(mismatched_fraction=1.2),
    ],
)
def test_bad_config(overrides):
    with pytest.raises(ValueError):
        g.GeneratedConfig(**overrides)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        g.generate_example("dev", 0, 0)
    with pytest.raises(ValueError, match="seed"):
        g.generated_dataset("train", -1)
    with pytest.raises(TypeError, match="GeneratedConfig"):
        g.generate_example("train", 0, 0, config={"image_size": 32})
