"""Plain NumPy implementation of the scoring and loss, written from the method
description with explicit loops and attended vectors, as a test oracle."""

import numpy as np


def relevance(word, image):
    """word [D], image [H, W, L, D] -> per-level relevance [L] and heatmaps [L, H, W]."""
    height, width, levels, _ = image.shape
    per_level = np.zeros(levels)
    heatmaps = np.zeros((levels, height, width))
    for level in range(levels):
        vectors = image[:, :, level, :].reshape(height * width, -1)
        heat = np.maximum(0.0, vectors @ word)
        attended = (heat[:, None] * vectors).sum(axis=0)
        norm = np.linalg.norm(attended)
        per_level[level] = 0.0 if norm < 1e-6 else attended @ word / (norm * np.linalg.norm(word))
        heatmaps[level] = heat.reshape(height, width)
    return per_level, heatmaps


def pairwise_scores(words, word_mask, sentence, visual, gamma_word=5.0, mask_padding=True):
    captions, tokens = words.shape[:2]
    images = visual.shape[0]
    word_scores = np.zeros((captions, images))
    sentence_scores = np.zeros((captions, images))
    for b in range(captions):
        for c in range(images):
            values = []
            for t in range(tokens):
                if mask_padding and word_mask[b, t] == 0:
                    continue
                values.append(relevance(words[b, t], visual[c])[0].max())
            values = np.array(values)
            word_scores[b, c] = np.log(np.exp(gamma_word * values).sum()) / gamma_word if len(values) else 0.0
            sentence_scores[b, c] = relevance(sentence[b], visual[c])[0].max()
    return word_scores, sentence_scores


def word_heatmaps(words, visual):
    batch, tokens = words.shape[:2]
    height, width = visual.shape[1:3]
    heatmaps = np.zeros((batch, tokens, height, width))
    relevances = np.zeros((batch, tokens))
    levels = np.zeros((batch, tokens), dtype=int)
    for b in range(batch):
        for t in range(tokens):
            per_level, maps = relevance(words[b, t], visual[b])
            levels[b, t] = int(np.argmax(per_level))
            relevances[b, t] = per_level.max()
            heatmaps[b, t] = maps[levels[b, t]]
    return heatmaps, relevances, levels


def grounding_loss(word_scores, sentence_scores, gamma=10.0):
    total = 0.0
    for scores in (word_scores, sentence_scores):
        logits = gamma * scores
        batch = logits.shape[0]
        for c in range(batch):  # caption retrieval: softmax over captions for image c
            column = logits[:, c]
            total += (np.log(np.exp(column - column.max()).sum()) + column.max() - column[c]) / batch
        for b in range(batch):  # image retrieval: softmax over images for caption b
            row = logits[b, :]
            total += (np.log(np.exp(row - row.max()).sum()) + row.max() - row[b]) / batch
    return total


def unit(array, axis=-1):
    return array / np.linalg.norm(array, axis=axis, keepdims=True)
