"""Training driver: data, model, optimiser, callbacks and checkpoints.

`train` is what the notebooks and `mmgrounding train` call. It writes into
`output_dir`: `checkpoints/last/` after every epoch (and `checkpoints/best/`
when a validation set is given, chosen by pointing accuracy), TensorBoard logs
under `logs/`, one JSON line per epoch in `history.jsonl`, and
`train_results.json` at the end. Training can resume from `checkpoints/last/`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mmgrounding.config import Config
from mmgrounding.data.pipeline import training_data
from mmgrounding.evaluation.runner import EvaluationOptions, evaluate, git_revision
from mmgrounding.model.build import build_model, load_weights, save_checkpoint
from mmgrounding.progress import format_duration

logger = logging.getLogger(__name__)


def learning_rate_for_epoch(config: Config, epoch: int) -> float:
    """Learning rate of a 0-based epoch under the step schedule of `config`."""
    rate = config.train.learning_rate
    factor = 1.0
    for first_epoch, drop in config.train.learning_rate_drops:
        if epoch + 1 >= first_epoch:
            factor = drop
    return rate * factor


class _EpochEnd(keras.callbacks.Callback):
    """Validation, checkpoints and the JSON history at the end of each epoch."""

    def __init__(self, config, output_dir, validation_manifest, options, validation_limit, training_data, first_epoch):
        super().__init__()
        self.first_epoch = first_epoch
        self.config = config
        self.output_dir = Path(output_dir)
        self.validation_manifest = validation_manifest
        self.options = options
        self.validation_limit = validation_limit
        self.training_data = training_data
        self.best = -math.inf
        best_info = self.output_dir / "checkpoints" / "best" / "info.json"
        if first_epoch > 0 and best_info.is_file():
            # A resumed run must not replace the best checkpoint of its first
            # part with a worse one.
            self.best = json.loads(best_info.read_text()).get("pointing_accuracy", -math.inf)
        self.started = time.perf_counter()
        self.writer = tf.summary.create_file_writer(str(self.output_dir / "logs" / "eval"))

    def _validate(self, epoch, entry, info) -> None:
        """Score the validation set and keep the best checkpoint so far."""
        results = evaluate(
            self.model,
            self.validation_manifest,
            self.config.visual.image_size,
            self.options,
            limit=self.validation_limit,
        )
        accuracy = results["pointing_accuracy"]
        entry["eval/pointing_accuracy"] = accuracy
        entry["eval/scored"] = results["counts"]["scored"]
        with self.writer.as_default():
            tf.summary.scalar("pointing_accuracy", accuracy or 0.0, step=epoch + 1)

        if accuracy is not None and accuracy > self.best:
            self.best = accuracy
            info["pointing_accuracy"] = accuracy
            save_checkpoint(self.model, self.config, self.output_dir / "checkpoints" / "best", info)
            logger.info("epoch %d: new best pointing accuracy %.4f", epoch + 1, accuracy)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        entry: dict[str, Any] = {"epoch": epoch + 1}
        entry.update({f"train/{name}": float(value) for name, value in logs.items()})
        entry["train/learning_rate"] = learning_rate_for_epoch(self.config, epoch)
        entry["train/skipped_images"] = self.training_data.skipped.total
        if not all(math.isfinite(v) for k, v in entry.items() if k.startswith("train/")):
            logger.error("non-finite training metrics at epoch %d: %s", epoch + 1, entry)

        info = {"epoch": epoch + 1, "git_revision": git_revision()}
        if self.validation_manifest is not None:
            self._validate(epoch, entry, info)

        entry["wall_time_s"] = round(time.perf_counter() - self.started, 1)
        save_checkpoint(self.model, self.config, self.output_dir / "checkpoints" / "last", info)
        with (self.output_dir / "history.jsonl").open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")

        # Keras prints an ETA only within an epoch and only on a terminal, so
        # the log line estimates the time left for the whole run.
        epochs_done = epoch + 1 - self.first_epoch
        remaining = (self.config.train.epochs - epoch - 1) * entry["wall_time_s"] / max(epochs_done, 1)
        logger.info(
            "epoch %d/%d done, ETA %s: %s",
            epoch + 1,
            self.config.train.epochs,
            format_duration(remaining),
            json.dumps(entry),
        )


def train(
    config: Config,
    manifest,
    output_dir,
    modules_dir=None,
    validation_manifest=None,
    evaluation_options: EvaluationOptions | None = None,
    validation_limit: int | None = None,
    steps_per_epoch: int | None = None,
    resume: bool = False,
    verbose: int | str = "auto",
    model=None,
) -> dict[str, Any]:
    """Train the model of `config` on the captions (or phrases) of a manifest.

    Args:
      config: the variant and its hyper-parameters.
      manifest: training manifest `<split>.jsonl`, or TFRecord shards written
        by `mmgrounding pack` (their folder, index or one shard).
      output_dir: folder for checkpoints, logs and results.
      modules_dir: folder of pretrained modules (unused by the mini preset).
      validation_manifest: optional manifest with boxes, for model selection
        by pointing accuracy after each epoch.
      evaluation_options: options of that validation.
      validation_limit: validate on the first N images only.
      steps_per_epoch: defaults to images // batch size.
      resume: continue from `output_dir/checkpoints/last` if it exists.
      verbose: passed to `keras.Model.fit` (1 shows a progress bar with ETA).
      model: an already built model of `config`, to skip rebuilding it.

    Returns:
      The dict also written to `output_dir/train_results.json`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = training_data(
        manifest,
        config.train.batch_size,
        config.visual.image_size,
        text_source=config.train.text_source,
        seed=config.train.seed,
    )
    steps = steps_per_epoch or data.steps_per_epoch
    keras.utils.set_random_seed(config.train.seed)
    if model is None:
        model = build_model(config, modules_dir)

    first_epoch = 0
    last = output_dir / "checkpoints" / "last"
    if resume and (last / "info.json").is_file():
        load_weights(model, last)
        first_epoch = int(json.loads((last / "info.json").read_text())["epoch"])
        logger.info("resuming from %s after epoch %d", last, first_epoch)
    else:
        if resume:
            logger.warning("resume requested, but %s has no checkpoint; training from scratch", last)
        if (output_dir / "history.jsonl").exists():
            (output_dir / "history.jsonl").unlink()
    if first_epoch >= config.train.epochs:
        logger.info("nothing to do: %s already finished %d epochs", output_dir, first_epoch)

    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=config.train.learning_rate, beta_1=0.9, beta_2=0.999, epsilon=config.train.adam_epsilon
        )
    )
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate_for_epoch(config, epoch)),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(log_dir=str(output_dir / "logs"), write_graph=False),
        _EpochEnd(config, output_dir, validation_manifest, evaluation_options, validation_limit, data, first_epoch),
    ]
    logger.info(
        "training %s on %d images: %d epochs of %d steps, batch %d",
        config.name,
        data.images,
        config.train.epochs,
        steps,
        config.train.batch_size,
    )
    started = time.perf_counter()
    history = model.fit(
        data.dataset(first_epoch),
        epochs=config.train.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=verbose,
        # The sampler shuffles with its own seeded generator.
        shuffle=False,
    )
    results = {
        "config": config.to_dict(),
        "manifest": str(manifest),
        "epochs_run": len(history.epoch),
        "steps_per_epoch": steps,
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
        "skipped_images": dict(data.skipped.counts),
        "chance_loss": 4 * float(np.log(config.train.batch_size)),
        "checkpoint": str(last),
        "git_revision": git_revision(),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    if validation_manifest is not None and (output_dir / "checkpoints" / "best").exists():
        results["best_checkpoint"] = str(output_dir / "checkpoints" / "best")
    (output_dir / "train_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    model.training_results = results
    return results
