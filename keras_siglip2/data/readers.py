"""Image-text pairs from WebDataset tars, TFRecords or images + JSONL.

All three readers produce the same element (`READER_FEATURES`), which is
also the first part of every generated example
(`keras_siglip2.data.generated`):

| feature    | dtype   | shape       | meaning                            |
|------------|---------|-------------|------------------------------------|
| `key`      | string  | `()`        | example id                         |
| `image`    | uint8   | `(H, W, 3)` | RGB (grey and RGBA are converted)  |
| `captions` | string  | `(C,)`      | `C >= 1` non-empty captions        |
| `boxes`    | float32 | `(R, 4)`    | `[ymin, xmin, ymax, xmax]`         |
| `refexps`  | string  | `(R,)`      | expression of each box, or `""`    |
| `language` | string  | `()`        | language tag, `""` if unknown      |

Boxes are normalised `[ymin, xmin, ymax, xmax]` in continuous image
coordinates (big_vision / TF object detection convention). One row per
(box, referring expression): a RefCOCO object with three expressions gives
three rows with the same box; a box without expressions gives one row with
`""`.

Formats (the writers here produce exactly these):
- WebDataset: tar shards (optionally gzipped) whose members are grouped
  by key, the path up to the first `.` of the file name: `{key}.jpg`,
  `.jpeg`, `.png`, `.webp`, `.gif` or `.bmp` and `{key}.json` (an
  annotation, below) and/or `{key}.txt` (one caption per non-empty line,
  used when the JSON has no captions).
- TFRecord: `tf.train.Example`s with `image/encoded` (bytes),
  `image/captions` (bytes list), optional `image/key`, `image/language`,
  `image/object/bbox/{ymin,xmin,ymax,xmax}` (float lists, normalised) and
  `image/object/refexp` (bytes list, one per box).
- Folder + JSONL: one annotation per line, with the image's path relative
  to the JSONL's folder (or `image_dir`) under `"file"` (or `"file_name"`,
  `"image"`).

Annotation (JSON): `{"captions": [str, ...]}` or `{"caption": str}`,
optional `"key"`, `"language"` and `"objects": [{"bbox": [x, y, w, h],
"refexps": [str, ...]}, ...]` with COCO/RefCOCO boxes in pixels (`x, y`
the top-left corner).

Bad input never stops a run: it is skipped, counted in a `SkipCounter`
under a reason, and logged (absl, the first 10 times per reason, then
every 100th). Reasons:
- `corrupt_image`: the image does not decode;
- `missing_image`: no image member, feature or file;
- `missing_caption`: no caption field (and no `.txt`);
- `empty_caption`: only empty captions;
- `bad_annotation`: malformed JSON, a field of the wrong type, an object
  without `"bbox"`, or text that is not UTF-8;
- `bad_record`: a malformed `tf.train.Example` (not one, or box and
  expression lists of different lengths);
- `bad_shard`: a truncated tar or corrupt TFRecord file; the rest of that
  file is skipped;
- `bad_box`: a box with a non-positive side (`x2 < x1`), non-finite values
  or reaching more than one pixel outside the image. Only that box is
  dropped; the example is kept.
Boxes overhanging by at most one pixel are clipped. Captions are stripped
of surrounding whitespace and kept whole (the tokenizer truncates them).
A reader path (or pattern) that matches no file is a configuration error
and raises `ValueError` before reading.

Example:
>>> counter = SkipCounter()  # doctest: +SKIP
>>> ds = read_webdataset("shards/*.tar", skip_counter=counter)  # doctest: +SKIP
>>> for element in ds: ...  # doctest: +SKIP
>>> counter.counts  # doctest: +SKIP
{'corrupt_image': 1}
"""

import io
import json
import os
import tarfile
import threading
import zlib

import numpy as np
import tensorflow as tf
from absl import logging
from google.protobuf import message

READER_FEATURES = (
    ("key", tf.string, ()),
    ("image", tf.uint8, (None, None, 3)),
    ("captions", tf.string, (None,)),
    ("boxes", tf.float32, (None, 4)),
    ("refexps", tf.string, (None,)),
    ("language", tf.string, ()),
)
SKIP_REASONS = (
    "corrupt_image",
    "missing_image",
    "missing_caption",
    "empty_caption",
    "bad_annotation",
    "bad_record",
    "bad_shard",
    "bad_box",
)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
# Boxes may overhang the image by this many pixels; they are clipped.
_BOX_TOLERANCE = 1.0


