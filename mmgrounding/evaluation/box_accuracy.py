"""Secondary metrics: box accuracy and attention correctness.

Box accuracy turns a heatmap into a box by growing regions around its
strongest peaks. Attention correctness (Liu et al., "Attention Correctness in
Neural Image Captioning", AAAI 2017) is the share of heatmap mass that falls
inside the ground-truth boxes.
"""

from __future__ import annotations

import cv2
import numpy as np

PEAK_FRACTION = 0.3  # peaks and regions keep values above this share of the peak
MAX_PEAKS = 3
MAX_IMAGE_SHARE = 0.9  # boxes covering this share of the image or more are dropped
NESTED_SHARE = 0.6  # a box whose own area lies this much inside a kept box is dropped


def box_area(box) -> float:
    x_min, y_min, x_max, y_max = box
    return float(max(0, x_max - x_min + 1) * max(0, y_max - y_min + 1))


def intersection(first, second) -> float:
    box = (
        max(first[0], second[0]),
        max(first[1], second[1]),
        min(first[2], second[2]),
        min(first[3], second[3]),
    )
    return box_area(box) if box[0] <= box[2] and box[1] <= box[3] else 0.0


def iou(first, second) -> float:
    shared = intersection(first, second)
    return shared / (box_area(first) + box_area(second) - shared)


def heatmap_box(heatmap) -> list[int]:
    """Predict one box [x_min, y_min, x_max, y_max] from an image-sized heatmap.

    Min-max normalise, take up to three local peaks above 0.3 of the maximum,
    and grow each into the connected region above 0.3 of its peak. Regions
    covering 90 % of the image or more, and regions mostly inside a kept one,
    are dropped. The result is the union of the rest, or the whole image when
    nothing is left (for example for a constant heatmap).
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    height, width = heatmap.shape
    whole = [0, 0, width - 1, height - 1]
    low, high = float(heatmap.min()), float(heatmap.max())
    if not np.isfinite(low) or not np.isfinite(high) or high - low <= 0:
        return whole
    normalised = (heatmap - low) / (high - low)

    dilated = cv2.dilate(normalised, np.ones((3, 3), np.uint8))
    peaks = np.argwhere((normalised >= dilated) & (normalised > PEAK_FRACTION))
    order = np.argsort(-normalised[peaks[:, 0], peaks[:, 1]], kind="stable")
    covered = np.zeros_like(normalised, dtype=bool)
    candidates = []
    for row, column in peaks[order]:
        if covered[row, column]:
            continue
        region = (normalised > PEAK_FRACTION * normalised[row, column]).astype(np.uint8)
        _, labels = cv2.connectedComponents(region, connectivity=8)
        component = labels == labels[row, column]
        covered |= component
        rows, columns = np.nonzero(component)
        candidates.append([int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())])
        if len(candidates) == MAX_PEAKS:
            break

    image_area = float(height * width)
    kept: list[list[int]] = []
    for box in sorted(candidates, key=box_area, reverse=True):
        if box_area(box) >= MAX_IMAGE_SHARE * image_area:
            continue
        if any(intersection(box, other) / box_area(box) > NESTED_SHARE for other in kept):
            continue
        kept.append(box)
    if not kept:
        return whole
    kept_array = np.asarray(kept)
    return [
        int(kept_array[:, 0].min()),
        int(kept_array[:, 1].min()),
        int(kept_array[:, 2].max()),
        int(kept_array[:, 3].max()),
    ]


def box_accuracy_hit(heatmap, boxes, threshold=0.5) -> bool:
    """Return whether the predicted box overlaps the union ground-truth box with IoU >= threshold."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    truth = [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]
    return iou(heatmap_box(heatmap), truth) >= threshold


def attention_correctness(heatmap, boxes) -> float:
    """Share of the heatmap's mass (clipped at 0) inside the union of the boxes.

    Overlapping boxes count once. A heatmap with no positive mass counts as
    uniform, so it scores the boxes' share of the image.
    """
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    inside = np.zeros(heatmap.shape, dtype=bool)
    height, width = heatmap.shape
    for x_min, y_min, x_max, y_max in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0 = max(int(np.floor(x_min)), 0), max(int(np.floor(y_min)), 0)
        x1, y1 = min(int(np.floor(x_max)), width - 1), min(int(np.floor(y_max)), height - 1)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
    total = heatmap.sum()
    if total <= 0:
        return float(inside.mean())
    return float(heatmap[inside].sum() / total)
