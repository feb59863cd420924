"""Checks of the bundled sample set in data/sample/ (manifest, images, sources).

Only JSON, NumPy and OpenCV are used, so the checks stay fast and independent of the
library's own manifest reader.
"""

import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
MANIFEST = SAMPLE_DIR / "sample.jsonl"
FLICKR30K_TYPES = {
    "people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other",
}
# The evaluator's default min_box_area: queries whose union box is smaller are skipped.
MIN_BOX_AREA = 0.05


def load_records():
    records = []
    with MANIFEST.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                records.append((number, json.loads(line)))
    return records


RECORDS = load_records()
RECORD_IDS = [record["image_id"] for _, record in RECORDS]


def all_queries():
    for _, record in RECORDS:
        for query in record["queries"]:
            yield record, query


def union_box_share(record, query):
    boxes = np.asarray(query["boxes"])
    width = boxes[:, 2].max() - boxes[:, 0].min() + 1
    height = boxes[:, 3].max() - boxes[:, 1].min() + 1
    return width * height / (record["width"] * record["height"])


def test_manifest_lines_parse():
    with MANIFEST.open(encoding="utf-8") as stream:
        lines = stream.read().splitlines()
    assert lines, f"{MANIFEST} is empty"
    for number, line in enumerate(lines, start=1):
        assert line.strip(), f"{MANIFEST}:{number} is blank"
        assert isinstance(json.loads(line), dict), f"{MANIFEST}:{number} is not a JSON object"


def test_image_ids_unique():
    assert len(RECORD_IDS) == len(set(RECORD_IDS)), RECORD_IDS


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_record_keys_and_types(number, record):
    where = f"sample.jsonl:{number}"
    assert set(record) == {"image_id", "image", "width", "height", "captions", "queries"}, where
    assert isinstance(record["image_id"], str), where
    assert record["image_id"], f"{where}: empty image_id"
    assert isinstance(record["image"], str), where
    for key in ("width", "height"):
        assert type(record[key]) is int, f"{where}: {key}={record[key]!r}"
        assert record[key] > 0, f"{where}: {key}={record[key]!r}"
    assert isinstance(record["captions"], list), where
    assert isinstance(record["queries"], list) and record["queries"], where


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_image_path_inside_sample_dir(number, record):
    relative = record["image"]
    assert not os.path.isabs(relative), f"sample.jsonl:{number}: {relative!r} is absolute"
    assert ".." not in Path(relative).parts, f"sample.jsonl:{number}: {relative!r} climbs out"
    resolved = (SAMPLE_DIR / relative).resolve()
    assert resolved.is_relative_to(SAMPLE_DIR.resolve()), f"{relative!r} resolves to {resolved}"
    assert resolved.is_file(), f"sample.jsonl:{number}: {resolved} does not exist"


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_decoded_size_matches_record(number, record):
    image = cv2.imread(str(SAMPLE_DIR / record["image"]), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"OpenCV could not decode {record['image']}"
    height, width = image.shape[:2]
    assert (width, height) == (record["width"], record["height"]), record["image"]


def test_grayscale_image_stays_grayscale():
    channels = {}
    for _, record in RECORDS:
        image = cv2.imread(str(SAMPLE_DIR / record["image"]), cv2.IMREAD_UNCHANGED)
        channels[record["image_id"]] = 1 if image.ndim == 2 else image.shape[2]
    assert channels["camera"] == 1, channels
    assert 3 in channels.values(), channels


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_captions_count_and_words(number, record):
    captions = record["captions"]
    assert 2 <= len(captions) <= 5, f"sample.jsonl:{number}: {len(captions)} captions"
    for caption in captions:
        assert isinstance(caption, str), f"sample.jsonl:{number}: {caption!r}"
        # Tokens are the words of caption.split(), so punctuation or capitals attached to a
        # word would make it differ from the same word in a phrase or another caption.
        assert re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", caption), caption


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_boxes_inside_image(number, record):
    width, height = record["width"], record["height"]
    for query in record["queries"]:
        where = f"sample.jsonl:{number} {query['text']!r}"
        assert query["boxes"], f"{where}: no boxes"
        for box in query["boxes"]:
            assert len(box) == 4, f"{where}: {box}"
            assert all(type(value) is int for value in box), f"{where}: {box}"
            x_min, y_min, x_max, y_max = box
            assert 0 <= x_min <= x_max < width, f"{where}: {box} vs width {width}"
            assert 0 <= y_min <= y_max < height, f"{where}: {box} vs height {height}"


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_query_categories(number, record):
    for query in record["queries"]:
        categories = query["categories"]
        assert categories, f"sample.jsonl:{number} {query['text']!r}: no categories"
        assert set(categories) <= FLICKR30K_TYPES, f"{query['text']!r}: {categories}"


@pytest.mark.parametrize("number, record", RECORDS, ids=RECORD_IDS)
def test_query_tokens_match_caption(number, record):
    for query in record["queries"]:
        where = f"sample.jsonl:{number} {query['text']!r}"
        assert set(query) <= {"text", "boxes", "sentence", "tokens", "categories"}, where
        assert ("sentence" in query) == ("tokens" in query), f"{where}: sentence without tokens"
        if "tokens" not in query:
            continue
        sentence, tokens = query["sentence"], query["tokens"]
        assert type(sentence) is int, f"{where}: sentence={sentence!r}"
        assert 0 <= sentence < len(record["captions"]), f"{where}: sentence={sentence}"
        words = record["captions"][sentence].split()
        assert tokens, f"{where}: empty tokens"
        assert all(type(index) is int for index in tokens), f"{where}: {tokens}"
        assert all(0 <= index < len(words) for index in tokens), f"{where}: {tokens}"
        assert tokens == list(range(tokens[0], tokens[0] + len(tokens))), f"{where}: {tokens}"
        picked = " ".join(words[index] for index in tokens)
        assert picked.lower() == query["text"].lower(), f"{where}: tokens pick {picked!r}"


def test_query_counts():
    queries = list(all_queries())
    with_tokens = [query for _, query in queries if "tokens" in query]
    scored = [query for record, query in queries if union_box_share(record, query) >= MIN_BOX_AREA]
    assert len(queries) >= 40, len(queries)
    assert 2 * len(with_tokens) >= len(queries), (len(with_tokens), len(queries))
    assert len(scored) >= 30, f"only {len(scored)} queries pass min_box_area={MIN_BOX_AREA}"


def test_sources_name_every_image():
    sources = (SAMPLE_DIR / "SOURCES.md").read_text(encoding="utf-8")
    listed = {record["image"] for _, record in RECORDS}
    on_disk = {f"images/{path.name}" for path in (SAMPLE_DIR / "images").iterdir()}
    assert on_disk == listed, f"not in the manifest: {on_disk - listed}; missing: {listed - on_disk}"
    for relative in sorted(listed):
        assert f"`{relative}`" in sources, f"SOURCES.md does not name {relative}"


def test_images_match_copy_script_checksums(monkeypatch):
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLE_DIR / "make_sample.py")
    make_sample = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the file executes.
    monkeypatch.setitem(sys.modules, "make_sample", make_sample)
    spec.loader.exec_module(make_sample)
    expected = {photo.file_name: photo.sha256 for photo in make_sample.SAMPLE_PHOTOS}
    actual = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (SAMPLE_DIR / "images").iterdir()
    }
    assert actual == expected
