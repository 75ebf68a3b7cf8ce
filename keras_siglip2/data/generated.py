"""A procedural, grounded, multilingual image-text dataset (offline).

Every example is a small scene of coloured shapes on a textured or
gradient background, with captions, referring expressions, boxes, masks
and a class map, so that every stage and evaluation of SigLIP 2 (sigmoid
image-text loss, LocCa captioning / referring expressions / grounded
captioning, NaFlex, zero-shot classification, retrieval, dense probes)
can run offline and mean something. Nothing is downloaded.

Scene. 1-4 objects (`num_objects`), each with a shape (`SHAPES`), a colour
(`COLORS`), a size (`SIZES`: extent 13-18%, 22-27% or 30-36% of the
shorter image side) and a position (`POSITIONS`: the cell of a 3 x 3 grid
holding its centre; no two objects share a cell, so a position always
singles an object out). Objects are listed, and drawn, largest first.
Optionally (`text_fraction`) a short upper-case word or number is
rendered with a built-in 5 x 7 bitmap font in free space, and the
captions quote it (OCR-like captioning). Images have varied sizes and
aspect ratios (1:4 to 4:1 by default) for NaFlex, or a fixed size. The
class map labels each pixel 0 (background), 1-8 (`SHAPES`) or 9 (text):
`CLASS_NAMES`. An example takes about 4 ms to make (128 pixels, one CPU
core).

Language. Each example has one language: English with probability
`english_fraction` (0.9), else one of the other `LANGUAGES` (German,
French, Russian, Chinese, Hindi, Arabic) uniformly. Captions, referring
expressions and grounded captions are all in that language.

Splits. `"train"`, `"validation"` and `"test"` are drawn from disjoint
seed streams (`SeedSequence([split, seed, index])`) and never contain the
8 `HELD_OUT_PAIRS` (colour, shape); `"compositional"` contains only those
pairs, for zero-shot generalisation to unseen compositions.

Boxes. Normalised `[ymin, xmin, ymax, xmax]` in `[0, 1]` in continuous
image coordinates (pixel `i` spans `[i, i + 1)`), the big_vision /
TF object detection convention: an object covering pixel rows `r0..r1`
has `ymin = r0 / height` and `ymax = (r1 + 1) / height`. A box is the
tight extent of the object's full silhouette; masks hold its visible
pixels (a later, smaller object may hide a little of it).

Schema (one example; `N` objects, `C = num_captions`, strings are UTF-8;
the python iterator yields numpy arrays with `str` elements, the
`tf.data` pipeline `tf.string` tensors). The first six features are the
reader schema of `keras_siglip2.data.readers` (with `refexps` one per
box), so code written for real data runs on generated data.

| feature             | dtype   | shape       | meaning                       |
|---------------------|---------|-------------|-------------------------------|
| `key`               | string  | `()`        | `"{split}-{seed}-{index}"`    |
| `image`             | uint8   | `(H, W, 3)` | RGB                           |
| `captions`          | string  | `(C,)`      | full, short, no-position      |
| `boxes`             | float32 | `(N, 4)`    | `[ymin, xmin, ymax, xmax]`    |
| `refexps`           | string  | `(N,)`      | "the red circle on the left"  |
| `language`          | string  | `()`        | a tag of `LANGUAGES`          |
| `grounded_captions` | string  | `(N,)`      | "a large red circle"          |
| `masks`             | uint8   | `(N, H, W)` | visible pixels, 0/1           |
| `class_map`         | uint8   | `(H, W)`    | index into `CLASS_NAMES`      |
| `object_shapes`     | int32   | `(N,)`      | index into `SHAPES`           |
| `object_colors`     | int32   | `(N,)`      | index into `COLORS`           |
| `object_sizes`      | int32   | `(N,)`      | index into `SIZES`            |
| `object_positions`  | int32   | `(N,)`      | index into `POSITIONS`        |
| `object_classes`    | int32   | `(N,)`      | `color * len(SHAPES) + shape` |
| `label`             | int32   | `()`        | class of the largest object   |
| `text`              | string  | `()`        | rendered word, `""` if none   |
| `text_box`          | float32 | `(4,)`      | its box; zeros if none        |
| `captions_match`    | int32   | `()`        | 0: captions of another scene  |

Captions: `captions[0]` has sizes, colours, shapes and positions ("a large
red circle to the left of a small blue square"); `captions[1]` colours and
shapes only ("a red circle and a blue square"); `captions[2]` sizes,
colours and shapes. Each ends with the rendered text, if any (`, with the
text "STOP"`). Referring expressions name colour and shape, and the
position whenever colour and shape are ambiguous (else at random), and
sometimes the size. `zero_shot_class_names(language)` names the
`len(COLORS) * len(SHAPES)` classes of `object_classes` ("red circle").

Shapes differ per example (`N`, `H`, `W`), so batch with
`dataset.ragged_batch(...)` or pick fixed-shape features first (e.g.
through NaFlex preprocessing and the tokenizer).
"""

