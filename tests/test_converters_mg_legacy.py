import pickle

import pytest

from mmgrounding.data.converters.mg_legacy import convert_mg_legacy, detect_dataset, read_annotations
from mmgrounding.data.manifest import read_manifest, resolve_image_path
from mmgrounding.data.safe_pickle import UnsafePickleError
from tests.converter_sources import encode_jpeg, jpeg_with_exif_orientation, write_mg_legacy



def _require_lmdb():
    pytest.importorskip("lmdb", reason="reading the MG release's LMDB store needs the lmdb package")

CAPTION = "A man in a red hat holds something ."


def _flickr_entry():
    # Layout written by the MG pre-processing: boxes are raw 1-based XML values.
    return {
        "size": [40, 60],
        "queries": [CAPTION],
        "captions": [CAPTION],
        "annotations": [
            {"category": {"people"}, "obj_id": "1", "bbox": [[1, 1, 10, 20]], "bbox_norm": [], "idx": [0, 1],
             "query": "A man", "image_size": [40, 60], "source_sen": CAPTION},
            {"category": {"clothing"}, "obj_id": "2", "bbox": [[30, 1, 70, 40]], "bbox_norm": [], "idx": [3, 4, 5],
             "query": "a red hat", "image_size": [40, 60], "source_sen": CAPTION},
            {"category": {"notvisual"}, "obj_id": "0", "bbox": [], "bbox_norm": [], "idx": [7],
             "query": "something", "image_size": [40, 60], "source_sen": CAPTION},
        ],
    }


@pytest.fixture
def flickr_source(tmp_path):
    _require_lmdb()
    images = {
        "1000": encode_jpeg(60, 40),
        "2000": jpeg_with_exif_orientation(encode_jpeg(40, 60), 6),
        "3000": b"not an image",
    }
    annotations = {key: _flickr_entry() for key in ("1000", "2000", "3000", "4000")}
    return write_mg_legacy(tmp_path / "mg", images, annotations)


def test_detect_dataset_kinds():
    assert detect_dataset({"1": _flickr_entry()}) == "flickr30k"
    visual_genome = {"1": {"size": (5, 5, 3), "annotations": [{"query": "a dog", "category": {"All"}, "bbox": []}]}}
    assert detect_dataset(visual_genome) == "visual_genome"
    with pytest.raises(ValueError, match="pass --dataset"):
        detect_dataset({"1": {"annotations": [{"query": "x", "category": {"thing"}}]}})


def test_convert_extracts_images(flickr_source, tmp_path):
    lmdb_path, pickle_path = flickr_source
    out = tmp_path / "out"
    summary = convert_mg_legacy(lmdb_path, pickle_path, "test", out)

    records = read_manifest(out / "test.jsonl")
    assert [r["image_id"] for r in records] == [1000]
    record = records[0]
    assert record["image"] == "images/1000.jpg"
    assert resolve_image_path(out, record["image"]).read_bytes() == encode_jpeg(60, 40)
    queries = record["queries"]
    assert queries[0]["boxes"] == [[0, 0, 9, 19]]
    assert queries[0]["tokens"] == [0, 1]
    assert queries[1]["boxes"] == [[29, 0, 59, 39]]
    assert queries[2]["skip_reason"] == "notvisual"
    assert summary["dataset"] == "flickr30k"
    assert summary["skipped"]["images"] == {
        "image_missing_in_lmdb": 1, "image_size_mismatch": 1, "image_unreadable": 1,
    }
    assert summary["repaired"]["boxes"] == {"box_clipped_to_image": 1}


def test_rerun_identical(flickr_source, tmp_path):
    lmdb_path, pickle_path = flickr_source
    out = tmp_path / "out"
    convert_mg_legacy(lmdb_path, pickle_path, "test", out)
    first = (out / "test.jsonl").read_bytes(), (out / "test.summary.json").read_bytes()
    convert_mg_legacy(lmdb_path, pickle_path, "test", out)
    assert ((out / "test.jsonl").read_bytes(), (out / "test.summary.json").read_bytes()) == first


def test_visual_genome_boxes_end_past_pixel(tmp_path):
    _require_lmdb()
    entry = {"size": (24, 32, 3), "queries": ["a dog"],
             "annotations": [{"query": "a dog", "category": {"All"}, "bbox": [[1, 2, 11, 12]], "idx": [0, 1]}]}
    lmdb_path, pickle_path = write_mg_legacy(tmp_path / "vg", {"5": encode_jpeg(32, 24)}, {"5": entry})
    convert_mg_legacy(lmdb_path, pickle_path, "test", tmp_path / "out")
    record = read_manifest(tmp_path / "out" / "test.jsonl")[0]
    assert record["queries"] == [{"text": "a dog", "boxes": [[1, 2, 10, 11]]}]


def test_pickle_with_code_rejected(tmp_path):
    path = tmp_path / "test.pickle"
    path.write_bytes(pickle.dumps({"1": {"size": (1, 1), "hook": print}}, protocol=4))
    with pytest.raises(UnsafePickleError, match="test.pickle"):
        read_annotations(path)


def test_missing_lmdb_names_install(monkeypatch, tmp_path):
    from mmgrounding.data.converters.mg_legacy import open_lmdb

    monkeypatch.setitem(__import__("sys").modules, "lmdb", None)
    with pytest.raises(ImportError, match=r"pip install lmdb==3\.0\.0"):
        open_lmdb(tmp_path)
