"""Pack a dataset manifest into TFRecord shards and read them back with `tf.data`.

A packed split is a folder with

    <split>-00000-of-00003.tfrecord ... <split>-00002-of-00003.tfrecord
    <split>.shards.json

Each record is a `tf.train.Example` with two bytes features:

- `image/encoded`: the original image file, byte for byte (JPEG, PNG, BMP or
  GIF), so nothing is re-encoded and `decode_image_tf` gives the pixels that
  `mmgrounding.data.images.load_image` gives for the file;
- `record/json`: the manifest record of that image as UTF-8 JSON.

`<split>.shards.json` lists the shard files in order with their image counts,
and the images that were skipped with the reason. It contains no paths or
times, so packing the same manifest twice gives byte-identical output.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import tensorflow as tf

from mmgrounding.files import use_default_permissions

from mmgrounding.data.images import ImageError, decode_image, read_image_bytes
from mmgrounding.data.manifest import Record, read_manifest, resolve_image_path
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)

IMAGE_FEATURE = "image/encoded"
RECORD_FEATURE = "record/json"
INDEX_SUFFIX = ".shards.json"
INDEX_FORMAT = "mmgrounding-tfrecords"
INDEX_VERSION = 1

# Skipped images beyond this many are logged at DEBUG level only; all of them
# are listed in the index file.
_MAX_SKIP_WARNINGS = 20
# Images decoded ahead of the writer; bounds the encoded bytes held in memory.
_DECODE_WINDOW = 64


class _PreparedImage(NamedTuple):
    record: Record
    path: Path
    data: bytes | None
    reason: str | None
    # The failure without the path, so the index contains no absolute paths.
    detail: str | None


def write_shards(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    images_per_shard: int = 1000,
    *,
    split: str | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Pack the images and records of one manifest into TFRecord shards.

    Every image is decoded once with `mmgrounding.data.images.decode_image`.
    An image that fails to decode, or whose decoded size differs from the
    record's width and height (its boxes would not line up), is skipped,
    counted by reason and logged. A bad image never stops the run.

    Shards are written under temporary names and renamed once all are
    complete, because the `-of-NNNNN` part depends on how many images were
    skipped. An interrupted run removes its temporary files, and leftovers of
    a killed run are removed by the next run. Shards of this split from an
    earlier run that are not part of the new output are deleted, so re-running
    gives identical output.

    Args:
        manifest_path: a `<split>.jsonl` manifest; image paths are relative
            to its folder.
        out_dir: the folder for the shards and `<split>.shards.json`,
            created if missing.
        images_per_shard: the number of images per shard; only the last
            shard contains fewer.
        split: the name used in the file names; defaults to the manifest
            name without `.jsonl`.
        num_workers: the number of threads that read and decode images;
            defaults to min(8, CPU count).

    Returns:
        a summary dict with keys `split`, `manifest`, `out_dir`, `index` (the
        `.shards.json` path), `images` (records in the manifest), `written`,
        `skipped`, `skipped_by_reason` (reason -> count), `skipped_images`
        (list of {image_id, image, reason, detail}), `shards` (file names),
        `shard_counts` and `bytes` (encoded image bytes written).

    Raises:
        FileNotFoundError: the manifest does not exist.
        mmgrounding.data.manifest.ManifestError: a manifest line is invalid.
        ValueError: `images_per_shard`, `split` or `num_workers` is invalid.
    """
    manifest_path = Path(manifest_path)
    out_dir = Path(out_dir)
    split = _split_name(manifest_path, split)
    if isinstance(images_per_shard, bool) or not isinstance(images_per_shard, int) or images_per_shard < 1:
        raise ValueError(f"images_per_shard must be a positive integer, got {images_per_shard!r}")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")

    records = read_manifest(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_partial_shards(out_dir, split)
    logger.info("packing %d images of %s into %s", len(records), manifest_path, out_dir)

    skipped_images: list[dict[str, str]] = []
    shard_counts: list[int] = []
    temporary_paths: list[Path] = []
    total_bytes = 0
    writer: tf.io.TFRecordWriter | None = None
    try:
        with Progress(len(records), f"packing {split}", unit="images", log=logger) as progress:
            for prepared in _prepare_images(records, manifest_path.parent, num_workers):
                progress.update()
                if prepared.reason is not None:
                    skipped_images.append(_log_skip(prepared, len(skipped_images)))
                    continue
                if writer is None or shard_counts[-1] == images_per_shard:
                    if writer is not None:
                        writer.close()
                    temporary_paths.append(out_dir / f".{split}-{len(temporary_paths):05d}.tfrecord.partial")
                    writer = tf.io.TFRecordWriter(str(temporary_paths[-1]))
                    shard_counts.append(0)
                writer.write(_example_bytes(prepared.data, prepared.record))
                shard_counts[-1] += 1
                total_bytes += len(prepared.data)
        if writer is not None:
            writer.close()
            writer = None
        shard_names = [_shard_name(split, index, len(temporary_paths)) for index in range(len(temporary_paths))]
        for temporary, name in zip(temporary_paths, shard_names):
            os.replace(temporary, out_dir / name)
    except BaseException:
        if writer is not None:
            writer.close()
        for temporary in temporary_paths:
            temporary.unlink(missing_ok=True)
        raise

    skipped_by_reason = dict(sorted(collections.Counter(item["reason"] for item in skipped_images).items()))
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "split": split,
        "manifest": manifest_path.name,
        "features": {IMAGE_FEATURE: "original encoded image file", RECORD_FEATURE: "manifest record as UTF-8 JSON"},
        "images": len(records),
        "written": sum(shard_counts),
        "skipped": len(skipped_images),
        "skipped_by_reason": skipped_by_reason,
        "shards": [{"file": name, "count": count} for name, count in zip(shard_names, shard_counts)],
        "skipped_images": skipped_images,
    }
    index_path = out_dir / f"{split}{INDEX_SUFFIX}"
    _write_json_atomically(index_path, index)
    _remove_stale_shards(out_dir, split, keep=set(shard_names))

    if skipped_images:
        logger.warning(
            "%s: skipped %d of %d images (%s); the list is in %s",
            split,
            len(skipped_images),
            len(records),
            ", ".join(f"{reason}: {count}" for reason, count in skipped_by_reason.items()),
            index_path,
        )
    if not shard_names:
        logger.error("%s: no image could be packed, so %s lists no shards", split, index_path)
    return {
        "split": split,
        "manifest": str(manifest_path),
        "out_dir": str(out_dir),
        "index": str(index_path),
        "images": len(records),
        "written": sum(shard_counts),
        "skipped": len(skipped_images),
        "skipped_by_reason": skipped_by_reason,
        "skipped_images": skipped_images,
        "shards": shard_names,
        "shard_counts": shard_counts,
        "bytes": total_bytes,
    }


