import numpy as np
import pytest
import tensorflow as tf

from mmgrounding.model.loss import grounding_loss
from mmgrounding.model.scoring import pairwise_scores, phrase_heatmap, word_heatmaps
from tests import reference

SHAPES = [  # captions/images, tokens, height, width, levels, dim
    (2, 3, 2, 2, 1, 4),
    (3, 5, 3, 4, 4, 8),  # non-square grid
    (4, 2, 4, 3, 2, 16),
]


def random_inputs(seed, batch, tokens, height, width, levels, dim):
    rng = np.random.default_rng(seed)
    words = reference.unit(rng.normal(size=(batch, tokens, dim)))
    sentence = reference.unit(rng.normal(size=(batch, dim)))
    visual = reference.unit(rng.normal(size=(batch, height, width, levels, dim)))
    lengths = rng.integers(1, tokens + 1, size=batch)
    lengths[0] = tokens
    word_mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.float32)
    return words, word_mask, sentence, visual


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_padding", [True, False])
def test_pairwise_scores_match_reference(shape, mask_padding):
    words, word_mask, sentence, visual = random_inputs(1, *shape)
    expected_word, expected_sentence = reference.pairwise_scores(
        words, word_mask, sentence, visual, 5.0, mask_padding
    )
    word_scores, sentence_scores = pairwise_scores(
        words, word_mask, sentence, visual, gamma_word=5.0, mask_padding=mask_padding
    )
    np.testing.assert_allclose(word_scores.numpy(), expected_word, atol=1e-5)
    np.testing.assert_allclose(sentence_scores.numpy(), expected_sentence, atol=1e-5)


def test_mask_padding_changes_padded_captions_only():
    words, word_mask, sentence, visual = random_inputs(2, 3, 6, 3, 3, 2, 8)
    word_mask[1, 2:] = 0
    masked, _ = pairwise_scores(words, word_mask, sentence, visual, mask_padding=True)
    unmasked, _ = pairwise_scores(words, word_mask, sentence, visual, mask_padding=False)
    np.testing.assert_allclose(masked.numpy()[0], unmasked.numpy()[0], atol=1e-6)
    assert np.abs(masked.numpy()[1] - unmasked.numpy()[1]).max() > 1e-4


def test_batched_scores_equal_one_pair_at_a_time():
    words, word_mask, sentence, visual = random_inputs(3, 4, 5, 3, 2, 3, 8)
    batched_word, batched_sentence = pairwise_scores(words, word_mask, sentence, visual)
    for b in range(4):
        for c in range(4):
            single_word, single_sentence = pairwise_scores(
                words[b : b + 1], word_mask[b : b + 1], sentence[b : b + 1], visual[c : c + 1]
            )
            assert single_word.numpy()[0, 0] == pytest.approx(batched_word.numpy()[b, c], abs=1e-5)
            assert single_sentence.numpy()[0, 0] == pytest.approx(
                batched_sentence.numpy()[b, c], abs=1e-5
            )


def test_no_positive_cosine_gives_zero_relevance():
    dim = 4
    visual = np.zeros((1, 2, 2, 1, dim), np.float32)
    visual[..., 0] = 1.0  # every location points along +x
    words = np.zeros((1, 1, dim), np.float32)
    words[0, 0, 0] = -1.0  # the word points along -x: all cosines negative
    sentence = words[:, 0]
    word_scores, sentence_scores = pairwise_scores(words, np.ones((1, 1)), sentence, visual)
    assert word_scores.numpy()[0, 0] == pytest.approx(0.0)
    assert sentence_scores.numpy()[0, 0] == pytest.approx(0.0)


def test_scores_have_finite_gradients_at_zero_attention():
    visual = tf.Variable(np.tile(np.eye(4, dtype=np.float32)[0], (2, 2, 2, 1, 1)))
    words = tf.constant(-np.eye(4, dtype=np.float32)[None, :1])
    with tf.GradientTape() as tape:
        word_scores, _ = pairwise_scores(words, tf.ones((1, 1)), words[:, 0], visual[:1])
    gradient = tape.gradient(word_scores, visual)
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("shape", SHAPES)
def test_word_heatmaps_match_reference(shape):
    words, _, _, visual = random_inputs(4, *shape)
    expected_maps, expected_relevance, expected_level = reference.word_heatmaps(words, visual)
    heatmaps, relevance, level = word_heatmaps(words, visual)
    assert heatmaps.shape == expected_maps.shape
    np.testing.assert_allclose(heatmaps.numpy(), expected_maps, atol=1e-5)
    np.testing.assert_allclose(relevance.numpy(), expected_relevance, atol=1e-5)
    np.testing.assert_array_equal(level.numpy(), expected_level)


def test_word_heatmaps_agree_with_pairwise_diagonal():
    words, _, _, visual = random_inputs(5, 3, 4, 3, 3, 3, 8)
    _, relevance, _ = word_heatmaps(words, visual)
    ones = np.ones(words.shape[:2], np.float32)
    for b in range(3):
        single, _ = pairwise_scores(words[b : b + 1, :1], ones[b : b + 1, :1], words[b : b + 1, 0], visual[b : b + 1])
        # With one token the log-sum-exp is the token's relevance itself.
        assert single.numpy()[0, 0] == pytest.approx(relevance.numpy()[b, 0], abs=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_grounding_loss_matches_reference(shape):
    words, word_mask, sentence, visual = random_inputs(6, *shape)
    word_scores, sentence_scores = reference.pairwise_scores(words, word_mask, sentence, visual)
    expected = reference.grounding_loss(word_scores, sentence_scores, 10.0)
    assert float(grounding_loss(word_scores, sentence_scores, 10.0)) == pytest.approx(expected, rel=1e-5)


def test_grounding_loss_at_chance_is_four_log_batch():
    scores = np.zeros((32, 32), np.float32)
    assert float(grounding_loss(scores, scores)) == pytest.approx(4 * np.log(32), rel=1e-6)


def test_grounding_loss_uses_rows_as_captions():
    # Caption 0 matches image 1 better than its own image. The oracle treats
    # rows as captions, so the loss only matches it if the code does too.
    scores = np.eye(3, dtype=np.float32)
    scores[0, 1] = 2.0
    expected = reference.grounding_loss(scores, np.eye(3), 10.0)
    assert float(grounding_loss(scores, np.eye(3, dtype=np.float32))) == pytest.approx(expected, rel=1e-5)


def test_phrase_heatmap_weights_by_clipped_relevance():
    heatmaps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0), np.full((2, 2), 100.0)])[None]
    relevance = np.array([[0.25, 0.75, 0.9]])
    mask = np.array([[1.0, 1.0, 0.0]])  # the third word is not in the phrase
    result = phrase_heatmap(heatmaps, relevance, mask).numpy()
    np.testing.assert_allclose(result[0], np.full((2, 2), 0.25 * 1 + 0.75 * 3))


def test_phrase_heatmap_zero_weights_mean():
    heatmaps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])[None]
    relevance = np.array([[-0.5, 0.0]])
    result = phrase_heatmap(heatmaps, relevance, np.ones((1, 2))).numpy()
    np.testing.assert_allclose(result[0], np.full((2, 2), 2.0))
