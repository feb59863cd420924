"""Multi-level multimodal attention and the caption-image scores.

For a unit-norm word vector e and an image with unit-norm location vectors
v[n, l] (n over the height x width grid, l over levels), the attention of
Akbari et al. (CVPR 2019) is

    heatmap    h[n, l] = max(0, e . v[n, l])
    attended   a[l]    = sum_n h[n, l] v[n, l]
    relevance  R[l]    = cos(a[l], e),  R = max_l R[l]

and the caption-image word score is S_w = log(sum_t exp(gamma_word R_t)) /
gamma_word over the caption's tokens. Because e and v are unit vectors,
e . a = sum_n h[n] c[n] = sum_n h[n]^2 with c[n] = e . v[n], and
|a|^2 = h^T (V V^T) h, so R needs neither the attended vectors nor a
[captions, images, tokens, levels, dim] tensor: the per-image Gram matrices
V V^T are shared by every caption. Where no cosine is positive, a = 0 and R is
defined as 0.
"""

from __future__ import annotations

import tensorflow as tf

# Below this squared norm the attended vector counts as zero, so R = 0.
_MIN_NORM_SQUARED = 1e-12


def _flatten_grid(visual: tf.Tensor) -> tf.Tensor:
    """[images, height, width, levels, dim] -> [images, locations, levels, dim]."""
    shape = tf.shape(visual)
    return tf.reshape(visual, [shape[0], shape[1] * shape[2], shape[3], shape[4]])


def _relevance(cosines: tf.Tensor, attended_norm_squared: tf.Tensor) -> tf.Tensor:
    """R = (e . a) / |a| with e . a = sum_n h^2; R = 0 where a = 0.

    cosines: [..., locations, levels]; attended_norm_squared: [..., levels].
    """
    heatmap = tf.nn.relu(cosines)
    dot = tf.reduce_sum(heatmap * heatmap, axis=-2)  # [..., levels]
    nonzero = attended_norm_squared > _MIN_NORM_SQUARED
    # The safe denominator keeps the gradient finite in the branch that
    # tf.where discards.
    safe = tf.where(nonzero, attended_norm_squared, tf.ones_like(attended_norm_squared))
    return tf.where(nonzero, dot / tf.sqrt(safe), tf.zeros_like(dot))


def pairwise_relevance(queries: tf.Tensor, visual: tf.Tensor) -> tf.Tensor:
    """Per-level relevance of every query vector for every image.

    Args:
      queries: [captions, tokens, dim] unit-norm word (or sentence) vectors.
      visual: [images, height, width, levels, dim] unit-norm location vectors.

    Returns:
      [captions, tokens, images, levels] relevance R.
    """
    flat = _flatten_grid(visual)  # [images, locations, levels, dim]
    cosines = tf.einsum("btd,cnld->btcnl", queries, flat)
    heatmap = tf.nn.relu(cosines)
    gram = tf.einsum("cnld,cmld->clnm", flat, flat)  # [images, levels, N, N]
    gram_heatmap = tf.einsum("btcnl,clnm->btcml", heatmap, gram)
    norm_squared = tf.reduce_sum(heatmap * gram_heatmap, axis=3)  # [b, t, c, levels]
    return _relevance(cosines, norm_squared)


