"""Readers and writers of WebDataset tars, TFRecords and images + JSONL.

Oracles: generated examples written and read back exactly (PNG is
lossless), hand-computed RefCOCO box conversions, and files with planted
defects (a corrupt JPEG, malformed JSON, a truncated tar member, a bad
`tf.train.Example`, a corrupt TFRecord file, bad boxes) whose skips must
be counted by reason while the good records still come through.
"""

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip2.data import generated
from keras_siglip2.data import readers

WRITERS = {
    "webdataset": (readers.write_webdataset, readers.read_webdataset, "a.tar"),
    "tfrecord": (readers.write_tfrecord, readers.read_tfrecord, "a.tfrecord"),
    "jsonl": (readers.write_jsonl, readers.read_jsonl, "j/a.jsonl"),
}


def _image(height=12, width=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png(image):
    return tf.io.encode_png(image).numpy()


def _jpeg(image):
    return tf.io.encode_jpeg(image).numpy()


CORRUPT_JPEG = _jpeg(_image())[:60]


def _strings(values):
    return [v.decode() for v in values]


@pytest.fixture(scope="module")
def examples():
    return list(
        generated.generated_examples(
            "test", 0, 4, image_size=(20, 36), text_fraction=0.5
        )
    )


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_round_trip(name, examples, tmp_path):
    write, read, file_name = WRITERS[name]
    path = tmp_path / file_name
    assert write(examples, path) == len(examples)
    counter = readers.SkipCounter()
    elements = list(read(str(path), skip_counter=counter).as_numpy_iterator())
    assert counter.total == 0
    assert len(elements) == len(examples)
    for element, example in zip(elements, examples):
        assert element["key"].decode() == str(example["key"])
        assert element["language"].decode() == str(example["language"])
        np.testing.assert_array_equal(element["image"], example["image"])
        assert _strings(element["captions"]) == example["captions"].tolist()
        assert _strings(element["refexps"]) == example["refexps"].tolist()
        # JSON boxes are in pixels, rounded to 1e-3.
        np.testing.assert_allclose(
            element["boxes"], example["boxes"], atol=1e-4
        )


def test_jpeg_round_trip(examples, tmp_path):
    path = tmp_path / "a.tar"
    readers.write_webdataset(examples, path, image_format="jpeg")
    with tarfile.open(path) as tar:
        assert tar.getnames()[0].endswith(".jpg")
    element = next(iter(readers.read_webdataset(str(path))))
    error = np.abs(
        element["image"].numpy().astype(int) - examples[0]["image"]
    ).mean()
    assert error < 8


def test_refcoco_boxes():
    box = readers.refcoco_to_normalized([10, 5, 20, 10], height=20, width=40)
    np.testing.assert_allclose(box, [0.25, 0.25, 0.75, 0.75])
    # Up to one pixel of overhang is clipped.
    box = readers.refcoco_to_normalized([-0.5, 0, 40.8, 20.5], 20, 40)
    np.testing.assert_allclose(box, [0, 0, 1, 1])
    back = readers.normalized_to_refcoco([0.25, 0.25, 0.75, 0.75], 20, 40)
    np.testing.assert_allclose(back, [10, 5, 20, 10])
    for bad in ([0, 0, -5, 4], [0, 0, 4, 0], [38, 0, 5, 5], [0, 0, np.nan, 1]):
        with pytest.raises(ValueError, match="Box"):
            readers.refcoco_to_normalized(bad, 20, 40)


def _tar(path, members, truncate=None):
    """Writes a tar; `truncate` names a member to cut in half (and all
    that follows it)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buffer.getvalue()
    if truncate:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.getmember(truncate)
        data = data[: member.offset_data + member.size // 2]
    path.write_bytes(data)


def test_webdataset_skips(tmp_path, caplog):
    good = {"captions": ["a dog"], "objects": [{"bbox": [2, 3, 8, 6]}]}
    boxes = {
        "caption": "two boxes",
        "language": "en",
        "objects": [
            {"bbox": [0, 0, 10, 6], "refexps": ["the left one", "left"]},
            {"bbox": [5, 5, -2, 3], "refexps": ["x2 < x1"]},
            {"bbox": [15, 0, 10, 6], "refexps": ["outside"]},
        ],
    }
    _tar(
        tmp_path / "a.tar",
        [
            ("s0.jpg", _jpeg(_image())),
            ("s0.txt", b"first caption\nsecond caption\n"),
            ("s1.jpg", CORRUPT_JPEG),
            ("s1.txt", b"corrupt image"),
            ("s2.png", _png(_image())),
            ("s2.json", b'{"captions": ["unterminated'),
            ("s3.txt", b"no image"),
            ("s4.png", _png(_image())),
            ("s4.json", json.dumps(boxes).encode()),
            ("s5.png", _png(_image())),
            ("s5.txt", b"   \n"),
            ("s6.png", _png(_image())),
            ("s7.png", _png(_image(seed=1))),
            ("s7.json", json.dumps(good).encode()),
        ],
    )
    _tar(
        tmp_path / "b.tar",
        [
            ("dir/t0.png", _png(_image(6, 4))),
            ("dir/t0.json", json.dumps(good).encode()),
            ("dir/t1.png", _png(_image())),
            ("dir/t1.txt", b"cut"),
        ],
        truncate="dir/t1.png",
    )
    counter = readers.SkipCounter(log_first=1)
    with caplog.at_level(logging.WARNING):
        dataset = readers.read_webdataset(
            [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")],
            skip_counter=counter,
        )
        elements = list(dataset.as_numpy_iterator())
    keys = [e["key"].decode() for e in elements]
    assert keys == ["s0", "s4", "s7", "dir/t0"]
    assert counter.counts == {
        "corrupt_image": 1,
        "bad_annotation": 1,
        "missing_image": 1,
        "empty_caption": 1,
        "missing_caption": 1,
        "bad_box": 3,
        "bad_shard": 1,
    }
    assert counter.total == 9 and counter["bad_shard"] == 1
    assert "Skipped (corrupt_image, 1 so far)" in caplog.text
    # `log_first=1`: the second and third bad boxes are counted, not logged.
    assert caplog.text.count("bad_box") == 1
    first, boxed, _, small = elements
    assert _strings(first["captions"]) == ["first caption", "second caption"]
    assert first["boxes"].shape == (0, 4) and first["refexps"].shape == (0,)
    np.testing.assert_allclose(
        boxed["boxes"], [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]]
    )
    assert _strings(boxed["refexps"]) == ["the left one", "left"]
    assert boxed["language"] == b"en"
    # The box [x=2, y=3, w=8, h=6] of a 6 x 4 image overhangs: dropped.
    assert small["boxes"].shape == (0, 4)


def _example(captions=(b"a cat",), image=None, **features):
    feature = {
        "image/encoded": readers._bytes_feature(
            [_png(_image()) if image is None else image]
        ),
    }
    if captions is not None:
        feature["image/captions"] = readers._bytes_feature(list(captions))
    for name, values in features.items():
        name = "image/" + name.replace("__", "/")
        if values and isinstance(values[0], float):
            feature[name] = readers._float_feature(values)
        else:
            feature[name] = readers._bytes_feature(values)
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def test_tfrecord_skips(tmp_path):
    boxes = dict(
        object__bbox__ymin=[0.0, 0.5],
        object__bbox__xmin=[0.0, 0.5],
        object__bbox__ymax=[0.5, 0.4],
        object__bbox__xmax=[0.5, 0.9],
        object__refexp=[b"good box", b"ymax < ymin"],
    )
    records = [
        _example(key=[b"k0"], language=[b"de"]),
        _example(image=CORRUPT_JPEG),
        b"not a tf.train.Example \xff",
        _example(captions=None),
        _example(**dict(boxes, object__refexp=[b"one"])),
        _example(key=[b"k5"], **boxes),
        _example(captions=(b"", b"  ")),
    ]
    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    with tf.io.TFRecordWriter(str(tmp_path / "b.tfrecord")) as writer:
        for key in (b"b0", b"b1", b"b2"):
            writer.write(_example(key=[key]))
    data = bytearray((tmp_path / "b.tfrecord").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "b.tfrecord").write_bytes(bytes(data))
    counter = readers.SkipCounter()
    dataset = readers.read_tfrecord(
        str(tmp_path / "*.tfrecord"), skip_counter=counter
    )
    elements = list(dataset.as_numpy_iterator())
    assert [e["key"] for e in elements] == [b"k0", b"k5", b"b0"]
    assert counter.counts == {
        "corrupt_image": 1,
        "bad_record": 2,
        "missing_caption": 1,
        "bad_box": 1,
        "empty_caption": 1,
        "bad_shard": 1,
    }
    assert elements[0]["language"] == b"de"
    np.testing.assert_allclose(elements[1]["boxes"], [[0, 0, 0.5, 0.5]])
    assert _strings(elements[1]["refexps"]) == ["good box"]
    # The counter accumulates over epochs.
    list(dataset)
    assert counter["bad_shard"] == 2


def test_jsonl_skips(tmp_path):
    (tmp_path / "good.png").write_bytes(_png(_image(20, 40)))
    (tmp_path / "bad.jpg").write_bytes(CORRUPT_JPEG)
    refcoco = {
        "file": "good.png",
        "captions": ["a scene", "  "],
        "objects": [
            {"bbox": [10, 5, 20, 10], "refexps": ["the middle", "centre"]},
            {"bbox": [30, 10, 10, 10]},
            {"bbox": [35, 10, -10, 10], "refexps": ["x2 < x1"]},
        ],
    }
    lines = [
        json.dumps(refcoco),
        '{"file": "good.png", "captions": ["cut',
        json.dumps({"file": "bad.jpg", "caption": "corrupt"}),
        json.dumps({"file": "gone.png", "caption": "missing"}),
        "",
        json.dumps({"file_name": "good.png", "captions": [""]}),
        json.dumps({"image": "good.png", "captions": "one", "key": "k"}),
        json.dumps({"file": "good.png", "captions": [1, 2]}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"file": "good.png"}),
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    counter = readers.SkipCounter()
    elements = list(
        readers.read_jsonl(str(tmp_path / "a.jsonl"), skip_counter=counter)
    )
    assert [e["key"].numpy() for e in elements] == [b"good", b"k"]
    assert counter.counts == {
        "bad_annotation": 3,
        "corrupt_image": 1,
        "missing_image": 1,
        "empty_caption": 1,
        "missing_caption": 1,
        "bad_box": 1,
    }
    first = elements[0]
    assert _strings(first["captions"].numpy()) == ["a scene"]
    np.testing.assert_allclose(
        first["boxes"],
        [[0.25, 0.25, 0.75, 0.75], [0.25, 0.25, 0.75, 0.75], [0.5, 0.75, 1, 1]],
    )
    assert _strings(first["refexps"].numpy()) == ["the middle", "centre", ""]
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(_png(_image(20, 40)))
    (tmp_path / "b.jsonl").write_text(lines[0] + "\n")
    elements = list(readers.jsonl_examples(tmp_path / "b.jsonl", images))
    assert elements[0]["image"].shape == (20, 40, 3)


def test_bad_arguments(tmp_path, examples):
    with pytest.raises(ValueError, match="No file matches"):
        readers.read_webdataset(str(tmp_path / "*.tar"))
    with pytest.raises(ValueError, match="No file"):
        readers.read_jsonl(str(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="key"):
        readers.write_jsonl(
            [dict(examples[0], key="a.b")], tmp_path / "x.jsonl"
        )
    with pytest.raises(ValueError, match="uint8"):
        readers.write_tfrecord(
            [dict(examples[0], image=np.zeros((4, 4, 3)))], tmp_path / "x"
        )
    with pytest.raises(ValueError, match="refexps"):
        readers.write_webdataset(
            [dict(examples[0], refexps=["a", "b", "c", "d", "e"])],
            tmp_path / "x.tar",
        )
    with pytest.raises(ValueError, match="image_format"):
        readers.write_webdataset(examples, tmp_path / "x.tar", "gif")
    with pytest.raises(ValueError, match="reason"):
        readers.SkipCounter().skip("oops", "here")
