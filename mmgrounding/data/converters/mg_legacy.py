"""Convert the pre-processed data of the MG paper's release (LMDB + pickle).

The authors' pre-processing (hassanhub/MultiGrounding, data/data_utils.py)
writes, per dataset and split:

    images.lmdb        an LMDB store: key = image id as UTF-8, value = the
                       image re-encoded as JPEG with OpenCV
    <split>.pickle     a dict {image id (str): {"size": (height, width, 3) or
                       [height, width], "queries": [...], "captions": [...],
                       "annotations": [query dicts]}}

Each query dict has "query" (text), "bbox" (a list of boxes), "category" (a
set), "idx" (word indices) and, for Flickr30k only, "source_sen" (the
cleaned caption) and "obj_id" (the entity id). The pickle is read with the
restricted unpickler; images are extracted into OUT/images/ with the bytes
stored in the LMDB, unchanged.

The box corner convention differs by dataset in that code, so it is
converted per dataset (detected from the annotations, or given):

    flickr30k      Flickr30k Entities XML values, 1-based inclusive: minus 1
    visual_genome  [x, y, x + w, y + h] after clamping x, y to >= 1: max minus 1
    referit        [x, y, x + w, y + h]: max minus 1
    coco           captions only; object boxes are not used, queries = []

NOTE: this layout comes from the published pre-processing code, not from a
released pickle, because the authors had not uploaded their pre-processed data
when that code was published. Fields are read defensively, and a layout that
does not match fails with the file name. Reading the LMDB store needs the `lmdb` package, imported only here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from mmgrounding.data.converters.common import (
    ConversionReport,
    ImageFolder,
    check_split_name,
    clip_box,
    image_sort_key,
    normalise_whitespace,
    require_file,
    write_atomic,
    write_outputs,
)
from mmgrounding.data.safe_pickle import load_pickle
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)

DATASETS = ("flickr30k", "visual_genome", "referit", "coco")
LMDB_REQUIREMENT = "lmdb==3.0.0"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Leading bytes of the formats OpenCV's encoder writes, and their extensions.
_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"))
_NOTVISUAL_ID = "0"


def open_lmdb(path: str | os.PathLike):
    """Open an LMDB store read-only and return its environment.

    `path` is the store's folder (holding data.mdb) or the data file itself.
    """
    try:
        import lmdb
    except ImportError:
        raise ImportError(
            f"reading the MG release's LMDB image store needs the lmdb package; "
            f"install it with `pip install {LMDB_REQUIREMENT}`"
        ) from None
    path = Path(path)
    if path.is_dir():
        if not (path / "data.mdb").is_file():
            raise FileNotFoundError(f"data.mdb not found in {path}; pass the LMDB folder of the release")
        subdir = True
    elif path.is_file():
        subdir = False
    else:
        raise FileNotFoundError(f"LMDB store {path} not found")
    return lmdb.open(str(path), readonly=True, lock=False, subdir=subdir, readahead=False, max_readers=1)


def read_annotations(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read the release's annotation pickle, a dict keyed by image id."""
    path = require_file(path, "MG annotation pickle")
    data = load_pickle(path, allow_numpy=True)
    if not isinstance(data, dict) or not all(isinstance(entry, dict) for entry in data.values()):
        raise ValueError(f"{path}: expected a dict of image id -> annotation dict, got {type(data).__name__}")
    return {str(key): entry for key, entry in data.items()}


def detect_dataset(annotations: dict[str, dict[str, Any]], path: str | os.PathLike = "") -> str:
    """Tell which dataset the annotation pickle came from, from its query fields."""
    for entry in annotations.values():
        for query in entry.get("annotations") or []:
            if not isinstance(query, dict):
                continue
            if "source_sen" in query:
                return "flickr30k"
            if "ref_id" in query:
                return "referit"
            if "supercategory" in query or "query" not in query:
                return "coco"
            if set(query.get("category") or ()) == {"All"}:
                return "visual_genome"
    raise ValueError(
        f"{path}: cannot tell which dataset this annotation pickle is from; "
        f"pass --dataset with one of {', '.join(DATASETS)}"
    )


def convert_mg_legacy(
    lmdb: str | os.PathLike,
    annotations: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    dataset: str | None = None,
    check_images: str = "decode",
) -> dict[str, Any]:
    """Convert one split of the MG release's LMDB + pickle data and return its summary.

    Writes OUT/<split>.jsonl, OUT/<split>.summary.json and the images under
    OUT/images/.
    """
    split = check_split_name(split)
    entries = read_annotations(annotations)
    if dataset is None:
        dataset = detect_dataset(entries, annotations)
    elif dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is invalid; choose one of {', '.join(DATASETS)}")
    logger.info("mg-legacy %s: %d images of %s", split, len(entries), dataset)
    environment = open_lmdb(lmdb)
    out_dir = Path(out)
    report = ConversionReport("mg_legacy", split)
    report.extra["dataset"] = dataset
    folder = ImageFolder(out_dir, None, report, check=check_images)
    records = []
    try:
        with environment.begin(write=False) as transaction, Progress(
            len(entries), f"converting mg-legacy {split}"
        ) as progress:
            for key in sorted(entries, key=image_sort_key):
                record = _convert_image(key, entries[key], dataset, transaction, folder, report)
                if record is not None:
                    records.append(record)
                progress.update(1)
    finally:
        environment.close()
    return write_outputs(out_dir, records, report)