def pairwise_scores(words, word_mask, sentence, visual, gamma_word=5.0, mask_padding=True):
    """Score every caption against every image of a batch.

    Args:
      words: [captions, tokens, dim] unit-norm word vectors.
      word_mask: [captions, tokens], 1 for real tokens and 0 for padding.
      sentence: [captions, dim] unit-norm sentence vectors.
      visual: [images, height, width, levels, dim] unit-norm location vectors.
      gamma_word: temperature of the log-sum-exp over tokens (5 in the paper).
      mask_padding: leave padding out of the log-sum-exp. False reproduces the
        paper code, which summed over padded positions too.

    Returns:
      (word_scores, sentence_scores), each [captions, images]; row = caption,
      column = image.
    """
    words = tf.convert_to_tensor(words, tf.float32)
    sentence = tf.convert_to_tensor(sentence, tf.float32)
    visual = tf.convert_to_tensor(visual, tf.float32)
    word_mask = tf.cast(word_mask, tf.float32)

    word_relevance = tf.reduce_max(pairwise_relevance(words, visual), axis=-1)  # [b, t, c]
    logits = gamma_word * word_relevance
    if mask_padding:
        logits += (1.0 - word_mask)[:, :, None] * -1e9
        # A caption with no real token would give -1e9 / gamma; score it 0.
        has_tokens = tf.reduce_any(word_mask > 0, axis=1)[:, None]
    word_scores = tf.reduce_logsumexp(logits, axis=1) / gamma_word  # [b, c]
    if mask_padding:
        word_scores = tf.where(has_tokens, word_scores, tf.zeros_like(word_scores))

    sentence_relevance = pairwise_relevance(sentence[:, None, :], visual)  # [b, 1, c, L]
    sentence_scores = tf.reduce_max(sentence_relevance[:, 0], axis=-1)
    return word_scores, sentence_scores


def word_heatmaps(words, visual):
    """Heatmaps of each word on its own image, at the word's selected level.

    Args:
      words: [batch, tokens, dim] unit-norm word vectors.
      visual: [batch, height, width, levels, dim], image b matched to caption b.

    Returns:
      (heatmaps [batch, tokens, height, width], relevance [batch, tokens],
      level [batch, tokens] int32): the clipped-cosine map at the level with
      the highest relevance, that relevance, and the level index.
    """
    words = tf.convert_to_tensor(words, tf.float32)
    visual = tf.convert_to_tensor(visual, tf.float32)
    shape = tf.shape(visual)
    height, width = shape[1], shape[2]
    flat = _flatten_grid(visual)  # [batch, N, levels, dim]

    cosines = tf.einsum("btd,bnld->btnl", words, flat)
    heatmap = tf.nn.relu(cosines)
    gram = tf.einsum("bnld,bmld->blnm", flat, flat)
    gram_heatmap = tf.einsum("btnl,blnm->btml", heatmap, gram)
    norm_squared = tf.reduce_sum(heatmap * gram_heatmap, axis=2)  # [b, t, L]
    relevance_per_level = _relevance(cosines, norm_squared)  # [b, t, L]

    level = tf.argmax(relevance_per_level, axis=-1, output_type=tf.int32)
    relevance = tf.reduce_max(relevance_per_level, axis=-1)
    selected = tf.gather(heatmap, level, axis=3, batch_dims=2)  # [b, t, N]
    heatmaps = tf.reshape(selected, [shape[0], tf.shape(words)[1], height, width])
    return heatmaps, relevance, level


def phrase_heatmap(heatmaps, relevance, token_mask, clip_weights=True):
    """Average word heatmaps into phrase heatmaps, weighted by relevance.

    Args:
      heatmaps: [batch, tokens, height, width] from `word_heatmaps`.
      relevance: [batch, tokens] from `word_heatmaps`.
      token_mask: [batch, tokens], 1 for the phrase's words.
      clip_weights: clip negative relevance at zero before weighting; a phrase
        whose weights then sum to zero falls back to the unweighted mean.
        False reproduces the paper code's raw relevance weights.

    Returns:
      [batch, height, width] phrase heatmaps.
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    relevance = tf.convert_to_tensor(relevance, tf.float32)
    token_mask = tf.cast(token_mask, tf.float32)
    weights = tf.nn.relu(relevance) if clip_weights else relevance
    weights = weights * token_mask
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    if clip_weights:
        fallback = token_mask / tf.maximum(tf.reduce_sum(token_mask, axis=1, keepdims=True), 1.0)
        weights = tf.where(total > 0, weights / tf.where(total > 0, total, 1.0), fallback)
    else:
        weights = weights / tf.where(tf.equal(total, 0.0), 1.0, total)
    return tf.einsum("bt,bthw->bhw", weights, heatmaps)
