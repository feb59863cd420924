"""Heatmap overlays with matplotlib."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

if os.environ.get("MPLBACKEND") is None and not os.environ.get("DISPLAY"):
    # Headless runs (papermill, CI, the CLI) need a backend without a screen;
    # inside Jupyter the inline backend is already active and is left alone.
    try:
        import IPython

        if IPython.get_ipython() is None:
            matplotlib.use("Agg")
    except ImportError:
        matplotlib.use("Agg")

import matplotlib.patches as patches
import matplotlib.pyplot as plt
import numpy as np

from mmgrounding.evaluation.heatmaps import predicted_point, resize_heatmap


def draw_heatmap(ax, image, heatmap, boxes=(), title=None, alpha=0.5, point=True):
    """Draw `heatmap` over `image` on a matplotlib axis.

    Args:
      ax: matplotlib axis.
      image: RGB uint8 [height, width, 3] (or [height, width] grayscale).
      heatmap: grid [h, w] or image-sized [height, width] heatmap.
      boxes: ground-truth boxes [x_min, y_min, x_max, y_max], drawn in green.
      title: axis title.
      alpha: heatmap opacity.
      point: mark the arg-max with a cross, as the pointing game scores it.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    full = resize_heatmap(heatmap, (height, width))
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.imshow(full, cmap="jet", alpha=alpha, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    for x_min, y_min, x_max, y_max in boxes:
        ax.add_patch(
            patches.Rectangle(
                (x_min - 0.5, y_min - 0.5),
                x_max - x_min + 1,
                y_max - y_min + 1,
                fill=False,
                edgecolor="lime",
                linewidth=2,
            )
        )
    if point:
        row, column = predicted_point(full)
        ax.plot([column], [row], marker="x", color="white", markersize=14, markeredgewidth=3)
        ax.plot([column], [row], marker="x", color="black", markersize=10, markeredgewidth=1.5)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def save_heatmap(path, image, heatmap, boxes=(), title=None, dpi=100) -> Path:
    """Write one overlay picture to `path` (PNG) and return the path."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    figure, ax = plt.subplots(figsize=(max(width / dpi, 3), max(height / dpi, 3) + 0.4), dpi=dpi)
    draw_heatmap(ax, image, heatmap, boxes, title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def heatmap_grid(panels, columns=3, size=3.5):
    """Draw a figure with one overlay per panel.

    Args:
      panels: list of dicts with `image`, `heatmap` and optionally `boxes`
        and `title`.
      columns: panels per row.
      size: side of a panel in inches.

    Returns:
      The matplotlib figure.
    """
    rows = max(1, int(np.ceil(len(panels) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, panel in zip(axes.ravel(), panels):
        draw_heatmap(ax, panel["image"], panel["heatmap"], panel.get("boxes", ()), panel.get("title"))
    figure.tight_layout()
    return figure