class SkipCounter:
    """Counts (and logs) the records a reader skipped, by reason.

    Thread-safe; counts accumulate over every dataset and epoch it is
    passed to.

    Args:
        log_first: log the first `log_first` skips of each reason.
        log_every: then log every `log_every`-th.
    """

    def __init__(self, log_first: int = 10, log_every: int = 100):
        self.log_first = log_first
        self.log_every = log_every
        self._counts = {}
        self._lock = threading.Lock()

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Counts one skip of `reason` (one of `SKIP_REASONS`) at `where`."""
        if reason not in SKIP_REASONS:
            raise ValueError(
                f"Unknown skip reason {reason!r}; expected one of "
                f"{SKIP_REASONS}."
            )
        with self._lock:
            count = self._counts.get(reason, 0) + 1
            self._counts[reason] = count
        if count <= self.log_first or count % self.log_every == 0:
            logging.warning(
                "Skipped (%s, %d so far) %s: %s", reason, count, where, detail
            )

    @property
    def counts(self) -> dict[str, int]:
        """`{reason: count}` for the reasons seen so far."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def __getitem__(self, reason: str) -> int:
        with self._lock:
            return self._counts.get(reason, 0)

    def __repr__(self):
        return f"SkipCounter({self.counts})"


class _Skip(Exception):
    """A record to skip, with the reason for the counter."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def refcoco_to_normalized(bbox, height: int, width: int) -> np.ndarray:
    """A COCO/RefCOCO box `[x, y, w, h]` in pixels, normalised.

    Args:
        bbox: 4 numbers, `(x, y)` the top-left corner, in pixels.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        float32 `(4,)` `[ymin, xmin, ymax, xmax]` in `[0, 1]`.

    Raises:
        ValueError: for a box with non-finite values, a non-positive side,
            or reaching more than one pixel outside the image.
    """
    values = np.asarray(bbox, np.float64)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"Box {bbox!r} is not 4 finite numbers [x, y, w, h].")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise ValueError(f"Box {bbox!r} has a non-positive width or height.")
    tol = _BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise ValueError(
            f"Box {bbox!r} lies outside the {width} x {height} image."
        )
    ymin, ymax = np.clip([y, y + h], 0, height) / height
    xmin, xmax = np.clip([x, x + w], 0, width) / width
    return np.asarray([ymin, xmin, ymax, xmax], np.float32)


def normalized_to_refcoco(box, height: int, width: int) -> list[float]:
    """`[ymin, xmin, ymax, xmax]` in `[0, 1]` to `[x, y, w, h]` in pixels."""
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    return [
        xmin * width,
        ymin * height,
        (xmax - xmin) * width,
        (ymax - ymin) * height,
    ]


def _check_normalized(box):
    values = np.asarray(box, np.float64)
    tol = 1e-3
    if (
        not np.isfinite(values).all()
        or values.min() < -tol
        or values.max() > 1 + tol
        or values[2] <= values[0]
        or values[3] <= values[1]
    ):
        raise ValueError(
            f"Box {list(box)} is not [ymin, xmin, ymax, xmax] with "
            "0 <= min < max <= 1."
        )
    return np.clip(values, 0, 1).astype(np.float32)


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic | np.ndarray):
        return _as_text(value.item())
    return str(value)


def _text_list(value, field):
    """A JSON string or list of strings as a list; `_Skip` otherwise."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise _Skip(
        "bad_annotation", f"{field!r} is not a string or list of strings"
    )


def _decode_image(data):
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        raise _Skip("corrupt_image", error.message.splitlines()[-1]) from None
    return image.numpy()


def _element(key, image, captions, boxes, refexps, language):
    captions = [c.strip() for c in captions if c.strip()]
    if not captions:
        raise _Skip("empty_caption", "no non-empty caption")
    return {
        "key": np.asarray(key),
        "image": image,
        "captions": np.asarray(captions, dtype=str),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "refexps": np.asarray(refexps, dtype=str).reshape(-1),
        "language": np.asarray(language),
    }


