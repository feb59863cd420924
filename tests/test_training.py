"""The training driver: checkpoints, history and resuming."""

import json

from mmgrounding.config import get_preset
from mmgrounding.training import train
from tests.conftest import SAMPLE_DIR


def test_resume_continues_after_last_epoch(tmp_path):
    config = get_preset("mini").replace(train={"epochs": 1, "batch_size": 4}, visual={"image_size": 64})
    manifest = SAMPLE_DIR / "sample.jsonl"
    train(config, manifest, tmp_path, verbose=0)
    first_weights = (tmp_path / "checkpoints" / "last" / "weights.npz").read_bytes()

    results = train(config.replace(train={"epochs": 2}), manifest, tmp_path, resume=True, verbose=0)

    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert results["epochs_run"] == 1
    info = json.loads((tmp_path / "checkpoints" / "last" / "info.json").read_text())
    assert info["epoch"] == 2
    assert (tmp_path / "checkpoints" / "last" / "weights.npz").read_bytes() != first_weights


def test_resume_of_finished_run_trains_nothing(tmp_path):
    config = get_preset("mini").replace(train={"epochs": 1, "batch_size": 4}, visual={"image_size": 64})
    manifest = SAMPLE_DIR / "sample.jsonl"
    train(config, manifest, tmp_path, verbose=0)
    results = train(config, manifest, tmp_path, resume=True, verbose=0)
    assert results["epochs_run"] == 0


def test_resume_keeps_better_best_checkpoint(tmp_path):
    config = get_preset("mini").replace(train={"epochs": 1, "batch_size": 4}, visual={"image_size": 64})
    manifest = SAMPLE_DIR / "sample.jsonl"
    train(config, manifest, tmp_path, validation_manifest=manifest, verbose=0)
    best = tmp_path / "checkpoints" / "best"
    info = json.loads((best / "info.json").read_text())
    # Pretend the first part of the run reached a score no later epoch can beat.
    info["pointing_accuracy"] = 1.01
    (best / "info.json").write_text(json.dumps(info))
    weights = (best / "weights.npz").read_bytes()

    train(config.replace(train={"epochs": 2}), manifest, tmp_path, validation_manifest=manifest, resume=True, verbose=0)

    assert json.loads((best / "info.json").read_text())["pointing_accuracy"] == 1.01
    assert (best / "weights.npz").read_bytes() == weights
