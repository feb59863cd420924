"""The grounding model: frozen encoders, trainable mapping and text head, and
the training and evaluation steps that `keras.Model.fit` drives."""

from __future__ import annotations

import keras
import tensorflow as tf

from mmgrounding.model.loss import loss_terms
from mmgrounding.model.scoring import pairwise_scores, phrase_heatmap, word_heatmaps


class GroundingModel(keras.Model):
    """Image-phrase grounding in a multi-level common space.

    Inputs to `call`, `fit` and `evaluate` are dicts with `image` (float32
    [batch, size, size, 3], RGB 0..255) and `caption` (string [batch]).
    Caption b belongs to image b, and every image of a batch is distinct.

    Args:
      backbone: frozen visual backbone from `load_backbone`.
      text_encoder: frozen text encoder from `load_text_encoder`.
      visual_mapping: trainable `VisualMapping`.
      text_head: trainable text head.
      gamma_word, gamma_loss: temperatures of the word log-sum-exp and of the
        loss softmax.
      mask_padding: leave padded tokens out of the word score.
      clip_phrase_weights: clip word weights at zero in phrase heatmaps.
    """

    def __init__(
        self,
        backbone,
        text_encoder,
        visual_mapping,
        text_head,
        gamma_word=5.0,
        gamma_loss=10.0,
        mask_padding=True,
        clip_phrase_weights=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.visual_mapping = visual_mapping
        self.text_head = text_head
        self.gamma_word = gamma_word
        self.gamma_loss = gamma_loss
        self.mask_padding = mask_padding
        self.clip_phrase_weights = clip_phrase_weights
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "retrieval_loss", "weight_penalty", "retrieval_accuracy")
        }

    @property
    def metrics(self):
        return list(self._trackers.values())

    def encode_images(self, images):
        """images: float32 [batch, size, size, 3] RGB 0..255 ->
        visual [batch, height, width, levels, dim]."""
        levels = self.backbone(images, training=False)
        return self.visual_mapping(levels)

    def encode_text(self, captions):
        """captions: string [batch] -> dict of `words` [batch, tokens, dim],
        `word_mask` [batch, tokens] and `sentence` [batch, dim]."""
        return self.text_head(self.text_encoder(captions))

    def call(self, inputs, training=False):
        text = self.encode_text(inputs["caption"])
        return {"visual": self.encode_images(inputs["image"]), **text}

    def _step_outputs(self, data, training):
        # fit() passes the dataset's dicts as they are; train_on_batch and
        # friends pack them as (x, y, sample_weight).
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self(data, training=training)
        word_scores, sentence_scores = pairwise_scores(
            outputs["words"],
            outputs["word_mask"],
            outputs["sentence"],
            outputs["visual"],
            gamma_word=self.gamma_word,
            mask_padding=self.mask_padding,
        )
        terms = loss_terms(word_scores, sentence_scores, self.gamma_loss)
        retrieval_loss = tf.add_n(list(terms.values()))
        penalty = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
        # Share of images whose own caption scores highest among the batch's.
        hits = tf.equal(tf.argmax(word_scores, axis=0, output_type=tf.int32), tf.range(tf.shape(word_scores)[0]))
        return retrieval_loss, penalty, tf.reduce_mean(tf.cast(hits, tf.float32))

    def _update(self, retrieval_loss, penalty, accuracy):
        values = {
            "loss": retrieval_loss + penalty,
            "retrieval_loss": retrieval_loss,
            "weight_penalty": penalty,
            "retrieval_accuracy": accuracy,
        }
        for name, value in values.items():
            self._trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            retrieval_loss, penalty, accuracy = self._step_outputs(data, training=True)
            loss = retrieval_loss + penalty
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update(retrieval_loss, penalty, accuracy)

    def test_step(self, data):
        return self._update(*self._step_outputs(data, training=False))

    def phrase_heatmaps(self, visual, captions, token_mask=None):
        """Heatmaps of phrases on the grid of their images.

        Args:
          visual: [queries, height, width, levels, dim], query q's image.
          captions: string [queries], the text fed to the encoder: the phrase
            itself, or the whole sentence when `token_mask` picks the phrase.
          token_mask: optional [queries, tokens] float, 1 for the phrase's
            words; by default every real token of the text.

        Returns:
          dict of `heatmap` [queries, height, width], `word_heatmaps`
          [queries, tokens, height, width], `relevance` [queries, tokens],
          `level` [queries, tokens] and `token_mask` [queries, tokens].
        """
        text = self.encode_text(captions)
        heatmaps, relevance, level = word_heatmaps(text["words"], visual)
        mask = text["word_mask"]
        if token_mask is not None:
            token_mask = tf.convert_to_tensor(token_mask, tf.float32)
            tokens = tf.shape(mask)[1]
            token_mask = token_mask[:, :tokens]
            token_mask = tf.pad(token_mask, [[0, 0], [0, tokens - tf.shape(token_mask)[1]]])
            mask = mask * token_mask
        heatmap = phrase_heatmap(heatmaps, relevance, mask, clip_weights=self.clip_phrase_weights)
        return {
            "heatmap": heatmap,
            "word_heatmaps": heatmaps,
            "relevance": relevance,
            "level": level,
            "token_mask": mask,
        }
