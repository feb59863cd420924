"""Read `.safetensors` weight files with NumPy alone.

A safetensors file is an 8-byte little-endian unsigned header length N, then N
bytes of a UTF-8 JSON header, then the data area. The header maps each tensor
name to its `dtype`, `shape` and `data_offsets` [begin, end), which are byte
offsets into the data area. An optional `__metadata__` entry maps strings to
strings. Tensors are stored C-contiguous and little-endian. This reader follows
the format description of the `safetensors` package and exists so that the
project needs neither that package nor PyTorch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# NumPy has no bfloat16, so BF16 tensors are widened to float32 on load.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# Headers of real models are tens of kilobytes. A length field beyond this
# bound (chosen here, generous) means the file is not safetensors at all.
_MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
    """A safetensors file is truncated, malformed or uses an unsupported dtype."""


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors file.

    Args:
        path: the `.safetensors` file.

    Returns:
        tensor name -> writable NumPy array in native byte order with the
        stored shape; BF16 tensors come back as float32.

    Raises:
        FileNotFoundError: `path` does not exist.
        SafetensorsError: the header length, the JSON header, a dtype, a shape
            or a data offset is invalid; the message names the file and tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file {path} not found")
    file_size = path.stat().st_size

    with open(path, "rb") as stream:
        header, data_start = _read_header(stream, path, file_size)
        entries = _validate_entries(header, path, data_size=file_size - data_start)

        tensors: dict[str, np.ndarray] = {}
        for name, (dtype_name, shape, begin, end) in entries.items():
            stored_dtype = _DTYPES[dtype_name]
            array = np.empty(shape, dtype=stored_dtype)
            stream.seek(data_start + begin)
            read = stream.readinto(memoryview(array.reshape(-1)).cast("B"))
            if read != end - begin:
                raise SafetensorsError(
                    f"{path}: tensor {name!r} ends after the end of the file "
                    f"(read {read} of {end - begin} bytes); the file is truncated"
                )
            tensors[name] = _to_native(array, dtype_name)

    logger.debug("loaded %d tensors from %s", len(tensors), path)
    return tensors


def _read_header(stream, path: Path, file_size: int) -> tuple[dict, int]:
    """Return the parsed JSON header and the file offset of the data area."""
    length_bytes = stream.read(8)
    if len(length_bytes) != 8:
        raise SafetensorsError(f"{path}: file has {file_size} bytes, too short for the 8-byte header length")
    header_length = int.from_bytes(length_bytes, "little")
    if header_length > min(file_size - 8, _MAX_HEADER_BYTES):
        raise SafetensorsError(
            f"{path}: header length {header_length} exceeds the {file_size - 8} bytes after the length "
            "field; the file is truncated or not a safetensors file"
        )

    try:
        header = json.loads(stream.read(header_length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsError(f"{path}: header is not valid UTF-8 JSON ({error})") from error
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    return header, 8 + header_length


def _validate_entries(header: dict, path: Path, data_size: int) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """Check every tensor entry; return name -> (dtype, shape, begin, end)."""
    entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise SafetensorsError(f"{path}: entry of tensor {name!r} is not a JSON object")

        dtype_name = entry.get("dtype")
        if dtype_name not in _DTYPES:
            raise SafetensorsError(
                f"{path}: tensor {name!r} has unsupported dtype {dtype_name!r}; supported: {sorted(_DTYPES)}"
            )

        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
            raise SafetensorsError(f"{path}: tensor {name!r} has invalid shape {shape!r}")

        offsets = entry.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(offset, int) for offset in offsets)
        ):
            raise SafetensorsError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise SafetensorsError(
                f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] outside the "
                f"{data_size}-byte data area; the file is truncated or corrupt"
            )

        expected_bytes = math.prod(shape) * _DTYPES[dtype_name].itemsize
        if end - begin != expected_bytes:
            raise SafetensorsError(
                f"{path}: tensor {name!r} spans {end - begin} bytes but dtype {dtype_name} "
                f"and shape {shape} need {expected_bytes}"
            )
        entries[name] = (dtype_name, tuple(shape), begin, end)

    _check_no_overlap(entries, path)
    return entries


def _check_no_overlap(entries: dict[str, tuple[str, tuple[int, ...], int, int]], path: Path) -> None:
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, previous_end, previous_name), (begin, _, name) in zip(spans, spans[1:]):
        if begin < previous_end:
            raise SafetensorsError(f"{path}: data of tensors {previous_name!r} and {name!r} overlap")


def _to_native(array: np.ndarray, dtype_name: str) -> np.ndarray:
    if dtype_name == "BF16":
        # bfloat16 is the upper half of a float32, so shifting the bits up
        # widens it exactly.
        return (array.astype(np.uint32) << 16).view(np.float32)
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array
