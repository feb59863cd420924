"""Decode dataset images into RGB uint8 arrays, or fail with a clear `ImageError`.

The format is chosen from the file's first bytes, never from its name, so a
GIF saved as `photo.jpg` still decodes. JPEG, PNG, BMP and GIF are accepted,
which are the formats that `tf.io.decode_image` also reads, so an image packed
into TFRecords decodes the same way on both paths (see `tfrecords.py`).

Decoding uses OpenCV (`cv2.imdecode`, at least 4.11 for GIF support and the
RGB flag; checked with 5.1). GIFs that OpenCV rejects but that are valid are
decoded with Pillow, which matplotlib installs. These policies hold for every
format:

- Colour order is RGB. Grayscale images are copied into three equal channels.
- Alpha is dropped, not composited, so each pixel keeps its stored colour.
  `tf.io.decode_image(channels=3)` does the same, except for transparent GIF
  pixels, which TensorFlow turns black.
- 16-bit PNG samples keep their high byte (value >> 8), as in TensorFlow.
- CMYK JPEGs, including the Adobe inverted form that Photoshop and Pillow
  write, are converted to RGB by the JPEG decoder.
- The EXIF orientation tag is ignored, so the result is the stored pixel grid.
  Box annotations of COCO, Visual Genome and Flickr30k are drawn on that grid,
  and their width and height fields match it. `exif_orientation` reads the tag
  so converters can report images whose tag is not 1.
- An incomplete JPEG (no end-of-image marker) is an error, never a picture
  whose lower part is grey. OpenCV 5.1 also rejects truncated PNG, GIF and BMP
  data on its own.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import cv2
import numpy as np

logger = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION

# Start-of-frame markers carry the image size. 0xC4 (DHT), 0xC8 (JPG) and
# 0xCC (DAC) share the 0xC_ range but are other segments.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and the restart markers RST0-RST7.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_JPEG_SOS, _JPEG_EOI, _JPEG_APP1 = 0xDA, 0xD9, 0xE1
_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An image file that is missing, unreadable, unsupported or corrupt.

    Attributes:
        path: the file, or a description of where in-memory bytes came from.
        reason: a short key for counting failures: `missing`, `not_a_file`,
            `unreadable`, `empty`, `unsupported_format`, `truncated` or
            `corrupt`.
    """

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        # Keeps the error picklable, so it can cross process boundaries.
        return (type(self), (self.path, self.reason, self.detail))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read and decode one image file.

    Args:
        path: a JPEG, PNG, BMP or GIF file. Non-ASCII names work because the
            bytes are read by Python and decoded in memory.

    Returns:
        RGB uint8 array [height, width, 3] of the stored pixel grid: the first
        frame of an animated GIF, alpha dropped, EXIF orientation ignored (see
        the module docstring).

    Raises:
        ImageError: naming the path, when the file is missing, is a folder,
            cannot be read, is empty, is not one of the four formats, or is
            truncated or corrupt.
    """
    return decode_image(read_image_bytes(path), source=path)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """Return the raw bytes of an image file, mapping file errors to `ImageError`."""
    with _file_errors(path):
        # A device or pipe (such as /dev/zero) could be read without end.
        if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
            raise ImageError(path, "not_a_file", "is not a regular file")
        return Path(path).read_bytes()


@contextlib.contextmanager
def _file_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn `OSError` raised while reading `path` into `ImageError`."""
    try:
        yield
    except FileNotFoundError:
        raise ImageError(path, "missing", "image file not found; check the path and the dataset root") from None
    except IsADirectoryError:
        raise ImageError(path, "not_a_file", "is a folder, not an image file") from None
    except OSError as error:
        # Some platforms raise PermissionError, not IsADirectoryError, for a folder.
        if Path(path).is_dir():
            raise ImageError(path, "not_a_file", "is a folder, not an image file") from None
        raise ImageError(path, "unreadable", f"cannot read the file ({error.strerror or error})") from None


