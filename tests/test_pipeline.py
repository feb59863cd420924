"""Training and evaluation pipelines over manifests and packed shards."""

import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from mmgrounding.data.manifest import write_manifest
from mmgrounding.data.pipeline import ShardTrainingData, TrainingData, evaluation_images, training_data
from mmgrounding.data.tfrecords import write_shards


def write_dataset(folder, count, corrupt=(), captions_per_image=2, size=40):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        name = f"images/{index:03d}.png"
        image = np.full((size, size + 10, 3), index * 20 % 255, np.uint8)
        cv2.imwrite(str(folder / name), image)
        if index in corrupt:
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: len(data) // 2])
        records.append(
            {
                "image_id": f"img{index:03d}",
                "image": name,
                "width": size + 10,
                "height": size,
                "captions": [f"caption {c} of image {index}" for c in range(captions_per_image)],
                "queries": [{"text": f"thing {index}", "boxes": [[0, 0, 9, 9]]}],
            }
        )
    write_manifest(folder / "train.jsonl", records)
    return folder / "train.jsonl"


def image_ids(batch):
    return [caption.decode().rsplit(" ", 1)[1] for caption in batch["caption"].numpy()]


def test_epochs_visit_each_image_once_in_fresh_orders(tmp_path):
    manifest = write_dataset(tmp_path, 12)
    data = TrainingData(manifest, batch_size=4, image_size=32, seed=3)
    batches = list(data.dataset().take(2 * data.steps_per_epoch))
    epochs = [sum((image_ids(b) for b in batches[i : i + 3]), []) for i in (0, 3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(str(i) for i in range(12))
    assert epochs[0] != epochs[1]
    for batch in batches:
        assert len(set(image_ids(batch))) == 4
        assert batch["image"].shape == (4, 32, 32, 3)


def test_sampler_is_seeded(tmp_path):
    manifest = write_dataset(tmp_path, 8)
    first = TrainingData(manifest, 4, 32, seed=5).epoch_order(2)
    second = TrainingData(manifest, 4, 32, seed=5).epoch_order(2)
    other = TrainingData(manifest, 4, 32, seed=6).epoch_order(2)
    assert first[1] == second[1]
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.array_equal(first[0], other[0])


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    manifest = write_dataset(tmp_path, 9, corrupt={4})
    data = TrainingData(manifest, batch_size=4, image_size=32, seed=0)
    seen = sum((image_ids(b) for b in data.dataset().take(4)), [])
    assert "4" not in seen
    # Four batches span two epochs: the image fails twice but counts once.
    assert data.skipped.counts == {"image_error": 1}


def test_too_few_images_for_batch_is_rejected(tmp_path):
    manifest = write_dataset(tmp_path, 3)
    with pytest.raises(ValueError, match="fewer than batch_size 4"):
        TrainingData(manifest, batch_size=4, image_size=32)


def test_queries_as_training_texts(tmp_path):
    manifest = write_dataset(tmp_path, 4)
    data = TrainingData(manifest, batch_size=4, image_size=32, text_source="queries")
    batch = next(iter(data.dataset()))
    assert sorted(c.decode() for c in batch["caption"].numpy()) == [f"thing {i}" for i in range(4)]


def test_shards_train_like_the_manifest(tmp_path):
    manifest = write_dataset(tmp_path / "data", 10, corrupt={7})
    summary = write_shards(manifest, tmp_path / "shards", images_per_shard=4)
    assert summary["skipped"] == 1  # the packer drops the corrupt file already
    data = training_data(tmp_path / "shards", batch_size=3, image_size=32, seed=1)
    assert isinstance(data, ShardTrainingData)
    assert data.steps_per_epoch == 3
    batches = list(data.dataset().take(6))
    for start in (0, 3):
        epoch = sum((image_ids(b) for b in batches[start : start + 3]), [])
        assert len(set(epoch)) == 9  # 9 of the 9 packed images, none twice
        assert "7" not in epoch
    assert batches[0]["image"].shape == (3, 32, 32, 3)


def test_evaluation_yields_each_image_once_and_flags_failures(tmp_path):
    manifest = write_dataset(tmp_path, 5, corrupt={2})
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    records[3]["width"] += 1  # the annotation no longer matches the file
    write_manifest(manifest, records)
    items = list(evaluation_images(manifest, 32))
    assert [item.record["image_id"] for item in items] == [f"img{i:03d}" for i in range(5)]
    assert [item.image is None for item in items] == [False, False, True, True, False]
    assert "decodes to" in items[3].error
