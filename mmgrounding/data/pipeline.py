"""tf.data input pipelines for training and evaluation.

Training: every epoch visits each image once, in a fresh order drawn from its
own seeded generator, and draws one of the image's texts (a caption, or a
region phrase) at random. The order is cut into batches of distinct images.
The last incomplete batch of an epoch is dropped, so no batch spans two
epochs.
Images are decoded in parallel with `load_image`; one that fails to decode is
skipped, counted and logged, and training goes on.

Evaluation: images are read in manifest order, once each, with all of their
queries, so each image is decoded and encoded once.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import tensorflow as tf

from mmgrounding.data.images import ImageError, load_image
from mmgrounding.data.manifest import Record, read_manifest, resolve_image_path

logger = logging.getLogger(__name__)

TEXT_SOURCES = ("captions", "queries")


def resize_for_model(image: np.ndarray, image_size: int) -> np.ndarray:
    """RGB uint8 [h, w, 3] -> float32 [size, size, 3] in 0..255.

    Bilinear, aspect ratio not kept: evaluation resizes heatmaps back to the
    original width and height.
    """
    resized = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    return resized.astype(np.float32)


@dataclass
class SkipCounter:
    """Thread-safe count of distinct images skipped, by reason.

    Training meets a broken image again in every epoch; it is counted and
    logged once.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, reason: str, key: str, detail: str) -> None:
        """Count image `key` as skipped for `reason` unless it already is."""
        with self._lock:
            if (reason, key) in self._seen:
                return
            self._seen.add((reason, key))
            count = self.counts.get(reason, 0) + 1
            self.counts[reason] = count
            self.examples.setdefault(reason, [])
            if len(self.examples[reason]) < 5:
                self.examples[reason].append(detail)
        # Log the first few of each reason, then every 100th, so a folder of
        # broken files cannot flood the log.
        if count <= 5 or count % 100 == 0:
            logger.warning("skipped image (%s, %d so far): %s", reason, count, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def record_texts(record: Record, text_source: str) -> list[str]:
    """Return the texts an image can be trained with: its captions or its phrases."""
    if text_source == "captions":
        texts = record.get("captions", [])
    elif text_source == "queries":
        texts = [query["text"] for query in record.get("queries", [])]
    else:
        raise ValueError(f"text_source {text_source!r} must be one of {TEXT_SOURCES}")
    return [text for text in texts if text.split()]


class TrainingData:
    """The training examples of one manifest and the per-epoch sampler.

    Args:
      manifest: path of a `<split>.jsonl` manifest.
      batch_size: images per batch, all distinct.
      image_size: side of the square model input.
      text_source: "captions" (COCO) or "queries" (Visual Genome phrases).
      seed: seed of the sampler; epoch e uses the generator seeded (seed, e).
    """

    def __init__(self, manifest, batch_size, image_size, text_source="captions", seed=0):
        self.manifest = Path(manifest)
        records = read_manifest(self.manifest)
        self.paths: list[str] = []
        self.texts: list[list[str]] = []
        without_text = 0
        for record in records:
            texts = record_texts(record, text_source)
            if not texts:
                without_text += 1
                continue
            self.paths.append(str(resolve_image_path(self.manifest.parent, record["image"])))
            self.texts.append(texts)
        if without_text:
            logger.info("%s: %d images have no %s and are not used for training", self.manifest, without_text, text_source)
        if len(self.paths) < batch_size:
            raise ValueError(
                f"{self.manifest} has {len(self.paths)} images with {text_source}, fewer than "
                f"batch_size {batch_size}; lower batch_size or use a larger split"
            )
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.skipped = SkipCounter()

    @property
    def images(self) -> int:
        return len(self.paths)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.paths) // self.batch_size

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, list[str]]:
        """Image indices and drawn texts of one epoch, cut to whole batches."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.paths))[: self.steps_per_epoch * self.batch_size]
        texts = [self.texts[i][rng.integers(len(self.texts[i]))] for i in order]
        return order, texts

    def _load(self, path: bytes) -> tuple[np.ndarray, bool]:
        try:
            image = load_image(path.decode("utf-8"))
        except ImageError as error:
            self.skipped.add("image_error", path.decode("utf-8"), str(error))
            return np.zeros((self.image_size, self.image_size, 3), np.float32), False
        return resize_for_model(image, self.image_size), True

    def _epoch_arrays(self, epoch) -> tuple[np.ndarray, np.ndarray]:
        order, texts = self.epoch_order(int(epoch))
        paths = np.array([self.paths[i] for i in order], dtype=object)
        return paths, np.array(texts, dtype=object)

    def dataset(self, first_epoch: int = 0) -> tf.data.Dataset:
        """Return an endless dataset of {"image", "caption"} batches, epoch after epoch.

        Pass `steps_per_epoch` to `fit`. An image that fails to decode is left
        out of its epoch, which then has at most one batch less. The stream
        never runs dry, because it goes on into the next epoch's order.
        """
        size = self.image_size

        def load(path, caption):
            image, ok = tf.numpy_function(self._load, [path], [tf.float32, tf.bool], stateful=False)
            image.set_shape([size, size, 3])
            ok.set_shape([])
            return {"image": image, "caption": caption}, ok

        def one_epoch(epoch):
            paths, captions = tf.numpy_function(
                self._epoch_arrays, [epoch], [tf.string, tf.string], stateful=False
            )
            # numpy_function outputs have no static shape; text encoders
            # check for a rank-1 batch of captions.
            paths.set_shape([None])
            captions.set_shape([None])
            examples = tf.data.Dataset.from_tensor_slices((paths, captions))
            examples = examples.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            examples = examples.filter(lambda example, ok: ok).map(lambda example, ok: example)
            # Batching inside the epoch keeps every batch's images distinct.
            return examples.batch(self.batch_size, drop_remainder=True)

        epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
        return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


class ShardTrainingData:
    """Training batches read from TFRecord shards written by `mmgrounding pack`.

    Shards contain each image's original encoded bytes and its manifest
    record. Every epoch reads the shards through a shuffle buffer of
    `shuffle_buffer` images that is reshuffled each pass. A buffer of at least
    the split's size gives a full permutation. Batches are cut inside the
    epoch, so no batch contains an image twice, and each image gets one text
    drawn at random. Images that fail
    to decode, or that have no text, are skipped and counted.

    Args:
      shards: a folder written by `write_shards`, its `<split>.shards.json`
        index, or one `.tfrecord` file.
      batch_size, image_size, text_source, seed: as for `TrainingData`.
      split: the split to read from a folder that holds several.
      shuffle_buffer: images held by the shuffle buffer.
    """

    def __init__(self, shards, batch_size, image_size, text_source="captions", seed=0, split=None, shuffle_buffer=4096):
        from mmgrounding.data.tfrecords import shard_files

        if text_source not in TEXT_SOURCES:
            raise ValueError(f"text_source {text_source!r} must be one of {TEXT_SOURCES}")
        self.source = shards
        self.split = split
        self.files = shard_files(shards, split)
        self.images = self._count_images(Path(shards), split)
        if self.images < batch_size:
            raise ValueError(
                f"{shards} contains {self.images} images, fewer than batch_size {batch_size}; lower batch_size"
            )
        self.batch_size = batch_size
        self.image_size = image_size
        self.text_source = text_source
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.skipped = SkipCounter()

    def _count_images(self, shards: Path, split) -> int:
        index = None
        if shards.is_file() and shards.name.endswith(".shards.json"):
            index = shards
        elif shards.is_dir():
            candidates = [shards / f"{split}.shards.json"] if split else sorted(shards.glob("*.shards.json"))
            index = candidates[0] if candidates and candidates[0].is_file() else None
        if index is not None:
            import json

            return int(json.loads(index.read_text(encoding="utf-8"))["written"])
        # A single shard without its index: count its records once.
        return sum(1 for _ in tf.data.TFRecordDataset(self.files))

    @property
    def steps_per_epoch(self) -> int:
        return self.images // self.batch_size

    def _decode(self, image_bytes: bytes, record_json: bytes, draw: float) -> tuple[np.ndarray, bytes, bool]:
        import json

        from mmgrounding.data.images import decode_image

        blank = np.zeros((self.image_size, self.image_size, 3), np.float32)
        record = json.loads(record_json.decode("utf-8"))
        texts = record_texts(record, self.text_source)
        if not texts:
            self.skipped.add(f"no_{self.text_source}", str(record.get("image_id")), str(record.get("image_id")))
            return blank, b"", False
        try:
            image = decode_image(image_bytes, source=f"shard record {record.get('image_id')}")
        except ImageError as error:
            self.skipped.add("image_error", str(record.get("image_id")), str(error))
            return blank, b"", False
        text = texts[min(int(draw * len(texts)), len(texts) - 1)]
        return resize_for_model(image, self.image_size), text.encode("utf-8"), True

    def dataset(self, first_epoch: int = 0) -> tf.data.Dataset:
        """Return an endless dataset of {"image", "caption"} batches, as `TrainingData.dataset` does."""
        from mmgrounding.data.tfrecords import read_shards

        size = self.image_size
        # Epoch e continues the seeded stream, so a resumed run differs from
        # an uninterrupted one only in the shuffle order, never in the data.
        tf_seed = self.seed + first_epoch

        def decode(example):
            draw = tf.random.uniform([], seed=tf_seed)
            image, caption, ok = tf.numpy_function(
                self._decode,
                [example["image_bytes"], example["record_json"], draw],
                [tf.float32, tf.string, tf.bool],
                stateful=True,
            )
            image.set_shape([size, size, 3])
            caption.set_shape([])
            ok.set_shape([])
            return {"image": image, "caption": caption}, ok

        examples = read_shards(self.source, self.split)
        epoch = examples.shuffle(self.shuffle_buffer, seed=tf_seed, reshuffle_each_iteration=True)
        epoch = epoch.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        epoch = epoch.filter(lambda example, ok: ok).map(lambda example, ok: example)
        # Batching before repeat() keeps each batch inside one pass.
        return epoch.batch(self.batch_size, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)


def training_data(source, batch_size, image_size, text_source="captions", seed=0):
    """`TrainingData` for a `.jsonl` manifest, `ShardTrainingData` for packed shards."""
    path = Path(source)
    if path.suffix == ".jsonl":
        return TrainingData(path, batch_size, image_size, text_source, seed)
    return ShardTrainingData(path, batch_size, image_size, text_source, seed)


@dataclass
class EvaluationImage:
    """One image of an evaluation pass with all of its queries."""

    record: Record
    image: np.ndarray | None  # float32 [size, size, 3], None when decoding failed
    error: str | None = None


def evaluation_images(manifest, image_size, records=None) -> Iterator[EvaluationImage]:
    """Yield every image of a manifest once, in manifest order, with its queries."""
    manifest = Path(manifest)
    records = read_manifest(manifest) if records is None else records
    for record in records:
        try:
            path = resolve_image_path(manifest.parent, record["image"])
            image = load_image(path)
        except (ImageError, ValueError) as error:
            yield EvaluationImage(record, None, str(error))
            continue
        if image.shape[:2] != (record["height"], record["width"]):
            yield EvaluationImage(
                record,
                None,
                f"{record['image']} decodes to {image.shape[1]}x{image.shape[0]} but the manifest says "
                f"{record['width']}x{record['height']}; boxes would not match, so the image is skipped",
            )
            continue
        yield EvaluationImage(record, resize_for_model(image, image_size))


def find_manifest(data_dir: str | os.PathLike, split: str) -> Path:
    """Return the manifest of `split` in a dataset folder, or raise naming the splits there are."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        available = sorted(p.stem for p in Path(data_dir).glob("*.jsonl")) if Path(data_dir).is_dir() else []
        raise FileNotFoundError(
            f"no manifest for split {split!r} in {data_dir} (looked for {path.name}); "
            f"available splits: {available or 'none'}. Convert the dataset with `mmgrounding convert`."
        )
    return path
