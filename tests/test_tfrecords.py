"""Tests for TFRecord packing (mmgrounding.data.tfrecords) and its Progress helper."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import tensorflow as tf

from mmgrounding.data import tfrecords
from mmgrounding.data.images import load_image
from mmgrounding.data.manifest import ManifestError, write_manifest
from mmgrounding.data.tfrecords import decode_image_tf, read_shards, shard_files, write_shards
from mmgrounding.progress import Progress, format_duration


def _textured_rgb(height: int, width: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3)


def _encode(extension: str, rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return encoded.tobytes()


def _record(image_id: str, image: str, width: int, height: int) -> dict:
    return {
        "image_id": image_id,
        "image": image,
        "width": width,
        "height": height,
        "captions": [f"a picture called {image_id} ."],
        "queries": [{"text": "a picture", "boxes": [[0, 0, width - 1, height - 1]], "categories": ["other"]}],
    }


@pytest.fixture()
def dataset(tmp_path):
    """A converted dataset with six good images and four that must be skipped."""
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    records, good = [], []
    for number, (extension, height, width) in enumerate(
        [(".jpg", 40, 56), (".png", 32, 48), (".bmp", 24, 30), (".jpg", 50, 34), (".png", 20, 20), (".jpg", 36, 36)]
    ):
        data = _encode(extension, _textured_rgb(height, width, number))
        name = f"images/good-{number}{extension}"
        (root / name).write_bytes(data)
        records.append(_record(f"good-{number}", name, width, height))
        good.append(f"good-{number}")

    full = _encode(".jpg", _textured_rgb(40, 40, 99))
    (root / "images/truncated.jpg").write_bytes(full[: len(full) // 2])
    records.insert(2, _record("truncated", "images/truncated.jpg", 40, 40))
    records.insert(4, _record("missing", "images/missing.jpg", 40, 40))
    (root / "images/notes.jpg").write_text("not an image", encoding="utf-8")
    records.append(_record("text", "images/notes.jpg", 40, 40))
    (root / "images/wrong-size.png").write_bytes(_encode(".png", _textured_rgb(10, 12, 7)))
    records.append(_record("wrong-size", "images/wrong-size.png", 40, 40))

    manifest = root / "train.jsonl"
    write_manifest(manifest, records)
    return manifest, records, good


def _read_back(out_dir, split="train"):
    return [
        (element["image_bytes"].numpy(), json.loads(element["record_json"].numpy().decode("utf-8")))
        for element in read_shards(out_dir, split)
    ]


def _folder_contents(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_pack_and_read_back(dataset, tmp_path):
    manifest, records, good = dataset
    out_dir = tmp_path / "packed"

    summary = write_shards(manifest, out_dir, images_per_shard=4)

    assert summary["images"] == 10
    assert summary["written"] == 6
    assert summary["skipped"] == 4
    assert summary["skipped_by_reason"] == {
        "missing": 1,
        "size_mismatch": 1,
        "truncated": 1,
        "unsupported_format": 1,
    }
    assert summary["shards"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert summary["shard_counts"] == [4, 2]
    assert sorted(path.name for path in out_dir.iterdir()) == summary["shards"] + ["train.shards.json"]

    elements = _read_back(out_dir)

    good_records = [record for record in records if record["image_id"] in good]
    assert [record for _, record in elements] == good_records
    for image_bytes, record in elements:
        assert image_bytes == (manifest.parent / record["image"]).read_bytes()
    assert summary["bytes"] == sum(len(image_bytes) for image_bytes, _ in elements)


def test_index_lists_shards_and_skips(dataset, tmp_path):
    manifest, _, _ = dataset
    out_dir = tmp_path / "packed"
    write_shards(manifest, out_dir, images_per_shard=4)

    index = json.loads((out_dir / "train.shards.json").read_text(encoding="utf-8"))

    assert index["split"] == "train"
    assert index["manifest"] == "train.jsonl"
    assert index["shards"] == [
        {"file": "train-00000-of-00002.tfrecord", "count": 4},
        {"file": "train-00001-of-00002.tfrecord", "count": 2},
    ]
    skipped = {item["image_id"]: item["reason"] for item in index["skipped_images"]}
    assert skipped == {
        "truncated": "truncated",
        "missing": "missing",
        "text": "unsupported_format",
        "wrong-size": "size_mismatch",
    }
    assert str(tmp_path) not in json.dumps(index)


def test_skipped_images_are_logged(dataset, tmp_path, caplog):
    manifest, _, _ = dataset

    with caplog.at_level(logging.INFO, logger="mmgrounding"):
        write_shards(manifest, tmp_path / "packed", images_per_shard=4)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("truncated.jpg" in message for message in warnings)
    assert any("skipped 4 of 10 images" in message for message in warnings)
    assert any("packing train: done, 10 images" in record.getMessage() for record in caplog.records)


def test_decode_image_tf_matches_load_image(dataset, tmp_path):
    manifest, _, _ = dataset
    out_dir = tmp_path / "packed"
    write_shards(manifest, out_dir, images_per_shard=4)

    decoded = read_shards(out_dir).map(lambda element: decode_image_tf(element["image_bytes"]))

    for image, (_, record) in zip(decoded, _read_back(out_dir)):
        assert image.dtype == tf.uint8
        assert image.shape == (record["height"], record["width"], 3)
        np.testing.assert_array_equal(
            image.numpy(), load_image(manifest.parent / record["image"]), err_msg=record["image"]
        )


def test_decode_image_tf_gif_under_jpg_name():
    pil_image = pytest.importorskip("PIL.Image")
    import io

    frames = [pil_image.new("RGB", (12, 8), (255, 0, 0)), pil_image.new("RGB", (12, 8), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])

    image = decode_image_tf(tf.constant(buffer.getvalue()))

    assert image.shape == (8, 12, 3)
    np.testing.assert_array_equal(image.numpy(), np.full((8, 12, 3), (255, 0, 0), np.uint8))


def test_rerun_gives_identical_output(dataset, tmp_path):
    manifest, _, _ = dataset
    out_dir = tmp_path / "packed"
    write_shards(manifest, out_dir, images_per_shard=4)
    first = _folder_contents(out_dir)

    write_shards(manifest, out_dir, images_per_shard=4, num_workers=1)

    assert _folder_contents(out_dir) == first


def test_interrupted_run_leaves_no_shards(dataset, tmp_path, monkeypatch):
    manifest, _, _ = dataset
    reference_dir = tmp_path / "reference"
    write_shards(manifest, reference_dir, images_per_shard=4)
    out_dir = tmp_path / "packed"
    real_decode = tfrecords.decode_image
    calls = []

    def failing_decode(data, source):
        calls.append(source)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_decode(data, source)

    monkeypatch.setattr(tfrecords, "decode_image", failing_decode)
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest, out_dir, images_per_shard=2, num_workers=1)
    monkeypatch.setattr(tfrecords, "decode_image", real_decode)

    assert list(out_dir.iterdir()) == []

    write_shards(manifest, out_dir, images_per_shard=4)

    assert _folder_contents(out_dir) == _folder_contents(reference_dir)


def test_rerun_removes_stale_and_partial_shards(dataset, tmp_path):
    manifest, _, _ = dataset
    out_dir = tmp_path / "packed"
    write_shards(manifest, out_dir, images_per_shard=1)
    assert len(shard_files(out_dir)) == 6
    (out_dir / ".train-00003.tfrecord.partial").write_bytes(b"left by a killed run")
    (out_dir / "val-00000-of-00001.tfrecord").write_bytes(b"another split")

    summary = write_shards(manifest, out_dir, images_per_shard=4)

    expected = set(summary["shards"]) | {"train.shards.json", "val-00000-of-00001.tfrecord"}
    assert {path.name for path in out_dir.iterdir()} == expected


def test_read_shards_path_forms(dataset, tmp_path):
    manifest, _, _ = dataset
    out_dir = tmp_path / "packed"
    summary = write_shards(manifest, out_dir, images_per_shard=4)

    from_index = shard_files(out_dir / "train.shards.json")
    single = shard_files(out_dir / summary["shards"][1])

    assert shard_files(out_dir) == [str(out_dir / name) for name in summary["shards"]]
    assert from_index == shard_files(out_dir, "train")
    assert single == [str(out_dir / summary["shards"][1])]
    assert len(list(read_shards(single[0]))) == 2


def test_read_shards_errors(dataset, tmp_path):
    manifest, _, _ = dataset
    out_dir = tmp_path / "packed"
    write_shards(manifest, out_dir, images_per_shard=4)
    write_shards(manifest, out_dir, images_per_shard=4, split="val")

    with pytest.raises(ValueError, match="pass split="):
        shard_files(out_dir)
    with pytest.raises(FileNotFoundError, match="test.shards.json"):
        shard_files(out_dir, "test")
    with pytest.raises(FileNotFoundError, match="absent"):
        shard_files(tmp_path / "absent")
    (out_dir / "val-00001-of-00002.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="val-00001-of-00002.tfrecord"):
        shard_files(out_dir, "val")
    (out_dir / "train.shards.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        shard_files(out_dir, "train")


def test_write_shards_rejects_bad_arguments(dataset, tmp_path):
    manifest, _, _ = dataset

    with pytest.raises(ValueError, match="images_per_shard"):
        write_shards(manifest, tmp_path / "packed", images_per_shard=0)
    with pytest.raises(ValueError, match="split name"):
        write_shards(manifest, tmp_path / "packed", split="../escape")
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        write_shards(tmp_path / "absent.jsonl", tmp_path / "packed")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": 1}\n', encoding="utf-8")
    with pytest.raises(ManifestError, match="bad.jsonl:1"):
        write_shards(bad, tmp_path / "packed")


def test_all_images_skipped_gives_empty_dataset(tmp_path):
    root = tmp_path / "dataset"
    root.mkdir()
    write_manifest(root / "test.jsonl", [_record("gone", "images/gone.jpg", 10, 10)])

    summary = write_shards(root / "test.jsonl", tmp_path / "packed")

    assert summary["written"] == 0
    assert summary["shards"] == []
    assert list(read_shards(tmp_path / "packed", "test")) == []


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_rate_and_eta(caplog):
    clock = _FakeClock()
    log = logging.getLogger("test.progress")

    with caplog.at_level(logging.INFO, logger="test.progress"):
        with Progress(100, "packing", unit="images", interval_s=5.0, log=log, clock=clock) as progress:
            for _ in range(40):
                clock.now += 0.5
                progress.update()

    messages = [record.getMessage() for record in caplog.records]
    # 40 updates over 20 s with a line at most every 5 s: four progress lines and a final one.
    assert len(messages) == 5
    assert messages[0] == "packing: 10/100 images (10.0%), 2.0 images/s, ETA 45.0 s"
    assert messages[3] == "packing: 40/100 images (40.0%), 2.0 images/s, ETA 30.0 s"
    assert messages[4] == "packing: done, 40 images in 20.0 s (2.0 images/s)"


def test_progress_reports_interruption(caplog):
    clock = _FakeClock()
    log = logging.getLogger("test.progress")

    with caplog.at_level(logging.INFO, logger="test.progress"), pytest.raises(RuntimeError):
        with Progress(None, "evaluating", log=log, clock=clock) as progress:
            clock.now += 3.0
            progress.update(7)
            raise RuntimeError("stop")

    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == "evaluating: stopped by RuntimeError after 7 of ? items in 3.0 s"


def test_format_duration():
    assert format_duration(4.25) == "4.2 s"
    assert format_duration(59.94) == "59.9 s"
    assert format_duration(61) == "0:01:01"
    assert format_duration(3 * 3600 + 125) == "3:02:05"
