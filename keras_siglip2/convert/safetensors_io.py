"""Reading and writing `.safetensors` files with numpy only.

The format is an 8-byte little-endian header length, a JSON header mapping
tensor names to `{"dtype", "shape", "data_offsets"}`, then raw
little-endian bytes. Parsing it directly keeps torch and the `safetensors`
package out of the runtime dependencies, and never unpickles anything.
"""

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from keras_siglip2.utils.atomic_write import atomic_write

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every tensor of a `.safetensors` file.

    Args:
        path: file path.

    Returns:
        dict from tensor name to a numpy array (memory-mapped, read-only).

    Raises:
        ValueError: if the file is truncated or its header is malformed,
            naming the problem.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{path}: corrupt safetensors file ({size} bytes).")
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if header_size > min(size - 8, _MAX_HEADER_BYTES):
            raise ValueError(
                f"{path}: corrupt safetensors file (header of {header_size} "
                f"bytes in a {size}-byte file)."
            )
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{path}: corrupt safetensors header ({e})."
            ) from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a dict).")
    data_start = 8 + header_size
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path}: corrupt safetensors entry {name!r}: {info!r}."
            ) from None
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or begin < 0 or data_start + end > size:
            raise ValueError(
                f"{path}: corrupt safetensors entry {name!r}: "
                f"{end - begin} bytes at [{begin}, {end}) for shape {shape} "
                f"{info['dtype']} (needs {expected}); data is "
                f"{size - data_start} bytes."
            )
        raw = buffer[data_start + begin : data_start + end]
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
) -> None:
    """Writes tensors to a `.safetensors` file atomically.

    The file is written next to its destination and renamed into place, so
    an interrupted write never leaves a truncated checkpoint.

    Args:
        path: destination file.
        tensors: dict from name to array (any dtype listed in the format).
        metadata: optional string-to-string metadata.
    """
    path = Path(path)
    header = {}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if array.dtype not in _NAMES:
            raise ValueError(
                f"Tensor {name!r} has unsupported dtype {array.dtype}."
            )
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for array in arrays:
            f.write(array.tobytes())
