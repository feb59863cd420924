"""Builders that read a `Config`, and saving and restoring trained weights.

A checkpoint folder contains `config.json` and `weights.npz` with the
trainable weights only. The frozen backbone and text encoder are rebuilt from their
pretrained modules, so checkpoints stay small and never contain the modules.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mmgrounding.config import Config, load_config, save_config
from mmgrounding.encoders.text import load_text_encoder
from mmgrounding.encoders.visual import load_backbone
from mmgrounding.files import use_default_permissions
from mmgrounding.model.grounding_model import GroundingModel
from mmgrounding.model.mapping import VisualMapping
from mmgrounding.model.text_heads import build_text_head

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"
CONFIG_FILE = "config.json"


def build_model(config: Config, modules_dir: str | os.PathLike | None = None) -> GroundingModel:
    """Build the model of `config` with pretrained frozen encoders."""
    _check_modules(config, modules_dir)
    backbone = load_backbone(config.visual.backbone, modules_dir, config.visual.image_size)
    text_encoder = load_text_encoder(config.text.encoder, modules_dir)

    mapping = VisualMapping(
        backbone.level_names,
        config.visual.grid_level,
        config.visual.mapping_widths,
        alpha=config.model.leaky_relu_alpha,
        weight_decay=config.model.weight_decay,
        name="visual_mapping",
    )
    head = build_text_head(
        config.text.head,
        config.common_dim,
        units=config.text.lstm_units,
        alpha=config.model.leaky_relu_alpha,
        normalize_words=config.model.normalize_words,
    )

    model = GroundingModel(
        backbone,
        text_encoder,
        mapping,
        head,
        gamma_word=config.model.gamma_word,
        gamma_loss=config.model.gamma_loss,
        mask_padding=config.model.mask_padding,
        clip_phrase_weights=config.model.clip_phrase_weights,
        name=f"grounding_{config.name}",
    )
    size = config.visual.image_size
    # One call on a dummy pair creates every weight, so weights can be loaded
    # and counted before training.
    model({"image": tf.zeros([1, size, size, 3]), "caption": tf.constant(["a photo"])})
    return model


def _check_modules(config: Config, modules_dir) -> None:
    try:
        from mmgrounding.modules import check_modules
    except ImportError:  # the module checks are optional for the mini preset
        return
    check_modules(modules_dir, config.visual.backbone, config.text.encoder)


def _trainable_layers(model: GroundingModel) -> dict[str, keras.layers.Layer]:
    return {"visual_mapping": model.visual_mapping, "text_head": model.text_head}


def save_checkpoint(model: GroundingModel, config: Config, directory: str | os.PathLike, info=None) -> Path:
    """Write config.json, weights.npz and, if given, info.json into `directory`.

    Files are written under temporary names and renamed, so an interrupted
    save never leaves a checkpoint that loads half-written weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, layer in _trainable_layers(model).items():
        for index, variable in enumerate(layer.weights):
            arrays[f"{prefix}/{index:03d}"] = np.asarray(variable.numpy())
    handle, temporary = tempfile.mkstemp(suffix=".npz", dir=directory)
    os.close(handle)
    use_default_permissions(temporary)
    np.savez(temporary, **arrays)
    os.replace(temporary, directory / WEIGHTS_FILE)
    save_config(config, directory / CONFIG_FILE)
    if info is not None:
        (directory / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return directory


def load_weights(model: GroundingModel, directory: str | os.PathLike) -> None:
    """Load the trainable weights saved by `save_checkpoint` into `model`."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {WEIGHTS_FILE}; pass a folder written by training")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} is not a valid weights file ({type(error).__name__}); it may be truncated or "
            "overwritten, so save the checkpoint again or use another one"
        ) from None
    with arrays:
        for prefix, layer in _trainable_layers(model).items():
            names = sorted(key for key in arrays.files if key.startswith(prefix + "/"))
            if len(names) != len(layer.weights):
                raise ValueError(
                    f"{path}: {prefix} has {len(names)} saved arrays but the model has "
                    f"{len(layer.weights)} weights; was the checkpoint made with another config?"
                )
            for name, variable in zip(names, layer.weights):
                value = arrays[name]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(
                        f"{path}: {name} has shape {value.shape}, the model expects {tuple(variable.shape)}"
                    )
                variable.assign(value)


def load_checkpoint(directory: str | os.PathLike, modules_dir=None) -> tuple[GroundingModel, Config]:
    """Rebuild the model of a checkpoint folder and load its weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder {directory} not found; pass a folder written by training")
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {CONFIG_FILE}; pass a folder written by training")
    config = load_config(directory / CONFIG_FILE)
    model = build_model(config, modules_dir)
    load_weights(model, directory)
    logger.info("loaded checkpoint %s (%s preset)", directory, config.name)
    return model, config