import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "diamond",
    "hexagon",
)
COLORS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "white",
    "black",
)
COLOR_RGB = (
    (220, 30, 35),
    (245, 135, 20),
    (240, 215, 30),
    (35, 165, 55),
    (30, 70, 220),
    (125, 45, 185),
    (245, 125, 190),
    (120, 70, 30),
    (250, 250, 250),
    (15, 15, 15),
)
SIZES = ("small", "medium", "large")
# Extent of an object as a fraction of the shorter image side.
SIZE_RANGES = ((0.13, 0.18), (0.22, 0.27), (0.30, 0.36))
# Cells of a 3 x 3 grid, row-major.
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "centre",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
CLASS_NAMES = ("background",) + SHAPES + ("text",)
LANGUAGES = ("en", "de", "fr", "ru", "zh", "hi", "ar")
SPLITS = ("train", "validation", "test", "compositional")
# One (colour, shape) pair per shape, each with a different colour.
HELD_OUT_PAIRS = tuple(((3 * s + 1) % len(COLORS), s) for s in range(8))
WORDS = (
    "CAT",
    "DOG",
    "SUN",
    "STOP",
    "OPEN",
    "SALE",
    "EXIT",
    "BUS",
    "TAXI",
    "PARK",
    "ZOO",
    "MAP",
    "BOX",
    "KEY",
    "HELLO",
    "TEA",
    "PIZZA",
    "HOTEL",
    "BANK",
    "FOOD",
)
NUM_CAPTION_VARIANTS = 3

_MAX_PLACEMENT_TRIES = 8
_TEXT_PLACEMENT_TRIES = 20

# 5 x 7 bitmap font: seven rows of five pixels per glyph.
_FONT_ROWS = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
}
FONT = {
    char: np.array([[c == "#" for c in row] for row in rows.split()])
    for char, rows in _FONT_ROWS.items()
}


@dataclasses.dataclass(frozen=True)
class GeneratedConfig:
    """Everything that shapes the generated data.

    Attributes:
        image_size: `None` to draw sizes from `side_range` and
            `aspect_ratio_range`; an int for square images of that side;
            or a fixed `(height, width)`.
        side_range: `(min, max)` pixels that both sides stay within.
        aspect_ratio_range: `(min, max)` of width / height, drawn
            log-uniformly and capped so both sides fit `side_range`.
        num_objects: `(min, max)` objects per image, at most 9.
        english_fraction: probability of an English example.
        languages: the languages to draw from; English first if present.
        text_fraction: probability of trying to render a word (it is left
            out when there is no free space for it).
        num_captions: captions per example, 1 to 3 (see module docstring).
        mismatched_fraction: probability that an example's captions
            describe another, independent scene, as web alt-text often
            does not match its image (the noise that ACID's teacher
            filters). Referring expressions, grounded captions and boxes
            stay the image's own (as from a detector), and
            `captions_match` is 0. Drawn from a stream of its own: other
            examples, and every other feature, do not change with it.
        hold_out_pairs: keep `HELD_OUT_PAIRS` out of train, validation and
            test and use only them in `"compositional"`; if False, every
            split uses every pair.
    """

    image_size: int | tuple[int, int] | None = None
    side_range: tuple[int, int] = (32, 128)
    aspect_ratio_range: tuple[float, float] = (0.25, 4.0)
    num_objects: tuple[int, int] = (1, 4)
    english_fraction: float = 0.9
    languages: tuple[str, ...] = LANGUAGES
    text_fraction: float = 0.2
    num_captions: int = 1
    mismatched_fraction: float = 0.0
    hold_out_pairs: bool = True

    def __post_init__(self):
        size = self.image_size
        if size is not None:
            sides = (size, size) if np.ndim(size) == 0 else tuple(size)
            if len(sides) != 2 or min(sides) < 8:
                raise ValueError(
                    "`image_size` must be None, an int >= 8 or (height, "
                    f"width) >= 8; got {size}."
                )
        low, high = self.side_range
        if not 8 <= low <= high:
            raise ValueError(
                f"`side_range` must be (min, max) with 8 <= min <= max; "
                f"got {self.side_range}."
            )
        low, high = self.aspect_ratio_range
        if not 0 < low <= high:
            raise ValueError(
                "`aspect_ratio_range` must be (min, max) with 0 < min <= "
                f"max; got {self.aspect_ratio_range}."
            )
        low, high = self.num_objects
        if not 1 <= low <= high <= len(POSITIONS):
            raise ValueError(
                f"`num_objects` must be (min, max) with 1 <= min <= max <= "
                f"{len(POSITIONS)}; got {self.num_objects}."
            )
        unknown = set(self.languages) - set(LANGUAGES)
        if not self.languages or unknown:
            raise ValueError(
                f"`languages` must be a non-empty subset of {LANGUAGES}; "
                f"got {self.languages}."
            )
        others = [lang for lang in self.languages if lang != "en"]
        fraction = self.english_fraction
        if (
            not 0.0 <= fraction <= 1.0
            or (fraction > 0 and "en" not in self.languages)
            or (fraction < 1 and not others)
        ):
            raise ValueError(
                f"`english_fraction` {fraction} does not fit `languages` "
                f"{self.languages}: it must be in [0, 1], 0 without 'en' "
                "and 1 with only 'en'."
            )
        if not 0.0 <= self.text_fraction <= 1.0:
            raise ValueError(
                f"`text_fraction` must be in [0, 1]; got {self.text_fraction}."
            )
        if not 0.0 <= self.mismatched_fraction <= 1.0:
            raise ValueError(
                "`mismatched_fraction` must be in [0, 1]; got "
                f"{self.mismatched_fraction}."
            )
        if not 1 <= self.num_captions <= NUM_CAPTION_VARIANTS:
            raise ValueError(
                f"`num_captions` must be in [1, {NUM_CAPTION_VARIANTS}]; got "
                f"{self.num_captions}."
            )


@dataclasses.dataclass(frozen=True)
class _Object:
    shape: int
    color: int
    size: int
    cell: int
    extent: int
    top: int
    left: int


# Languages: each turns objects into text. `cell` indexes `POSITIONS`.


