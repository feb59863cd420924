"""Evidence that the method learns grounding from captions alone.

The mini preset is trained on synthetic images described only by captions
("a red circle and a blue square"), then its phrase heatmaps are scored with
the pointing game on held-out images against the boxes it never saw.
"""

import json
import math

import numpy as np
import pytest

from mmgrounding.data.manifest import read_manifest
from mmgrounding.data.synthetic import chance_pointing_accuracy
from mmgrounding.evaluation.runner import EvaluationOptions, evaluate, write_results
from mmgrounding.model.build import load_checkpoint
from tests.conftest import SYNTHETIC_EPOCHS, SYNTHETIC_SIZE

pytestmark = pytest.mark.slow


def test_loss_falls_well_below_chance(synthetic_run):
    history = synthetic_run["results"]["history"]
    chance = synthetic_run["results"]["chance_loss"]
    assert chance == pytest.approx(4 * math.log(16))
    assert history["retrieval_loss"][0] < chance
    assert history["retrieval_loss"][-1] < 0.5 * chance
    assert len(history["retrieval_loss"]) == SYNTHETIC_EPOCHS


def test_pointing_accuracy_far_above_chance(synthetic_run, tmp_path):
    manifest = synthetic_run["manifests"]["test"]
    chance = chance_pointing_accuracy(read_manifest(manifest))
    results = evaluate(synthetic_run["model"], manifest, SYNTHETIC_SIZE, EvaluationOptions(min_box_area=0))
    write_results(results, tmp_path / "results.json")
    print(f"synthetic pointing accuracy {results['pointing_accuracy']:.3f}, chance {chance:.3f}")
    assert chance < 0.2
    assert results["counts"]["scored"] == results["counts"]["queries"]
    assert results["pointing_accuracy"] >= 0.8
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pointing_accuracy"] == results["pointing_accuracy"]


def test_checkpoint_reloads_to_same_heatmaps(synthetic_run):
    manifest = synthetic_run["manifests"]["test"]
    trained = synthetic_run["model"]
    reloaded, config = load_checkpoint(synthetic_run["run"] / "checkpoints" / "last")
    assert config == synthetic_run["config"]
    first = evaluate(trained, manifest, SYNTHETIC_SIZE, keep_heatmaps=True, limit=10)
    second = evaluate(reloaded, manifest, SYNTHETIC_SIZE, keep_heatmaps=True, limit=10)
    assert first["queries"] == second["queries"]
    np.testing.assert_allclose(np.stack(first["heatmaps"]), np.stack(second["heatmaps"]), atol=1e-5)


def test_evaluation_is_deterministic(synthetic_run):
    manifest = synthetic_run["manifests"]["test"]
    first = evaluate(synthetic_run["model"], manifest, SYNTHETIC_SIZE, limit=20)
    second = evaluate(synthetic_run["model"], manifest, SYNTHETIC_SIZE, limit=20)
    for results in (first, second):
        results.pop("wall_time_s")
    assert first == second


def test_training_writes_history_and_checkpoints(synthetic_run):
    run = synthetic_run["run"]
    lines = (run / "history.jsonl").read_text().splitlines()
    assert len(lines) == SYNTHETIC_EPOCHS
    last = json.loads(lines[-1])
    assert last["epoch"] == SYNTHETIC_EPOCHS
    assert "train/retrieval_loss" in last
    assert (run / "checkpoints" / "last" / "weights.npz").is_file()
    assert json.loads((run / "checkpoints" / "last" / "info.json").read_text())["epoch"] == SYNTHETIC_EPOCHS
    assert any((run / "logs").rglob("events.out.tfevents.*"))
