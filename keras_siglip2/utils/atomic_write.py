"""Files written whole or not at all."""

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Opens a temporary file beside `path` that replaces it on success.

    The data is flushed and fsynced, then renamed over `path` (atomic on
    POSIX and Windows file systems). On any error the temporary file is
    removed and `path` is left as it was, so readers never see a partly
    written file.

    Args:
        path: the file to write; its directory must exist.
        mode: `"wb"` or `"w"`.

    Yields:
        The open temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Writes `data` as indented JSON with `atomic_write`."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
