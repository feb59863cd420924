"""Convert Flickr30k Entities (Plummer et al., ICCV 2015) to a manifest.

Expected files under `root`:

    Sentences/<image id>.txt    five captions, one a line, with phrase markup
    Annotations/<image id>.xml  PASCAL VOC style boxes of the entities
    <split>.txt                 image ids of the split, one a line

A caption line marks each phrase as `[/EN#<entity id>/<type>/<type> words]`.
The cleaned caption drops the markup and keeps the words; a query's `tokens`
are the indices of its words in `caption.split()`. Entity id 0 means the
phrase names nothing visible ("notvisual").

In the XML, one `<object>` may carry several `<name>` elements (entity ids),
and its box belongs to each of them. Coordinates are 1-based inclusive, so 1
is subtracted. Objects with `<nobndbox>1` or `<scene>1` have no box.

Every phrase occurrence becomes one query with all boxes of its entity.
Phrases without boxes are kept with `"boxes": []` and `"skip_reason"`
"notvisual" (entity 0), "scene_no_box" (a scene phrase whose entity has no
box) or "no_box" (any other entity without a box), so an evaluator can count
them as skips.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgrounding.data.converters.common import (
    ConversionReport,
    ImageFolder,
    check_split_name,
    clip_box,
    read_id_list,
    read_text,
    require_dir,
    require_file,
    write_outputs,
)
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)

# `[/EN#<id>/<type>/<type> words]`: types are "/"-separated after the id, and
# the words run to the first "]".
_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)*)\s+([^\]]*)\]")
_NOTVISUAL_ID = "0"


@dataclass
class Phrase:
    """One marked phrase of a caption."""

    entity_id: str
    types: list[str]
    words: list[str]
    first_token: int


@dataclass
class Caption:
    """A caption with its markup removed and the phrases it marked."""

    text: str
    phrases: list[Phrase] = field(default_factory=list)


@dataclass
class EntityBoxes:
    """Boxes of an image's entities, read from one Annotations XML file."""

    width: int
    height: int
    boxes: dict[str, list[list[int]]]
    without_box: set[str]


def parse_caption(line: str) -> Caption:
    """Parse one marked-up caption line into its clean text and phrases.

    Text outside the markup is split on whitespace, like the phrase words,
    so token indices count whitespace tokens of the cleaned caption.
    A phrase with no words keeps no tokens and is dropped by the caller.
    """
    words: list[str] = []
    phrases: list[Phrase] = []
    position = 0
    for match in _PHRASE.finditer(line):
        words.extend(line[position : match.start()].split())
        phrase_words = match.group(3).split()
        types = [t for t in match.group(2).split("/") if t]
        phrases.append(Phrase(match.group(1), types, phrase_words, len(words)))
        words.extend(phrase_words)
        position = match.end()
    words.extend(line[position:].split())
    return Caption(" ".join(words), phrases)


def read_sentences(path: Path) -> list[Caption]:
    """Read a Sentences/<id>.txt file: one caption per non-blank line."""
    return [parse_caption(line) for line in read_text(path).split("\n") if line.strip()]


def read_annotation(path: Path) -> EntityBoxes:
    """Read an Annotations/<id>.xml file into 0-based inclusive boxes per entity id.

    Raises ValueError naming the file when the XML is malformed, declares a
    DOCTYPE (refused, so entity expansion cannot blow up memory), or lacks
    a positive <size>.
    """
    text = read_text(path)
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError(f"{path}: XML with a DOCTYPE or ENTITY declaration is not accepted")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise ValueError(f"{path}: invalid XML ({error})") from None
    width = _int_text(root.find("size/width"), path, "size/width")
    height = _int_text(root.find("size/height"), path, "size/height")
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: image size {width}x{height} must be positive")

    boxes: dict[str, list[list[int]]] = {}
    without_box: set[str] = set()
    for element in root.iter("object"):
        entity_ids = [(name.text or "").strip() for name in element.findall("name")]
        entity_ids = [entity_id for entity_id in entity_ids if entity_id]
        box_element = element.find("bndbox")
        if box_element is None:
            without_box.update(entity_ids)
            continue
        # XML coordinates are 1-based and inclusive.
        box = [_int_text(box_element.find(tag), path, f"bndbox/{tag}") - 1 for tag in ("xmin", "ymin", "xmax", "ymax")]
        for entity_id in entity_ids:
            entity_boxes = boxes.setdefault(entity_id, [])
            if box not in entity_boxes:
                entity_boxes.append(box)
    return EntityBoxes(width, height, boxes, without_box - set(boxes))