class _English:
    positions = (
        "at the top left",
        "at the top",
        "at the top right",
        "on the left",
        "in the centre",
        "on the right",
        "at the bottom left",
        "at the bottom",
        "at the bottom right",
    )

    def noun_phrase(self, obj, definite, with_size, with_position):
        words = [SIZES[obj.size]] if with_size else []
        words += [COLORS[obj.color], SHAPES[obj.shape]]
        if definite:
            article = "the"
        else:
            article = "an" if words[0][0] in "aeiou" else "a"
        phrase = " ".join([article] + words)
        if with_position:
            phrase += " " + self.positions[obj.cell]
        return phrase

    def caption(self, objects, with_size, with_position):
        if with_position and len(objects) == 2:
            first, second = objects
            row1, col1 = divmod(first.cell, 3)
            row2, col2 = divmod(second.cell, 3)
            if col1 != col2 and abs(col1 - col2) >= abs(row1 - row2):
                relation = (
                    "to the left of" if col1 < col2 else "to the right of"
                )
            else:
                relation = "above" if row1 < row2 else "below"
            return " ".join(
                [
                    self.noun_phrase(first, False, with_size, False),
                    relation,
                    self.noun_phrase(second, False, with_size, False),
                ]
            )
        items = [
            self.noun_phrase(obj, False, with_size, with_position)
            for obj in objects
        ]
        return _join(items, ", ", " and ")

    def with_text(self, caption, word):
        return f'{caption}, with the text "{word}"'

    def class_name(self, color, shape):
        return f"{COLORS[color]} {SHAPES[shape]}"


class _German:
    # Grammatical gender of each shape: masculine, feminine or neuter.
    genders = "mnnmmnfn"
    shapes = (
        "Kreis",
        "Quadrat",
        "Dreieck",
        "Stern",
        "Ring",
        "Kreuz",
        "Raute",
        "Sechseck",
    )
    colors = (
        "rot",
        "orangefarben",
        "gelb",
        "grün",
        "blau",
        "lila",
        "rosa",
        "braun",
        "weiß",
        "schwarz",
    )
    sizes = ("klein", "mittelgroß", "groß")
    positions = (
        "oben links",
        "oben",
        "oben rechts",
        "links",
        "in der Mitte",
        "rechts",
        "unten links",
        "unten",
        "unten rechts",
    )
    # (article, adjective ending) by case and gender.
    forms = {
        "definite": {"m": ("der", "e"), "f": ("die", "e"), "n": ("das", "e")},
        "indefinite": {
            "m": ("ein", "er"),
            "f": ("eine", "e"),
            "n": ("ein", "es"),
        },
        "dative": {
            "m": ("einem", "en"),
            "f": ("einer", "en"),
            "n": ("einem", "en"),
        },
        "bare": {"m": ("", "er"), "f": ("", "e"), "n": ("", "es")},
    }

    @staticmethod
    def _inflect(stem, ending):
        # Colour words borrowed without endings.
        return stem if stem in ("lila", "rosa") else stem + ending

    def _phrase(self, obj, form, with_size, with_position):
        article, ending = self.forms[form][self.genders[obj.shape]]
        stems = [self.sizes[obj.size]] if with_size else []
        stems.append(self.colors[obj.color])
        words = [article] if article else []
        words += [self._inflect(stem, ending) for stem in stems]
        words.append(self.shapes[obj.shape])
        if with_position:
            words.append(self.positions[obj.cell])
        return " ".join(words)

    def noun_phrase(self, obj, definite, with_size, with_position):
        form = "definite" if definite else "indefinite"
        return self._phrase(obj, form, with_size, with_position)

    def caption(self, objects, with_size, with_position):
        items = [
            self._phrase(obj, "dative", with_size, with_position)
            for obj in objects
        ]
        return "ein Bild mit " + _join(items, ", ", " und ")

    def with_text(self, caption, word):
        return f'{caption}, mit dem Text "{word}"'

    def class_name(self, color, shape):
        obj = _Object(shape, color, 0, 0, 0, 0, 0)
        return self._phrase(obj, "bare", False, False)


class _French:
    genders = "mmmfmfmm"
    shapes = (
        "cercle",
        "carré",
        "triangle",
        "étoile",
        "anneau",
        "croix",
        "losange",
        "hexagone",
    )
    # (masculine, feminine)
    colors = (
        ("rouge", "rouge"),
        ("orange", "orange"),
        ("jaune", "jaune"),
        ("vert", "verte"),
        ("bleu", "bleue"),
        ("violet", "violette"),
        ("rose", "rose"),
        ("marron", "marron"),
        ("blanc", "blanche"),
        ("noir", "noire"),
    )
    # Small and large go before the noun, medium after the colour.
    sizes = (("petit", "petite"), None, ("grand", "grande"))
    medium = "de taille moyenne"
    positions = (
        "en haut à gauche",
        "en haut",
        "en haut à droite",
        "à gauche",
        "au centre",
        "à droite",
        "en bas à gauche",
        "en bas",
        "en bas à droite",
    )

    def noun_phrase(self, obj, definite, with_size, with_position):
        feminine = self.genders[obj.shape] == "f"
        before, after = [], [self.colors[obj.color][feminine]]
        if with_size and obj.size == 1:
            after.append(self.medium)
        elif with_size:
            before.append(self.sizes[obj.size][feminine])
        words = before + [self.shapes[obj.shape]] + after
        if with_position:
            words.append(self.positions[obj.cell])
        if not definite:
            return " ".join(["une" if feminine else "un"] + words)
        if words[0][0] in "aeéhiou":
            return "l'" + " ".join(words)
        return " ".join(["la" if feminine else "le"] + words)

    def caption(self, objects, with_size, with_position):
        items = [
            self.noun_phrase(obj, False, with_size, with_position)
            for obj in objects
        ]
        return "une image avec " + _join(items, ", ", " et ")

    def with_text(self, caption, word):
        return f"{caption}, avec le texte « {word} »"

    def class_name(self, color, shape):
        feminine = self.genders[shape] == "f"
        return f"{self.shapes[shape]} {self.colors[color][feminine]}"


