"""Convert COCO captions (2014 or 2017 release) to a manifest.

Expected files:

    captions_<split><year>.json  {"images": [{"id", "file_name", "width", "height"}],
                                  "annotations": [{"image_id", "caption"}]}
    images folder                the image files named by "file_name"

COCO captions carry no boxes, so every record has `"queries": []`; the
captions are used for training only. Captions are whitespace-normalised and
kept in file order. Because there are no boxes, an image whose stored size
differs from the JSON is kept with the file's size, and the repair is counted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mmgrounding.data.converters.common import (
    ConversionReport,
    ImageFolder,
    check_split_name,
    normalise_whitespace,
    read_json,
    require_dir,
    require_file,
    write_outputs,
)
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)


def convert_coco(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    check_images: str = "decode",
    copy_images: bool = False,
) -> dict[str, Any]:
    """Convert a COCO captions file and return its summary.

    `split` names the output (OUT/<split>.jsonl); every image of the
    captions file is converted.
    """
    split = check_split_name(split)
    annotations_path = require_file(annotations, "COCO captions file")
    images_dir = require_dir(images, "COCO images folder")
    data = read_json(annotations_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(
            f"{annotations_path}: expected a COCO captions file with 'images' and 'annotations' lists"
        )
    out_dir = Path(out)
    report = ConversionReport("coco", split)

    captions_by_image: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            report.skip("captions", "annotation_invalid", repr(annotation)[:200])
            continue
        caption = normalise_whitespace(str(annotation.get("caption") or ""))
        if not caption:
            report.skip("captions", "empty_caption", f"image {annotation['image_id']}")
            continue
        captions_by_image.setdefault(str(annotation["image_id"]), []).append(caption)

    folder = ImageFolder(out_dir, images_dir, report, check=check_images, copy=copy_images)
    records = []
    seen: set[str] = set()
    with Progress(len(data["images"]), f"converting coco {split}") as progress:
        for entry in data["images"]:
            record = _convert_image(entry, captions_by_image, seen, folder, report)
            if record is not None:
                records.append(record)
            progress.update(1)
    return write_outputs(out_dir, records, report)


def _convert_image(
    entry: Any,
    captions_by_image: dict[str, list[str]],
    seen: set[str],
    folder: ImageFolder,
    report: ConversionReport,
) -> dict[str, Any] | None:
    try:
        image_id = str(entry["id"])
        file_name = str(entry["file_name"])
        expected = (int(entry["width"]), int(entry["height"]))
    except (KeyError, TypeError, ValueError):
        report.skip("images", "entry_invalid", repr(entry)[:200])
        return None
    if image_id in seen:
        report.skip("images", "duplicate_image_id", f"image {image_id}")
        return None
    seen.add(image_id)
    captions = captions_by_image.get(image_id)
    if not captions:
        report.skip("images", "no_captions", f"image {image_id}")
        return None
    size = folder.add(file_name, expected, repair_size=True)
    if size is None:
        return None
    report.keep("captions", len(captions))
    return {
        "image_id": int(image_id) if image_id.isdigit() else image_id,
        "image": folder.manifest_path(file_name),
        "width": size[0],
        "height": size[1],
        "captions": captions,
        "queries": [],
    }