def _int_text(element: ElementTree.Element | None, path: Path, what: str) -> int:
    if element is None or element.text is None:
        raise ValueError(f"{path}: missing <{what}>")
    try:
        # Some annotation tools write "12.0"; the value is a pixel index.
        return int(round(float(element.text.strip())))
    except ValueError:
        raise ValueError(f"{path}: <{what}> = {element.text!r} is not a number") from None


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Read the image ids of `split` from `root/<split>.txt`."""
    path = require_file(Path(root) / f"{split}.txt", f"Flickr30k Entities split list for {split!r}")
    return read_id_list(path)


def convert_flickr30k(
    root: str | os.PathLike,
    images: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    check_images: str = "decode",
    copy_images: bool = False,
) -> dict[str, Any]:
    """Convert one split of Flickr30k Entities and return its summary.

    `root` contains Sentences/, Annotations/ and the split lists, and
    `images` contains <image id>.jpg. Writes OUT/<split>.jsonl and OUT/<split>.summary.json.
    """
    split = check_split_name(split)
    root = require_dir(root, "Flickr30k Entities root")
    sentences_dir = require_dir(root / "Sentences", "Flickr30k Entities Sentences folder")
    annotations_dir = require_dir(root / "Annotations", "Flickr30k Entities Annotations folder")
    images_dir = require_dir(images, "Flickr30k images folder")
    image_ids = list(dict.fromkeys(read_split(root, split)))
    out_dir = Path(out)

    report = ConversionReport("flickr30k", split)
    folder = ImageFolder(out_dir, images_dir, report, check=check_images, copy=copy_images)
    records = []
    with Progress(len(image_ids), f"converting flickr30k {split}") as progress:
        for image_id in image_ids:
            record = _convert_image(image_id, sentences_dir, annotations_dir, folder, report)
            if record is not None:
                records.append(record)
            progress.update(1)
    return write_outputs(out_dir, records, report)


def _convert_image(
    image_id: str,
    sentences_dir: Path,
    annotations_dir: Path,
    folder: ImageFolder,
    report: ConversionReport,
) -> dict[str, Any] | None:
    sentences_path = sentences_dir / f"{image_id}.txt"
    annotation_path = annotations_dir / f"{image_id}.xml"
    if not sentences_path.is_file():
        report.skip("images", "sentences_missing", str(sentences_path))
        return None
    if not annotation_path.is_file():
        report.skip("images", "annotation_missing", str(annotation_path))
        return None
    try:
        captions = read_sentences(sentences_path)
        entities = read_annotation(annotation_path)
    except ValueError as error:
        report.skip("images", "annotation_invalid", str(error))
        return None

    relative = f"{image_id}.jpg"
    size = folder.add(relative, (entities.width, entities.height))
    if size is None:
        return None
    width, height = size
    boxes = _clip_entity_boxes(entities.boxes, width, height, image_id, report)

    queries = []
    for index, caption in enumerate(captions):
        for phrase in caption.phrases:
            query = _make_query(index, phrase, boxes, entities, image_id, report)
            if query is not None:
                queries.append(query)
    report.keep("captions", len(captions))
    return {
        "image_id": image_id,
        "image": folder.manifest_path(relative),
        "width": width,
        "height": height,
        "captions": [caption.text for caption in captions],
        "queries": queries,
    }


def _clip_entity_boxes(
    boxes: dict[str, list[list[int]]], width: int, height: int, image_id: str, report: ConversionReport
) -> dict[str, list[list[int]]]:
    clipped_boxes: dict[str, list[list[int]]] = {}
    for entity_id, entity_boxes in boxes.items():
        kept = []
        for box in entity_boxes:
            clipped, changed = clip_box(box, width, height)
            if clipped is None:
                report.skip("boxes", "outside_image", f"image {image_id} entity {entity_id} box {box}")
                continue
            if changed:
                report.repair("boxes", "clipped_to_image", f"image {image_id} entity {entity_id} box {box}")
            kept.append(clipped)
        clipped_boxes[entity_id] = kept
    return clipped_boxes


def _make_query(
    sentence: int,
    phrase: Phrase,
    boxes: dict[str, list[list[int]]],
    entities: EntityBoxes,
    image_id: str,
    report: ConversionReport,
) -> dict[str, Any] | None:
    if not phrase.words:
        report.skip("queries", "empty_phrase", f"image {image_id} caption {sentence} entity {phrase.entity_id}")
        return None
    query: dict[str, Any] = {
        "text": " ".join(phrase.words),
        "boxes": [],
        "sentence": sentence,
        "tokens": list(range(phrase.first_token, phrase.first_token + len(phrase.words))),
        "categories": phrase.types,
        "entity_id": phrase.entity_id,
    }
    if phrase.entity_id == _NOTVISUAL_ID or "notvisual" in phrase.types:
        query["skip_reason"] = "notvisual"
        report.keep("queries_notvisual")
    elif boxes.get(phrase.entity_id):
        query["boxes"] = boxes[phrase.entity_id]
        report.keep("queries")
    else:
        # Scene phrases without boxes are a skip category of their own in the
        # evaluation protocol, apart from other phrases whose entity has no box.
        query["skip_reason"] = "scene_no_box" if "scene" in phrase.types else "no_box"
        if phrase.entity_id not in entities.boxes and phrase.entity_id not in entities.without_box:
            report.note("entity_not_in_annotation", f"image {image_id} entity {phrase.entity_id}")
        report.keep("queries_no_box")
    return query
