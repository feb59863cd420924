"""Read pickle files that come from dataset releases without running their code.

`pickle.load` calls whatever global a file names, so a pickle from the
internet can run arbitrary code. `load_pickle` resolves only plain
containers (dict, list, tuple, set, frozenset), strings, bytes and numbers,
plus the few NumPy globals that rebuild an array when a caller allows them.
Any other global raises `UnsafePickleError` naming the file and the global.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Protocols 0-2 spell sets, frozensets and bytes as calls to these globals.
# Python 2 pickles name the module "__builtin__".
_CONTAINER_GLOBALS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
}

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"pickle asks to encode text with codec {encoding!r}")
    return text.encode("latin-1")


class UnsafePickleError(ValueError):
    """A pickle that names a global outside the allowed set."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream, source: str, allow_numpy: bool, encoding: str):
        super().__init__(stream, encoding=encoding)
        self._source = source
        self._allow_numpy = allow_numpy

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":
            module = "builtins"
        if (module, name) in _CONTAINER_GLOBALS:
            return _CONTAINER_GLOBALS[(module, name)]
        if module == "_codecs" and name == "encode":
            # Protocol 2 stores a Python 3 bytes object as
            # _codecs.encode(text, "latin1"); only that codec is let through.
            return _encode_latin1
        if self._allow_numpy and (module, name) in _NUMPY_GLOBALS:
            return self._numpy_global(module, name)
        hint = "" if self._allow_numpy else " (NumPy arrays are not expected in this file)"
        raise UnsafePickleError(
            f"{self._source}: the pickle refers to {module}.{name}, which is not a plain "
            f"container, string or number{hint}, so the file is rejected. Convert it to "
            "plain lists, dicts and strings, or obtain it from the original release"
        )

    @staticmethod
    def _numpy_global(module: str, name: str) -> Any:
        import numpy

        if name == "ndarray":
            return numpy.ndarray
        if name == "dtype":
            return numpy.dtype
        # NumPy 2 renamed numpy.core to numpy._core; pickles from either
        # version name their own spelling.
        multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
        return getattr(multiarray, name)


def load_pickle(
    path: str | os.PathLike, *, allow_numpy: bool = False, encoding: str = "latin1"
) -> Any:
    """Load one pickle file, allowing only plain data.

    `encoding` decodes the 8-bit strings of Python 2 pickles; the default,
    "latin1", maps every byte to one character and never fails (the same
    choice NumPy documents for Python 2 array pickles). Pass "bytes" to get
    those strings as `bytes` and decode them yourself, with `decode_bytes`.

    Raises `FileNotFoundError` for a missing file and `UnsafePickleError` for
    a disallowed global or a file that is not a valid pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file {path} not found")
    data = path.read_bytes()
    unpickler = _RestrictedUnpickler(io.BytesIO(data), str(path), allow_numpy, encoding)
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as error:
        raise UnsafePickleError(f"{path}: not a readable pickle file ({error})") from None


def decode_bytes(value: Any) -> Any:
    """Return `value` with every `bytes` inside it decoded to `str`.

    Walks dicts (keys too), lists, tuples, sets and frozensets. Bytes are
    decoded as UTF-8 and, where that fails, as Latin-1, the two encodings
    Python 2 era dataset pickles use.
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {decode_bytes(key): decode_bytes(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_bytes(item) for item in value]
    if isinstance(value, tuple):
        return tuple(decode_bytes(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(decode_bytes(item) for item in value)
    return value
