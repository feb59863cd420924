"""Convert Visual Genome region descriptions (v1.0 to v1.4) to a manifest.

Expected files:

    region_descriptions.json  [{"id" or "image_id": int, "regions": [{"region_id",
                              "image_id", "phrase", "x", "y", "width", "height"}]}]
    image_data.json           [{"image_id" or "id", "width", "height", "url",
                              "coco_id", "flickr_id"}]
    images folder             <image id>.jpg, directly or under VG_100K/ or VG_100K_2/
    split file                a pickled dict of id sets per split (the split
                              published with the MG paper: {"train": set, "test": set}),
                              or a JSON list or text file of ids

Each region phrase, whitespace-normalised, becomes a query when it has 1 to 9
words; identical phrases of one image merge into one query with several
boxes (the evaluation protocol of Akbari et al., CVPR 2019). A region box
(x, y, width, height) becomes [x, y, x + width - 1, y + height - 1], clipped to
the image; regions with negative coordinates or beyond the border are clipped
and counted, and regions with no overlap are dropped and counted.
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
    clip_box,
    image_sort_key,
    normalise_whitespace,
    read_id_list,
    read_json,
    require_dir,
    require_file,
    write_outputs,
    xywh_to_box,
)
from mmgrounding.data.safe_pickle import load_pickle
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)

MIN_PHRASE_WORDS = 1
MAX_PHRASE_WORDS = 9
IMAGE_SUBFOLDERS = ("", "VG_100K", "VG_100K_2")
_PICKLE_SUFFIXES = (".pickle", ".pkl", ".p")


def read_split_ids(path: str | os.PathLike, split: str) -> list[str]:
    """Read the image ids of `split` from a split file.

    A pickle must hold a dict that maps split names to collections of ids
    (read with the restricted unpickler); `split` selects one of them. A JSON
    list or a text file with one id per line is the split itself, whatever
    `split` is called. Ids come back as strings, sorted numerically.
    """
    path = require_file(path, "Visual Genome split file")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        splits = load_pickle(path)
        if not isinstance(splits, dict):
            raise ValueError(
                f"{path}: expected a pickled dict of split name -> image ids, got {type(splits).__name__}"
            )
        if split not in splits:
            names = ", ".join(sorted(map(str, splits)))
            raise ValueError(f"{path}: split {split!r} not found; the file contains {names}")
        ids = splits[split]
        if not isinstance(ids, (set, frozenset, list, tuple)):
            raise ValueError(f"{path}: split {split!r} is a {type(ids).__name__}, not a collection of ids")
        ids = [str(image_id) for image_id in ids]
    else:
        ids = read_id_list(path)
    return sorted(set(ids), key=image_sort_key)


def _entry_id(entry: dict[str, Any]) -> str | None:
    for key in ("image_id", "id"):
        if key in entry and entry[key] is not None:
            return str(entry[key])
    return None


def read_image_data(path: Path) -> dict[str, dict[str, Any]]:
    """Index image_data.json by image id (as a string)."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of image entries")
    images = {}
    for entry in entries:
        image_id = _entry_id(entry) if isinstance(entry, dict) else None
        if image_id is not None:
            images[image_id] = entry
    return images


