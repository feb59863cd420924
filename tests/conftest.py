import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPOSITORY.parent / "shared" / "fixtures"
SAMPLE_DIR = REPOSITORY / "data" / "sample"

# Sizes of the synthetic learnability run: large enough to clear 0.8 pointing
# accuracy with a margin, small enough for a few minutes on two CPU cores.
SYNTHETIC_TRAIN_IMAGES = 320
SYNTHETIC_TEST_IMAGES = 100
SYNTHETIC_EPOCHS = 8
SYNTHETIC_SIZE = 192


@pytest.fixture(scope="session")
def mini_model():
    """The mini preset with untrained heads, built once per session."""
    from mmgrounding.config import get_preset
    from mmgrounding.model.build import build_model

    config = get_preset("mini")
    return build_model(config), config


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """Train the mini preset on synthetic captions once per session.

    Returns a dict with the dataset's manifests, the run folder, the trained
    model, its config and the training results.
    """
    from mmgrounding.config import get_preset
    from mmgrounding.data.synthetic import write_synthetic_dataset
    from mmgrounding.training import train

    root = tmp_path_factory.mktemp("synthetic")
    manifests = write_synthetic_dataset(
        root / "data",
        {"train": SYNTHETIC_TRAIN_IMAGES, "test": SYNTHETIC_TEST_IMAGES},
        size=SYNTHETIC_SIZE,
        seed=0,
    )
    config = get_preset("mini").replace(
        train={"epochs": SYNTHETIC_EPOCHS, "batch_size": 16, "seed": 0},
        visual={"image_size": SYNTHETIC_SIZE},
    )
    import keras

    from mmgrounding.model.build import build_model

    keras.utils.set_random_seed(0)
    model = build_model(config)
    results = train(config, manifests["train"], root / "run", model=model, verbose=0)
    return {
        "manifests": manifests,
        "run": root / "run",
        "model": model,
        "config": config,
        "results": results,
    }
