"""One deterministic evaluation pass over a manifest and its results file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from mmgrounding.data.manifest import read_manifest
from mmgrounding.data.pipeline import evaluation_images
from mmgrounding.evaluation.box_accuracy import attention_correctness, box_accuracy_hit
from mmgrounding.evaluation.heatmaps import predicted_point, resize_heatmap
from mmgrounding.evaluation.pointing import point_in_boxes, union_of_boxes
from mmgrounding.progress import Progress

logger = logging.getLogger(__name__)

PROTOCOLS = ("paper", "union_first_box")


@dataclass(frozen=True)
class EvaluationOptions:
    """Choices that change which queries count and how; all recorded.

    protocol: "paper" scores each query against each of its boxes and applies
      `min_box_area` to the union box. "union_first_box" follows later work:
      a hit is tested against the union box and the area rule looks at the
      first box only.
    query_mode: "auto" feeds the whole sentence and picks the phrase's words
      by index where a query has `sentence` and `tokens` (Flickr30k). Other
      queries, and all queries under "phrase", feed the phrase alone.
    """

    tolerance_px: float = 0.0
    union_box: bool = False
    min_box_area: float = 0.05
    protocol: str = "paper"
    query_mode: str = "auto"
    images_per_batch: int = 8

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} must be one of {PROTOCOLS}")
        if self.query_mode not in ("auto", "phrase"):
            raise ValueError(f"query_mode {self.query_mode!r} must be 'auto' or 'phrase'")
        if not 0 <= self.min_box_area < 1:
            raise ValueError(f"min_box_area {self.min_box_area} must be in [0, 1)")
        if self.tolerance_px < 0:
            raise ValueError(f"tolerance_px {self.tolerance_px} must not be negative")


def _skip_reason(query: dict[str, Any], record: dict[str, Any], options: EvaluationOptions) -> str | None:
    if query.get("skip_reason"):
        return str(query["skip_reason"])
    boxes = query.get("boxes", [])
    if not boxes:
        return "no_boxes"
    if options.min_box_area > 0:
        rule_boxes = boxes[:1] if options.protocol == "union_first_box" else boxes
        x0, y0, x1, y1 = union_of_boxes(rule_boxes)
        share = (x1 - x0 + 1) * (y1 - y0 + 1) / (record["width"] * record["height"])
        if share < options.min_box_area:
            return "small_box"
    return None


def _query_input(query, record, options) -> tuple[str, list[int] | None]:
    """Return the text to encode and the token indices of the phrase in it."""
    if options.query_mode == "auto" and "tokens" in query:
        return record["captions"][query["sentence"]], list(query["tokens"])
    return query["text"], None


def git_revision() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


class _Tally:
    """Counts, hits and per-query outcomes of one evaluation pass."""

    def __init__(self, options: EvaluationOptions, keep_heatmaps: bool):
        self.options = options
        self.keep_heatmaps = keep_heatmaps
        self.queries = 0
        self.scored = 0
        self.hits = 0
        self.box_hits = 0
        self.attention = 0.0
        self.skips: Counter[str] = Counter()
        self.per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.levels: Counter[int] = Counter()
        self.outcomes: list[dict[str, Any]] = []
        self.heatmaps: list[np.ndarray] = []

    def add(self, record, query_index, query, grid_map, levels) -> None:
        """Score one query from its grid heatmap and the levels of its words."""
        full = resize_heatmap(grid_map, (record["height"], record["width"]))
        boxes = query["boxes"]
        use_union = self.options.union_box or self.options.protocol == "union_first_box"
        point = predicted_point(full)
        hit = point_in_boxes(point, [union_of_boxes(boxes)] if use_union else boxes, self.options.tolerance_px)
        box_hit = box_accuracy_hit(full, boxes)
        attention = attention_correctness(full, boxes)

        self.scored += 1
        self.hits += int(hit)
        self.box_hits += int(box_hit)
        self.attention += attention
        for category in query.get("categories") or ["none"]:
            self.per_category[category][0] += int(hit)
            self.per_category[category][1] += 1
        for level in levels:
            self.levels[int(level)] += 1
        self.outcomes.append(
            {
                "image_id": record["image_id"],
                "query": query_index,
                "text": query["text"],
                "hit": bool(hit),
                "point": [point[1], point[0]],  # x, y like the boxes
                "box_hit": bool(box_hit),
                "attention_correctness": attention,
            }
        )
        if self.keep_heatmaps:
            self.heatmaps.append(grid_map)


def _phrase_token_mask(texts, token_lists) -> np.ndarray | None:
    """[queries, words] mask of each phrase's words, or None when every query
    is its whole text."""
    if all(tokens is None for tokens in token_lists):
        return None
    width = max(len(text.split()) for text in texts)
    mask = np.zeros((len(texts), width), np.float32)
    for row, (text, tokens) in enumerate(zip(texts, token_lists)):
        mask[row, tokens if tokens is not None else list(range(len(text.split())))] = 1.0
    return mask


def _score_batch(model, batch, tally: _Tally) -> None:
    """Encode a batch of images once and score all of their queries."""
    visual = model.encode_images(tf.constant(np.stack([item.image for item in batch])))
    query_image, texts, token_lists, queries = [], [], [], []
    for index, item in enumerate(batch):
        for query_index, query in enumerate(item.record.get("queries", [])):
            reason = _skip_reason(query, item.record, tally.options)
            if reason:
                tally.skips[reason] += 1
                continue
            text, tokens = _query_input(query, item.record, tally.options)
            query_image.append(index)
            texts.append(text)
            token_lists.append(tokens)
            queries.append((item.record, query_index, query))
    if not queries:
        return

    result = model.phrase_heatmaps(
        tf.gather(visual, query_image), tf.constant(texts), _phrase_token_mask(texts, token_lists)
    )
    grid_maps = result["heatmap"].numpy()
    levels = result["level"].numpy()
    phrase_tokens = result["token_mask"].numpy()
    for row, (record, query_index, query) in enumerate(queries):
        tally.add(record, query_index, query, grid_maps[row], levels[row][phrase_tokens[row] > 0])


def evaluate(model, manifest, image_size, options=None, keep_heatmaps=False, limit=None) -> dict[str, Any]:
    """Score every query of `manifest` once and return the results dict.

    Args:
      model: a `GroundingModel`.
      manifest: path of a `<split>.jsonl` manifest with boxes.
      image_size: the model's input size.
      options: `EvaluationOptions`; the defaults follow the protocol of
        Akbari et al. (CVPR 2019).
      keep_heatmaps: also return each scored query's grid heatmap under
        `heatmaps` (for pictures; not written to the results file).
      limit: evaluate only the first `limit` images.

    Returns:
      dict with counts, `pointing_accuracy`, `box_accuracy`,
      `attention_correctness`, `per_category`, `level_histogram`, a list
      `queries` with each query's outcome, and the options.
    """
    options = options or EvaluationOptions()
    manifest = Path(manifest)
    records = read_manifest(manifest)
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit {limit!r} must be a positive number of images, or None for all")
        records = records[:limit]
    started = time.perf_counter()
    tally = _Tally(options, keep_heatmaps)

    batch = []
    with Progress(len(records), f"evaluating {manifest.stem}", unit="images") as progress:
        for item in evaluation_images(manifest, image_size, records):
            tally.queries += len(item.record.get("queries", []))
            if item.image is None:
                tally.skips["image_error"] += len(item.record.get("queries", []))
                logger.warning("skipped image: %s", item.error)
                progress.update(1)
                continue
            batch.append(item)
            if len(batch) == options.images_per_batch:
                _score_batch(model, batch, tally)
                progress.update(len(batch))
                batch = []
        if batch:
            _score_batch(model, batch, tally)
            progress.update(len(batch))

    scored = tally.scored
    results = {
        "manifest": str(manifest),
        "split": manifest.stem,
        "options": asdict(options),
        "counts": {
            "images": len(records),
            "queries": tally.queries,
            "scored": scored,
            "hits": tally.hits,
            "skipped": dict(sorted(tally.skips.items())),
        },
        "pointing_accuracy": tally.hits / scored if scored else None,
        "box_accuracy": tally.box_hits / scored if scored else None,
        "attention_correctness": tally.attention / scored if scored else None,
        "per_category": {
            name: {"accuracy": hits / count, "scored": count}
            for name, (hits, count) in sorted(tally.per_category.items())
        },
        "level_histogram": {str(level): tally.levels[level] for level in sorted(tally.levels)},
        "git_revision": git_revision(),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "queries": tally.outcomes,
    }
    if keep_heatmaps:
        results["heatmaps"] = tally.heatmaps
    if scored == 0:
        logger.warning(
            "%s: no query was scored (%d queries, skipped: %s); a split without boxes, such as COCO "
            "captions, cannot be evaluated with the pointing game",
            manifest,
            tally.queries,
            dict(tally.skips) or "none",
        )
    logger.info(
        "pointing accuracy %s over %d scored queries (%d skipped)",
        "n/a" if scored == 0 else f"{results['pointing_accuracy']:.4f}",
        scored,
        sum(tally.skips.values()),
    )
    return results


def write_results(results: dict[str, Any], path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a results dict as JSON (heatmaps left out), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {key: value for key, value in results.items() if key != "heatmaps"}
    if extra:
        payload.update(extra)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