def shard_files(path_or_dir: str | os.PathLike, split: str | None = None) -> list[str]:
    """Return the shard paths of a packed split, in order.

    Args:
        path_or_dir: a folder written by `write_shards`, a `<split>.shards.json`
            index, or a single `.tfrecord` shard.
        split: the split to read from a folder; may be omitted when the
            folder contains exactly one index.

    Raises:
        FileNotFoundError: the folder, the index or a listed shard is missing.
        ValueError: the split is ambiguous or the index is malformed.
    """
    path = Path(path_or_dir)
    if path.is_file() and path.name.endswith(".tfrecord"):
        return [str(path)]
    index_path = _find_index(path, split)
    index = _read_index(index_path)

    files = []
    for shard in index["shards"]:
        shard_path = index_path.parent / shard["file"]
        if not shard_path.is_file():
            raise FileNotFoundError(
                f"shard {shard_path} listed in {index_path} is missing; pack the split again with write_shards"
            )
        files.append(str(shard_path))
    return files


def read_shards(path_or_dir: str | os.PathLike, split: str | None = None) -> tf.data.Dataset:
    """Read packed shards as a dataset of encoded images and their records.

    Args:
        path_or_dir, split: as for `shard_files`.

    Returns:
        a `tf.data.Dataset` in the packing order, one element per image:
        {"image_bytes": tf.string [], "record_json": tf.string []}. Decode the
        image with `decode_image_tf` and the record with `json.loads`.

    Raises:
        as `shard_files`.
    """
    files = shard_files(path_or_dir, split)
    dataset = tf.data.TFRecordDataset(tf.constant(files, dtype=tf.string))
    return dataset.map(_parse_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def decode_image_tf(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode one encoded image inside a TensorFlow graph.

    Args:
        image_bytes: tf.string [], the contents of a JPEG, PNG, BMP or GIF file.

    Returns:
        uint8 [height, width, 3] RGB: the first frame of a GIF, alpha dropped,
        EXIF orientation ignored. JPEGs use the accurate integer DCT, which
        matches OpenCV, so JPEG, PNG and RGB BMP files give the same pixels as
        `load_image`.

    NOTE: checked with TensorFlow 2.21, where the results differ from
    `load_image` in three cases. Palette (8-bit colour) BMPs decode as gray
    because TensorFlow ignores the palette. Transparent GIF pixels come out
    black instead of their palette colour. CMYK JPEGs can differ by 1.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def _split_name(manifest_path: Path, split: str | None) -> str:
    if split is None:
        name = manifest_path.name
        split = name[: -len(".jsonl")] if name.endswith(".jsonl") else manifest_path.stem
    if not split or not re.fullmatch(r"[A-Za-z0-9_.\-]+", split) or split.startswith("."):
        raise ValueError(
            f"split name {split!r} is not usable in file names; pass split= with letters, digits, '_', '-' or '.'"
        )
    return split


def _shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _prepare_images(records: list[Record], dataset_dir: Path, num_workers: int) -> Iterator[_PreparedImage]:
    """Read and decode images on `num_workers` threads, yielding them in manifest order.

    OpenCV releases the GIL while decoding, so threads decode in parallel.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as executor:
        for start in range(0, len(records), _DECODE_WINDOW):
            window = records[start : start + _DECODE_WINDOW]
            yield from executor.map(lambda record: _prepare_image(record, dataset_dir), window)


def _prepare_image(record: Record, dataset_dir: Path) -> _PreparedImage:
    path = resolve_image_path(dataset_dir, record["image"])
    try:
        data = read_image_bytes(path)
        image = decode_image(data, source=path)
    except ImageError as error:
        return _PreparedImage(record, path, None, error.reason, error.detail)
    height, width = image.shape[:2]
    if (width, height) != (record["width"], record["height"]):
        detail = (
            f"decoded size {width}x{height} differs from the manifest's "
            f"{record['width']}x{record['height']}; fix the manifest or the image"
        )
        return _PreparedImage(record, path, None, "size_mismatch", detail)
    return _PreparedImage(record, path, data, None, None)


def _log_skip(prepared: _PreparedImage, already_skipped: int) -> dict[str, str]:
    level = logging.WARNING if already_skipped < _MAX_SKIP_WARNINGS else logging.DEBUG
    logger.log(
        level,
        "skipping image %s (%s): %s: %s",
        prepared.record["image_id"],
        prepared.reason,
        prepared.path,
        prepared.detail,
    )
    if already_skipped + 1 == _MAX_SKIP_WARNINGS:
        logger.warning("further skipped images are logged at DEBUG level only")
    return {
        "image_id": str(prepared.record["image_id"]),
        "image": prepared.record["image"],
        "reason": prepared.reason,
        "detail": prepared.detail,
    }


def _example_bytes(image_data: bytes, record: Record) -> bytes:
    record_json = json.dumps(record, ensure_ascii=False).encode("utf-8")
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_data])),
                RECORD_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[record_json])),
            }
        )
    )
    # Features is a protobuf map, whose default serialisation order is not
    # guaranteed; deterministic=True sorts the keys so re-runs are identical.
    return example.SerializeToString(deterministic=True)


_FEATURE_SPEC = {
    IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
    RECORD_FEATURE: tf.io.FixedLenFeature([], tf.string),
}


def _parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    features = tf.io.parse_single_example(serialized, _FEATURE_SPEC)
    return {"image_bytes": features[IMAGE_FEATURE], "record_json": features[RECORD_FEATURE]}


def _find_index(path: Path, split: str | None) -> Path:
    if path.is_file():
        if not path.name.endswith(INDEX_SUFFIX):
            raise ValueError(f"{path} is neither a {INDEX_SUFFIX} index nor a .tfrecord shard")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"packed dataset {path} not found; pack a manifest with write_shards first")
    if split is not None:
        index_path = path / f"{split}{INDEX_SUFFIX}"
        if not index_path.is_file():
            available = sorted(p.name[: -len(INDEX_SUFFIX)] for p in path.glob(f"*{INDEX_SUFFIX}"))
            raise FileNotFoundError(
                f"{index_path} not found; packed splits in {path}: {available or 'none'}; "
                "pack this split with write_shards"
            )
        return index_path
    indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) == 1:
        return indexes[0]
    if not indexes:
        raise FileNotFoundError(f"no {INDEX_SUFFIX} index in {path}; pack a manifest with write_shards first")
    names = [p.name[: -len(INDEX_SUFFIX)] for p in indexes]
    raise ValueError(f"{path} contains several packed splits {names}; pass split= to choose one")


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not valid JSON ({error.msg}); pack the split again") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{index_path} is not a shard index written by write_shards")
    if index.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{index_path} has index version {index.get('version')!r}, but this reader expects "
            f"{INDEX_VERSION}; pack the split again"
        )
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(shard, dict) and isinstance(shard.get("file"), str) and "/" not in shard["file"] for shard in shards
    ):
        raise ValueError(f"{index_path}: 'shards' must be a list of {{'file': name, 'count': n}}")
    return index


def _write_json_atomically(path: Path, content: dict[str, Any]) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    use_default_permissions(temporary)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(content, stream, ensure_ascii=False, indent=1)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _remove_partial_shards(out_dir: Path, split: str) -> None:
    pattern = re.compile(rf"\.{re.escape(split)}-\d{{5,}}\.tfrecord\.partial")
    _remove_matching(out_dir, pattern, keep=set(), description="temporary shard of an interrupted run")


def _remove_stale_shards(out_dir: Path, split: str, keep: set[str]) -> None:
    pattern = re.compile(rf"{re.escape(split)}-\d{{5,}}-of-\d{{5,}}\.tfrecord")
    _remove_matching(out_dir, pattern, keep=keep, description="shard of an earlier run")


def _remove_matching(out_dir: Path, pattern: re.Pattern, keep: Iterable[str], description: str) -> None:
    keep = set(keep)
    for entry in sorted(out_dir.iterdir()):
        if entry.is_file() and pattern.fullmatch(entry.name) and entry.name not in keep:
            logger.info("removing %s %s", description, entry)
            entry.unlink()
