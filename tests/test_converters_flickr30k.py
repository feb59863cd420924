import json

import pytest

from tests.converter_sources import FIXTURES, write_flickr30k, write_image
from mmgrounding.data.converters.flickr30k import (
    convert_flickr30k,
    parse_caption,
    read_annotation,
    read_split,
)
from mmgrounding.data.manifest import read_manifest, resolve_image_path

CAPTION = (
    "[/EN#1/people A man] in [/EN#2/clothing/other a red hat] holds "
    "[/EN#0/notvisual something] near [/EN#3/scene the park] ."
)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "flickr30k_entities"
    images = tmp_path / "imágenes"
    entries = {
        "1000": {
            "sentences": [CAPTION, "[/EN#1/people The man] and [/EN#4/animals his dog] ."],
            "width": 60,
            "height": 40,
            "objects": [
                {"names": ["1", "4"], "box": (1, 1, 10, 20)},
                {"names": ["1"], "box": (21, 5, 40, 30)},
                {"names": ["2"], "box": (30, 1, 65, 40)},
                {"names": ["3"], "nobndbox": 1, "scene": 1},
            ],
        },
        "2000": {"sentences": ["[/EN#7/people A child] ."], "width": 60, "height": 40, "objects": [{"names": ["7"], "box": (1, 1, 5, 5)}]},
        "3000": {"sentences": ["[/EN#8/people A child] ."], "width": 30, "height": 20, "objects": [{"names": ["8"], "box": (1, 1, 5, 5)}]},
        "4000": {"sentences": ["[/EN#9/people A child] ."], "width": 30, "height": 20, "objects": [{"names": ["9"], "box": (1, 1, 5, 5)}]},
        "5000": {"sentences": ["[/EN#6/animals A cat] sleeps ."], "width": 32, "height": 24, "objects": [{"names": ["6"], "box": (2, 3, 32, 24)}]},
    }
    write_flickr30k(root, "test", entries)
    write_image(images / "1000.jpg", 60, 40)
    # Stored grid 40x60 with EXIF orientation 6, while the XML says 60x40.
    write_image(images / "2000.jpg", 40, 60, kind="exif_rotated")
    write_image(images / "3000.jpg", 30, 20, kind="truncated")
    write_image(images / "5000.jpg", 32, 24, kind="gif")
    return root, images


def test_parse_caption_tokens_and_types():
    caption = parse_caption(CAPTION)
    assert caption.text == "A man in a red hat holds something near the park ."
    words = caption.text.split()
    assert [(p.entity_id, p.types, p.first_token) for p in caption.phrases] == [
        ("1", ["people"], 0),
        ("2", ["clothing", "other"], 3),
        ("0", ["notvisual"], 7),
        ("3", ["scene"], 9),
    ]
    for phrase in caption.phrases:
        assert words[phrase.first_token : phrase.first_token + len(phrase.words)] == phrase.words


def test_annotation_shared_box_and_one_based(source):
    root, _ = source
    entities = read_annotation(root / "Annotations" / "1000.xml")
    assert (entities.width, entities.height) == (60, 40)
    assert entities.boxes["1"] == [[0, 0, 9, 19], [20, 4, 39, 29]]
    assert entities.boxes["4"] == [[0, 0, 9, 19]]
    assert entities.without_box == {"3"}


def test_annotation_rejects_doctype(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text('<!DOCTYPE a [<!ENTITY x "y">]><annotation/>', encoding="utf-8")
    with pytest.raises(ValueError, match="DOCTYPE"):
        read_annotation(path)


def test_convert_queries_and_skips(source, tmp_path):
    root, images = source
    out = tmp_path / "out"
    summary = convert_flickr30k(root, images, "test", out)

    records = read_manifest(out / "test.jsonl")
    assert [r["image_id"] for r in records] == ["1000", "5000"]
    first = records[0]
    assert first["image"] == "images/1000.jpg"
    assert resolve_image_path(out, first["image"]).is_file()
    assert first["captions"][0] == "A man in a red hat holds something near the park ."
    queries = first["queries"]
    assert queries[0]["text"] == "A man"
    assert queries[0]["tokens"] == [0, 1]
    assert queries[0]["boxes"] == [[0, 0, 9, 19], [20, 4, 39, 29]]
    assert queries[1]["categories"] == ["clothing", "other"]
    # xmax 65 in a 60-pixel-wide image is clipped to 59.
    assert queries[1]["boxes"] == [[29, 0, 59, 39]]
    assert queries[2]["skip_reason"] == "notvisual"
    assert queries[2]["boxes"] == []
    assert queries[3]["skip_reason"] == "scene_no_box"  # a scene phrase without a box
    assert queries[5] == {
        "text": "his dog", "boxes": [[0, 0, 9, 19]], "sentence": 1, "tokens": [3, 4],
        "categories": ["animals"], "entity_id": "4",
    }

    assert summary["skipped"]["images"] == {"image_missing": 1, "image_size_mismatch": 1, "image_unreadable": 1}
    assert summary["repaired"]["boxes"] == {"clipped_to_image": 1}
    assert summary["kept"]["queries"] == 5
    assert summary["kept"]["queries_notvisual"] == 1
    assert summary["kept"]["queries_no_box"] == 1
    assert summary["notes"] == {"exif_orientation_ignored": 1}
    saved = json.loads((out / "test.summary.json").read_text(encoding="utf-8"))
    assert saved == summary


def test_rerun_gives_identical_files(source, tmp_path):
    root, images = source
    out = tmp_path / "out"
    convert_flickr30k(root, images, "test", out, check_images="header")
    first = {name: (out / name).read_bytes() for name in ("test.jsonl", "test.summary.json")}
    # A leftover temporary file from an interrupted run must not matter.
    (out / ".test.jsonl.partial").write_text("{", encoding="utf-8")
    convert_flickr30k(root, images, "test", out, check_images="header")
    second = {name: (out / name).read_bytes() for name in ("test.jsonl", "test.summary.json")}
    assert first == second


def test_copy_images_makes_real_folder(source, tmp_path):
    root, images = source
    out = tmp_path / "copied"
    convert_flickr30k(root, images, "test", out, copy_images=True)
    assert not (out / "images").is_symlink()
    assert (out / "images" / "1000.jpg").read_bytes() == (images / "1000.jpg").read_bytes()
    assert not (out / "images" / "3000.jpg").exists()


def test_split_lists_of_release():
    counts = {split: len(read_split(FIXTURES / "flickr30k_entities", split)) for split in ("train", "val", "test")}
    assert counts == {"train": 29783, "val": 1000, "test": 1000}
