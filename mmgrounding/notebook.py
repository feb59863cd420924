"""Shared glue of the training and evaluation notebooks.

The notebooks stay thin: each cell calls one of these helpers or one library
entry point (`training.train`, `evaluation.runner.evaluate`). The helpers
turn the notebooks' plain parameters into a `Config` and manifest paths, and
turn results into a table and heatmap panels.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from mmgrounding.config import Config, get_preset
from mmgrounding.data.images import load_image
from mmgrounding.data.manifest import read_manifest, resolve_image_path
from mmgrounding.data.pipeline import find_manifest

logger = logging.getLogger(__name__)

# Training set folder name -> the texts the model trains with: COCO has
# captions per image, Visual Genome has region phrases.
TRAINING_SETS = {"coco": "captions", "visual_genome": "queries"}

# Backbone -> (grid level, mapping widths), the values of the presets that
# use each backbone: the grid level is the stride-16 endpoint whose grid all
# levels are resized to, and the last width is the common-space width.
BACKBONE_SETTINGS: dict[str, tuple[str, tuple[int, ...]]] = {
    "vgg16": ("conv5_1", (1024, 1024, 1024)),
    "pnasnet_large": ("Cell_5", (2048, 2048, 1024)),
    "efficientnet_lite0": ("stage4", (512, 512, 256)),
}

# The BiLSTM head reads the encoder's raw `word_emb`, which only ELMo returns.
_BILSTM_ENCODERS = ("elmo",)


def override_backbone(config: Config, backbone: str | None) -> Config:
    """Replace the backbone of `config`, with that backbone's grid level and mapping widths.

    None returns `config` unchanged. Raises ValueError for a backbone without
    settings in `BACKBONE_SETTINGS`.
    """
    if backbone is None:
        return config
    if backbone not in BACKBONE_SETTINGS:
        raise ValueError(f"backbone {backbone!r} is not supported here; choose one of {sorted(BACKBONE_SETTINGS)}")
    grid_level, widths = BACKBONE_SETTINGS[backbone]
    return config.replace(visual={"backbone": backbone, "grid_level": grid_level, "mapping_widths": widths})


def override_text_encoder(config: Config, text_encoder: str | None) -> Config:
    """Replace the text encoder of `config`. None returns `config` unchanged.

    Raises ValueError for an unregistered encoder, and for an encoder other
    than ELMo under the BiLSTM head, which needs ELMo's `word_emb`.
    """
    if text_encoder is None:
        return config
    from mmgrounding.encoders.text import text_encoder_names

    if text_encoder not in text_encoder_names():
        raise ValueError(f"text_encoder {text_encoder!r} is not registered; choose one of {text_encoder_names()}")
    if config.text.head == "bilstm" and text_encoder not in _BILSTM_ENCODERS:
        raise ValueError(
            f"text_encoder {text_encoder!r} cannot feed the bilstm head of {config.name}, which reads "
            f"the word embeddings only {', '.join(_BILSTM_ENCODERS)} returns; use train_elmo_only.ipynb "
            "(the mix head) for other encoders"
        )
    return config.replace(text={"encoder": text_encoder})


def text_source_for(training_set: str) -> str:
    """Return "captions" for "coco" and "queries" for "visual_genome"; raise ValueError otherwise."""
    if training_set not in TRAINING_SETS:
        raise ValueError(
            f"training_set {training_set!r} is not supported; use one of {sorted(TRAINING_SETS)} "
            "(converted into <data_dir>/<training_set>/train.jsonl)"
        )
    return TRAINING_SETS[training_set]


def training_config(
    preset: str,
    training_set: str,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    learning_rate: float | None = None,
    backbone: str | None = None,
    text_encoder: str | None = None,
) -> Config:
    """Build the config of one training run from a preset and the notebook's parameters.

    A parameter left at None keeps the preset's value. `training_set` sets
    `train.text_source`.
    """
    config = get_preset(preset)
    train = {"text_source": text_source_for(training_set)}
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        if value is not None:
            train[name] = value
    config = config.replace(train=train)
    if image_size is not None:
        config = config.replace(visual={"image_size": int(image_size)})
    config = override_backbone(config, backbone)
    return override_text_encoder(config, text_encoder)


def training_manifests(
    data_dir: str | os.PathLike,
    training_set: str,
    validation_dir: str | os.PathLike | None = None,
    validation_split: str = "val",
) -> tuple[Path, Path | None]:
    """Find `<data_dir>/<training_set>/train.jsonl` and the optional validation manifest.

    Returns (training manifest, validation manifest or None when
    `validation_dir` is None). Raises ValueError for an unsupported
    training set and FileNotFoundError, listing the splits there are, for a
    missing manifest.
    """
    text_source_for(training_set)
    # Absolute paths in errors and logs, because a relative default such as
    # "data" depends on the folder papermill or Jupyter runs the notebook in.
    manifest = find_manifest(Path(data_dir).resolve() / training_set, "train")
    validation = None
    if validation_dir is not None:
        validation = find_manifest(Path(validation_dir).resolve(), validation_split)
    logger.info("training on %s; validating on %s", manifest, validation or "nothing (no model selection)")
    return manifest, validation


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read the per-epoch JSON lines that training writes to `history.jsonl`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training history at {path}; run training into that folder first")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_metrics(results: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """Collect the headline numbers of a run from `train`'s results and the history.

    Returns a dict with the final training loss, its retrieval part, the
    retrieval loss at chance level for the batch size, the best validation
    pointing accuracy (None without validation) and the checkpoint folders.
    """
    last = history[-1] if history else {}
    accuracies = [entry["eval/pointing_accuracy"] for entry in history if entry.get("eval/pointing_accuracy") is not None]
    return {
        "preset": results["config"]["name"],
        "backbone": results["config"]["visual"]["backbone"],
        "text_encoder": results["config"]["text"]["encoder"],
        "text_head": results["config"]["text"]["head"],
        "text_source": results["config"]["train"]["text_source"],
        "epochs_run": results["epochs_run"],
        "final_loss": last.get("train/loss"),
        # Comparable with chance_loss, which has no weight-decay term.
        "final_retrieval_loss": last.get("train/retrieval_loss"),
        "chance_loss": results["chance_loss"],
        "best_pointing_accuracy": max(accuracies) if accuracies else None,
        "checkpoint": results["checkpoint"],
        "best_checkpoint": results.get("best_checkpoint"),
    }


def dataset_manifests(
    data_dir: str | os.PathLike, datasets: list[str], split: str
) -> tuple[dict[str, Path], dict[str, str]]:
    """Find `<data_dir>/<dataset>/<split>.jsonl` for each dataset, skipping missing ones.

    Returns (dataset -> manifest for those found, dataset -> reason for those
    skipped). Each skipped dataset is logged. Raises FileNotFoundError when
    none is found, because there is then nothing to evaluate.
    """
    data_dir = Path(data_dir).resolve()
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name in datasets:
        try:
            found[name] = find_manifest(data_dir / name, split)
        except FileNotFoundError as error:
            missing[name] = str(error)
            logger.warning("skipping %s: %s", name, error)
    if not found:
        raise FileNotFoundError(
            f"none of the datasets {list(datasets)} has a {split!r} manifest under {data_dir}; "
            "convert one with `mmgrounding convert` or pass another data_dir"
        )
    return found, missing


def results_table(results: dict[str, dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    """Format evaluation results as a Markdown table, one row per dataset.

    `results` maps dataset -> `evaluate` output; `skipped` maps dataset ->
    reason, listed as rows without numbers.
    """

    def number(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = [
        "| dataset | images | scored queries | pointing accuracy | box accuracy | attention correctness |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        counts = result["counts"]
        lines.append(
            f"| {name} | {counts['images']} | {counts['scored']} | {number(result['pointing_accuracy'])} "
            f"| {number(result['box_accuracy'])} | {number(result['attention_correctness'])} |"
        )
    for name in skipped or {}:
        lines.append(f"| {name} | skipped: no manifest | | | | |")
    return "\n".join(lines)


def heatmap_panels(results: dict[str, Any], count: int = 6, one_per_image: bool = False) -> list[dict[str, Any]]:
    """Build `visualize.heatmap_grid` panels for the first `count` scored queries.

    `results` is an `evaluate` output made with `keep_heatmaps=True`; the
    images and boxes are read back from its manifest. With `one_per_image`,
    only the first scored query of each image gets a panel. Each panel also
    carries its `image_id`.
    """
    if "heatmaps" not in results:
        raise ValueError("results have no heatmaps; call evaluate(..., keep_heatmaps=True)")
    manifest = Path(results["manifest"])
    records = {record["image_id"]: record for record in read_manifest(manifest)}
    images: dict[Any, Any] = {}
    panels = []
    for outcome, heatmap in zip(results["queries"], results["heatmaps"]):
        if len(panels) == count:
            break
        image_id = outcome["image_id"]
        if one_per_image and image_id in images:
            continue
        record = records[image_id]
        if image_id not in images:
            images[image_id] = load_image(resolve_image_path(manifest.parent, record["image"]))
        query = record["queries"][outcome["query"]]
        panels.append(
            {
                "image_id": image_id,
                "image": images[image_id],
                "heatmap": heatmap,
                "boxes": query["boxes"],
                "title": f"{outcome['text']} ({'hit' if outcome['hit'] else 'miss'})",
            }
        )
    return panels
