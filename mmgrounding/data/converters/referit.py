"""Convert ReferIt (RefClef, UNC split) referring expressions to a manifest.

Expected files, as released with the `refer` toolkit (Yu et al., ECCV 2016):

    refs(unc).p     a pickled list of refs {"ref_id", "ann_id", "image_id", "split",
                    "category_id", "sentences": [{"sent", "tokens", "raw"}]};
                    a JSON file with the same list is accepted too
    instances.json  COCO style: "images" [{"id", "file_name", "width", "height"}],
                    "annotations" [{"id", "image_id", "bbox": [x, y, width, height]}],
                    "categories" [{"id", "name"}]
    images folder   the saiapr_tc-12 images, at the "file_name" paths

Optional inputs:

    image list      image ids, one a line (the MG paper's referit_<split>_imlist.txt);
                    when given, the split is these images with all their refs,
                    whatever split each ref names
    captions folder the IAPR TC-12 description files <folder>/<image id>.eng
                    (Latin-1, CRLF); their <DESCRIPTION> text, split at ";",
                    becomes the record's captions

Without an image list, the split is the refs whose "split" equals `split`
("test" also takes "testA", "testB" and so on). Each distinct sentence of a
ref becomes one query with the ref's single box, converted from
[x, y, width, height] to inclusive corners and clipped to the image.
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
    read_id_list,
    read_json,
    read_text,
    require_dir,
    require_file,
    write_outputs,
    xywh_to_box,
)
from mmgrounding.data.safe_pickle import decode_bytes, load_pickle
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)

_DESCRIPTION = re.compile(r"<DESCRIPTION>(.*?)</DESCRIPTION>", re.DOTALL | re.IGNORECASE)


def read_refs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the refs list from a pickle (restricted unpickler) or a JSON file.

    The released pickle was written by Python 2, so its strings are read as
    bytes and decoded as UTF-8, falling back to Latin-1.
    """
    path = require_file(path, "ReferIt refs file")
    if path.suffix.lower() == ".json":
        refs = read_json(path)
    else:
        refs = decode_bytes(load_pickle(path, encoding="bytes"))
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path}: expected a list of ref dicts")
    return refs


def read_image_list(path: str | os.PathLike) -> list[str]:
    """Read an image list such as referit_test_imlist.txt (UTF-8 or Latin-1, any line ends)."""
    return read_id_list(require_file(path, "ReferIt image list"))


def read_descriptions(path: Path) -> list[str]:
    """Read the descriptions of one IAPR TC-12 .eng file.

    The <DESCRIPTION> element is found by its tags, not by line or column,
    and its text is split at ";" into whitespace-normalised descriptions.
    """
    match = _DESCRIPTION.search(read_text(path))
    if match is None:
        return []
    parts = (normalise_whitespace(part) for part in match.group(1).split(";"))
    return [part for part in parts if part]


def convert_referit(
    refs: str | os.PathLike,
    instances: str | os.PathLike,
    images: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    image_list: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    check_images: str = "decode",
    copy_images: bool = False,
) -> dict[str, Any]:
    """Convert one ReferIt split and return its summary.

    Writes OUT/<split>.jsonl and OUT/<split>.summary.json.
    """
    split = check_split_name(split)
    all_refs = read_refs(refs)
    instances_path = require_file(instances, "ReferIt instances.json")
    images_dir = require_dir(images, "ReferIt images folder")
    captions_dir = require_dir(captions, "ReferIt captions folder") if captions is not None else None
    data = read_json(instances_path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"{instances_path}: expected 'images' and 'annotations' lists")
    images_by_id = {str(entry["id"]): entry for entry in data["images"] if isinstance(entry, dict) and "id" in entry}
    boxes_by_ann = {
        str(entry["id"]): entry.get("bbox") for entry in data["annotations"] if isinstance(entry, dict) and "id" in entry
    }
    category_names = {
        str(entry["id"]): str(entry["name"])
        for entry in data.get("categories") or []
        if isinstance(entry, dict) and "id" in entry and "name" in entry
    }

    report = ConversionReport("referit", split)
    refs_by_image, image_ids = _select_refs(all_refs, split, image_list, report)
    out_dir = Path(out)
    folder = ImageFolder(out_dir, images_dir, report, check=check_images, copy=copy_images)
    records = []
    with Progress(len(image_ids), f"converting referit {split}") as progress:
        for image_id in image_ids:
            record = _convert_image(
                image_id, refs_by_image.get(image_id, []), images_by_id, boxes_by_ann, category_names,
                captions_dir, folder, report,
            )
            if record is not None:
                records.append(record)
            progress.update(1)
    return write_outputs(out_dir, records, report)