def _json_element(key, annotation, image_bytes, where, counter, txt=None):
    """An element from a JSON annotation (and `.txt` captions)."""
    if not isinstance(annotation, dict):
        raise _Skip("bad_annotation", "the annotation is not a JSON object")
    if "captions" not in annotation and "caption" not in annotation:
        if txt is None:
            raise _Skip("missing_caption", "no 'caption(s)' and no .txt")
    captions = []
    for field in ("captions", "caption"):
        captions += _text_list(annotation.get(field, []), field)
    if not captions and txt is not None:
        captions = txt.splitlines()
    language = annotation.get("language", "")
    if not isinstance(language, str):
        raise _Skip("bad_annotation", "'language' is not a string")
    objects = annotation.get("objects", [])
    if not isinstance(objects, list):
        raise _Skip("bad_annotation", "'objects' is not a list")
    image = _decode_image(image_bytes)
    height, width = image.shape[:2]
    boxes, refexps = [], []
    for index, obj in enumerate(objects):
        if not isinstance(obj, dict) or "bbox" not in obj:
            raise _Skip("bad_annotation", f"object {index} has no 'bbox'")
        expressions = _text_list(obj.get("refexps", []), "refexps") or [""]
        try:
            box = refcoco_to_normalized(obj["bbox"], height, width)
        except (ValueError, TypeError) as error:
            counter.skip("bad_box", f"{where} object {index}", str(error))
            continue
        boxes += [box] * len(expressions)
        refexps += expressions
    key = annotation.get("key", key)
    return _element(_as_text(key), image, captions, boxes, refexps, language)


def _expand(paths):
    """Sorted files matching a path, pattern, or list of them."""
    patterns = [paths] if isinstance(paths, str | os.PathLike) else paths
    files = []
    for pattern in patterns:
        matches = tf.io.gfile.glob(os.fspath(pattern))
        if not matches:
            raise ValueError(f"No file matches {os.fspath(pattern)!r}.")
        files += matches
    return sorted(set(files))


def _check_file(path):
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"No file {path!r}.")
    return path