class _Russian:
    genders = "mmmfnmmm"
    shapes = (
        "круг",
        "квадрат",
        "треугольник",
        "звезда",
        "кольцо",
        "крест",
        "ромб",
        "шестиугольник",
    )
    # (masculine, feminine, neuter)
    colors = (
        ("красный", "красная", "красное"),
        ("оранжевый", "оранжевая", "оранжевое"),
        ("жёлтый", "жёлтая", "жёлтое"),
        ("зелёный", "зелёная", "зелёное"),
        ("синий", "синяя", "синее"),
        ("фиолетовый", "фиолетовая", "фиолетовое"),
        ("розовый", "розовая", "розовое"),
        ("коричневый", "коричневая", "коричневое"),
        ("белый", "белая", "белое"),
        ("чёрный", "чёрная", "чёрное"),
    )
    sizes = (
        ("маленький", "маленькая", "маленькое"),
        ("средний", "средняя", "среднее"),
        ("большой", "большая", "большое"),
    )
    positions = (
        "сверху слева",
        "сверху",
        "сверху справа",
        "слева",
        "в центре",
        "справа",
        "снизу слева",
        "снизу",
        "снизу справа",
    )

    def noun_phrase(self, obj, definite, with_size, with_position):
        del definite  # Russian has no articles.
        gender = "mfn".index(self.genders[obj.shape])
        words = [self.sizes[obj.size][gender]] if with_size else []
        words += [self.colors[obj.color][gender], self.shapes[obj.shape]]
        if with_position:
            words.append(self.positions[obj.cell])
        return " ".join(words)

    def caption(self, objects, with_size, with_position):
        items = [
            self.noun_phrase(obj, False, with_size, with_position)
            for obj in objects
        ]
        return "на изображении: " + _join(items, ", ", " и ")

    def with_text(self, caption, word):
        return f"{caption}, с надписью «{word}»"

    def class_name(self, color, shape):
        obj = _Object(shape, color, 0, 0, 0, 0, 0)
        return self.noun_phrase(obj, False, False, False)


class _Chinese:
    shapes = (
        "圆形",
        "正方形",
        "三角形",
        "星形",
        "圆环",
        "十字",
        "菱形",
        "六边形",
    )
    colors = (
        "红色",
        "橙色",
        "黄色",
        "绿色",
        "蓝色",
        "紫色",
        "粉色",
        "棕色",
        "白色",
        "黑色",
    )
    sizes = ("小", "中等大小", "大")
    positions = (
        "左上方",
        "上方",
        "右上方",
        "左边",
        "中间",
        "右边",
        "左下方",
        "下方",
        "右下方",
    )

    def _bare(self, obj, with_size):
        size = self.sizes[obj.size] + "的" if with_size else ""
        return size + self.colors[obj.color] + self.shapes[obj.shape]

    def noun_phrase(self, obj, definite, with_size, with_position):
        phrase = self._bare(obj, with_size)
        if with_position:
            phrase = self.positions[obj.cell] + "的" + phrase
        return phrase if definite else "一个" + phrase

    def caption(self, objects, with_size, with_position):
        if with_position:
            items = [
                self.positions[obj.cell] + "有一个" + self._bare(obj, with_size)
                for obj in objects
            ]
            return "图中" + "，".join(items) + "。"
        items = ["一个" + self._bare(obj, with_size) for obj in objects]
        return "图中有" + _join(items, "、", "和") + "。"

    def with_text(self, caption, word):
        return caption[:-1] + f"，上面写着“{word}”。"

    def class_name(self, color, shape):
        return self.colors[color] + self.shapes[shape]


class _Hindi:
    # All eight shape nouns are masculine.
    shapes = (
        "वृत्त",
        "वर्ग",
        "त्रिभुज",
        "तारा",
        "छल्ला",
        "क्रॉस",
        "समचतुर्भुज",
        "षट्भुज",
    )
    colors = (
        "लाल",
        "नारंगी",
        "पीला",
        "हरा",
        "नीला",
        "बैंगनी",
        "गुलाबी",
        "भूरा",
        "सफ़ेद",
        "काला",
    )
    sizes = ("छोटा", "मध्यम", "बड़ा")
    positions = (
        "ऊपर बाईं ओर",
        "ऊपर",
        "ऊपर दाईं ओर",
        "बाईं ओर",
        "बीच में",
        "दाईं ओर",
        "नीचे बाईं ओर",
        "नीचे",
        "नीचे दाईं ओर",
    )

    def _bare(self, obj, with_size):
        words = [self.sizes[obj.size]] if with_size else []
        return " ".join(
            words + [self.colors[obj.color], self.shapes[obj.shape]]
        )

    def noun_phrase(self, obj, definite, with_size, with_position):
        phrase = self._bare(obj, with_size)
        if definite:
            if with_position:
                phrase = f"{self.positions[obj.cell]} वाला {phrase}"
            return phrase
        phrase = "एक " + phrase
        if with_position:
            phrase = f"{self.positions[obj.cell]} {phrase}"
        return phrase

    def caption(self, objects, with_size, with_position):
        items = [
            self.noun_phrase(obj, False, with_size, with_position)
            for obj in objects
        ]
        verb = "है" if len(objects) == 1 else "हैं"
        return f"चित्र में {_join(items, ', ', ' और ')} {verb}"

    def with_text(self, caption, word):
        return f'{caption}, और लिखा है "{word}"'

    def class_name(self, color, shape):
        return f"{self.colors[color]} {self.shapes[shape]}"


