"""The JSON Lines manifest of a converted dataset: schema, validation, I/O.

Each line describes one image:

    {"image_id": "park-017", "image": "images/park-017.jpg", "width": 500,
     "height": 375, "captions": ["A man walks a dog ."],
     "queries": [{"text": "A man", "boxes": [[0, 0, 99, 49]], "sentence": 0,
                  "tokens": [0, 1], "categories": ["people"]}]}

`image` is relative to the folder that contains the manifest and may not leave
it. Boxes are [x_min, y_min, x_max, y_max] in pixels of the original image,
0-based and inclusive. `sentence` and `tokens` appear together, only for
queries read inside a caption (Flickr30k): `tokens` index the words of
`captions[sentence].split()`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from mmgrounding.files import use_default_permissions

Record = dict[str, Any]


class ManifestError(ValueError):
    """A manifest line that does not follow the schema."""


def resolve_image_path(dataset_dir: str | os.PathLike, relative: str) -> Path:
    """Return the path of `relative` inside `dataset_dir`.

    Raises `ManifestError` when the path is absolute or climbs out of the
    folder with `..`. The check is lexical: a symbolic link inside the folder,
    such as the `images` link a converter makes to a large image folder that
    stays where it is, is followed on purpose.
    """
    root = Path(os.path.abspath(dataset_dir))
    if not isinstance(relative, str) or not relative:
        raise ManifestError(f"image path {relative!r} is empty or not a string")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise ManifestError(f"image path {relative!r} is absolute; write it relative to {root}")
    normalised = os.path.normpath(relative)
    if normalised == ".." or normalised.startswith(".." + os.sep) or normalised == ".":
        raise ManifestError(f"image path {relative!r} leaves the dataset folder {root}")
    return root / normalised


def validate_record(record: Any, where: str = "record") -> Record:
    """Check one manifest record against the schema and return it.

    `where` names the record in error messages, such as "train.jsonl:17".
    """
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, kind in (("image_id", (str, int)), ("image", str), ("width", int), ("height", int)):
        if key not in record:
            raise ManifestError(f"{where}: missing key {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise ManifestError(f"{where}: {key} = {record[key]!r} has the wrong type")
    width, height = record["width"], record["height"]
    if width <= 0 or height <= 0:
        raise ManifestError(f"{where}: image size {width}x{height} must be positive")

    captions = record.get("captions", [])
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ManifestError(f"{where}: captions must be a list of strings, got {captions!r}")
    queries = record.get("queries", [])
    if not isinstance(queries, list):
        raise ManifestError(f"{where}: queries must be a list, got {queries!r}")
    for index, query in enumerate(queries):
        _validate_query(query, captions, width, height, f"{where} query {index}")
    return record


def _validate_query(query: Any, captions: list[str], width: int, height: int, where: str) -> None:
    if not isinstance(query, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {query!r}")
    text = query.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ManifestError(f"{where}: text {text!r} must be a non-empty string")
    boxes = query.get("boxes", [])
    if not isinstance(boxes, list):
        raise ManifestError(f"{where}: boxes must be a list, got {boxes!r}")
    for box in boxes:
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            raise ManifestError(f"{where}: box {box!r} must be [x_min, y_min, x_max, y_max]")
        x0, y0, x1, y1 = box
        if not (0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height):
            raise ManifestError(
                f"{where}: box {box!r} is empty or outside the {width}x{height} image; "
                "boxes are inclusive pixel bounds with 0 <= x_min <= x_max < width"
            )
    has_sentence, has_tokens = "sentence" in query, "tokens" in query
    if has_sentence != has_tokens:
        raise ManifestError(f"{where}: 'sentence' and 'tokens' must appear together")
    if has_sentence:
        sentence, tokens = query["sentence"], query["tokens"]
        if not isinstance(sentence, int) or not 0 <= sentence < len(captions):
            raise ManifestError(f"{where}: sentence {sentence!r} is not a caption index")
        words = captions[sentence].split()
        if (
            not isinstance(tokens, list)
            or not tokens
            or not all(isinstance(t, int) and 0 <= t < len(words) for t in tokens)
        ):
            raise ManifestError(
                f"{where}: tokens {tokens!r} must index the {len(words)} words of caption {sentence}"
            )
    categories = query.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise ManifestError(f"{where}: categories must be a list of strings, got {categories!r}")


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """Read and validate every line of a manifest.

    Blank lines are ignored. Image paths are checked to stay inside the
    manifest's folder but not opened: a missing image is counted where it is
    decoded, so one bad file never stops a run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"manifest {path} not found; convert a dataset with `mmgrounding convert` "
            "or point to a folder that contains <split>.jsonl"
        )
    records = []
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{where}: invalid JSON ({error.msg})") from None
            validate_record(record, where)
            resolve_image_path(path.parent, record["image"])
            records.append(record)
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write records as JSON Lines atomically and return how many were written.

    The file appears under its final name only when complete, so an
    interrupted run leaves no half-written manifest behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    use_default_permissions(temporary)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return count


def manifest_path(dataset_dir: str | os.PathLike, split: str) -> Path:
    """Return the manifest of `split` inside a converted dataset folder."""
    return Path(dataset_dir) / f"{split}.jsonl"
