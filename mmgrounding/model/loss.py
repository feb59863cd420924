"""Two-way batch-softmax retrieval loss over the caption-image scores.

Rows of a score matrix are captions and columns are images; caption b belongs
to image b. One term retrieves the caption of each image among all captions of
the batch, the other the image of each caption among all images. Each is a
cross-entropy of a softmax with temperature gamma, 10 in Akbari et al.
(CVPR 2019).
"""

from __future__ import annotations

import tensorflow as tf


def retrieval_terms(scores: tf.Tensor, gamma: float = 10.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Return (caption_retrieval, image_retrieval) batch means for [B, B] scores."""
    logits = gamma * tf.convert_to_tensor(scores, tf.float32)
    labels = tf.range(tf.shape(logits)[0])
    # Softmax over captions (rows) for each image: transpose so images index rows.
    caption_retrieval = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.transpose(logits))
    )
    image_retrieval = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
    return caption_retrieval, image_retrieval


def loss_terms(word_scores, sentence_scores, gamma: float = 10.0) -> dict[str, tf.Tensor]:
    """Return the four named retrieval terms of the grounding loss."""
    word_caption, word_image = retrieval_terms(word_scores, gamma)
    sentence_caption, sentence_image = retrieval_terms(sentence_scores, gamma)
    return {
        "word_caption_retrieval": word_caption,
        "word_image_retrieval": word_image,
        "sentence_caption_retrieval": sentence_caption,
        "sentence_image_retrieval": sentence_image,
    }


def grounding_loss(word_scores, sentence_scores, gamma=10.0):
    """Sum both retrieval terms for the word and the sentence scores.

    Args:
      word_scores, sentence_scores: [captions, images] from `pairwise_scores`.
      gamma: softmax temperature (10 in Akbari et al., CVPR 2019).

    Returns:
      Scalar loss, without the L2 weight penalty (the model adds that). At
      chance it equals 4 ln B.
    """
    return tf.add_n(list(loss_terms(word_scores, sentence_scores, gamma).values()))
