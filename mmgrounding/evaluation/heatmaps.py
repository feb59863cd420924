"""Heatmap resizing and the predicted point."""

from __future__ import annotations

import cv2
import numpy as np


def resize_heatmap(heatmap, image_size) -> np.ndarray:
    """Resize a grid heatmap [h, w] to the image, (height, width) = image_size.

    Bilinear with pixel-centre alignment (OpenCV INTER_LINEAR). The result has
    `height` rows and `width` columns; width and height are never swapped.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D grid, got shape {heatmap.shape}")
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size {image_size} must be positive (height, width)")
    # cv2.resize takes (width, height).
    return cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)


def predicted_point(heatmap) -> tuple[int, int]:
    """Return (row, column) of the maximum; ties go to the first in row-major order."""
    heatmap = np.asarray(heatmap)
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(column)
