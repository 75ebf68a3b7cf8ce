"""`atomic_write`: a file is replaced whole or left as it was."""

import json
import os

import pytest

from keras_siglip2.utils.atomic_write import atomic_write
from keras_siglip2.utils.atomic_write import write_json_atomic


def test_success_replaces_the_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new")
        # Not visible until the block ends.
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "data.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        # Not JSON-serialisable: fails after part of the file is written.
        write_json_atomic(path, {"b": 2, "c": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["data.json"]


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "absent" / "x.bin") as f:
            f.write(b"x")
