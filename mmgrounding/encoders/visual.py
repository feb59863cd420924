"""Registry of frozen visual backbones.

A backbone is a `keras.Model` that maps a float32 batch of RGB images with
values 0..255, shape [batch, image_size, image_size, 3], to a dict of its four
level maps keyed by endpoint name. Each map is [batch, height, width,
channels], not yet resized to the common grid. It applies its own preprocessing, is
frozen (`trainable = False`) and stores its endpoint names, in level order, as
the attribute `level_names`.
"""

from __future__ import annotations

import os
from typing import Callable

import keras

BackboneBuilder = Callable[[str | os.PathLike | None, int], keras.Model]

_BUILDERS: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register `builder(modules_dir, image_size)` under `name`."""

    def decorate(builder: BackboneBuilder) -> BackboneBuilder:
        _BUILDERS[name] = builder
        return builder

    return decorate


def backbone_names() -> list[str]:
    """Return the registered backbone names, sorted."""
    _import_builtin_backbones()
    return sorted(_BUILDERS)


def load_backbone(name: str, modules_dir: str | os.PathLike | None, image_size: int = 299) -> keras.Model:
    """Build the frozen backbone `name` with its pretrained weights.

    `modules_dir` is the folder in the layout of the published modules archive;
    backbones whose weights come from an installed package ignore it.
    """
    _import_builtin_backbones()
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_BUILDERS)}")
    if image_size < 32:
        raise ValueError(f"image_size {image_size} is too small; use at least 32 pixels")
    model = _BUILDERS[name](modules_dir, int(image_size))
    model.trainable = False
    return model


def _import_builtin_backbones() -> None:
    # The modules register themselves on import; importing them here keeps
    # `load_backbone` usable without the caller importing each backbone.
    import importlib

    for module in ("efficientnet_lite", "vgg", "pnasnet"):
        try:
            importlib.import_module(f"mmgrounding.encoders.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"mmgrounding.encoders.{module}":
                raise
