import numpy as np
import pytest

from mmgrounding.evaluation.box_accuracy import attention_correctness, box_accuracy_hit, heatmap_box
from mmgrounding.evaluation.heatmaps import predicted_point, resize_heatmap
from mmgrounding.evaluation.pointing import pointing_hit


def test_resize_keeps_width_and_height_apart():
    grid = np.zeros((3, 5), np.float32)
    resized = resize_heatmap(grid, (100, 200))  # height 100, width 200
    assert resized.shape == (100, 200)


def test_resize_puts_peak_in_matching_region():
    grid = np.zeros((2, 4), np.float32)
    grid[1, 3] = 1.0  # bottom-right cell
    row, column = predicted_point(resize_heatmap(grid, (40, 80)))
    assert row >= 20
    assert column >= 60


def test_predicted_point_ties_go_to_first_row_major():
    heatmap = np.zeros((3, 3))
    heatmap[1, 2] = heatmap[2, 0] = 5.0
    assert predicted_point(heatmap) == (1, 2)


def test_pointing_hit_bounds_are_inclusive():
    heatmap = np.zeros((10, 10), np.float32)
    heatmap[4, 7] = 1.0
    # Same-size image: the point is row 4, column 7.
    assert pointing_hit(heatmap, [[7, 4, 7, 4]], (10, 10))
    assert not pointing_hit(heatmap, [[0, 0, 6, 9]], (10, 10))
    assert pointing_hit(heatmap, [[0, 0, 6, 9], [7, 0, 9, 4]], (10, 10))


def test_pointing_hit_tolerance():
    heatmap = np.zeros((50, 50), np.float32)
    heatmap[10, 10] = 1.0
    box = [[20, 10, 30, 20]]  # 10 px right of the point
    assert not pointing_hit(heatmap, box, (50, 50), tolerance_px=9)
    assert pointing_hit(heatmap, box, (50, 50), tolerance_px=10)


def test_pointing_hit_union_box():
    heatmap = np.zeros((20, 20), np.float32)
    heatmap[10, 10] = 1.0
    boxes = [[0, 0, 5, 5], [15, 15, 19, 19]]
    assert not pointing_hit(heatmap, boxes, (20, 20))
    assert pointing_hit(heatmap, boxes, (20, 20), union_box=True)


def test_pointing_hit_without_boxes_raises():
    with pytest.raises(ValueError, match="at least one box"):
        pointing_hit(np.zeros((2, 2)), [], (4, 4))


def test_heatmap_box_finds_blob():
    heatmap = np.zeros((60, 80), np.float32)
    heatmap[10:30, 40:70] = 1.0
    assert heatmap_box(heatmap) == [40, 10, 69, 29]
    assert box_accuracy_hit(heatmap, [[40, 10, 69, 29]])
    assert not box_accuracy_hit(heatmap, [[0, 40, 20, 59]])


def test_heatmap_box_unites_two_peaks_and_drops_nested():
    heatmap = np.zeros((100, 100), np.float32)
    heatmap[5:20, 5:20] = 1.0
    heatmap[60:90, 60:90] = 0.8
    assert heatmap_box(heatmap) == [5, 5, 89, 89]


def test_constant_heatmap_gives_whole_image():
    assert heatmap_box(np.full((30, 40), 0.5, np.float32)) == [0, 0, 39, 29]


def test_attention_correctness_counts_overlap_once():
    heatmap = np.zeros((10, 10))
    heatmap[:5, :5] = 1.0
    heatmap[5:, 5:] = 3.0
    boxes = [[0, 0, 4, 4], [0, 0, 4, 4]]
    assert attention_correctness(heatmap, boxes) == pytest.approx(25 / 100)
    assert attention_correctness(np.zeros((10, 10)), [[0, 0, 4, 9]]) == pytest.approx(0.5)
