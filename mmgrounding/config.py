"""Hyper-parameters as frozen dataclasses, the named presets, and JSON I/O.

Only the builder functions read a `Config`; layers take explicit arguments,
so two variants can live side by side in one notebook. Constants of the
presets are those of the authors' TensorFlow 1 release of Akbari et al.,
"Multi-level Multimodal Common Semantic Space for Image-Phrase Grounding",
CVPR 2019, except the `mini` preset, which is sized for a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VisualConfig:
    """The frozen backbone and the per-level mapping into the common space."""

    backbone: str = "vgg16"
    image_size: int = 299
    # Endpoint whose grid is the common grid; the other levels are resized to it.
    grid_level: str = "conv5_1"
    # Widths of the three 1x1 convolutions of each level's mapping; the last
    # one is the common-space width.
    mapping_widths: tuple[int, ...] = (1024, 1024, 1024)

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"image_size {self.image_size!r} must be an integer of at least 32 pixels")
        if not self.mapping_widths or not all(isinstance(w, int) and w > 0 for w in self.mapping_widths):
            raise ValueError(f"mapping_widths {self.mapping_widths!r} must be one or more positive integers")


@dataclass(frozen=True)
class TextConfig:
    """The frozen text encoder and the trainable text head."""

    encoder: str = "elmo"
    # "mix": learned mix of the encoder's layers; "bilstm": a trainable
    # bidirectional LSTM over the encoder's `word_emb`.
    head: str = "mix"
    hidden_width: int = 1024
    lstm_units: int = 512

    def __post_init__(self):
        if self.head not in ("mix", "bilstm"):
            raise ValueError(f"text head {self.head!r} must be 'mix' or 'bilstm'")
        if self.lstm_units < 1:
            raise ValueError(f"lstm_units {self.lstm_units} must be positive")


@dataclass(frozen=True)
class ModelConfig:
    """Attention, scoring and loss constants, and the switches for the fixes."""

    leaky_relu_alpha: float = 0.25
    # TF1 convention: the penalty is weight_decay * sum(w^2) / 2.
    weight_decay: float = 5e-4
    gamma_word: float = 5.0
    gamma_loss: float = 10.0
    # Fix 1; False sums the log-sum-exp over padded tokens like the paper code.
    mask_padding: bool = True
    # Fix 2; False skips the L2 normalisation of word vectors like one paper
    # variant, whose heatmaps are then not cosines.
    normalize_words: bool = True
    # Fix 5; False weights phrase heatmaps by the raw relevance.
    clip_phrase_weights: bool = True

    def __post_init__(self):
        for name in ("gamma_word", "gamma_loss"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)!r} must be positive")
        if self.leaky_relu_alpha < 0 or self.weight_decay < 0:
            raise ValueError(
                f"leaky_relu_alpha {self.leaky_relu_alpha} and weight_decay {self.weight_decay} must not be negative"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and sampling."""

    batch_size: int = 32
    epochs: int = 20
    learning_rate: float = 1e-3
    # (epoch, factor): from this 1-based epoch on, the base rate is
    # multiplied by factor. The paper code halves after epoch 9 and quarters
    # after epoch 14.
    learning_rate_drops: tuple[tuple[int, float], ...] = ((10, 0.5), (15, 0.25))
    adam_epsilon: float = 1e-8
    seed: int = 0
    # "captions" (COCO) or "queries" (Visual Genome region phrases).
    text_source: str = "captions"

    def __post_init__(self):
        # The loss contrasts each caption with the other images of its batch,
        # so a batch of one has nothing to learn from.
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"batch_size {self.batch_size!r} must be an integer of at least 2")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs {self.epochs!r} must be an integer of at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate {self.learning_rate!r} must be positive")
        if self.text_source not in ("captions", "queries"):
            raise ValueError(f"text_source {self.text_source!r} must be 'captions' or 'queries'")


@dataclass(frozen=True)
class Config:
    """Everything needed to build and train one model variant."""

    name: str = "custom"
    visual: VisualConfig = field(default_factory=VisualConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def common_dim(self) -> int:
        return self.visual.mapping_widths[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: dict[str, Any]) -> "Config":
        """Return a copy with fields of the named sections overridden.

        Example: `config.replace(train={"epochs": 2}, visual={"image_size": 224})`.
        """
        changes: dict[str, Any] = {}
        for section, values in sections.items():
            if section == "name":
                changes["name"] = values
                continue
            current = getattr(self, section, None)
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"unknown config section {section!r}; use visual, text, model or train")
            changes[section] = _replace_fields(current, values, section)
        return dataclasses.replace(self, **changes)


def _replace_fields(section: Any, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {where} fields {unknown}; known fields are {sorted(known)}")
    converted = {}
    for name, value in values.items():
        default = getattr(section, name)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        converted[name] = value
    return dataclasses.replace(section, **converted)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a `Config` from `Config.to_dict()` output, rejecting unknown keys."""
    values = dict(values)
    name = values.pop("name", "custom")
    unknown = sorted(set(values) - {"visual", "text", "model", "train"})
    if unknown:
        raise ValueError(f"unknown config sections {unknown}")
    return Config(name=name).replace(**values)


def save_config(config: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path} is not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(values).__name__}")
    try:
        return config_from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config file {path}: {error}") from None


PRESETS: dict[str, Config] = {
    # Small real pretrained models that install from the package index, sized
    # to train in minutes on two CPU cores.
    "mini": Config(
        name="mini",
        visual=VisualConfig(
            backbone="efficientnet_lite0",
            image_size=224,
            grid_level="stage4",
            mapping_widths=(512, 512, 256),
        ),
        text=TextConfig(encoder="minilm", head="mix", hidden_width=256),
        train=TrainConfig(batch_size=16, epochs=30, learning_rate_drops=()),
    ),
    "vgg_bilstm": Config(
        name="vgg_bilstm",
        visual=VisualConfig(backbone="vgg16", grid_level="conv5_1", mapping_widths=(1024, 1024, 1024)),
        text=TextConfig(encoder="elmo", head="bilstm"),
    ),
    "vgg_elmo": Config(
        name="vgg_elmo",
        visual=VisualConfig(backbone="vgg16", grid_level="conv5_1", mapping_widths=(1024, 1024, 1024)),
        text=TextConfig(encoder="elmo", head="mix"),
    ),
    "pnasnet_elmo": Config(
        name="pnasnet_elmo",
        visual=VisualConfig(backbone="pnasnet_large", grid_level="Cell_5", mapping_widths=(2048, 2048, 1024)),
        text=TextConfig(encoder="elmo", head="mix"),
    ),
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