class _Arabic:
    genders = "fmmffmmm"
    shapes = (
        "دائرة",
        "مربع",
        "مثلث",
        "نجمة",
        "حلقة",
        "صليب",
        "معين",
        "مسدس",
    )
    # (masculine, feminine)
    colors = (
        ("أحمر", "حمراء"),
        ("برتقالي", "برتقالية"),
        ("أصفر", "صفراء"),
        ("أخضر", "خضراء"),
        ("أزرق", "زرقاء"),
        ("بنفسجي", "بنفسجية"),
        ("وردي", "وردية"),
        ("بني", "بنية"),
        ("أبيض", "بيضاء"),
        ("أسود", "سوداء"),
    )
    sizes = (("صغير", "صغيرة"), ("متوسط", "متوسطة"), ("كبير", "كبيرة"))
    positions = (
        "في الأعلى على اليسار",
        "في الأعلى",
        "في الأعلى على اليمين",
        "على اليسار",
        "في الوسط",
        "على اليمين",
        "في الأسفل على اليسار",
        "في الأسفل",
        "في الأسفل على اليمين",
    )

    def noun_phrase(self, obj, definite, with_size, with_position):
        feminine = self.genders[obj.shape] == "f"
        # The noun comes first; adjectives follow and agree with it.
        words = [self.shapes[obj.shape], self.colors[obj.color][feminine]]
        if with_size:
            words.append(self.sizes[obj.size][feminine])
        if definite:
            words = ["ال" + word for word in words]
        if with_position:
            words.append(self.positions[obj.cell])
        return " ".join(words)

    def caption(self, objects, with_size, with_position):
        items = [
            self.noun_phrase(obj, False, with_size, with_position)
            for obj in objects
        ]
        return "صورة فيها " + _join(items, "، ", " و")

    def with_text(self, caption, word):
        return f'{caption}، مع النص "{word}"'

    def class_name(self, color, shape):
        feminine = self.genders[shape] == "f"
        return f"{self.shapes[shape]} {self.colors[color][feminine]}"


_LANGUAGE_TEXT = {
    "en": _English(),
    "de": _German(),
    "fr": _French(),
    "ru": _Russian(),
    "zh": _Chinese(),
    "hi": _Hindi(),
    "ar": _Arabic(),
}


def _join(items, separator, last_separator):
    if len(items) == 1:
        return items[0]
    return separator.join(items[:-1]) + last_separator + items[-1]


def zero_shot_class_names(language: str = "en") -> list[str]:
    """Names of the colour-shape classes, indexed by `object_classes`.

    Args:
        language: a tag of `LANGUAGES`.

    Returns:
        `len(COLORS) * len(SHAPES)` strings, class `color * len(SHAPES) +
        shape` at that index: `"red circle"`, `"red square"`, ...
    """
    if language not in _LANGUAGE_TEXT:
        raise ValueError(
            f"Unknown language {language!r}; expected one of {LANGUAGES}."
        )
    text = _LANGUAGE_TEXT[language]
    return [
        text.class_name(color, shape)
        for color in range(len(COLORS))
        for shape in range(len(SHAPES))
    ]


# Scene sampling: geometry and text only, no pixels.


def _seed_sequence(split, seed, index, stream):
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(
            f"`seed` and `index` must be >= 0; got {seed} and {index}."
        )
    return np.random.default_rng(
        [SPLITS.index(split), int(seed), int(index), stream]
    )


def _image_size(rng, config):
    size = config.image_size
    if size is not None:
        size = (size, size) if np.ndim(size) == 0 else size
        return int(size[0]), int(size[1])
    low, high = config.side_range
    ratio_low, ratio_high = config.aspect_ratio_range
    ratio = math.exp(rng.uniform(math.log(ratio_low), math.log(ratio_high)))
    # Cap the ratio so both sides fit the side range.
    ratio = min(max(ratio, low / high), high / low)
    long_ratio = max(ratio, 1 / ratio)
    long_side = rng.uniform(low * long_ratio, high)
    short_side = long_side / long_ratio
    long_side, short_side = round(long_side), max(low, round(short_side))
    return (short_side, long_side) if ratio >= 1 else (long_side, short_side)


@functools.lru_cache(maxsize=16)
def _allowed_pairs(split, hold_out):
    held_out = set(HELD_OUT_PAIRS)
    pairs = [
        (color, shape)
        for color in range(len(COLORS))
        for shape in range(len(SHAPES))
    ]
    if not hold_out:
        return pairs
    if split == "compositional":
        return [pair for pair in pairs if pair in held_out]
    return [pair for pair in pairs if pair not in held_out]


