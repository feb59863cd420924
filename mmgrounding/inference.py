"""Ground phrases in one image with a trained model."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from mmgrounding.data.pipeline import resize_for_model
from mmgrounding.evaluation.heatmaps import predicted_point, resize_heatmap


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
    phrases = [str(phrase) for phrase in phrases]
    empty = [phrase for phrase in phrases if not phrase.split()]
    if empty or not phrases:
        raise ValueError(f"phrases must be non-empty text, got {phrases!r}")
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