def _convert_image(
    key: str,
    entry: dict[str, Any],
    dataset: str,
    transaction: Any,
    folder: ImageFolder,
    report: ConversionReport,
) -> dict[str, Any] | None:
    if not _SAFE_KEY.match(key):
        report.skip("images", "unsafe_key", repr(key))
        return None
    expected = _entry_size(entry)
    if expected is None:
        report.skip("images", "size_invalid", f"image {key}: size {entry.get('size')!r}")
        return None
    relative = _extract_image(key, transaction, folder.root, report)
    if relative is None:
        return None
    size = folder.add(relative, expected)
    if size is None:
        return None
    width, height = size

    captions = [normalise_whitespace(str(c)) for c in entry.get("captions") or [] if normalise_whitespace(str(c))]
    queries = []
    if dataset == "coco":
        if not captions:
            captions = [normalise_whitespace(str(q)) for q in entry.get("queries") or [] if normalise_whitespace(str(q))]
    else:
        for annotation in entry.get("annotations") or []:
            query = _convert_query(annotation, dataset, captions, width, height, key, report)
            if query is not None:
                queries.append(query)
    report.keep("captions", len(captions))
    record: dict[str, Any] = {
        "image_id": int(key) if key.isdigit() else key,
        "image": folder.manifest_path(relative),
        "width": width,
        "height": height,
        "queries": queries,
    }
    if captions:
        record["captions"] = captions
    return record


def _entry_size(entry: dict[str, Any]) -> tuple[int, int] | None:
    size = entry.get("size")
    try:
        height, width = int(size[0]), int(size[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if height <= 0 or width <= 0:
        return None
    return width, height


def _extract_image(key: str, transaction: Any, images_root: Path, report: ConversionReport) -> str | None:
    data = transaction.get(key.encode("utf-8"))
    if data is None:
        report.skip("images", "image_missing_in_lmdb", f"key {key!r}")
        return None
    data = bytes(data)
    extension = next((ext for signature, ext in _SIGNATURES if data.startswith(signature)), None)
    if extension is None:
        detail = f"key {key!r}: {len(data)} bytes starting {data[:8]!r}"
        report.skip("images", "image_unreadable", detail)
        return None
    relative = f"{key}{extension}"
    destination = images_root / relative
    if not (destination.is_file() and destination.read_bytes() == data):
        write_atomic(destination, data)
    return relative


def _convert_query(
    annotation: Any,
    dataset: str,
    captions: list[str],
    width: int,
    height: int,
    key: str,
    report: ConversionReport,
) -> dict[str, Any] | None:
    if not isinstance(annotation, dict):
        report.skip("queries", "annotation_invalid", f"image {key}")
        return None
    text = normalise_whitespace(str(annotation.get("query") or ""))
    if not text:
        report.skip("queries", "empty_query", f"image {key}")
        return None
    categories = sorted(str(c) for c in annotation.get("category") or () if str(c) != "All")
    query: dict[str, Any] = {"text": text, "boxes": _convert_boxes(annotation, dataset, width, height, key, report)}
    if categories:
        query["categories"] = categories

    if dataset == "flickr30k":
        if not _place_in_caption(query, annotation, captions, key, report):
            return None
        entity_id = str(annotation.get("obj_id", ""))
        query["entity_id"] = entity_id
        if entity_id == _NOTVISUAL_ID or "notvisual" in categories:
            query["skip_reason"] = "notvisual"
            report.keep("queries_notvisual")
            return query
        if not query["boxes"]:
            query["skip_reason"] = "no_box"
            report.keep("queries_no_box")
            return query
    elif not query["boxes"]:
        report.skip("queries", "no_box", f"image {key} query {text!r}")
        return None
    report.keep("queries")
    return query


def _place_in_caption(
    query: dict[str, Any], annotation: dict[str, Any], captions: list[str], key: str, report: ConversionReport
) -> bool:
    """Add "sentence" and "tokens" to a Flickr30k query; False when they do not fit."""
    source = normalise_whitespace(str(annotation.get("source_sen") or ""))
    if source not in captions:
        report.skip("queries", "source_sentence_not_in_captions", f"image {key}: {source!r}")
        return False
    sentence = captions.index(source)
    try:
        tokens = [int(index) for index in annotation.get("idx") or []]
    except (TypeError, ValueError):
        tokens = []
    words = captions[sentence].split()
    if not tokens or not all(0 <= index < len(words) for index in tokens):
        report.skip("queries", "tokens_out_of_range", f"image {key}: idx {annotation.get('idx')!r}")
        return False
    query["sentence"] = sentence
    query["tokens"] = tokens
    return True


def _convert_boxes(
    annotation: dict[str, Any], dataset: str, width: int, height: int, key: str, report: ConversionReport
) -> list[list[int]]:
    # Flickr30k boxes are 1-based XML corners; the others end one pixel past the box.
    shift = (1, 1, 1, 1) if dataset == "flickr30k" else (0, 0, 1, 1)
    boxes: list[list[int]] = []
    for raw in annotation.get("bbox") or []:
        try:
            box = [int(round(float(value))) - offset for value, offset in zip(raw, shift, strict=True)]
        except (TypeError, ValueError):
            report.skip("boxes", "box_invalid", f"image {key}: {raw!r}")
            continue
        clipped, changed = clip_box(box, width, height)
        if clipped is None:
            report.skip("boxes", "box_outside_image", f"image {key}: {box} in a {width}x{height} image")
            continue
        if changed:
            report.repair("boxes", "box_clipped_to_image", f"image {key}: {box} -> {clipped}")
        if clipped not in boxes:
            boxes.append(clipped)
    return boxes
