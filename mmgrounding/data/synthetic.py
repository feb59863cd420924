"""A synthetic weak-supervision set with known boxes.

Each image shows two or three coloured shapes on a textured background and is
described by one caption that names them ("a red circle and a blue square").
The boxes of the shapes are known, so a model trained on the captions alone
can be scored with the pointing game, and its accuracy compared with the
chance of a random point. The set is written to disk as PNG files and
manifests, so training and evaluation read it through the same pipelines as
any converted dataset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from mmgrounding.data.manifest import write_manifest

logger = logging.getLogger(__name__)

COLOURS = {  # RGB
    "red": (220, 30, 30),
    "green": (40, 170, 40),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
}
SHAPES = ("circle", "square", "triangle", "cross")


def _draw_shape(canvas: np.ndarray, shape: str, colour, box) -> None:
    x0, y0, x1, y1 = box
    bgr = tuple(int(c) for c in colour[::-1])  # OpenCV draws in BGR order
    if shape == "circle":
        centre = ((x0 + x1) // 2, (y0 + y1) // 2)
        cv2.circle(canvas, centre, (x1 - x0) // 2, bgr, thickness=-1, lineType=cv2.LINE_AA)
    elif shape == "square":
        cv2.rectangle(canvas, (x0, y0), (x1, y1), bgr, thickness=-1)
    elif shape == "triangle":
        points = np.array([[(x0 + x1) // 2, y0], [x0, y1], [x1, y1]], np.int32)
        cv2.fillPoly(canvas, [points], bgr, lineType=cv2.LINE_AA)
    elif shape == "cross":
        third_x, third_y = (x1 - x0) // 3, (y1 - y0) // 3
        cv2.rectangle(canvas, (x0 + third_x, y0), (x1 - third_x, y1), bgr, thickness=-1)
        cv2.rectangle(canvas, (x0, y0 + third_y), (x1, y1 - third_y), bgr, thickness=-1)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw a grey-brown texture: smooth noise at a random scale plus a gradient."""
    cells = int(rng.integers(3, 12))
    noise = rng.uniform(0, 1, size=(cells, cells, 1)).astype(np.float32)
    smooth = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
    base = rng.uniform(70, 180)
    tint = rng.uniform(-15, 15, size=3)
    gradient = np.linspace(-20, 20, size, dtype=np.float32)[None, :, None] * rng.choice([-1, 1])
    canvas = base + 50 * (smooth - 0.5) + tint + gradient
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _place_boxes(rng, count, size, low, high, attempts=200):
    boxes = []
    for _ in range(attempts):
        side = int(rng.integers(low, high + 1))
        x0 = int(rng.integers(0, size - side))
        y0 = int(rng.integers(0, size - side))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        # Keep a small gap so no two shapes touch.
        if all(box[0] > b[2] + 4 or b[0] > box[2] + 4 or box[1] > b[3] + 4 or b[1] > box[3] + 4 for b in boxes):
            boxes.append(box)
            if len(boxes) == count:
                return boxes
    return None


def make_example(rng: np.random.Generator, size: int = 192):
    """Draw one image and its objects.

    Returns:
      (image RGB uint8 [size, size, 3], objects), objects a list of
      (colour, shape, [x_min, y_min, x_max, y_max]).
    """
    while True:
        count = int(rng.integers(2, 4))
        boxes = _place_boxes(rng, count, size, size // 4, size // 3)
        if boxes is not None:
            break
    # No colour and no shape appears twice in one image, so each phrase names
    # exactly one object and either of its words alone identifies it.
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    shapes = rng.choice(SHAPES, size=count, replace=False)
    image = _background(rng, size)
    canvas = image[..., ::-1].copy()  # BGR for OpenCV drawing
    objects = []
    for colour, shape, box in zip(colours, shapes, boxes):
        colour, shape = str(colour), str(shape)
        _draw_shape(canvas, shape, COLOURS[colour], box)
        objects.append((colour, shape, list(box)))
    return canvas[..., ::-1].copy(), objects


def caption_for(objects) -> tuple[str, list[list[int]]]:
    """Caption naming the objects and, per object, the token indices of its
    colour and shape words in `caption.split()`."""
    words: list[str] = []
    spans = []
    for index, (colour, shape, _) in enumerate(objects):
        if index:
            words.append("and")
        words.append("a")
        spans.append([len(words), len(words) + 1])
        words.extend([colour, shape])
    return " ".join(words), spans


def write_synthetic_dataset(out_dir: str | os.PathLike, splits: dict[str, int], size: int = 192, seed: int = 0):
    """Write `images/*.png` and one `<split>.jsonl` per split into `out_dir`.

    Args:
      splits: images per split, such as {"train": 400, "test": 100}.
      size: side of the square images in pixels.
      seed: seed of the generator; the same seed gives the same files.

    Returns:
      dict of split -> manifest path.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifests = {}
    for split, count in splits.items():
        records = []
        for index in range(count):
            image, objects = make_example(rng, size)
            image_id = f"{split}-{index:05d}"
            relative = f"images/{image_id}.png"
            cv2.imwrite(str(out_dir / relative), image[..., ::-1])
            caption, spans = caption_for(objects)
            queries = [
                {
                    "text": f"{colour} {shape}",
                    "boxes": [box],
                    "sentence": 0,
                    "tokens": span,
                    "categories": [shape],
                }
                for (colour, shape, box), span in zip(objects, spans)
            ]
            records.append(
                {
                    "image_id": image_id,
                    "image": relative,
                    "width": size,
                    "height": size,
                    "captions": [caption],
                    "queries": queries,
                }
            )
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], records)
        logger.info("wrote %d synthetic images to %s", count, manifests[split])
    return manifests


def chance_pointing_accuracy(records) -> float:
    """Expected pointing accuracy of a uniformly random point: the mean share
    of the image covered by each query's boxes."""
    shares = []
    for record in records:
        area = record["width"] * record["height"]
        for query in record["queries"]:
            mask = np.zeros((record["height"], record["width"]), bool)
            for x0, y0, x1, y1 in query["boxes"]:
                mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
            shares.append(mask.sum() / area)
    return float(np.mean(shares))
