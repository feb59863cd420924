"""The quickstart notebook, run headlessly by papermill with tiny sizes."""

import json
from pathlib import Path

import numpy as np
import papermill
import pytest

from mmgrounding.data.images import load_image
from tests.conftest import REPOSITORY

pytestmark = pytest.mark.notebook


def test_quickstart_runs_and_writes_results(tmp_path):
    output_dir = tmp_path / "quickstart"
    papermill.execute_notebook(
        str(REPOSITORY / "notebooks" / "quickstart.ipynb"),
        str(tmp_path / "quickstart.ipynb"),
        parameters={
            "output_dir": str(output_dir),
            "image_size": 96,
            "batch_size": 4,
            "epochs": 1,
            "synthetic_train_images": 32,
            "synthetic_test_images": 8,
            "synthetic_epochs": 1,
            "photos_to_show": 3,
        },
        cwd=str(REPOSITORY),
        kernel_name="python3",
        progress_bar=False,
    )
    results = json.loads((output_dir / "results.json").read_text())
    assert results["dataset"] == "sample"
    assert results["counts"]["images"] == 9
    assert results["counts"]["scored"] + sum(results["counts"]["skipped"].values()) == results["counts"]["queries"]
    assert 0.0 <= results["pointing_accuracy"] <= 1.0
    summary = results["quickstart"]
    assert 0.0 <= summary["synthetic"]["pointing_accuracy"] <= 1.0
    assert np.isfinite(summary["synthetic"]["final_retrieval_loss"])

    pictures = sorted((output_dir / "heatmaps").glob("*.png"))
    assert len(pictures) == 3
    for picture in pictures:
        assert load_image(picture).shape[2] == 3
    assert (output_dir / "sample_run" / "checkpoints" / "last" / "weights.npz").is_file()
