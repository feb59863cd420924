import json

import pytest

from mmgrounding.data.converters import add_convert_parser, convert_coco
from mmgrounding.data.manifest import read_manifest
from tests.converter_sources import write_coco, write_image


@pytest.fixture
def source(tmp_path):
    images = tmp_path / "train2014"
    entries = [
        {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 40, "height": 30},
        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 40, "height": 30},
        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "width": 40, "height": 30},
        {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 40, "height": 30},
    ]
    captions = [
        (25, "A  giraffe\nstanding in the grass. "),
        (9, "Two plates of food."),
        (25, "   "),
        (25, "A tall giraffe."),
        (30, "A gray photo."),
    ]
    annotations = write_coco(tmp_path, entries, captions)
    write_image(images / entries[0]["file_name"], 40, 30, kind="png_alpha")
    write_image(images / entries[1]["file_name"], 40, 30)
    # Stored 30x40 although the JSON says 40x30: without boxes, the file's size is used.
    write_image(images / entries[2]["file_name"], 30, 40, kind="gray_jpeg")
    return annotations, images


def test_convert_captions(source, tmp_path):
    annotations, images = source
    out = tmp_path / "coco"
    summary = convert_coco(annotations, images, "train", out)

    records = read_manifest(out / "train.jsonl")
    assert [r["image_id"] for r in records] == [9, 25, 30]
    assert records[1]["captions"] == ["A giraffe standing in the grass.", "A tall giraffe."]
    assert records[1]["queries"] == []
    assert (records[2]["width"], records[2]["height"]) == (30, 40)
    assert summary["repaired"]["images"] == {"size_taken_from_file": 1}
    assert summary["skipped"]["images"] == {"no_captions": 1}
    assert summary["skipped"]["captions"] == {"empty_caption": 1}
    assert summary["kept"]["captions"] == 4
    assert (out / "images").is_symlink()


def test_images_link_to_other_folder_rejected(source, tmp_path):
    annotations, images = source
    out = tmp_path / "coco"
    convert_coco(annotations, images, "train", out)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="already links to"):
        convert_coco(annotations, other, "train", out)


def test_invalid_split_name_rejected(source, tmp_path):
    annotations, images = source
    with pytest.raises(ValueError, match="split name '../x' is invalid"):
        convert_coco(annotations, images, "../x", tmp_path / "out")


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="mmgrounding")
    add_convert_parser(parser.add_subparsers(dest="command"))
    return parser


@pytest.mark.parametrize(
    "source_name, expected",
    [
        ("coco", "captions_train2014.json"),
        ("visual-genome", "region_descriptions.json"),
        ("flickr30k", "Annotations/<id>.xml"),
        ("referit", "refs(unc).p"),
        ("mg-legacy", "data.mdb"),
    ],
)
def test_cli_help_lists_files(source_name, expected, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["convert", source_name, "--help"])
    assert expected in capsys.readouterr().out


def test_cli_runs_converter(source, tmp_path):
    annotations, images = source
    out = tmp_path / "cli"
    args = _parser().parse_args(
        ["convert", "coco", "--annotations", str(annotations), "--images", str(images),
         "--split", "train", "--out", str(out), "--check-images", "header"]
    )
    assert args.handler(args) == 0
    assert json.loads((out / "train.summary.json").read_text(encoding="utf-8"))["kept"]["images"] == 3


def test_cli_missing_file_exit_status(tmp_path):
    args = _parser().parse_args(
        ["convert", "coco", "--annotations", str(tmp_path / "none.json"), "--images", str(tmp_path),
         "--split", "train", "--out", str(tmp_path / "out")]
    )
    assert args.handler(args) == 2
