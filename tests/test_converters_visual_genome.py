import json
import pickle

import pytest

from mmgrounding.data.converters.visual_genome import convert_visual_genome, read_split_ids
from mmgrounding.data.manifest import read_manifest
from mmgrounding.data.safe_pickle import UnsafePickleError, load_pickle
from tests.converter_sources import FIXTURES, write_image, write_visual_genome


@pytest.fixture
def source(tmp_path):
    images = tmp_path / "VG"
    regions = {
        1: [
            ("a red car", 10, 5, 20, 10),
            ("  a red   car ", 0, 0, 5, 5),
            ("a red car", 10, 5, 20, 10),
            ("tree", -4, -3, 10, 10),
            ("sky", 70, 0, 30, 10),
            ("far away", 100, 60, 5, 5),
            ("one two three four five six seven eight nine ten", 0, 0, 5, 5),
            ("", 0, 0, 5, 5),
            ("flat", 0, 0, 0, 5),
        ],
        2: [("a dog", 1, 1, 4, 4)],
        3: [("a cat", 1, 1, 4, 4)],
    }
    sizes = {1: (80, 50), 2: (32, 24), 3: (32, 24)}
    regions_path, image_data_path = write_visual_genome(tmp_path / "annotations", sizes, regions)
    write_image(images / "VG_100K" / "1.jpg", 80, 50)
    write_image(images / "VG_100K_2" / "2.jpg", 32, 24, kind="cmyk_jpeg")
    write_image(images / "3.jpg", 32, 24, kind="empty")
    splits = tmp_path / "data_splits.pickle"
    splits.write_bytes(pickle.dumps({"train": {1, 2, 3, 99}, "test": {4}}, protocol=4))
    return regions_path, image_data_path, images, splits


def test_real_paper_split_loads():
    path = FIXTURES / "visual_genome" / "data_splits.pickle"
    assert len(read_split_ids(path, "train")) == 90599
    test_ids = read_split_ids(path, "test")
    assert len(test_ids) == 17478
    assert test_ids == sorted(test_ids, key=int)


def test_split_file_plain_lists(tmp_path):
    text = tmp_path / "ids.txt"
    text.write_bytes(b"3\r\n1\r\n\r\n2\r\n")
    listed = tmp_path / "ids.json"
    listed.write_text(json.dumps([3, 1, 2]), encoding="utf-8")
    assert read_split_ids(text, "anything") == ["1", "2", "3"]
    assert read_split_ids(listed, "anything") == ["1", "2", "3"]


def test_split_name_missing_from_pickle(source):
    with pytest.raises(ValueError, match="'val' not found; the file contains test, train"):
        read_split_ids(source[3], "val")


def test_restricted_unpickler_rejects_code(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"train": [1], "call": print}, protocol=4))
    with pytest.raises(UnsafePickleError, match="evil.pickle.*builtins.print"):
        load_pickle(path)


def test_convert_merges_and_clips(source, tmp_path):
    regions_path, image_data_path, images, splits = source
    out = tmp_path / "out"
    summary = convert_visual_genome(regions_path, image_data_path, images, splits, "train", out)

    records = read_manifest(out / "train.jsonl")
    assert [r["image_id"] for r in records] == [1, 2]
    assert records[0]["image"] == "images/VG_100K/1.jpg"
    assert records[1]["image"] == "images/VG_100K_2/2.jpg"
    queries = {q["text"]: q["boxes"] for q in records[0]["queries"]}
    assert queries == {
        "a red car": [[10, 5, 29, 14], [0, 0, 4, 4]],
        "tree": [[0, 0, 5, 6]],
        "sky": [[70, 0, 79, 9]],
    }
    assert summary["repaired"]["regions"] == {"box_clipped_to_image": 2}
    assert summary["skipped"]["regions"] == {
        "box_empty": 1, "box_outside_image": 1, "empty_phrase": 1, "phrase_over_9_words": 1,
    }
    assert summary["skipped"]["images"] == {"image_empty_file": 1, "not_in_image_data": 1}
    assert summary["notes"]["duplicate_region_box_dropped"] == 1
    assert summary["notes"]["region_merged_into_identical_phrase"] == 1
    assert summary["kept"]["queries"] == 4