def _tar_samples(path):
    """Yields `(key, {extension: bytes})` for consecutive members."""
    key, parts = None, {}
    with tf.io.gfile.GFile(path, "rb") as file:
        with tarfile.open(fileobj=file, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, name = os.path.split(member.name)
                if "." not in name:
                    continue
                stem, extension = name.split(".", 1)
                member_key = os.path.join(folder, stem)
                if member_key != key and parts:
                    yield key, parts
                    parts = {}
                key = member_key
                parts[extension.lower()] = tar.extractfile(member).read()
    if parts:
        yield key, parts


def _webdataset_element(key, parts, where, counter):
    image_bytes = next(
        (parts[ext] for ext in IMAGE_EXTENSIONS if ext in parts), None
    )
    if image_bytes is None:
        raise _Skip("missing_image", f"no {'/'.join(IMAGE_EXTENSIONS)} member")
    try:
        txt = parts["txt"].decode("utf-8") if "txt" in parts else None
    except UnicodeDecodeError as error:
        raise _Skip("bad_annotation", f".txt: {error}") from None
    if "json" in parts:
        try:
            annotation = json.loads(parts["json"])
        except (ValueError, UnicodeDecodeError) as error:
            raise _Skip("bad_annotation", str(error)) from None
    elif txt is not None:
        annotation = {}
    else:
        raise _Skip("missing_caption", "no .json or .txt member")
    return _json_element(key, annotation, image_bytes, where, counter, txt)


def webdataset_examples(paths, skip_counter: SkipCounter | None = None):
    """Python iterator over WebDataset tar shards (see the module docstring).

    Args:
        paths: a path or glob pattern, or a list of them.
        skip_counter: a `SkipCounter` to read the skips from.

    Yields:
        dicts of numpy arrays (`READER_FEATURES`; strings as `str`).
    """
    counter = SkipCounter() if skip_counter is None else skip_counter
    for path in _expand(paths):
        samples = _tar_samples(path)
        while True:
            try:
                key, parts = next(samples)
            except StopIteration:
                break
            except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
                counter.skip(
                    "bad_shard", path, f"{type(error).__name__}: {error}"
                )
                break
            try:
                yield _webdataset_element(key, parts, f"{path}:{key}", counter)
            except _Skip as skip:
                counter.skip(skip.reason, f"{path}:{key}", skip.detail)


def _feature_values(features, name, kind):
    if name not in features.feature:
        return []
    feature = features.feature[name]
    if feature.WhichOneof("kind") != kind:
        raise _Skip("bad_record", f"{name!r} is not a {kind}")
    return list(getattr(feature, kind).value)


def _tfrecord_element(raw, where, counter):
    try:
        example = tf.train.Example.FromString(raw)
    except message.DecodeError as error:
        raise _Skip("bad_record", f"not a tf.train.Example: {error}") from None
    features = example.features
    encoded = _feature_values(features, "image/encoded", "bytes_list")
    if len(encoded) != 1:
        raise _Skip("missing_image", "no single 'image/encoded'")
    if "image/captions" not in features.feature:
        raise _Skip("missing_caption", "no 'image/captions'")
    captions = _feature_values(features, "image/captions", "bytes_list")
    key = _feature_values(features, "image/key", "bytes_list")
    language = _feature_values(features, "image/language", "bytes_list")
    coordinates = [
        _feature_values(features, f"image/object/bbox/{name}", "float_list")
        for name in ("ymin", "xmin", "ymax", "xmax")
    ]
    refexps = _feature_values(features, "image/object/refexp", "bytes_list")
    count = len(coordinates[0])
    if any(len(c) != count for c in coordinates):
        raise _Skip("bad_record", "box coordinate lists differ in length")
    if len(refexps) not in (0, count):
        raise _Skip("bad_record", f"{len(refexps)} refexps for {count} boxes")
    try:
        captions = [c.decode("utf-8") for c in captions]
        refexps = [r.decode("utf-8") for r in refexps] or [""] * count
        key = key[0].decode("utf-8") if key else where
        language = language[0].decode("utf-8") if language else ""
    except UnicodeDecodeError as error:
        raise _Skip("bad_record", str(error)) from None
    image = _decode_image(encoded[0])
    boxes, kept = [], []
    for row, box in enumerate(zip(*coordinates)):
        try:
            boxes.append(_check_normalized(box))
            kept.append(refexps[row])
        except ValueError as error:
            counter.skip("bad_box", f"{where} box {row}", str(error))
    return _element(key, image, captions, boxes, kept, language)


def tfrecord_examples(paths, skip_counter: SkipCounter | None = None):
    """Python iterator over TFRecord files (see the module docstring).

    Args:
        paths: a path or glob pattern, or a list of them.
        skip_counter: a `SkipCounter` to read the skips from.

    Yields:
        dicts of numpy arrays (`READER_FEATURES`; strings as `str`).
    """
    counter = SkipCounter() if skip_counter is None else skip_counter
    for path in _expand(paths):
        records = iter(tf.data.TFRecordDataset(path))
        index = 0
        while True:
            try:
                raw = next(records).numpy()
            except StopIteration:
                break
            except tf.errors.DataLossError as error:
                counter.skip("bad_shard", path, error.message)
                break
            where = f"{path}:{index}"
            try:
                yield _tfrecord_element(raw, where, counter)
            except _Skip as skip:
                counter.skip(skip.reason, where, skip.detail)
            index += 1


def jsonl_examples(
    path,
    image_dir=None,
    skip_counter: SkipCounter | None = None,
):
    """Python iterator over a JSONL file and its images.

    Args:
        path: the JSONL file.
        image_dir: folder the `"file"` paths are relative to; default the
            JSONL's folder.
        skip_counter: a `SkipCounter` to read the skips from.

    Yields:
        dicts of numpy arrays (`READER_FEATURES`; strings as `str`).
    """
    counter = SkipCounter() if skip_counter is None else skip_counter
    path = _check_file(path)
    image_dir = os.path.dirname(path) if image_dir is None else image_dir
    with tf.io.gfile.GFile(path, "r") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield _jsonl_element(line, image_dir, where, counter)
            except _Skip as skip:
                counter.skip(skip.reason, where, skip.detail)


def _jsonl_element(line, image_dir, where, counter):
    try:
        annotation = json.loads(line)
    except ValueError as error:
        raise _Skip("bad_annotation", str(error)) from None
    if not isinstance(annotation, dict):
        raise _Skip("bad_annotation", "the line is not a JSON object")
    name = next(
        (
            annotation[k]
            for k in ("file", "file_name", "image")
            if k in annotation
        ),
        None,
    )
    if not isinstance(name, str):
        raise _Skip(
            "bad_annotation", "no 'file' (or 'file_name', 'image') string"
        )
    image_path = os.path.join(image_dir, name)
    try:
        with tf.io.gfile.GFile(image_path, "rb") as file:
            image_bytes = file.read()
    except tf.errors.NotFoundError:
        raise _Skip("missing_image", f"{image_path} not found") from None
    key = os.path.splitext(name)[0]
    return _json_element(key, annotation, image_bytes, where, counter)


def _encode_strings(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return np.vectorize(str.encode, otypes=[object])(value)
    return value


def _dataset(make_iterator):
    names = [name for name, _, _ in READER_FEATURES]

    def generate():
        for element in make_iterator():
            yield {name: _encode_strings(element[name]) for name in names}

    return tf.data.Dataset.from_generator(
        generate,
        output_signature={
            name: tf.TensorSpec(shape, dtype)
            for name, dtype, shape in READER_FEATURES
        },
    )


def read_webdataset(paths, skip_counter: SkipCounter | None = None):
    """`tf.data.Dataset` of WebDataset tar shards (`READER_FEATURES`).

    Args:
        paths: a path or glob pattern, or a list of them (matched now).
        skip_counter: a `SkipCounter` to read the skips from.
    """
    _expand(paths)
    return _dataset(lambda: webdataset_examples(paths, skip_counter))


def read_tfrecord(paths, skip_counter: SkipCounter | None = None):
    """`tf.data.Dataset` of TFRecord files (`READER_FEATURES`).

    Args:
        paths: a path or glob pattern, or a list of them (matched now).
        skip_counter: a `SkipCounter` to read the skips from.
    """
    _expand(paths)
    return _dataset(lambda: tfrecord_examples(paths, skip_counter))


def read_jsonl(path, image_dir=None, skip_counter: SkipCounter | None = None):
    """`tf.data.Dataset` of a JSONL file and its images (`READER_FEATURES`).

    Args:
        path: the JSONL file (checked now).
        image_dir: folder the `"file"` paths are relative to; default the
            JSONL's folder.
        skip_counter: a `SkipCounter` to read the skips from.
    """
    _check_file(path)
    return _dataset(lambda: jsonl_examples(path, image_dir, skip_counter))


# Writers.


def _encode_image(image, image_format):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "`image` must be uint8 (height, width, 3); got "
            f"{image.dtype} {image.shape}."
        )
    if image_format == "png":
        return tf.io.encode_png(image).numpy(), "png"
    if image_format == "jpeg":
        return tf.io.encode_jpeg(image, quality=95).numpy(), "jpg"
    raise ValueError(
        f"`image_format` must be 'png' or 'jpeg'; got {image_format!r}."
    )


def _prepared(examples):
    """Yields `(key, image, captions, boxes, refexps, language)`."""
    for index, example in enumerate(examples):
        key = _as_text(example.get("key", f"{index:08d}"))
        if not key or "." in key or "/" in key or "\\" in key:
            raise ValueError(
                f"Example {index}: key {key!r} must be non-empty, without "
                "'.', '/' or '\\' (it names files)."
            )
        if "captions" in example:
            captions = [
                _as_text(c) for c in np.asarray(example["captions"]).ravel()
            ]
        elif "caption" in example:
            captions = [_as_text(example["caption"])]
        else:
            raise ValueError(f"Example {key!r} has no 'captions' or 'caption'.")
        boxes = np.asarray(example.get("boxes", np.zeros((0, 4))), np.float64)
        boxes = boxes.reshape(-1, 4)
        refexps = example.get("refexps", [""] * len(boxes))
        refexps = [_as_text(r) for r in np.asarray(refexps).ravel()]
        if len(refexps) != len(boxes):
            raise ValueError(
                f"Example {key!r}: {len(boxes)} boxes but {len(refexps)} "
                "refexps."
            )
        language = _as_text(example.get("language", ""))
        yield key, example["image"], captions, boxes, refexps, language


def _pixel_box(box, height, width):
    # A thousandth of a pixel keeps float32 noise out of the JSON.
    return [round(v, 3) for v in normalized_to_refcoco(box, height, width)]


def _objects(boxes, refexps, height, width):
    """Rows grouped into RefCOCO-style objects, first appearance order."""
    objects = {}
    for box, refexp in zip(boxes, refexps):
        obj = objects.setdefault(
            tuple(box),
            {"bbox": _pixel_box(box, height, width), "refexps": []},
        )
        if refexp:
            obj["refexps"].append(refexp)
    return list(objects.values())


def _annotation(captions, boxes, refexps, language, height, width):
    annotation = {"captions": captions}
    if language:
        annotation["language"] = language
    if len(boxes):
        annotation["objects"] = _objects(boxes, refexps, height, width)
    return annotation


def write_webdataset(examples, path, image_format: str = "png") -> int:
    """Writes one WebDataset tar shard: `{key}.{png|jpg}` + `{key}.json`.

    Args:
        examples: iterable of dicts with `image` (uint8 `(H, W, 3)`),
            `captions` (or `caption`) and optional `key` (no `.` or `/`),
            `boxes` (normalised), `refexps` and `language`, e.g. generated
            examples or reader elements as numpy.
        path: the `.tar` file to write.
        image_format: `"png"` (lossless) or `"jpeg"`.

    Boxes are stored as RefCOCO objects in pixels, rounded to 1/1000 of a
    pixel; rows with the same box become one object with several
    expressions.

    Returns:
        The number of examples written.
    """
    count = 0
    with tf.io.gfile.GFile(path, "wb") as file:
        with tarfile.open(fileobj=file, mode="w|") as tar:
            for key, image, captions, boxes, refexps, language in _prepared(
                examples
            ):
                data, extension = _encode_image(image, image_format)
                height, width = np.shape(image)[:2]
                annotation = _annotation(
                    captions, boxes, refexps, language, height, width
                )
                meta = json.dumps(annotation, ensure_ascii=False).encode()
                for name, payload in (
                    (f"{key}.{extension}", data),
                    (f"{key}.json", meta),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                count += 1
    return count


def _bytes_feature(values):
    return tf.train.Feature(
        bytes_list=tf.train.BytesList(
            value=[v if isinstance(v, bytes) else v.encode() for v in values]
        )
    )


def _float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def write_tfrecord(examples, path, image_format: str = "png") -> int:
    """Writes `tf.train.Example`s to one TFRecord file.

    Args:
        examples: iterable of dicts as for `write_webdataset`.
        path: the file to write.
        image_format: `"png"` (lossless) or `"jpeg"`.

    Returns:
        The number of examples written.
    """
    count = 0
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for key, image, captions, boxes, refexps, language in _prepared(
            examples
        ):
            data, _ = _encode_image(image, image_format)
            feature = {
                "image/encoded": _bytes_feature([data]),
                "image/key": _bytes_feature([key]),
                "image/captions": _bytes_feature(captions),
            }
            if language:
                feature["image/language"] = _bytes_feature([language])
            if len(boxes):
                for column, name in enumerate(("ymin", "xmin", "ymax", "xmax")):
                    feature[f"image/object/bbox/{name}"] = _float_feature(
                        boxes[:, column].tolist()
                    )
                feature["image/object/refexp"] = _bytes_feature(refexps)
            example = tf.train.Example(
                features=tf.train.Features(feature=feature)
            )
            writer.write(example.SerializeToString())
            count += 1
    return count


def write_jsonl(examples, path, image_format: str = "png") -> int:
    """Writes images beside a JSONL file of annotations.

    Args:
        examples: iterable of dicts as for `write_webdataset`.
        path: the `.jsonl` file; images go to its folder as
            `{key}.{png|jpg}`.
        image_format: `"png"` (lossless) or `"jpeg"`.

    Returns:
        The number of examples written.
    """
    folder = os.path.dirname(os.fspath(path))
    if folder:
        tf.io.gfile.makedirs(folder)
    count = 0
    with tf.io.gfile.GFile(path, "w") as file:
        for key, image, captions, boxes, refexps, language in _prepared(
            examples
        ):
            data, extension = _encode_image(image, image_format)
            name = f"{key}.{extension}"
            with tf.io.gfile.GFile(os.path.join(folder, name), "wb") as out:
                out.write(data)
            height, width = np.shape(image)[:2]
            annotation = {"file": name}
            annotation.update(
                _annotation(captions, boxes, refexps, language, height, width)
            )
            file.write(json.dumps(annotation, ensure_ascii=False) + "\n")
            count += 1
    return count
