"""Read tensors from PyTorch's legacy `torch.save` format with NumPy alone.

PyTorch releases before 1.6 wrote (and later ones still read) a non-zip format:
a sequence of five pickles followed by raw storage data.

1. the magic number 0x1950a86a20f9469cfc6c,
2. the protocol version 1001,
3. a system-info dict (`little_endian`, `type_sizes`),
4. the saved object, a state dict whose tensors refer to their storages
   through persistent ids `("storage", storage_type, key, location, numel,
   view_metadata)` and are rebuilt by `torch._utils._rebuild_tensor_v2`,
5. the list of storage keys, in the order their data follows,

then, for each storage in that order, its element count as an 8-byte
little-endian integer followed by the elements in the byte order the
system-info dict names.

The layout was learned from reading `torch/serialization.py` (torch 2.x,
`_legacy_save` and `_legacy_load`); this module is an independent reader.
The pickles run through a restricted unpickler that resolves only
`collections.OrderedDict`, the tensor rebuild functions and the storage type
names, each to a local stand-in, so a file cannot run code when it is read.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import struct
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TorchFileError", "UnsafePickleError", "load_torch_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"

# Storage class name -> element dtype, as the storage data is laid out on disk.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("f8"),
    "FloatStorage": np.dtype("f4"),
    "HalfStorage": np.dtype("f2"),
    # NumPy has no bfloat16; the raw 16-bit patterns are widened to float32.
    "BFloat16Storage": np.dtype("u2"),
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """A file that is not a readable PyTorch legacy state dict."""


class UnsafePickleError(TorchFileError):
    """A pickle in the file references a global outside the allowed set."""


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; the data is that of storage `base_key`."""

    base_key: str
    storage_type: _StorageType
    base_numel: int
    # A view storage starts `offset` elements into its base and has `numel` elements.
    offset: int
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    # `_rebuild_tensor_v2` adds requires_grad, backward hooks and, since torch
    # 2.x, metadata; none of them matter for the values.
    if not isinstance(storage, _StorageRef):
        raise TypeError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(n) for n in stride))


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that maps the few globals of a state dict to local stand-ins."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafePickleError(
            f"{self._path}: rejected pickle global {module}.{name}. A weights file contains only "
            "tensors, so this file is not a plain state dict and may run code when loaded. Do not load "
            "it with torch.load either unless you trust its source."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchFileError(f"{self._path}: unsupported persistent id {pid!r}; expected a storage record")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self._path}: persistent id {pid!r} does not name a storage type")

        key = str(key)
        base = self.storages.setdefault(key, _StorageRef(key, storage_type, int(numel), 0, int(numel)))
        if view_metadata is None:
            return base
        _view_key, offset, view_numel = view_metadata
        return _StorageRef(key, storage_type, base.base_numel, int(offset), int(view_numel))