def _select_refs(
    refs: list[dict[str, Any]],
    split: str,
    image_list: str | os.PathLike | None,
    report: ConversionReport,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Group the refs of the split by image id and return the split's image ids."""
    refs_by_image: dict[str, list[dict[str, Any]]] = {}
    if image_list is not None:
        image_ids = list(dict.fromkeys(read_image_list(image_list)))
        wanted = set(image_ids)
        for ref in refs:
            image_id = str(ref.get("image_id"))
            if image_id in wanted:
                refs_by_image.setdefault(image_id, []).append(ref)
        return refs_by_image, image_ids

    for ref in refs:
        ref_split = str(ref.get("split", ""))
        if ref_split == split or (split == "test" and ref_split.startswith("test")):
            refs_by_image.setdefault(str(ref.get("image_id")), []).append(ref)
    if not refs_by_image:
        names = sorted({str(ref.get("split")) for ref in refs})
        raise ValueError(f"no ref has split {split!r}; the refs file has splits {', '.join(names)}")
    return refs_by_image, sorted(refs_by_image, key=image_sort_key)


def _convert_image(
    image_id: str,
    refs: list[dict[str, Any]],
    images_by_id: dict[str, dict[str, Any]],
    boxes_by_ann: dict[str, Any],
    category_names: dict[str, str],
    captions_dir: Path | None,
    folder: ImageFolder,
    report: ConversionReport,
) -> dict[str, Any] | None:
    entry = images_by_id.get(image_id)
    if entry is None:
        report.skip("images", "not_in_instances", f"image {image_id}")
        return None
    if not refs:
        report.skip("images", "no_refs", f"image {image_id}")
        return None
    try:
        file_name = str(entry["file_name"])
        expected = (int(entry["width"]), int(entry["height"]))
    except (KeyError, TypeError, ValueError):
        report.skip("images", "entry_invalid", f"image {image_id}: {entry!r}")
        return None
    size = folder.add(file_name, expected)
    if size is None:
        return None
    width, height = size

    queries = []
    for ref in sorted(refs, key=lambda ref: image_sort_key(ref.get("ref_id", ""))):
        queries.extend(_ref_queries(ref, width, height, boxes_by_ann, category_names, report))
    if not queries:
        report.skip("images", "no_usable_ref", f"image {image_id}")
        return None
    record = {
        "image_id": int(image_id) if image_id.isdigit() else image_id,
        "image": folder.manifest_path(file_name),
        "width": width,
        "height": height,
        "queries": queries,
    }
    if captions_dir is not None:
        record["captions"] = _image_captions(captions_dir, image_id, file_name, report)
    return record


def _ref_queries(
    ref: dict[str, Any],
    width: int,
    height: int,
    boxes_by_ann: dict[str, Any],
    category_names: dict[str, str],
    report: ConversionReport,
) -> list[dict[str, Any]]:
    where = f"ref {ref.get('ref_id')}"
    bbox = boxes_by_ann.get(str(ref.get("ann_id")))
    if bbox is None:
        report.skip("refs", "annotation_missing", f"{where}: ann_id {ref.get('ann_id')}")
        return []
    try:
        box = xywh_to_box(*(float(value) for value in bbox))
    except (TypeError, ValueError):
        report.skip("refs", "box_invalid", f"{where}: bbox {bbox!r}")
        return []
    if box is None:
        report.skip("refs", "box_empty", f"{where}: bbox {bbox!r}")
        return []
    clipped, changed = clip_box(box, width, height)
    if clipped is None:
        report.skip("refs", "box_outside_image", f"{where}: {box} in a {width}x{height} image")
        return []
    if changed:
        report.repair("refs", "box_clipped_to_image", f"{where}: {box} -> {clipped}")

    category_id = ref.get("category_id")
    categories = [category_names.get(str(category_id), str(category_id))] if category_id is not None else []
    texts: list[str] = []
    for sentence in ref.get("sentences") or []:
        if not isinstance(sentence, dict):
            continue
        text = normalise_whitespace(str(sentence.get("sent") or sentence.get("raw") or ""))
        if not text:
            report.skip("queries", "empty_sentence", where)
        elif text in texts:
            report.note("duplicate_sentence_dropped")
        else:
            texts.append(text)
    report.keep("refs")
    report.keep("queries", len(texts))
    return [
        {"text": text, "boxes": [clipped], "categories": categories, "ref_id": ref.get("ref_id")}
        for text in texts
    ]


def _image_captions(captions_dir: Path, image_id: str, file_name: str, report: ConversionReport) -> list[str]:
    # The IAPR TC-12 tree groups files in numbered folders, the first part of "file_name".
    candidates = [captions_dir / f"{image_id}.eng"]
    if "/" in file_name:
        candidates.insert(0, captions_dir / file_name.split("/")[0] / f"{image_id}.eng")
    for path in candidates:
        if path.is_file():
            captions = read_descriptions(path)
            report.keep("captions", len(captions))
            return captions
    report.note("captions_file_missing", f"image {image_id}")
    return []
