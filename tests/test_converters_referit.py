import pytest

from mmgrounding.data.converters.referit import (
    convert_referit,
    read_descriptions,
    read_image_list,
    read_refs,
)
from mmgrounding.data.manifest import read_manifest
from tests.converter_sources import FIXTURES, iapr_description_file, write_image, write_referit

IMAGES = [
    {"id": 25, "file_name": "00/images/25.jpg", "width": 48, "height": 32},
    {"id": 31, "file_name": "00/images/31.jpg", "width": 48, "height": 32},
    {"id": 40, "file_name": "00/images/40.jpg", "width": 48, "height": 32},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 25, "bbox": [4, 2, 10, 20], "category_id": 1},
    {"id": 2, "image_id": 25, "bbox": [40.0, 0.0, 20.0, 8.5], "category_id": 2},
    {"id": 3, "image_id": 31, "bbox": [0, 0, 5, 5], "category_id": 1},
    {"id": 4, "image_id": 40, "bbox": [0, 0, 5, 5], "category_id": 1},
]


def _ref(ref_id, ann_id, image_id, split, sentences):
    return {
        "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1 if ann_id != 2 else 2,
        "file_name": f"{image_id}_{ann_id}.jpg",
        "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": 100 * ref_id + i} for i, s in enumerate(sentences)],
    }


@pytest.fixture
def source(tmp_path):
    refs = [
        _ref(7, 1, 25, "test", ["man on left", "man  on left", "café man"]),
        _ref(8, 2, 25, "test", ["sky"]),
        _ref(9, 3, 31, "train", ["any"]),
        _ref(10, 4, 40, "test", ["person"]),
    ]
    refs_path, instances_path = write_referit(tmp_path / "refclef", IMAGES, ANNOTATIONS, refs)
    images = tmp_path / "saiapr_tc-12"
    write_image(images / "00/images/25.jpg", 48, 32)
    write_image(images / "00/images/31.jpg", 48, 32)
    write_image(images / "00/images/40.jpg", 48, 32, kind="truncated")
    captions = tmp_path / "captions"
    (captions / "00").mkdir(parents=True)
    (captions / "00" / "25.eng").write_bytes(
        iapr_description_file("a man in a caf\u00e9; blue sky with clouds;", "00/25")
    )
    return refs_path, instances_path, images, captions


def test_python2_refs_pickle_decodes(source):
    refs = read_refs(source[0])
    assert refs[0]["sentences"][2]["sent"] == "café man"
    assert refs[0]["split"] == "test"


def test_descriptions_latin1_crlf(source):
    descriptions = read_descriptions(source[3] / "00" / "25.eng")
    assert descriptions == ["a man in a café", "blue sky with clouds"]


def test_convert_test_split(source, tmp_path):
    refs_path, instances_path, images, captions = source
    out = tmp_path / "out"
    summary = convert_referit(refs_path, instances_path, images, "test", out, captions=captions)

    records = read_manifest(out / "test.jsonl")
    assert [r["image_id"] for r in records] == [25]
    record = records[0]
    assert record["image"] == "images/00/images/25.jpg"
    assert record["captions"] == ["a man in a café", "blue sky with clouds"]
    assert [q["text"] for q in record["queries"]] == ["man on left", "café man", "sky"]
    assert record["queries"][0]["boxes"] == [[4, 2, 13, 21]]
    assert record["queries"][0]["categories"] == ["man"]
    # [40, 0, 20, 8.5] ends at x = 59 and y = 8, clipped to the 48-pixel width.
    assert record["queries"][2]["boxes"] == [[40, 0, 47, 8]]
    assert summary["repaired"]["refs"] == {"box_clipped_to_image": 1}
    assert summary["skipped"]["images"] == {"image_unreadable": 1}
    assert summary["notes"]["duplicate_sentence_dropped"] == 1


def test_image_list_selects_images(source, tmp_path):
    refs_path, instances_path, images, _ = source
    image_list = tmp_path / "referit_val_imlist.txt"
    image_list.write_bytes(b"31\r\n25\r\n77\r\n")
    out = tmp_path / "out"
    summary = convert_referit(refs_path, instances_path, images, "val", out, image_list=image_list)
    assert [r["image_id"] for r in read_manifest(out / "val.jsonl")] == [25, 31]
    assert summary["skipped"]["images"] == {"not_in_instances": 1}


def test_unknown_split_lists_known_ones(source, tmp_path):
    refs_path, instances_path, images, _ = source
    with pytest.raises(ValueError, match="no ref has split 'val'; the refs file has splits test, train"):
        convert_referit(refs_path, instances_path, images, "val", tmp_path / "out")


def test_release_image_lists_parse():
    counts = {
        name: len(read_image_list(FIXTURES / "referit" / f"referit_{name}_imlist.txt"))
        for name in ("all", "train", "val", "trainval", "test")
    }
    assert counts == {"all": 20000, "train": 9000, "val": 1000, "trainval": 10000, "test": 10000}
