"""Ground phrases in one image with a trained model."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from mmgrounding.data.pipeline import resize_for_model
from mmgrounding.evaluation.heatmaps import predicted_point, resize_heatmap


def check_phrases(phrases) -> None:
    """Raise ValueError unless `phrases` is a list of strings with words."""
    if isinstance(phrases, (str, bytes)) or not isinstance(phrases, Sequence):
        raise ValueError(f"phrases must be a list of strings, got {type(phrases).__name__} {phrases!r}")
    bad = [phrase for phrase in phrases if not isinstance(phrase, str) or not phrase.split()]
    if bad or not phrases:
        raise ValueError(f"phrases must be non-empty text, got {list(phrases)!r}")


def ground_phrases(model, image: np.ndarray, phrases: Sequence[str], image_size: int) -> list[dict[str, Any]]:
    """Heatmaps of `phrases` on one image.

    Args:
      model: a trained `GroundingModel`.
      image: RGB uint8 [height, width, 3] from `load_image`.
      phrases: texts to ground, each fed to the text encoder alone.
      image_size: the model's input size.

    Returns:
      One dict per phrase: `phrase`, `heatmap` (grid [h, w]), `point` (x, y in
      image pixels), `words`, `relevance` and `level` per word.
    """
    check_phrases(phrases)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be RGB uint8 [height, width, 3], got {image.dtype} {image.shape}; "
            "read it with mmgrounding.data.images.load_image"
        )
    visual = model.encode_images(tf.constant(resize_for_model(image, image_size)[None]))
    visual = tf.repeat(visual, len(phrases), axis=0)
    result = model.phrase_heatmaps(visual, tf.constant(phrases))
    outputs = []
    for index, phrase in enumerate(phrases):
        heatmap = result["heatmap"][index].numpy()
        words = phrase.split()
        row, column = predicted_point(resize_heatmap(heatmap, image.shape[:2]))
        outputs.append(
            {
                "phrase": phrase,
                "heatmap": heatmap,
                "point": (column, row),
                "words": words,
                "relevance": result["relevance"][index, : len(words)].numpy().tolist(),
                "level": result["level"][index, : len(words)].numpy().tolist(),
            }
        )
    return outputs
