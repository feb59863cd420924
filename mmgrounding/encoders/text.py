"""Registry of frozen contextual text encoders.

A text encoder is a `keras.layers.Layer` whose `call(captions)` takes a string
tensor [batch] of raw captions and returns a dict:

- `layers`: float32 [batch, tokens, layers, features], every layer's output for
  each whitespace-separated word of the caption (an encoder that works on
  sub-word pieces pools them back to words), so token t is the t-th word of
  `caption.split()`;
- `mask`: float32 [batch, tokens], 1 for real words and 0 for padding;
- `sentence_layers`: float32 [batch, sentence_layers, sentence_features], the
  sentence features that the text head mixes with learned scalars.

Encoders may add keys of their own (ELMo adds the raw `word_emb`). They are
frozen: `trainable = False`.
"""

from __future__ import annotations

import os
from typing import Callable

import keras

TextEncoderBuilder = Callable[[str | os.PathLike | None], keras.layers.Layer]

_BUILDERS: dict[str, TextEncoderBuilder] = {}


def register_text_encoder(name: str) -> Callable[[TextEncoderBuilder], TextEncoderBuilder]:
    """Register `builder(modules_dir)` under `name`."""

    def decorate(builder: TextEncoderBuilder) -> TextEncoderBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorate


def text_encoder_names() -> list[str]:
    """Return the registered text encoder names, sorted."""
    _import_builtin_encoders()
    return sorted(_BUILDERS)


def load_text_encoder(name: str, modules_dir: str | os.PathLike | None) -> keras.layers.Layer:
    """Build the frozen text encoder `name` with its pretrained weights."""
    _import_builtin_encoders()
    if name not in _BUILDERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(_BUILDERS)}")
    encoder = _BUILDERS[name](modules_dir)
    encoder.trainable = False
    return encoder


def _import_builtin_encoders() -> None:
    import importlib

    for module in ("minilm", "elmo"):
        try:
            importlib.import_module(f"mmgrounding.encoders.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"mmgrounding.encoders.{module}":
                raise