def read_regions(path: Path, wanted: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Index the regions of region_descriptions.json by image id, for `wanted` ids only.

    NOTE: the whole JSON file is parsed in memory, which for the full v1.2
    release (about 700 MB of JSON) takes several GB of RAM.
    """
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of per-image region entries")
    regions: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("regions"), list):
            continue
        image_id = _entry_id(entry)
        if image_id is None and entry["regions"]:
            image_id = str(entry["regions"][0].get("image_id"))
        if image_id in wanted:
            regions.setdefault(image_id, []).extend(entry["regions"])
    return regions


def find_image(images_dir: Path, image_id: str) -> str | None:
    """Return the path of <image_id>.jpg relative to `images_dir`, or None."""
    for subfolder in IMAGE_SUBFOLDERS:
        relative = f"{subfolder}/{image_id}.jpg" if subfolder else f"{image_id}.jpg"
        if (images_dir / relative).exists():
            return relative
    return None


def convert_visual_genome(
    regions: str | os.PathLike,
    image_data: str | os.PathLike,
    images: str | os.PathLike,
    splits: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    check_images: str = "decode",
    copy_images: bool = False,
) -> dict[str, Any]:
    """Convert one split of Visual Genome and return its summary.

    Writes OUT/<split>.jsonl and OUT/<split>.summary.json.
    """
    split = check_split_name(split)
    regions_path = require_file(regions, "Visual Genome region_descriptions.json")
    image_data_path = require_file(image_data, "Visual Genome image_data.json")
    images_dir = require_dir(images, "Visual Genome images folder")
    image_ids = read_split_ids(splits, split)
    logger.info("visual genome %s: %d image ids in %s", split, len(image_ids), splits)
    metadata = read_image_data(image_data_path)
    regions_by_image = read_regions(regions_path, set(image_ids))
    out_dir = Path(out)

    report = ConversionReport("visual_genome", split)
    folder = ImageFolder(out_dir, images_dir, report, check=check_images, copy=copy_images)
    records = []
    with Progress(len(image_ids), f"converting visual_genome {split}") as progress:
        for image_id in image_ids:
            record = _convert_image(image_id, metadata, regions_by_image, images_dir, folder, report)
            if record is not None:
                records.append(record)
            progress.update(1)
    return write_outputs(out_dir, records, report)


def _convert_image(
    image_id: str,
    metadata: dict[str, dict[str, Any]],
    regions_by_image: dict[str, list[dict[str, Any]]],
    images_dir: Path,
    folder: ImageFolder,
    report: ConversionReport,
) -> dict[str, Any] | None:
    if image_id not in metadata:
        report.skip("images", "not_in_image_data", f"image {image_id}")
        return None
    if image_id not in regions_by_image:
        report.skip("images", "not_in_region_descriptions", f"image {image_id}")
        return None
    entry = metadata[image_id]
    try:
        expected = (int(entry["width"]), int(entry["height"]))
    except (KeyError, TypeError, ValueError):
        report.skip("images", "size_missing_in_image_data", f"image {image_id}: {entry!r}")
        return None

    relative = find_image(images_dir, image_id)
    if relative is None:
        report.skip("images", "image_missing", f"{image_id}.jpg not found in {images_dir} or its VG_100K folders")
        return None
    size = folder.add(relative, expected)
    if size is None:
        return None
    width, height = size

    queries = _merge_regions(regions_by_image[image_id], width, height, image_id, report)
    if not queries:
        report.skip("images", "no_usable_region", f"image {image_id}")
        return None
    return {
        "image_id": int(image_id) if image_id.isdigit() else image_id,
        "image": folder.manifest_path(relative),
        "width": width,
        "height": height,
        "queries": queries,
    }


def _merge_regions(
    regions: list[dict[str, Any]], width: int, height: int, image_id: str, report: ConversionReport
) -> list[dict[str, Any]]:
    """Turn an image's regions into queries, one per distinct phrase, in first-seen order."""
    boxes_by_phrase: dict[str, list[list[int]]] = {}
    for region in regions:
        box = _region_box(region, width, height, image_id, report)
        if box is None:
            continue
        phrase = normalise_whitespace(str(region.get("phrase") or ""))
        words = len(phrase.split())
        if words < MIN_PHRASE_WORDS:
            report.skip("regions", "empty_phrase", f"image {image_id} region {region.get('region_id')}")
            continue
        if words > MAX_PHRASE_WORDS:
            report.skip("regions", "phrase_over_9_words")
            continue
        report.keep("regions")
        boxes = boxes_by_phrase.setdefault(phrase, [])
        if box in boxes:
            report.note("duplicate_region_box_dropped")
        else:
            if boxes:
                report.note("region_merged_into_identical_phrase")
            boxes.append(box)
    report.keep("queries", len(boxes_by_phrase))
    return [{"text": phrase, "boxes": boxes} for phrase, boxes in boxes_by_phrase.items()]


def _region_box(
    region: dict[str, Any], width: int, height: int, image_id: str, report: ConversionReport
) -> list[int] | None:
    where = f"image {image_id} region {region.get('region_id')}"
    try:
        box = xywh_to_box(float(region["x"]), float(region["y"]), float(region["width"]), float(region["height"]))
    except (KeyError, TypeError, ValueError):
        report.skip("regions", "box_invalid", where)
        return None
    if box is None:
        report.skip("regions", "box_empty", f"{where}: width {region['width']}, height {region['height']}")
        return None
    clipped, changed = clip_box(box, width, height)
    if clipped is None:
        report.skip("regions", "box_outside_image", f"{where}: {box} in a {width}x{height} image")
        return None
    if changed:
        report.repair("regions", "box_clipped_to_image", f"{where}: {box} -> {clipped}")
    return clipped