def decode_image(data: bytes, source: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes the way `load_image` decodes a file.

    Args:
        data: the complete contents of a JPEG, PNG, BMP or GIF file.
        source: the file the bytes came from, used only in error messages.

    Returns:
        RGB uint8 array [height, width, 3].

    Raises:
        ImageError: when the bytes are empty, of another format, truncated or
            corrupt.
    """
    image_format = _sniff_format(data, source)
    if image_format == "JPEG":
        problem = _jpeg_structure_problem(data)
        if problem is not None:
            raise ImageError(source, *problem)

    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAGS)
    except cv2.error as error:
        raise ImageError(source, "corrupt", f"OpenCV failed to decode the {image_format} data ({error})") from None
    if image is None and image_format == "GIF":
        image = _decode_gif_with_pillow(data, source)
    if image is None:
        raise ImageError(
            source,
            "corrupt",
            f"OpenCV could not decode the {image_format} data; the file is truncated or corrupt, "
            "so replace it with a fresh copy",
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(
            source, "corrupt", f"decoded to shape {image.shape} of {image.dtype}, expected [height, width, 3] uint8"
        )
    return np.ascontiguousarray(image)


def _decode_gif_with_pillow(data: bytes, source: str | os.PathLike) -> np.ndarray:
    """Decode the first frame of a GIF that OpenCV rejects.

    OpenCV 5.1 rejects valid GIFs whose background colour index lies outside
    the global colour table, or that lack the final trailer byte. Pillow and
    TensorFlow read both. Pillow (installed with matplotlib) still raises on a
    first frame that is cut short.
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImageError(
            source, "corrupt", "OpenCV could not decode this GIF, and Pillow, the fallback decoder, is not installed"
        ) from None
    # NOTE: a caller that sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True makes
    # Pillow pad a cut-short frame instead of raising.
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.seek(0)
            # Converting a palette image to RGB keeps the palette colour of
            # transparent pixels, as OpenCV does.
            rgb = picture.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ImageError(
            source, "corrupt", f"neither OpenCV nor Pillow could decode the GIF data ({error}); replace the file"
        ) from None
    logger.debug("%s: decoded the GIF with Pillow because OpenCV rejected it", source)
    return np.asarray(rgb, dtype=np.uint8)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return `(width, height)` of the stored pixel grid of an image file.

    The size comes from the file header (JPEG start-of-frame, PNG IHDR, GIF
    logical screen, BMP info header) without decoding pixels. A header parse
    does not prove that the rest of the file is intact: use `load_image` for
    that. When the header gives no usable size, the image is decoded instead.

    Raises:
        ImageError: naming the path, for the same failures as `load_image`.
    """
    with _file_errors(path), open(path, "rb") as stream:
        image_format = _sniff_format(stream.read(32), path)
        stream.seek(0)
        size = _header_size(stream, image_format)

    if size is not None and size[0] > 0 and size[1] > 0:
        return size
    logger.debug("%s: no usable size in the header, decoding the image", path)
    height, width = load_image(path).shape[:2]
    return width, height


def exif_orientation(path: str | os.PathLike) -> int | None:
    """Read the EXIF orientation tag (0x0112) of a JPEG or PNG file.

    `load_image` ignores this tag. Values follow the EXIF standard: 1 means the
    stored grid is upright, 6 means a viewer rotates it 90 degrees clockwise.

    Returns:
        the tag value 1..8, or None when the file has no EXIF block, no
        orientation tag, an out-of-range value or a format without EXIF (BMP,
        GIF). A malformed EXIF block also gives None.

    Raises:
        ImageError: when the file is missing, unreadable or not an image of the
            four supported formats.
    """
    with _file_errors(path), open(path, "rb") as stream:
        image_format = _sniff_format(stream.read(32), path)
        stream.seek(0)
        if image_format == "JPEG":
            tiff = _jpeg_exif_block(stream)
        elif image_format == "PNG":
            tiff = _png_exif_block(stream)
        else:
            return None

    if tiff is None:
        return None
    orientation = _tiff_orientation(tiff)
    if orientation is None:
        logger.debug("%s: EXIF block has no readable orientation tag", path)
        return None
    if not 1 <= orientation <= 8:
        logger.debug("%s: EXIF orientation %d is outside 1..8, ignored", path, orientation)
        return None
    return orientation


def _sniff_format(head: bytes, source: str | os.PathLike) -> str:
    """Name the format from the leading bytes: JPEG, PNG, GIF or BMP."""
    if not head:
        raise ImageError(source, "empty", "file is empty (0 bytes); re-download or re-extract it")
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM") and len(head) >= 18:
        return "BMP"
    raise ImageError(
        source,
        "unsupported_format",
        f"not a JPEG, PNG, GIF or BMP image (first bytes {head[:8]!r}); "
        "convert it to one of these formats or remove it from the dataset",
    )


def _jpeg_structure_problem(data: bytes) -> tuple[str, str] | None:
    """Walk the JPEG segments and entropy-coded data up to the EOI marker.

    Returns None for a complete stream, else `(reason, detail)` for
    `ImageError`. Inside entropy-coded data a 0xFF byte is followed by 0x00 (a
    stuffed byte), a restart marker, more 0xFF fill, or the next real marker.
    """
    truncated = (
        "truncated",
        "JPEG data ends before the end-of-image marker (truncated file); re-download or re-extract it",
    )
    size = len(data)
    position = 2
    while True:
        if position >= size:
            return truncated
        if data[position] != 0xFF:
            return "corrupt", f"JPEG data is corrupt: expected a marker at byte {position}"
        while position < size and data[position] == 0xFF:
            position += 1
        if position >= size:
            return truncated
        marker = data[position]
        position += 1
        if marker == _JPEG_EOI:
            return None
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker == 0xD8:
            return "corrupt", f"JPEG data is corrupt: a second start-of-image marker at byte {position - 2}"
        if position + 2 > size:
            return truncated
        (length,) = struct.unpack_from(">H", data, position)
        if length < 2:
            return "corrupt", f"JPEG data is corrupt: segment 0xFF{marker:02X} has length {length}"
        position += length
        if position > size:
            return truncated
        if marker == _JPEG_SOS:
            position = _skip_entropy_coded_data(data, position)
            if position < 0:
                return truncated


def _skip_entropy_coded_data(data: bytes, position: int) -> int:
    """Return the offset of the first marker after a scan, or -1 at end of data."""
    size = len(data)
    while True:
        found = data.find(b"\xff", position)
        if found < 0 or found + 1 >= size:
            return -1
        follower = data[found + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7:
            position = found + 2
        elif follower == 0xFF:
            position = found + 1
        else:
            return found


def _header_size(stream: BinaryIO, image_format: str) -> tuple[int, int] | None:
    """Read `(width, height)` from the header of an open file, or None."""
    if image_format == "JPEG":
        for marker, length in _jpeg_header_segments(stream):
            if marker in _JPEG_SOF_MARKERS:
                frame = stream.read(5)
                if len(frame) < 5:
                    return None
                _precision, height, width = struct.unpack(">BHH", frame)
                # Height 0 means a DNL segment after the first scan defines it.
                return (width, height) if height else None
        return None

    head = stream.read(26)
    if image_format == "PNG":
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        return struct.unpack_from(">II", head, 16)
    if image_format == "GIF":
        if len(head) < 10:
            return None
        return struct.unpack_from("<HH", head, 6)
    # BMP: a 12-byte BITMAPCOREHEADER holds 16-bit sizes, later headers 32-bit
    # signed ones; a negative height marks a top-down bitmap.
    if len(head) < 26:
        return None
    (header_size,) = struct.unpack_from("<I", head, 14)
    if header_size == 12:
        return struct.unpack_from("<HH", head, 18)
    width, height = struct.unpack_from("<ii", head, 18)
    return abs(width), abs(height)


def _jpeg_header_segments(stream: BinaryIO) -> Iterator[tuple[int, int]]:
    """Yield `(marker, payload_length)` for each JPEG segment before the first scan.

    While the consumer holds a segment, the stream is at the start of its
    payload; the consumer may read part of it. The walk stops at SOS, EOI or
    malformed data.
    """
    stream.seek(2)
    while True:
        byte = stream.read(1)
        if byte != b"\xff":
            return
        while byte == b"\xff":
            byte = stream.read(1)
        if not byte:
            return
        marker = byte[0]
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI, 0xD8):
            return
        length_bytes = stream.read(2)
        if len(length_bytes) < 2:
            return
        (length,) = struct.unpack(">H", length_bytes)
        if length < 2:
            return
        payload_start = stream.tell()
        yield marker, length - 2
        stream.seek(payload_start + length - 2)


def _jpeg_exif_block(stream: BinaryIO) -> bytes | None:
    """Return the TIFF-structured EXIF data of a JPEG's APP1 segment, or None."""
    for marker, length in _jpeg_header_segments(stream):
        if marker == _JPEG_APP1 and length > len(_EXIF_HEADER):
            payload = stream.read(length)
            if payload.startswith(_EXIF_HEADER):
                return payload[len(_EXIF_HEADER) :]
    return None


def _png_exif_block(stream: BinaryIO) -> bytes | None:
    """Return the contents of a PNG eXIf chunk that precedes the image data, or None."""
    stream.seek(len(_PNG_SIGNATURE))
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return None
        length, chunk_type = struct.unpack(">I4s", header)
        if chunk_type in (b"IDAT", b"IEND"):
            return None
        if chunk_type == b"eXIf":
            payload = stream.read(length)
            # Some writers keep the JPEG APP1 prefix inside the chunk.
            return payload[len(_EXIF_HEADER) :] if payload.startswith(_EXIF_HEADER) else payload
        stream.seek(length + 4, os.SEEK_CUR)


def _tiff_orientation(tiff: bytes) -> int | None:
    """Read the orientation entry of IFD0 in a TIFF-structured EXIF block."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    magic, ifd_offset = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd_offset + 2 > len(tiff):
        return None
    (entry_count,) = struct.unpack_from(order + "H", tiff, ifd_offset)
    for index in range(entry_count):
        entry = ifd_offset + 2 + 12 * index
        if entry + 12 > len(tiff):
            return None
        tag, field_type, count = struct.unpack_from(order + "HHI", tiff, entry)
        if tag != _ORIENTATION_TAG:
            continue
        # Orientation is one SHORT (type 3), stored in the first two bytes of
        # the value field.
        if field_type != 3 or count < 1:
            return None
        (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
        return value
    return None
