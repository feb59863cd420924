"""Write tiny dataset sources in the exact public release formats, for converter tests.

Images are real files encoded with OpenCV (and Pillow, a matplotlib
dependency, for CMYK JPEG and GIF); annotation files follow the layouts of
COCO captions, Visual Genome, Flickr30k Entities, RefClef (refer toolkit)
and the MG release.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


# Images -------------------------------------------------------------------

def pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Return a BGR uint8 [height, width, 3] picture with some structure."""
    generator = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = generator.integers(0, 255, 3, dtype=np.uint8)
    image[:, width // 2 :] = generator.integers(0, 255, 3, dtype=np.uint8)
    return image


def encode_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels(width, height, seed))
    assert ok
    return data.tobytes()


def jpeg_with_exif_orientation(data: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment with one Orientation entry after the JPEG SOI marker."""
    # Big-endian TIFF header, one IFD entry: tag 0x0112, type SHORT, count 1.
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def write_image(path: Path, width: int, height: int, kind: str = "jpeg", seed: int = 0) -> Path:
    """Write an image file of `kind` at `path` and return the path.

    Kinds: jpeg, png, png_alpha, gray_jpeg, cmyk_jpeg, gif (written under
    whatever name `path` has), exif_rotated (a JPEG whose stored grid is
    `width` x `height`, tagged orientation 6), empty (zero bytes),
    truncated (first half of a JPEG).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jpeg":
        path.write_bytes(encode_jpeg(width, height, seed))
    elif kind == "exif_rotated":
        path.write_bytes(jpeg_with_exif_orientation(encode_jpeg(width, height, seed), 6))
    elif kind == "png":
        path.write_bytes(cv2.imencode(".png", pixels(width, height, seed))[1].tobytes())
    elif kind == "png_alpha":
        image = np.dstack([pixels(width, height, seed), np.full((height, width), 128, np.uint8)])
        path.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    elif kind == "gray_jpeg":
        gray = cv2.cvtColor(pixels(width, height, seed), cv2.COLOR_BGR2GRAY)
        path.write_bytes(cv2.imencode(".jpg", gray)[1].tobytes())
    elif kind in ("cmyk_jpeg", "gif"):
        from PIL import Image

        rgb = Image.fromarray(pixels(width, height, seed)[:, :, ::-1].copy())
        if kind == "cmyk_jpeg":
            rgb.convert("CMYK").save(path, format="JPEG")
        else:
            rgb.save(path, format="GIF")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = encode_jpeg(width, height, seed)
        path.write_bytes(data[: len(data) // 2])
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    return path


# Python 2 pickles -----------------------------------------------------------

def python2_pickle(value: Any) -> bytes:
    """Encode plain data as a protocol 2 pickle the way Python 2 writes it.

    Python 2 `str` values are 8-bit strings (opcode SHORT_BINSTRING or
    BINSTRING), which Python 3's pickle cannot produce; pass `bytes` for
    them and `str` for Python 2 `unicode`.
    """
    out = bytearray(b"\x80\x02")
    _python2_value(value, out)
    out += b"."
    return bytes(out)


def _python2_value(value: Any, out: bytearray) -> None:
    if value is None:
        out += b"N"
    elif isinstance(value, bool):
        out += b"\x88" if value else b"\x89"
    elif isinstance(value, int):
        out += b"J" + struct.pack("<i", value)
    elif isinstance(value, float):
        out += b"G" + struct.pack(">d", value)
    elif isinstance(value, bytes):
        if len(value) < 256:
            out += b"U" + bytes([len(value)]) + value
        else:
            out += b"T" + struct.pack("<i", len(value)) + value
    elif isinstance(value, str):
        encoded = value.encode("utf-8")
        out += b"X" + struct.pack("<I", len(encoded)) + encoded
    elif isinstance(value, list):
        out += b"](" if value else b"]"
        for item in value:
            _python2_value(item, out)
        if value:
            out += b"e"
    elif isinstance(value, dict):
        out += b"}(" if value else b"}"
        for key, item in value.items():
            _python2_value(key, out)
            _python2_value(item, out)
        if value:
            out += b"u"
    else:
        raise TypeError(f"cannot write {type(value).__name__} as a Python 2 pickle")


# Dataset sources ------------------------------------------------------------

def write_coco(root: Path, images: list[dict[str, Any]], captions: list[tuple[int, str]]) -> Path:
    """Write captions_train2014.json; `images` entries need id, file_name, width, height."""
    annotations = [{"id": index + 1, "image_id": image_id, "caption": caption} for index, (image_id, caption) in enumerate(captions)]
    data = {"info": {"year": 2014}, "licenses": [], "images": images, "annotations": annotations}
    path = root / "captions_train2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_visual_genome(root: Path, images: dict[int, tuple[int, int]], regions: dict[int, list[tuple]]) -> tuple[Path, Path]:
    """Write region_descriptions.json and image_data.json (v1.2 layout).

    `images` maps image id -> (width, height); `regions` maps image id -> list
    of (phrase, x, y, width, height).
    """
    region_id = 0
    entries = []
    for image_id, image_regions in regions.items():
        items = []
        for phrase, x, y, w, h in image_regions:
            region_id += 1
            items.append({"region_id": region_id, "width": w, "height": h, "image_id": image_id, "phrase": phrase, "y": y, "x": x})
        entries.append({"regions": items, "id": image_id})
    image_data = [
        {"width": w, "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg", "height": h,
         "image_id": image_id, "coco_id": None, "flickr_id": None}
        for image_id, (w, h) in images.items()
    ]
    root.mkdir(parents=True, exist_ok=True)
    regions_path = root / "region_descriptions.json"
    image_data_path = root / "image_data.json"
    regions_path.write_text(json.dumps(entries), encoding="utf-8")
    image_data_path.write_text(json.dumps(image_data), encoding="utf-8")
    return regions_path, image_data_path


def flickr30k_xml(filename: str, width: int, height: int, objects: list[dict[str, Any]]) -> str:
    """Return an Annotations/<id>.xml text in the Flickr30k Entities layout.

    Each object is {"names": [ids], "box": (xmin, ymin, xmax, ymax) 1-based}
    or {"names": [ids], "nobndbox": 1, "scene": 0 or 1}.
    """
    lines = [
        "<annotation>",
        f"  <filename>{filename}</filename>",
        "  <size>",
        f"    <width>{width}</width>",
        f"    <height>{height}</height>",
        "    <depth>3</depth>",
        "  </size>",
    ]
    for item in objects:
        lines.append("  <object>")
        for name in item["names"]:
            lines.append(f"    <name>{name}</name>")
        if "box" in item:
            xmin, ymin, xmax, ymax = item["box"]
            lines += [
                "    <bndbox>",
                f"      <xmin>{xmin}</xmin>",
                f"      <ymin>{ymin}</ymin>",
                f"      <xmax>{xmax}</xmax>",
                f"      <ymax>{ymax}</ymax>",
                "    </bndbox>",
            ]
        else:
            lines.append(f"    <nobndbox>{item.get('nobndbox', 1)}</nobndbox>")
            lines.append(f"    <scene>{item.get('scene', 0)}</scene>")
        lines.append("  </object>")
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_flickr30k(root: Path, split: str, images: dict[str, dict[str, Any]]) -> Path:
    """Write Sentences/, Annotations/ and <split>.txt under `root`.

    `images` maps image id -> {"sentences": [marked-up lines], "width",
    "height", "objects": [...] as in `flickr30k_xml`}.
    """
    (root / "Sentences").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for image_id, item in images.items():
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(item["sentences"]) + "\n", encoding="utf-8")
        xml = flickr30k_xml(f"{image_id}.jpg", item["width"], item["height"], item["objects"])
        (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
    (root / f"{split}.txt").write_text("\n".join(images) + "\n", encoding="utf-8")
    return root


def write_referit(root: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]], refs: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write refs(unc).p as Python 2 writes it, and instances.json.

    `refs` use Python `str` for text; they are stored as Python 2 8-bit
    strings (UTF-8 bytes), like the released file.
    """
    def as_python2(value: Any) -> Any:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, list):
            return [as_python2(item) for item in value]
        if isinstance(value, dict):
            return {as_python2(key): as_python2(item) for key, item in value.items()}
        return value

    root.mkdir(parents=True, exist_ok=True)
    refs_path = root / "refs(unc).p"
    refs_path.write_bytes(python2_pickle(as_python2(refs)))
    instances = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "man", "supercategory": "humans"}, {"id": 2, "name": "sky", "supercategory": "landscape"}],
    }
    instances_path = root / "instances.json"
    instances_path.write_text(json.dumps(instances), encoding="utf-8")
    return refs_path, instances_path


def iapr_description_file(description: str, image_path: str) -> bytes:
    """Return an IAPR TC-12 .eng file as released: Latin-1 with CRLF line ends."""
    lines = [
        "<DOC>",
        f"<DOCNO>annotations/{image_path}.eng</DOCNO>",
        "<TITLE>Untitled</TITLE>",
        f"<DESCRIPTION>{description}</DESCRIPTION>",
        "<NOTES></NOTES>",
        "<LOCATION>Quito, Ecuador</LOCATION>",
        "<DATE>April 2002</DATE>",
        f"<IMAGE>images/{image_path}.jpg</IMAGE>",
        f"<THUMBNAIL>thumbnails/{image_path}.jpg</THUMBNAIL>",
        "</DOC>",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def write_mg_legacy(root: Path, images: dict[str, bytes], annotations: dict[str, Any]) -> tuple[Path, Path]:
    """Write an LMDB image store and a protocol 4 annotation pickle as the MG release does."""
    import lmdb

    lmdb_path = root / "images.lmdb"
    root.mkdir(parents=True, exist_ok=True)
    environment = lmdb.open(str(lmdb_path), map_size=1 << 24, lock=False)
    with environment.begin(write=True) as transaction:
        for key, data in images.items():
            transaction.put(key.encode(), data)
    environment.close()
    pickle_path = root / "annotations" / "test.pickle"
    pickle_path.parent.mkdir(parents=True, exist_ok=True)
    pickle_path.write_bytes(pickle.dumps(annotations, protocol=4))
    return lmdb_path, pickle_path
