"""Tests for mmgrounding.data.images on real files written with OpenCV, Pillow and by hand."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import cv2
import numpy as np
import pytest

from mmgrounding.data.images import (
    ImageError,
    decode_image,
    exif_orientation,
    load_image,
    read_image_size,
)

RED_RGB = (255, 0, 0)
BLUE_RGB = (0, 0, 255)


def _textured_rgb(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random RGB picture, so JPEG keeps it close to the original."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3)


def _write(path, extension: str, rgb_or_gray: np.ndarray, params=()) -> bytes:
    """Encode with OpenCV (which expects BGR) and write the bytes to `path`."""
    image = rgb_or_gray[..., ::-1] if rgb_or_gray.ndim == 3 and rgb_or_gray.shape[2] == 3 else rgb_or_gray
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(image), list(params))
    assert ok
    data = encoded.tobytes()
    path.write_bytes(data)
    return data


def _gif_bytes(indices: np.ndarray, palette: list[tuple[int, int, int]], background_index: int = 0) -> bytes:
    """Write a GIF89a by hand: a 4-colour global table and one LZW-coded frame.

    With a minimum code size of 2, codes 0-3 are the colours, 4 is Clear and 5
    is End. Sending Clear after every two literal codes keeps every code 3 bits
    wide, because the decoder's table never reaches 8 entries.
    """
    height, width = indices.shape
    table = b"".join(bytes(colour) for colour in (palette + [(0, 0, 0)] * 4)[:4])
    screen = struct.pack("<6sHHBBB", b"GIF89a", width, height, 0x80 | 0x01, background_index, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)

    codes = [4]
    for position, index in enumerate(indices.reshape(-1)):
        if position and position % 2 == 0:
            codes.append(4)
        codes.append(int(index))
    codes.append(5)
    bits = sum(code << (3 * i) for i, code in enumerate(codes))
    packed = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
    blocks = b"".join(bytes([len(packed[i : i + 255])]) + packed[i : i + 255] for i in range(0, len(packed), 255))
    return screen + table + descriptor + bytes([2]) + blocks + b"\x00" + b";"


def _insert_exif_orientation(jpeg: bytes, orientation: int, byte_order: bytes = b"MM") -> bytes:
    """Insert an APP1 Exif segment with one IFD0 entry right after SOI."""
    order = "<" if byte_order == b"II" else ">"
    tiff = byte_order + struct.pack(order + "HI", 42, 8)
    tiff += struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(order + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def _png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", zlib.crc32(chunk_type + payload))


def test_png_round_trip_is_exact_rgb(tmp_path):
    rgb = _textured_rgb()
    path = tmp_path / "picture.png"
    _write(path, ".png", rgb)

    image = load_image(path)

    assert image.dtype == np.uint8
    assert image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image, rgb)
    assert read_image_size(path) == (64, 48)


def test_jpeg_pure_red_decodes_as_rgb(tmp_path):
    path = tmp_path / "red.jpg"
    _write(path, ".jpg", np.full((16, 24, 3), RED_RGB, np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])

    image = load_image(path)

    assert image.shape == (16, 24, 3)
    np.testing.assert_allclose(image[8, 12], RED_RGB, atol=3)
    assert read_image_size(path) == (24, 16)


def test_jpeg_round_trip_close_to_original(tmp_path):
    rgb = _textured_rgb(61, 83)
    for progressive in (0, 1):
        path = tmp_path / f"textured-{progressive}.jpg"
        _write(path, ".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])

        image = load_image(path)

        assert image.shape == (61, 83, 3)
        assert np.abs(image.astype(int) - rgb).mean() < 3.0
        assert read_image_size(path) == (83, 61)


def test_grayscale_jpeg_gives_three_equal_channels(tmp_path):
    gray = _textured_rgb()[..., 0]
    path = tmp_path / "gray.jpg"
    _write(path, ".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95])

    image = load_image(path)

    assert image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    assert np.abs(image[..., 0].astype(int) - gray).mean() < 3.0


def test_png_alpha_is_dropped(tmp_path):
    rgb = _textured_rgb()
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 32:] = 255
    path = tmp_path / "transparent.png"
    ok, encoded = cv2.imencode(".png", np.dstack([rgb[..., ::-1], alpha]))
    assert ok
    path.write_bytes(encoded.tobytes())

    image = load_image(path)

    # Fully transparent pixels keep their stored colour instead of turning white.
    np.testing.assert_array_equal(image, rgb)


def test_png_16_bit_keeps_high_byte(tmp_path):
    samples = np.random.default_rng(1).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    ok, encoded = cv2.imencode(".png", samples[..., ::-1].copy())
    assert ok
    path.write_bytes(encoded.tobytes())

    image = load_image(path)

    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, (samples >> 8).astype(np.uint8))


def test_bmp_round_trip(tmp_path):
    rgb = _textured_rgb(33, 47)
    path = tmp_path / "picture.bmp"
    _write(path, ".bmp", rgb)

    np.testing.assert_array_equal(load_image(path), rgb)
    assert read_image_size(path) == (47, 33)


def test_gif_under_jpg_name_decodes(tmp_path):
    indices = np.zeros((6, 10), np.uint8)
    indices[:, 5:] = 1
    path = tmp_path / "really-a-gif.jpg"
    path.write_bytes(_gif_bytes(indices, [RED_RGB, BLUE_RGB]))

    image = load_image(path)

    assert image.shape == (6, 10, 3)
    np.testing.assert_array_equal(image[:, :5], np.full((6, 5, 3), RED_RGB, np.uint8))
    np.testing.assert_array_equal(image[:, 5:], np.full((6, 5, 3), BLUE_RGB, np.uint8))
    assert read_image_size(path) == (10, 6)
    assert exif_orientation(path) is None


def test_gif_first_frame_of_animation(tmp_path):
    pil_image = pytest.importorskip("PIL.Image")
    frames = [pil_image.new("RGB", (12, 8), RED_RGB), pil_image.new("RGB", (12, 8), BLUE_RGB)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])

    image = load_image(path)

    np.testing.assert_array_equal(image, np.full((8, 12, 3), RED_RGB, np.uint8))


def test_gif_rejected_by_opencv_uses_fallback(tmp_path):
    """A background index beyond the colour table is legal but OpenCV 5.1 rejects it."""
    pytest.importorskip("PIL.Image")
    indices = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    data = _gif_bytes(indices, [RED_RGB, BLUE_RGB], background_index=255)
    without_trailer = tmp_path / "no-trailer.gif"
    without_trailer.write_bytes(_gif_bytes(indices, [RED_RGB, BLUE_RGB])[:-1])
    path = tmp_path / "odd-background.gif"
    path.write_bytes(data)

    for gif_path in (path, without_trailer):
        image = load_image(gif_path)

        assert image.shape == (2, 3, 3)
        np.testing.assert_array_equal(image[0, 0], RED_RGB)
        np.testing.assert_array_equal(image[0, 1], BLUE_RGB)


def test_gif_cut_inside_frame_rejected(tmp_path):
    indices = np.random.default_rng(2).integers(0, 4, (40, 40)).astype(np.uint8)
    data = _gif_bytes(indices, [RED_RGB, BLUE_RGB, (0, 255, 0), (9, 9, 9)])
    path = tmp_path / "cut.gif"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageError, match="cut.gif"):
        load_image(path)


def test_cmyk_jpeg_colours(tmp_path):
    pil_image = pytest.importorskip("PIL.Image")
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :16] = RED_RGB
    rgb[:, 16:] = (40, 160, 220)
    path = tmp_path / "cmyk.jpg"
    pil_image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
    # Pillow writes the Adobe APP14 segment that marks inverted CMYK values.
    assert b"Adobe" in path.read_bytes()

    image = load_image(path)

    assert image.shape == (16, 32, 3)
    np.testing.assert_allclose(image[8, 4], RED_RGB, atol=6)
    np.testing.assert_allclose(image[8, 28], (40, 160, 220), atol=6)
    assert read_image_size(path) == (32, 16)


def test_zero_byte_file_rejected(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    with pytest.raises(ImageError, match="empty.jpg") as raised:
        load_image(path)
    assert raised.value.reason == "empty"
    with pytest.raises(ImageError, match="empty.jpg"):
        read_image_size(path)


def test_truncated_jpeg_rejected(tmp_path):
    data = _write(tmp_path / "full.jpg", ".jpg", _textured_rgb(120, 160))
    for name, cut in (("half.jpg", len(data) // 2), ("no-eoi.jpg", len(data) - 2)):
        path = tmp_path / name
        path.write_bytes(data[:cut])

        with pytest.raises(ImageError, match=name) as raised:
            load_image(path)
        assert raised.value.reason == "truncated"


def test_jpeg_with_trailing_bytes_accepted(tmp_path):
    data = _write(tmp_path / "full.jpg", ".jpg", _textured_rgb())
    path = tmp_path / "trailing.jpg"
    path.write_bytes(data + b"\x00" * 16)

    assert load_image(path).shape == (48, 64, 3)


def test_truncated_png_and_bmp_rejected(tmp_path):
    for extension in (".png", ".bmp"):
        data = _write(tmp_path / f"full{extension}", extension, _textured_rgb())
        path = tmp_path / f"half{extension}"
        path.write_bytes(data[: len(data) // 2])

        with pytest.raises(ImageError, match=f"half{extension}"):
            load_image(path)


def test_missing_file_rejected(tmp_path):
    path = tmp_path / "absent.jpg"

    with pytest.raises(ImageError, match="absent.jpg") as raised:
        load_image(path)
    assert raised.value.reason == "missing"
    with pytest.raises(ImageError, match="absent.jpg"):
        read_image_size(path)
    with pytest.raises(ImageError, match="absent.jpg"):
        exif_orientation(path)


def test_directory_rejected(tmp_path):
    folder = tmp_path / "folder.jpg"
    folder.mkdir()

    with pytest.raises(ImageError, match="folder.jpg") as raised:
        load_image(folder)
    assert raised.value.reason == "not_a_file"
    with pytest.raises(ImageError, match="folder.jpg"):
        read_image_size(folder)


def test_text_file_named_jpg_rejected(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n", encoding="utf-8")

    with pytest.raises(ImageError, match="notes.jpg") as raised:
        load_image(path)
    assert raised.value.reason == "unsupported_format"
    with pytest.raises(ImageError, match="notes.jpg"):
        read_image_size(path)


def test_non_ascii_path(tmp_path):
    rgb = _textured_rgb()
    path = tmp_path / "café_图片.jpg"
    _write(path, ".png", rgb)

    np.testing.assert_array_equal(load_image(path), rgb)
    assert read_image_size(path) == (64, 48)


def test_exif_orientation_keeps_stored_grid(tmp_path):
    rgb = _textured_rgb(30, 50)
    data = _write(tmp_path / "plain.jpg", ".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    plain = load_image(tmp_path / "plain.jpg")
    for byte_order in (b"MM", b"II"):
        path = tmp_path / f"rotated-{byte_order.decode()}.jpg"
        path.write_bytes(_insert_exif_orientation(data, 6, byte_order))

        image = load_image(path)

        assert exif_orientation(path) == 6
        assert image.shape == (30, 50, 3)
        np.testing.assert_array_equal(image, plain)
        assert read_image_size(path) == (50, 30)
    assert exif_orientation(tmp_path / "plain.jpg") is None


def test_exif_orientation_in_png(tmp_path):
    data = _write(tmp_path / "plain.png", ".png", _textured_rgb())
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, 3, 0) + struct.pack("<I", 0)
    # eXIf must precede the image data, so it goes right after IHDR (8 + 25 bytes).
    path = tmp_path / "rotated.png"
    path.write_bytes(data[:33] + _png_chunk(b"eXIf", tiff) + data[33:])

    assert exif_orientation(path) == 3
    assert load_image(path).shape == (48, 64, 3)


def test_decode_image_matches_load_image(tmp_path):
    data = _write(tmp_path / "picture.jpg", ".jpg", _textured_rgb())

    np.testing.assert_array_equal(decode_image(data), load_image(tmp_path / "picture.jpg"))
    with pytest.raises(ImageError, match="upload.bin"):
        decode_image(b"GIF89a", source="upload.bin")


def test_image_error_pickles():
    error = ImageError("a/b.jpg", "truncated", "JPEG data ends early")

    copy = pickle.loads(pickle.dumps(error))

    assert str(copy) == "a/b.jpg: JPEG data ends early"
    assert copy.reason == "truncated"
    assert isinstance(copy, ValueError)


def test_pillow_written_formats_match(tmp_path):
    """Palette and LA PNG, palette BMP and RGBA PNG as Pillow writes them."""
    pil_image = pytest.importorskip("PIL.Image")
    rgb = _textured_rgb()
    for mode, extension in (("P", "png"), ("LA", "png"), ("P", "bmp"), ("RGBA", "png")):
        path = tmp_path / f"{mode}.{extension}"
        converted = pil_image.fromarray(rgb).convert(mode)
        converted.save(path)
        expected = np.asarray(converted.convert("RGB"))

        np.testing.assert_array_equal(load_image(path), expected, err_msg=str(path))
        assert read_image_size(path) == (64, 48)


def test_gif_bytes_helper_is_standard(tmp_path):
    """The hand-written GIF also decodes with Pillow, so the test helper itself is valid."""
    pil_image = pytest.importorskip("PIL.Image")
    indices = np.random.default_rng(3).integers(0, 4, (7, 9)).astype(np.uint8)
    palette = [RED_RGB, BLUE_RGB, (0, 255, 0), (9, 9, 9)]
    data = _gif_bytes(indices, palette)

    with pil_image.open(io.BytesIO(data)) as picture:
        expected = np.asarray(picture.convert("RGB"))

    np.testing.assert_array_equal(expected, np.array(palette, np.uint8)[indices])
    np.testing.assert_array_equal(decode_image(data), expected)