def _overlap(a, b):
    """Intersection area of two `(top, left, bottom, right)` boxes."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    return max(height, 0) * max(width, 0)


def _place_objects(rng, height, width, pairs, config):
    count = rng.integers(config.num_objects[0], config.num_objects[1] + 1)
    cells = rng.choice(len(POSITIONS), size=count, replace=False)
    sizes = rng.integers(len(SIZES), size=count)
    # Larger first: they are drawn first, so smaller ones stay visible.
    order = np.argsort(-sizes, kind="stable")
    short = min(height, width)
    objects, boxes = [], []
    for cell, size in zip(cells[order], sizes[order]):
        color, shape = pairs[rng.integers(len(pairs))]
        low, high = SIZE_RANGES[size]
        extent = max(5, round(rng.uniform(low, high) * short))
        row, col = divmod(int(cell), 3)
        for _ in range(_MAX_PLACEMENT_TRIES):
            # Centre in the middle 40% of the cell, object inside the image.
            cy = (row + rng.uniform(0.3, 0.7)) * height / 3
            cx = (col + rng.uniform(0.3, 0.7)) * width / 3
            top = int(np.clip(round(cy - extent / 2), 0, height - extent))
            left = int(np.clip(round(cx - extent / 2), 0, width - extent))
            box = (top, left, top + extent, left + extent)
            if all(_overlap(box, other) <= 0.1 * extent**2 for other in boxes):
                break
        boxes.append(box)
        objects.append(
            _Object(
                int(shape), int(color), int(size), int(cell), extent, top, left
            )
        )
    return objects


def _place_text(rng, height, width, boxes):
    """A word and its `(top, left, scale)`, or `None` without room."""
    if rng.random() < 0.6:
        word = WORDS[rng.integers(len(WORDS))]
    else:
        word = str(rng.integers(10 ** rng.integers(1, 5)))
    scale = max(1, round(min(height, width) * 0.1 / 7))
    text_height, text_width = 7 * scale, (6 * len(word) - 1) * scale
    if text_height + 2 > height or text_width + 2 > width:
        return None
    for _ in range(_TEXT_PLACEMENT_TRIES):
        top = int(rng.integers(1, height - text_height))
        left = int(rng.integers(1, width - text_width))
        margin = (
            top - scale,
            left - scale,
            top + text_height + scale,
            left + text_width + scale,
        )
        if all(_overlap(margin, box) == 0 for box in boxes):
            return word, top, left, scale
    return None


def _texts(rng, objects, language, word, config):
    text = _LANGUAGE_TEXT[language]
    described = [objects[i] for i in rng.permutation(len(objects))]
    variants = ((True, True), (False, False), (True, False))
    captions = []
    for with_size, with_position in variants[: config.num_captions]:
        caption = text.caption(described, with_size, with_position)
        captions.append(text.with_text(caption, word) if word else caption)
    refexps, grounded = [], []
    for obj in objects:
        ambiguous = any(
            (other.color, other.shape) == (obj.color, obj.shape)
            for other in objects
            if other is not obj
        )
        with_position = ambiguous or rng.random() < 0.5
        with_size = rng.random() < 0.3
        refexps.append(text.noun_phrase(obj, True, with_size, with_position))
        grounded.append(text.noun_phrase(obj, False, True, False))
    return captions, refexps, grounded


def _scene(split, seed, index, config):
    rng = _seed_sequence(split, seed, index, 0)
    height, width = _image_size(rng, config)
    pairs = _allowed_pairs(split, config.hold_out_pairs)
    objects = _place_objects(rng, height, width, pairs, config)
    text = None
    if rng.random() < config.text_fraction:
        boxes = [
            (o.top, o.left, o.top + o.extent, o.left + o.extent)
            for o in objects
        ]
        text = _place_text(rng, height, width, boxes)
    if rng.random() < config.english_fraction:
        language = "en"
    else:
        others = [lang for lang in config.languages if lang != "en"]
        language = others[rng.integers(len(others))]
    word = text[0] if text else ""
    captions, refexps, grounded = _texts(rng, objects, language, word, config)
    matches = True
    if config.mismatched_fraction > 0:
        noise = _seed_sequence(split, seed, index, 2)
        if noise.random() < config.mismatched_fraction:
            # Another scene's captions (in the same language).
            other = _place_objects(noise, height, width, pairs, config)
            captions = _texts(noise, other, language, "", config)[0]
            matches = False
    return {
        "height": height,
        "width": width,
        "objects": objects,
        "text": text,
        "language": language,
        "captions": captions,
        "refexps": refexps,
        "grounded_captions": grounded,
        "captions_match": matches,
    }


# Rendering.


def _polygon_mask(u, v, vertices):
    """Even-odd point-in-polygon test on the grid `(u, v)`."""
    inside = np.zeros(u.shape, bool)
    count = len(vertices)
    for i in range(count):
        (u1, v1), (u2, v2) = vertices[i], vertices[(i + 1) % count]
        crosses = (v1 > v) != (v2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            u_cross = u1 + (v - v1) * (u2 - u1) / (v2 - v1)
        inside ^= crosses & (u < u_cross)
    return inside


def _regular_polygon(count, radius, phase):
    angles = phase + 2 * np.pi * np.arange(count) / count
    return [(radius * np.cos(a), radius * np.sin(a)) for a in angles]


@functools.lru_cache(maxsize=512)
def _silhouette(shape, extent):
    """Boolean `(extent, extent)` mask of a shape filling the square."""
    centres = (np.arange(extent) + 0.5) / extent * 2 - 1
    v, u = np.meshgrid(centres, centres, indexing="ij")
    radius = np.hypot(u, v)
    name = SHAPES[shape]
    if name == "circle":
        mask = radius <= 1
    elif name == "square":
        mask = np.maximum(abs(u), abs(v)) <= 0.85
    elif name == "triangle":
        mask = _polygon_mask(u, v, [(0, -1), (1, 0.8), (-1, 0.8)])
    elif name == "star":
        outer = _regular_polygon(5, 1.0, -np.pi / 2)
        inner = _regular_polygon(5, 0.45, -np.pi / 2 + np.pi / 5)
        vertices = [p for pair in zip(outer, inner) for p in pair]
        mask = _polygon_mask(u, v, vertices)
    elif name == "ring":
        mask = (radius <= 1) & (radius >= 0.5)
    elif name == "cross":
        mask = ((abs(u) <= 0.3) & (abs(v) <= 1)) | (
            (abs(v) <= 0.3) & (abs(u) <= 1)
        )
    elif name == "diamond":
        mask = abs(u) + abs(v) <= 1
    else:
        mask = _polygon_mask(u, v, _regular_polygon(6, 1.0, 0.0))
    mask.setflags(write=False)
    return mask


def _interpolation_matrix(size_out, size_in):
    position = np.clip(
        (np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1
    )
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    fraction = position - low
    matrix = np.zeros((size_out, size_in))
    matrix[np.arange(size_out), low] += 1 - fraction
    matrix[np.arange(size_out), high] += fraction
    return matrix


def _muted_color(rng):
    return rng.uniform(70, 185) + rng.uniform(-20, 20, size=3)


def _background(rng, height, width):
    """Float `(height, width, 3)`: a gradient, blobs, stripes or checks."""
    base = _muted_color(rng)
    y = (np.arange(height)[:, None] + 0.5) / height
    x = (np.arange(width)[None, :] + 0.5) / width
    kind = rng.integers(4)
    if kind == 0:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
        image = base + ramp[..., None] * (_muted_color(rng) - base)
    elif kind == 1:
        grid_h, grid_w = rng.integers(2, 6, size=2)
        coarse = rng.uniform(-25, 25, size=(grid_h, grid_w, 3))
        image = base + np.einsum(
            "hi,ijc,wj->hwc",
            _interpolation_matrix(height, grid_h),
            coarse,
            _interpolation_matrix(width, grid_w),
        )
    elif kind == 2:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)
        phase = (
            x * width * np.cos(angle) + y * height * np.sin(angle)
        ) / period
        wave = np.sin(2 * np.pi * phase)
        image = base + wave[..., None] * rng.uniform(-20, 20, size=3)
    else:
        cell = rng.integers(3, 12)
        rows = np.arange(height)[:, None] // cell
        cols = np.arange(width)[None, :] // cell
        checks = ((rows + cols) % 2 * 2 - 1).astype(float)
        image = base + checks[..., None] * rng.uniform(5, 20)
    return np.broadcast_to(image, (height, width, 3))


def _render(scene, rng):
    height, width = scene["height"], scene["width"]
    image = np.array(_background(rng, height, width), np.float32)
    class_map = np.zeros((height, width), np.uint8)
    owner = np.full((height, width), -1, np.int32)
    boxes = []
    for index, obj in enumerate(scene["objects"]):
        silhouette = _silhouette(obj.shape, obj.extent)
        window = np.s_[
            obj.top : obj.top + obj.extent, obj.left : obj.left + obj.extent
        ]
        color = np.asarray(COLOR_RGB[obj.color]) + rng.uniform(-12, 12, 3)
        image[window][silhouette] = color
        class_map[window][silhouette] = obj.shape + 1
        owner[window][silhouette] = index
        rows = np.flatnonzero(silhouette.any(axis=1))
        cols = np.flatnonzero(silhouette.any(axis=0))
        boxes.append(
            [
                (obj.top + rows[0]) / height,
                (obj.left + cols[0]) / width,
                (obj.top + rows[-1] + 1) / height,
                (obj.left + cols[-1] + 1) / width,
            ]
        )
    text_box = np.zeros(4, np.float32)
    if scene["text"] is not None:
        word, top, left, scale = scene["text"]
        glyphs = [np.pad(FONT[char], ((0, 0), (0, 1))) for char in word]
        bitmap = np.concatenate(glyphs, axis=1)[:, :-1]
        bitmap = np.kron(bitmap, np.ones((scale, scale), bool))
        rows, cols = bitmap.shape
        window = np.s_[top : top + rows, left : left + cols]
        # Black or white, whichever stands out from the background.
        ink = 0.0 if image[window].mean() > 128 else 255.0
        image[window][bitmap] = ink
        class_map[window][bitmap] = CLASS_NAMES.index("text")
        text_box[:] = (
            top / height,
            left / width,
            (top + rows) / height,
            (left + cols) / width,
        )
    image += rng.normal(0, 3, size=image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    count = len(scene["objects"])
    masks = (owner[None] == np.arange(count)[:, None, None]).astype(np.uint8)
    return image, class_map, masks, np.asarray(boxes, np.float32), text_box


def _resolve_config(config, overrides):
    if config is None:
        config = GeneratedConfig()
    if not isinstance(config, GeneratedConfig):
        raise TypeError(
            f"`config` must be a GeneratedConfig; got {type(config).__name__}."
        )
    return dataclasses.replace(config, **overrides) if overrides else config


def _strings(values):
    return np.asarray(values, dtype=str).reshape(-1)


def generate_example(
    split: str = "train",
    seed: int = 0,
    index: int = 0,
    config: GeneratedConfig | None = None,
    **overrides,
) -> dict[str, np.ndarray]:
    """One example, a pure function of `(split, seed, index, config)`.

    Args:
        split: one of `SPLITS`.
        seed: int >= 0.
        index: int >= 0. Position in the split's stream.
        config: a `GeneratedConfig`; `overrides` replace its fields.

    Returns:
        dict of numpy arrays as in the module docstring (strings as `str`).
    """
    config = _resolve_config(config, overrides)
    scene = _scene(split, seed, index, config)
    image, class_map, masks, boxes, text_box = _render(
        scene, _seed_sequence(split, seed, index, 1)
    )
    objects = scene["objects"]
    classes = [obj.color * len(SHAPES) + obj.shape for obj in objects]
    return {
        "key": np.asarray(f"{split}-{seed}-{index}"),
        "image": image,
        "captions": _strings(scene["captions"]),
        "boxes": boxes.reshape(-1, 4),
        "refexps": _strings(scene["refexps"]),
        "language": np.asarray(scene["language"]),
        "grounded_captions": _strings(scene["grounded_captions"]),
        "masks": masks,
        "class_map": class_map,
        "object_shapes": np.asarray([o.shape for o in objects], np.int32),
        "object_colors": np.asarray([o.color for o in objects], np.int32),
        "object_sizes": np.asarray([o.size for o in objects], np.int32),
        "object_positions": np.asarray([o.cell for o in objects], np.int32),
        "object_classes": np.asarray(classes, np.int32),
        "label": np.asarray(classes[0], np.int32),
        "text": np.asarray(scene["text"][0] if scene["text"] else ""),
        "text_box": text_box,
        "captions_match": np.asarray(scene["captions_match"], np.int32),
    }


def generated_examples(
    split: str = "train",
    seed: int = 0,
    num_examples: int | None = None,
    start: int = 0,
    config: GeneratedConfig | None = None,
    **overrides,
):
    """Python iterator over examples `start, start + 1, ...`.

    Args:
        split: one of `SPLITS`.
        seed: int >= 0.
        num_examples: how many; `None` for an endless stream.
        start: index of the first example (to resume a stream).
        config: a `GeneratedConfig`; `overrides` replace its fields.

    Yields:
        dicts as from `generate_example`.
    """
    config = _resolve_config(config, overrides)
    index = start
    while num_examples is None or index < start + num_examples:
        yield generate_example(split, seed, index, config)
        index += 1


def generated_texts(
    split: str = "train",
    seed: int = 0,
    num_examples: int = 1000,
    config: GeneratedConfig | None = None,
    **overrides,
):
    """The texts of examples `0 .. num_examples - 1`, without drawing.

    The same strings as the examples' captions, referring expressions and
    grounded captions, for training a tokenizer.

    Args:
        split: one of `SPLITS`.
        seed: int >= 0.
        num_examples: how many examples to take texts from.
        config: a `GeneratedConfig`; `overrides` replace its fields.

    Yields:
        str.
    """
    config = _resolve_config(config, overrides)
    for index in range(num_examples):
        scene = _scene(split, seed, index, config)
        yield from scene["captions"]
        yield from scene["refexps"]
        yield from scene["grounded_captions"]


# (name, dtype, shape); `None` is a per-example size.
FEATURES = (
    ("key", tf.string, ()),
    ("image", tf.uint8, (None, None, 3)),
    ("captions", tf.string, (None,)),
    ("boxes", tf.float32, (None, 4)),
    ("refexps", tf.string, (None,)),
    ("language", tf.string, ()),
    ("grounded_captions", tf.string, (None,)),
    ("masks", tf.uint8, (None, None, None)),
    ("class_map", tf.uint8, (None, None)),
    ("object_shapes", tf.int32, (None,)),
    ("object_colors", tf.int32, (None,)),
    ("object_sizes", tf.int32, (None,)),
    ("object_positions", tf.int32, (None,)),
    ("object_classes", tf.int32, (None,)),
    ("label", tf.int32, ()),
    ("text", tf.string, ()),
    ("text_box", tf.float32, (4,)),
    ("captions_match", tf.int32, ()),
)


def _encoded(value):
    if value.dtype.kind == "U":
        return np.vectorize(str.encode, otypes=[object])(value)
    return value


def generated_dataset(
    split: str = "train",
    seed: int = 0,
    num_examples: int | None = None,
    start: int = 0,
    config: GeneratedConfig | None = None,
    **overrides,
) -> tf.data.Dataset:
    """`tf.data` stream of generated examples (see the module docstring).

    Examples are generated in parallel in a deterministic order; the
    element at position `i` is `generate_example(split, seed, start + i)`.

    Args:
        split: one of `SPLITS`.
        seed: int >= 0.
        num_examples: how many; `None` for an endless stream.
        start: index of the first example (to resume a stream).
        config: a `GeneratedConfig`; `overrides` replace its fields, e.g.
            `image_size=64` or `side_range=(32, 96)`.

    Returns:
        `tf.data.Dataset` of dicts with the `FEATURES`.

    Example:
    >>> ds = generated_dataset("train", seed=0, num_examples=2, image_size=32)
    >>> [tuple(e["image"].shape) for e in ds]
    [(32, 32, 3), (32, 32, 3)]
    """
    config = _resolve_config(config, overrides)
    # Fail here, not inside the pipeline.
    _seed_sequence(split, seed, start, 0)
    stop = (2**62) if num_examples is None else start + num_examples
    names = [name for name, _, _ in FEATURES]

    def generate(index):
        example = generate_example(split, seed, int(index), config)
        return [_encoded(example[name]) for name in names]

    def to_dict(index):
        values = tf.numpy_function(
            generate, [index], [dtype for _, dtype, _ in FEATURES]
        )
        return {
            name: tf.ensure_shape(value, shape)
            for (name, _, shape), value in zip(FEATURES, values)
        }

    return tf.data.Dataset.range(start, stop).map(
        to_dict, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
