"""Trainable text heads that turn frozen encoder outputs into word and
sentence vectors in the common space."""

from __future__ import annotations

import keras
import tensorflow as tf


def _dense_stack(width, alpha, name):
    return keras.Sequential(
        [
            keras.layers.Dense(width, name=f"{name}_dense1"),
            keras.layers.LeakyReLU(negative_slope=alpha),
            keras.layers.Dense(width, name=f"{name}_dense2"),
            keras.layers.LeakyReLU(negative_slope=alpha),
        ],
        name=name,
    )


class MixTextHead(keras.layers.Layer):
    """ELMo-style learned layer mix followed by the word and sentence stacks.

    Word vector: softmax-weighted sum of the encoder's layers times a learned
    scale, then Dense-LeakyReLU-Dense-LeakyReLU and L2 normalisation. Sentence
    vector: the encoder's sentence features combined with one learned scalar
    each (no bias), then a stack of its own and L2 normalisation.

    Args:
      width: common-space width.
      alpha: LeakyReLU slope.
      normalize_words: L2-normalise word vectors. False reproduces the variant
        of the authors' TF1 release that skipped it, whose heatmaps are then
        not cosines.
    """

    def __init__(self, width, alpha=0.25, normalize_words=True, **kwargs):
        super().__init__(**kwargs)
        self.normalize_words = normalize_words
        self.word_stack = _dense_stack(width, alpha, "word")
        self.sentence_stack = _dense_stack(width, alpha, "sentence")

    def build(self, features_shape):
        num_layers = features_shape["layers"][2]
        num_sentence = features_shape["sentence_layers"][1]
        self.layer_logits = self.add_weight(
            name="layer_logits", shape=(num_layers,), initializer="zeros"
        )
        self.layer_scale = self.add_weight(name="layer_scale", shape=(), initializer="ones")
        self.sentence_weights = self.add_weight(
            name="sentence_weights",
            shape=(num_sentence,),
            initializer=keras.initializers.Constant(1.0 / num_sentence),
        )

    def call(self, features):
        """features: the text encoder's dict (`layers` [batch, tokens, layers,
        features], `mask` [batch, tokens], `sentence_layers` [batch, k, f]).

        Returns:
          {"words": [batch, tokens, dim], "word_mask": [batch, tokens],
           "sentence": [batch, dim]}.
        """
        mix = tf.nn.softmax(self.layer_logits)
        mixed = self.layer_scale * tf.einsum("btkf,k->btf", features["layers"], mix)
        words = self.word_stack(mixed)
        if self.normalize_words:
            words = tf.math.l2_normalize(words, axis=-1)
        sentence = tf.einsum("bkf,k->bf", features["sentence_layers"], self.sentence_weights)
        sentence = tf.math.l2_normalize(self.sentence_stack(sentence), axis=-1)
        return {"words": words, "word_mask": features["mask"], "sentence": sentence}


class BiLSTMTextHead(keras.layers.Layer):
    """A trainable bidirectional LSTM over the encoder's frozen `word_emb`.

    Word vector: learned scalars with a bias mix the word embedding
    (duplicated to the LSTM output width) and the LSTM output, then the Dense
    stack and L2 normalisation. Sentence vector: the backward output at the
    first token joined to the forward output at the last real token, then a
    stack of its own and L2 normalisation.
    """

    def __init__(self, width, units=512, alpha=0.25, normalize_words=True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.normalize_words = normalize_words
        # unit_forget_bias=True sets the forget-gate bias to 1, as the authors' TF1 release does.
        self.lstm = keras.layers.Bidirectional(
            keras.layers.LSTM(units, return_sequences=True, unit_forget_bias=True),
            merge_mode="concat",
        )
        self.word_stack = _dense_stack(width, alpha, "word")
        self.sentence_stack = _dense_stack(width, alpha, "sentence")

    def build(self, features_shape):
        self.mix_weights = self.add_weight(
            name="mix_weights", shape=(2,), initializer=keras.initializers.Constant(0.5)
        )
        self.mix_bias = self.add_weight(name="mix_bias", shape=(), initializer="zeros")

    def call(self, features):
        word_emb = features["word_emb"]  # [batch, tokens, e]
        mask = features["mask"]
        outputs = self.lstm(word_emb, mask=mask > 0)  # [batch, tokens, 2 * units]
        outputs = outputs * mask[:, :, None]
        repeats = (2 * self.units) // word_emb.shape[-1]
        duplicated = tf.concat([word_emb] * repeats, axis=-1)
        mixed = self.mix_weights[0] * duplicated + self.mix_weights[1] * outputs + self.mix_bias
        words = self.word_stack(mixed)
        if self.normalize_words:
            words = tf.math.l2_normalize(words, axis=-1)

        last = tf.maximum(tf.cast(tf.reduce_sum(mask, axis=1), tf.int32) - 1, 0)
        forward_last = tf.gather(outputs[:, :, : self.units], last, axis=1, batch_dims=1)
        backward_first = outputs[:, 0, self.units :]
        sentence = tf.concat([backward_first, forward_last], axis=-1)
        sentence = tf.math.l2_normalize(self.sentence_stack(sentence), axis=-1)
        return {"words": words, "word_mask": mask, "sentence": sentence}


def build_text_head(kind, width, units=512, alpha=0.25, normalize_words=True):
    if kind == "mix":
        return MixTextHead(width, alpha, normalize_words, name="text_head")
    if kind == "bilstm":
        return BiLSTMTextHead(width, units, alpha, normalize_words, name="text_head")
    raise ValueError(f"unknown text head {kind!r}; use 'mix' or 'bilstm'")