def load_torch_state_dict(path: str | os.PathLike) -> collections.OrderedDict[str, np.ndarray]:
    """Read a legacy-format PyTorch state dict into NumPy arrays.

    Returns an OrderedDict from parameter name to a C-contiguous array, in
    file order, each with the shape and dtype of its tensor (bfloat16 tensors
    come back as float32). Raises `UnsafePickleError` for a pickle that names
    any global besides a state dict's. Raises `TorchFileError` for a missing,
    zip-format, truncated or otherwise unreadable file. Both messages name the
    file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise TorchFileError(f"cannot read PyTorch weights file {path}: {error}") from error

    if data.startswith(_ZIP_SIGNATURE):
        raise TorchFileError(
            f"{path} is a zip-format PyTorch file (torch.save since 1.6); this reader supports only the "
            "legacy format. Re-save it with torch.save(obj, path, _use_new_zipfile_serialization=False)."
        )

    stream = io.BytesIO(data)
    unpickler = _RestrictedUnpickler(stream, path)
    magic = _load_pickle(unpickler, path, "magic number")
    if magic != _MAGIC_NUMBER:
        raise TorchFileError(f"{path} is not a PyTorch legacy file: its first pickle is {magic!r}, not the torch magic number")
    protocol = _load_pickle(unpickler, path, "protocol version")
    if protocol != _PROTOCOL_VERSION:
        raise TorchFileError(f"{path}: unsupported PyTorch protocol version {protocol!r}; expected {_PROTOCOL_VERSION}")
    sys_info = _load_pickle(unpickler, path, "system info")
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    state = _load_pickle(unpickler, path, "state dict")
    storage_keys = _load_pickle(unpickler, path, "storage key list")

    if not isinstance(state, dict):
        raise TorchFileError(f"{path} contains a {type(state).__name__}, not a state dict of tensors")
    if not isinstance(storage_keys, list):
        raise TorchFileError(f"{path}: storage key list is a {type(storage_keys).__name__}, not a list")

    buffers = _read_storages(stream, unpickler.storages, [str(key) for key in storage_keys], little_endian, path)
    if stream.tell() != len(data):
        logger.warning("%s: %d bytes after the last storage were ignored", path, len(data) - stream.tell())

    arrays: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise TorchFileError(f"{path}: state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        arrays[str(name)] = _materialize(value, buffers[value.storage.base_key], name, path)
    return arrays


def _load_pickle(unpickler: _RestrictedUnpickler, path: str, what: str):
    try:
        return unpickler.load()
    except TorchFileError:
        raise
    except (EOFError, pickle.UnpicklingError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise TorchFileError(
            f"{path}: cannot read the {what} pickle ({type(error).__name__}: {error}); the file is truncated "
            "or not a PyTorch legacy weights file"
        ) from error


def _read_storages(
    stream: io.BytesIO,
    storages: dict[str, _StorageRef],
    keys: list[str],
    little_endian: bool,
    path: str,
) -> dict[str, np.ndarray]:
    """Read each storage's raw elements into a flat array, in the order of `keys`."""
    buffers: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in storages:
            raise TorchFileError(f"{path}: storage {key!r} is listed but no tensor uses it")
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8:
            raise TorchFileError(f"{path} is truncated: the size of storage {key!r} is missing")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.base_numel:
            raise TorchFileError(
                f"{path}: storage {key!r} has {numel} elements on disk but {storage.base_numel} in its record"
            )

        dtype = storage.storage_type.dtype.newbyteorder("<" if little_endian else ">")
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise TorchFileError(
                f"{path} is truncated: storage {key!r} needs {numel * dtype.itemsize} bytes, {len(raw)} remain"
            )
        values = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        if storage.storage_type.name == "BFloat16Storage":
            # A bfloat16 is the upper half of a float32 with the same bits.
            values = (values.astype(np.uint32) << 16).view(np.float32)
        buffers[key] = values

    missing = sorted(set(storages) - set(buffers))
    if missing:
        raise TorchFileError(f"{path}: no data for storages {missing}")
    return buffers


def _materialize(tensor: _TensorRef, flat: np.ndarray, name: str, path: str) -> np.ndarray:
    """Copy one tensor's elements out of its storage into a contiguous array."""
    if len(tensor.size) != len(tensor.stride):
        raise TorchFileError(f"{path}: tensor {name!r} has size {tensor.size} but stride {tensor.stride}")
    storage = tensor.storage
    start = storage.offset + tensor.storage_offset
    view_end = storage.offset + storage.numel
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=flat.dtype)

    last = start + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if start < 0 or last >= view_end or any(s < 0 for s in tensor.stride) or view_end > flat.size:
        raise TorchFileError(
            f"{path}: tensor {name!r} (offset {tensor.storage_offset}, size {tensor.size}, stride "
            f"{tensor.stride}) reaches outside its storage of {storage.numel} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[start:],
        shape=tensor.size,
        strides=tuple(s * flat.itemsize for s in tensor.stride),
        writeable=False,
    )
    # np.ascontiguousarray would turn a 0-d tensor into shape [1].
    return np.array(view, order="C", copy=True)
