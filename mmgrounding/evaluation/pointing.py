"""The pointing game (Zhang et al., "Top-down Neural Attention by Excitation
Backprop", ECCV 2016) as used for weakly supervised phrase grounding: a query
is a hit when the maximum of its heatmap, resized to the image, lies inside a
ground-truth box."""

from __future__ import annotations

import numpy as np

from mmgrounding.evaluation.heatmaps import predicted_point, resize_heatmap


def union_of_boxes(boxes) -> list[float]:
    """Smallest box [x_min, y_min, x_max, y_max] that contains all `boxes`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]


def point_in_boxes(point, boxes, tolerance_px=0.0) -> bool:
    """Return whether (row, column) lies in any box, bounds inclusive, or
    within `tolerance_px` pixels of one."""
    row, column = point
    for x_min, y_min, x_max, y_max in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        dx = max(x_min - column, 0.0, column - x_max)
        dy = max(y_min - row, 0.0, row - y_max)
        if dx * dx + dy * dy <= tolerance_px * tolerance_px:
            return True
    return False


def pointing_hit(heatmap, boxes, image_size, tolerance_px=0, union_box=False) -> bool:
    """Score one query of the pointing game.

    Args:
      heatmap: grid heatmap [h, w].
      boxes: ground-truth boxes [[x_min, y_min, x_max, y_max], ...] in pixels
        of the original image, 0-based, max bounds inclusive.
      image_size: (height, width) of the original image.
      tolerance_px: also a hit within this distance of a box.
      union_box: test against the union of the boxes instead of each box.

    Returns:
      True when the arg-max of the heatmap resized to the image is a hit.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("pointing_hit needs at least one box; skip queries without boxes")
    if union_box:
        boxes = np.asarray([union_of_boxes(boxes)])
    point = predicted_point(resize_heatmap(heatmap, image_size))
    return point_in_boxes(point, boxes, tolerance_px)

