"""The `mmgrounding` command on real photos and a trained checkpoint."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mmgrounding.cli import main
from mmgrounding.data.images import load_image
from tests.conftest import SAMPLE_DIR


def test_ground_writes_heatmap_picture(synthetic_run, tmp_path, capsys):
    out = tmp_path / "cat.png"
    code = main(
        [
            "ground",
            str(SAMPLE_DIR / "images" / "chelsea.png"),
            "a ginger cat",
            "--checkpoint",
            str(synthetic_run["run"] / "checkpoints" / "last"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["phrase"] == "a ginger cat"
    picture = load_image(out)
    assert picture.ndim == 3
    assert picture.shape[0] > 100
    # The overlay is not a blank canvas.
    assert np.std(picture) > 10
    x, y = summary[0]["point"]
    photo = load_image(SAMPLE_DIR / "images" / "chelsea.png")
    assert 0 <= x < photo.shape[1]
    assert 0 <= y < photo.shape[0]


def test_ground_several_phrases_numbers_pictures(synthetic_run, tmp_path, capsys):
    out = tmp_path / "shapes.png"
    code = main(
        [
            "ground",
            str(SAMPLE_DIR / "images" / "coffee.png"),
            "a cup",
            "a spoon",
            "--checkpoint",
            str(synthetic_run["run"] / "checkpoints" / "last"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (tmp_path / "shapes-0.png").is_file()
    assert (tmp_path / "shapes-1.png").is_file()


def test_ground_missing_checkpoint_fails_clearly(tmp_path, caplog):
    code = main(["ground", str(SAMPLE_DIR / "images" / "coffee.png"), "a cup", "--checkpoint", str(tmp_path)])
    assert code == 2
    assert "config.json" in caplog.text


def test_evaluate_command_writes_results(synthetic_run, tmp_path):
    out = tmp_path / "results.json"
    data = synthetic_run["manifests"]["test"].parent
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(synthetic_run["run"] / "checkpoints" / "last"),
            "--data",
            str(data),
            "--split",
            "test",
            "--limit",
            "10",
            "--min-box-area",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["counts"]["images"] == 10
    assert results["options"]["min_box_area"] == 0
    assert results["config"]["name"] == "mini"


def test_ground_rejects_bad_arguments_before_loading(tmp_path, caplog):
    image = str(SAMPLE_DIR / "images" / "coffee.png")
    missing = str(tmp_path / "no-checkpoint")
    assert main(["ground", image, "   ", "--checkpoint", missing]) == 2
    assert "non-empty text" in caplog.text
    assert main(["ground", image, "a cup", "--checkpoint", missing, "--out", str(tmp_path)]) == 2
    assert "must be a .png file name" in caplog.text


def test_ground_corrupt_weights_named(synthetic_run, tmp_path, caplog):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    source = synthetic_run["run"] / "checkpoints" / "last"
    (checkpoint / "config.json").write_bytes((source / "config.json").read_bytes())
    (checkpoint / "weights.npz").write_bytes((source / "weights.npz").read_bytes()[:2000])
    image = str(SAMPLE_DIR / "images" / "coffee.png")
    assert main(["ground", image, "a cup", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.png")]) == 2
    assert "weights.npz is not a valid weights file" in caplog.text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "1", "batch_size 1 must be an integer of at least 2"),
        ("--epochs", "0", "epochs 0 must be an integer of at least 1"),
        ("--learning-rate", "-1", "learning_rate -1.0 must be positive"),
        ("--image-size", "10", "image_size 10 must be an integer of at least 32"),
    ],
)
def test_train_rejects_bad_options(tmp_path, caplog, option, value, message):
    code = main(["train", "--data", str(SAMPLE_DIR), "--split", "sample", "--output", str(tmp_path), option, value])
    assert code == 2
    assert message in caplog.text


def test_train_rejects_unknown_split(tmp_path, caplog):
    code = main(["train", "--data", str(SAMPLE_DIR), "--split", "nope", "--output", str(tmp_path)])
    assert code == 2
    assert "available splits: ['sample']" in caplog.text


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "mmgrounding.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for command in ("ground", "train", "evaluate", "convert", "pack", "synthetic"):
        assert command in result.stdout
