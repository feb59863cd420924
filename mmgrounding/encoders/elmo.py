"""ELMo text encoder (Peters et al., 2018) loaded from its TF1 TF-Hub module.

The module is read with `hub.load`, which in TensorFlow 2 imports a TF1
Hub-format module as a SavedModel with its graph variant under the empty tag
set and exposes its signatures as concrete functions. The encoder calls the
`tokens` signature on whitespace-split captions, so token t is the t-th word
of `caption.split()`, and reshapes the outputs into the interface of
`mmgrounding.encoders.text`. The learned layer mix is left to the text head.

NOTE: the tests run this class on the stand-in module of
`mmgrounding.testing.standins` only, because the real module cannot be
fetched offline. The stand-in copies the real signatures and output widths.
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

from mmgrounding.encoders.text import register_text_encoder
from mmgrounding.modules import ModuleError, elmo_module_path

logger = logging.getLogger(__name__)

ELMO_OUTPUTS = ("word_emb", "lstm_outputs1", "lstm_outputs2")

# The characters for which Python's str.isspace() is true. tf.strings.split
# splits on ASCII whitespace only, so the others (U+0085, U+00A0, U+2000 and
# the rest of Unicode category Z) are turned into spaces first.
_WHITESPACE_PATTERN = r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]+"


def split_words(captions: tf.Tensor) -> tf.RaggedTensor:
    """Split captions into words exactly as Python's `str.split()` does.

    Args:
        captions: string [batch].

    Returns:
        string ragged [batch, (words)].
    """
    return tf.strings.split(tf.strings.regex_replace(captions, _WHITESPACE_PATTERN, " "))


class ElmoEncoder(keras.layers.Layer):
    """Frozen ELMo: per-word layer outputs, a padding mask and sentence features.

    `call(captions)` takes string [batch] and returns the dict of
    `mmgrounding.encoders.text`:

    - `layers`: float32 [batch, tokens, 3, 1024], the character-CNN layer
      `word_emb` repeated twice to 1024 wide, then `lstm_outputs1` and
      `lstm_outputs2` (forward half first, backward half second);
    - `mask`: float32 [batch, tokens], 1 for words and 0 for padding;
    - `sentence_layers`: float32 [batch, 2, 1024], for each LSTM layer the
      backward half at the first word followed by the forward half at the
      last word;
    - `word_emb`: float32 [batch, tokens, 512], the raw character-CNN layer.

    Every output is zero at padded positions, and a caption's outputs do not
    depend on the other captions of the batch.

    A caption without any word is rejected: eagerly with a ValueError that
    names it, inside a `tf.function` with a `tf.errors.InvalidArgumentError`.
    A zero-word output would leave the word score's log-sum-exp without any
    term, so the error surfaces the bad data instead.
    """

    def __init__(self, module: str | os.PathLike, allow_download: bool = False, **kwargs):
        """Load the module.

        Args:
            module: a modules folder with `ELMo/`, the module folder itself or
                a TF-Hub handle; see `mmgrounding.modules.elmo_module_path`.
            allow_download: let tensorflow_hub download a URL handle that is
                not in the TF-Hub cache.
        """
        kwargs.setdefault("name", "elmo")
        super().__init__(trainable=False, **kwargs)
        self.module_path = elmo_module_path(module, allow_download=allow_download)
        self._module = hub.load(self.module_path)
        if "tokens" not in self._module.signatures:
            raise ModuleError(
                f"{self.module_path} has no `tokens` signature (it has {sorted(self._module.signatures)}); "
                "it is not the ELMo module, use ELMo/ from modules.tar.gz or https://tfhub.dev/google/elmo/3"
            )
        self._tokens_signature = self._module.signatures["tokens"]
        missing = [key for key in ELMO_OUTPUTS if key not in self._tokens_signature.structured_outputs]
        if missing:
            raise ModuleError(f"{self.module_path}: the `tokens` signature is missing the outputs {missing}")
        self.word_width = self._tokens_signature.structured_outputs["word_emb"].shape[-1]
        self.lstm_width = self._tokens_signature.structured_outputs["lstm_outputs1"].shape[-1]
        if self.word_width is None or self.lstm_width is None or self.lstm_width != 2 * self.word_width:
            raise ModuleError(
                f"{self.module_path}: expected word_emb 512 wide and LSTM outputs 1024 wide, got "
                f"{self.word_width} and {self.lstm_width}"
            )
        logger.info("loaded ELMo from %s", self.module_path)

    def __call__(self, captions, *args, **kwargs):
        # Keras accepts only tensors as positional inputs; a list of Python
        # strings is the natural way to call a text encoder by hand.
        if isinstance(captions, (str, bytes, list, tuple, np.ndarray)):
            captions = tf.convert_to_tensor(captions, dtype=tf.string)
        return super().__call__(captions, *args, **kwargs)

    def call(self, captions):
        captions = tf.convert_to_tensor(captions, dtype=tf.string)
        if captions.shape.rank != 1:
            raise ValueError(f"captions must be a string tensor [batch], got shape {captions.shape}")
        words = split_words(captions)
        sequence_len = tf.cast(words.row_lengths(), tf.int32)  # [batch]
        _check_not_empty(captions, sequence_len)
        tokens = words.to_tensor(default_value="")  # [batch, tokens]

        outputs = self._tokens_signature(tokens=tokens, sequence_len=sequence_len)
        mask = tf.sequence_mask(sequence_len, tf.shape(tokens)[1], dtype=tf.float32)  # [batch, tokens]
        # Zeroing padded positions keeps the outputs independent of what the
        # module computes there.
        word_emb = outputs["word_emb"] * mask[:, :, None]
        lstm_outputs = [outputs[key] * mask[:, :, None] for key in ("lstm_outputs1", "lstm_outputs2")]

        layers = tf.stack([tf.concat([word_emb, word_emb], axis=-1), *lstm_outputs], axis=2)
        last_word = sequence_len - 1
        sentence_layers = tf.stack(
            [self._sentence_features(layer, last_word) for layer in lstm_outputs], axis=1
        )  # [batch, 2, lstm_width]
        return {"layers": layers, "mask": mask, "sentence_layers": sentence_layers, "word_emb": word_emb}

    def _sentence_features(self, layer: tf.Tensor, last_word: tf.Tensor) -> tf.Tensor:
        """[batch, tokens, lstm_width] -> [batch, lstm_width]: backward state
        at the first word, then forward state at the last word."""
        half = self.lstm_width // 2
        backward_first = layer[:, 0, half:]
        forward_last = tf.gather(layer[:, :, :half], last_word, batch_dims=1)
        return tf.concat([backward_first, forward_last], axis=-1)

    def compute_output_spec(self, captions):
        batch = captions.shape[0]
        return {
            "layers": keras.KerasTensor((batch, None, 3, self.lstm_width), dtype="float32"),
            "mask": keras.KerasTensor((batch, None), dtype="float32"),
            "sentence_layers": keras.KerasTensor((batch, 2, self.lstm_width), dtype="float32"),
            "word_emb": keras.KerasTensor((batch, None, self.word_width), dtype="float32"),
        }

    def get_config(self):
        return {**super().get_config(), "module": self.module_path}


def _check_not_empty(captions: tf.Tensor, sequence_len: tf.Tensor) -> None:
    if tf.executing_eagerly():
        empty = np.flatnonzero(sequence_len.numpy() == 0)
        if empty.size:
            index = int(empty[0])
            raise ValueError(
                f"caption {index} ({captions[index].numpy()!r}) has no words; remove empty captions "
                f"from the data ({empty.size} in this batch)"
            )
        return
    tf.debugging.assert_positive(
        sequence_len, message="a caption has no words; remove empty captions from the data"
    )


@register_text_encoder("elmo")
def load_elmo(modules_dir: str | os.PathLike | None) -> ElmoEncoder:
    """Build the frozen ELMo encoder from `modules_dir`, never downloading.

    `modules_dir` is a modules folder with `ELMo/`, the module folder itself,
    or a URL handle already in the TF-Hub cache. When a modules folder has no
    `ELMo/`, a cached copy of https://tfhub.dev/google/elmo/3 or /2 is used.
    """
    return ElmoEncoder(modules_dir, allow_download=False)
