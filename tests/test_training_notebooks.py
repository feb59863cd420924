"""The training and evaluation notebooks, run through papermill, and their helpers.

The notebooks run on stand-in modules in the published file formats and on
tiny datasets written in the public release formats and converted with the
real converters, so each notebook reads manifests as a user's would.
"""

import json
import math
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmgrounding.config import PRESETS, get_preset
from mmgrounding.data.converters.coco import convert_coco
from mmgrounding.data.converters.flickr30k import convert_flickr30k
from mmgrounding.data.converters.visual_genome import convert_visual_genome
from mmgrounding.notebook import (
    BACKBONE_SETTINGS,
    dataset_manifests,
    heatmap_panels,
    override_backbone,
    override_text_encoder,
    read_history,
    results_table,
    training_config,
    training_manifests,
)
from tests.converter_sources import write_coco, write_flickr30k, write_visual_genome

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
IMAGE_SIZE = 64

# name -> (background BGR, shape BGR); the caption words name the shape colour.
COLOURS = {
    "red": (40, 40, 200),
    "green": (40, 180, 40),
    "blue": (200, 60, 30),
    "yellow": (40, 220, 230),
}


def write_scene(path, width, height, box, colour, seed):
    """Write a JPEG with one filled rectangle `box` (x0, y0, x1, y1, inclusive) on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    cv2.rectangle(image, (x0, y0), (x1, y1), COLOURS[colour], thickness=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())


def scenes(count, seed):
    """Yield (index, width, height, box, colour) of `count` varied scenes."""
    names = list(COLOURS)
    for index in range(count):
        width, height = 96 + 8 * (index % 3), 72 + 8 * (index % 2)
        x0, y0 = 4 + 6 * (index % 4), 6 + 4 * (index % 3)
        yield index, width, height, (x0, y0, x0 + 40, y0 + 30), names[(index + seed) % len(names)]


def write_coco_source(root):
    images, captions = [], []
    for index, width, height, box, colour in scenes(8, seed=0):
        image_id = 100 + index
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        write_scene(root / "train2014" / file_name, width, height, box, colour, seed=image_id)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        captions.append((image_id, f"a {colour} square on a grey wall ."))
        captions.append((image_id, f"the {colour} box sits in the corner"))
    return write_coco(root / "annotations", images, captions), root / "train2014"


def write_visual_genome_source(root):
    sizes, regions, split_ids = {}, {}, {"train": [], "test": []}
    for index, width, height, box, colour in scenes(11, seed=1):
        image_id = 1 + index
        x0, y0, x1, y1 = box
        write_scene(root / "images" / "VG_100K" / f"{image_id}.jpg", width, height, box, colour, seed=image_id)
        sizes[image_id] = (width, height)
        regions[image_id] = [
            (f"{colour} square", x0, y0, x1 - x0 + 1, y1 - y0 + 1),
            ("grey wall", 0, 0, width, height),
        ]
        split_ids["train" if index < 8 else "test"].append(image_id)
    regions_path, image_data_path = write_visual_genome(root / "annotations", sizes, regions)
    split_files = {}
    for split, ids in split_ids.items():
        split_files[split] = root / f"{split}_ids.txt"
        split_files[split].write_text("\n".join(map(str, ids)) + "\n", encoding="utf-8")
    return regions_path, image_data_path, root / "images", split_files


def write_flickr30k_source(root):
    entities_root, images = root / "flickr30k_entities", root / "flickr30k_images"
    for split, first in (("val", 0), ("test", 3)):
        entries = {}
        for index, width, height, box, colour in list(scenes(6, seed=2))[first : first + 3]:
            image_id = str(5000 + index)
            write_scene(images / f"{image_id}.jpg", width, height, box, colour, seed=5000 + index)
            x0, y0, x1, y1 = box
            entries[image_id] = {
                "sentences": [f"[/EN#1/other A {colour} square] hangs on [/EN#2/scene a grey wall] ."],
                "width": width,
                "height": height,
                # Flickr30k Entities boxes are 1-based.
                "objects": [
                    {"names": ["1"], "box": (x0 + 1, y0 + 1, x1 + 1, y1 + 1)},
                    {"names": ["2"], "box": (1, 1, width, height)},
                ],
            }
        write_flickr30k(entities_root, split, entries)
    return entities_root, images


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory):
    """Stand-in VGG16, ELMo and PNASNet-5 Large modules in the modules.tar.gz layout."""
    from mmgrounding.testing.pnasnet_standin import write_pnasnet_slim_checkpoint
    from mmgrounding.testing.standins import write_modules_folder

    folder = write_modules_folder(tmp_path_factory.mktemp("modules"))
    write_pnasnet_slim_checkpoint(folder / "pnasnet_large_2.ckpt")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """COCO (train), Visual Genome (train, test) and Flickr30k (val, test), converted."""
    sources = tmp_path_factory.mktemp("sources")
    data = tmp_path_factory.mktemp("data")
    captions, coco_images = write_coco_source(sources / "coco")
    convert_coco(captions, coco_images, "train", data / "coco")
    regions, image_data, vg_images, split_files = write_visual_genome_source(sources / "visual_genome")
    for split, split_file in split_files.items():
        convert_visual_genome(regions, image_data, vg_images, split_file, split, data / "visual_genome")
    entities_root, flickr_images = write_flickr30k_source(sources / "flickr30k")
    for split in ("val", "test"):
        convert_flickr30k(entities_root, flickr_images, split, data / "flickr30k")
    return data


def run_notebook(name, output_folder, parameters):
    import papermill

    output_folder.mkdir(parents=True, exist_ok=True)
    return papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(output_folder / f"{name}.ipynb"),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )


def training_parameters(modules_dir, data_dir, output_dir, **overrides):
    parameters = {
        "modules_dir": str(modules_dir),
        "data_dir": str(data_dir),
        "epochs": 1,
        "batch_size": 2,
        "image_size": IMAGE_SIZE,
        "steps_per_epoch": 2,
        "output_dir": str(output_dir),
    }
    parameters.update(overrides)
    return parameters


def check_training_outputs(run, backbone, head, text_source):
    config = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert config["visual"]["backbone"] == backbone
    assert config["visual"]["grid_level"] == BACKBONE_SETTINGS[backbone][0]
    assert config["visual"]["image_size"] == IMAGE_SIZE
    assert config["text"]["head"] == head
    assert config["train"]["text_source"] == text_source
    with np.load(run / "checkpoints" / "last" / "weights.npz") as weights:
        assert any(name.startswith("visual_mapping/") for name in weights.files)
        assert any(name.startswith("text_head/") for name in weights.files)
        assert all(np.isfinite(weights[name]).all() for name in weights.files)

    history = read_history(run / "history.jsonl")
    assert [entry["epoch"] for entry in history] == [1]
    assert math.isfinite(history[0]["train/loss"])
    assert history[0]["train/loss"] > 0

    results = json.loads((run / "train_results.json").read_text())
    assert results["steps_per_epoch"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_loss"] == history[0]["train/loss"]
    assert metrics["final_retrieval_loss"] == history[0]["train/retrieval_loss"]
    assert 0 < metrics["final_retrieval_loss"] < metrics["final_loss"]
    assert metrics["backbone"] == backbone
    assert (run / "training_curve.png").stat().st_size > 0
    return history, metrics


@pytest.fixture(scope="module")
def vgg_run(modules_dir, data_dir, tmp_path_factory):
    """train_vgg.ipynb on COCO with Flickr30k validation, run once for two tests."""
    run = tmp_path_factory.mktemp("train_vgg") / "run"
    parameters = training_parameters(
        modules_dir, data_dir, run, training_set="coco", validation_dir=str(data_dir / "flickr30k")
    )
    run_notebook("train_vgg", run.parent, parameters)
    return run


@pytest.mark.notebook
def test_train_vgg_coco_with_validation(vgg_run):
    history, metrics = check_training_outputs(vgg_run, "vgg16", "bilstm", "captions")
    accuracy = history[0]["eval/pointing_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    # The validation split has three images with two scorable queries each.
    assert history[0]["eval/scored"] == 6
    assert metrics["best_pointing_accuracy"] == accuracy
    assert (vgg_run / "checkpoints" / "best" / "weights.npz").is_file()
    info = json.loads((vgg_run / "checkpoints" / "best" / "info.json").read_text())
    assert info["pointing_accuracy"] == accuracy


@pytest.mark.notebook
def test_train_elmo_only_visual_genome(modules_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    parameters = training_parameters(modules_dir, data_dir, run, training_set="visual_genome", batch_size=4)
    run_notebook("train_elmo_only", tmp_path, parameters)
    _, metrics = check_training_outputs(run, "vgg16", "mix", "queries")
    assert metrics["best_pointing_accuracy"] is None
    assert not (run / "checkpoints" / "best").exists()
    # Chance level of the loss grows with the batch: 4 log(batch size).
    assert metrics["chance_loss"] == pytest.approx(4 * math.log(4))


@pytest.mark.notebook
def test_train_pnasnet_coco(modules_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    parameters = training_parameters(modules_dir, data_dir, run, training_set="coco")
    run_notebook("train_pnasnet", tmp_path, parameters)
    check_training_outputs(run, "pnasnet_large", "mix", "captions")
    config = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert config["visual"]["mapping_widths"] == [2048, 2048, 1024]


@pytest.mark.notebook
def test_evaluate_notebook_skips_missing(vgg_run, modules_dir, data_dir, tmp_path):
    from mmgrounding.evaluation.runner import EvaluationOptions, evaluate
    from mmgrounding.model.build import load_checkpoint

    output = tmp_path / "evaluation"
    checkpoint = vgg_run / "checkpoints" / "best"
    parameters = {
        "checkpoint_dir": str(checkpoint),
        "modules_dir": str(modules_dir),
        "data_dir": str(data_dir),
        "datasets": ["visual_genome", "flickr30k", "referit"],
        "split": "test",
        "output_dir": str(output),
    }
    run_notebook("evaluate", tmp_path, parameters)

    summary = json.loads((output / "summary.json").read_text())
    assert list(summary["skipped"]) == ["referit"]
    assert str(data_dir / "referit") in summary["skipped"]["referit"]
    assert not (output / "referit_results.json").exists()
    assert "| referit | skipped" in (output / "summary.md").read_text()
    for name, images in (("visual_genome", 3), ("flickr30k", 3)):
        results = json.loads((output / f"{name}_results.json").read_text())
        assert results["dataset"] == name
        assert results["checkpoint"] == str(checkpoint)
        assert results["counts"]["images"] == images
        assert results["counts"]["scored"] > 0
        assert results["pointing_accuracy"] == results["counts"]["hits"] / results["counts"]["scored"]
        assert summary["pointing_accuracy"][name] == results["pointing_accuracy"]
        assert (output / f"{name}_heatmaps.png").stat().st_size > 0

    # The notebook scored the checkpoint it was given: the same model,
    # evaluated here, hits the same queries.
    model, config = load_checkpoint(checkpoint, modules_dir)
    direct = evaluate(model, data_dir / "flickr30k" / "test.jsonl", config.visual.image_size, EvaluationOptions())
    written = json.loads((output / "flickr30k_results.json").read_text())
    assert [query["hit"] for query in written["queries"]] == [query["hit"] for query in direct["queries"]]


@pytest.mark.notebook
def test_missing_modules_folder_fails(data_dir, tmp_path):
    import papermill

    missing = tmp_path / "no_modules"
    parameters = training_parameters(missing, data_dir, tmp_path / "run", training_set="coco")
    with pytest.raises(papermill.PapermillExecutionError) as raised:
        run_notebook("train_elmo_only", tmp_path, parameters)
    assert raised.value.ename == "ModuleError"
    assert str(missing) in raised.value.evalue


# Helpers of mmgrounding.notebook ------------------------------------------------


def test_python3_kernel_is_this_interpreter():
    from jupyter_client.manager import KernelManager

    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(command[0]).resolve() == Path(sys.executable).resolve()
    assert command[1:3] == ["-m", "ipykernel_launcher"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_backbone_settings_match_presets(preset):
    visual = get_preset(preset).visual
    assert BACKBONE_SETTINGS[visual.backbone] == (visual.grid_level, visual.mapping_widths)


def test_override_backbone_sets_grid_level():
    config = override_backbone(get_preset("vgg_elmo"), "pnasnet_large")
    assert config.visual.backbone == "pnasnet_large"
    assert config.visual.grid_level == "Cell_5"
    assert config.visual.mapping_widths == (2048, 2048, 1024)
    assert config.common_dim == 1024
    assert config.text == get_preset("vgg_elmo").text
    assert override_backbone(get_preset("vgg_elmo"), None) == get_preset("vgg_elmo")


def test_override_backbone_unknown():
    with pytest.raises(ValueError, match="backbone 'resnet50' is not supported.*pnasnet_large"):
        override_backbone(get_preset("vgg_elmo"), "resnet50")


def test_bilstm_head_needs_elmo():
    with pytest.raises(ValueError, match="'minilm' cannot feed the bilstm head"):
        override_text_encoder(get_preset("vgg_bilstm"), "minilm")
    assert override_text_encoder(get_preset("vgg_elmo"), "minilm").text.encoder == "minilm"
    with pytest.raises(ValueError, match="text_encoder 'bert' is not registered"):
        override_text_encoder(get_preset("vgg_elmo"), "bert")


def test_training_config_overrides():
    config = training_config("pnasnet_elmo", "visual_genome", epochs=3, batch_size=4, image_size=96)
    assert config.train.text_source == "queries"
    assert (config.train.epochs, config.train.batch_size) == (3, 4)
    assert config.visual.image_size == 96
    assert config.train.learning_rate == get_preset("pnasnet_elmo").train.learning_rate
    unchanged = training_config("vgg_bilstm", "coco")
    assert unchanged == get_preset("vgg_bilstm").replace(train={"text_source": "captions"})


def test_training_config_rejects_training_set():
    with pytest.raises(ValueError, match="training_set 'flickr30k' is not supported.*coco"):
        training_config("vgg_elmo", "flickr30k")


def test_training_manifests(data_dir):
    manifest, validation = training_manifests(data_dir, "visual_genome", data_dir / "flickr30k", "val")
    assert manifest == data_dir / "visual_genome" / "train.jsonl"
    assert validation == data_dir / "flickr30k" / "val.jsonl"
    assert training_manifests(data_dir, "coco")[1] is None
    with pytest.raises(FileNotFoundError, match="split 'dev'.*available splits: \\['test', 'val'\\]"):
        training_manifests(data_dir, "coco", data_dir / "flickr30k", "dev")


def test_training_manifests_missing_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "coco")) + ".*available splits: none"):
        training_manifests(tmp_path, "coco")


def test_dataset_manifests_skip_missing(data_dir, tmp_path):
    found, skipped = dataset_manifests(data_dir, ["referit", "flickr30k"], "test")
    assert found == {"flickr30k": data_dir / "flickr30k" / "test.jsonl"}
    assert list(skipped) == ["referit"]
    with pytest.raises(FileNotFoundError, match="none of the datasets \\['referit'\\]"):
        dataset_manifests(tmp_path, ["referit"], "test")


def test_read_history(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1, "train/loss": 2.5}\n\n{"epoch": 2, "train/loss": 2.0}\n', encoding="utf-8")
    assert [entry["train/loss"] for entry in read_history(path)] == [2.5, 2.0]
    with pytest.raises(FileNotFoundError, match="no training history"):
        read_history(tmp_path / "missing.jsonl")


def test_results_table_rows():
    results = {
        "flickr30k": {
            "counts": {"images": 3, "scored": 6},
            "pointing_accuracy": 0.5,
            "box_accuracy": None,
            "attention_correctness": 0.25,
        }
    }
    lines = results_table(results, {"referit": "no manifest"}).splitlines()
    assert lines[2] == "| flickr30k | 3 | 6 | 0.5000 | n/a | 0.2500 |"
    assert lines[3].startswith("| referit | skipped")
    assert len(lines) == 4


def test_heatmap_panels_read_boxes(data_dir):
    manifest = data_dir / "flickr30k" / "test.jsonl"
    record = json.loads(manifest.read_text().splitlines()[0])
    results = {
        "manifest": str(manifest),
        "queries": [{"image_id": record["image_id"], "query": 0, "text": "A square", "hit": True}],
        "heatmaps": [np.zeros((4, 4), np.float32)],
    }
    (panel,) = heatmap_panels(results)
    assert panel["image"].shape == (record["height"], record["width"], 3)
    assert panel["boxes"] == record["queries"][0]["boxes"]
    assert panel["title"] == "A square (hit)"
    with pytest.raises(ValueError, match="keep_heatmaps=True"):
        heatmap_panels({"manifest": str(manifest), "queries": []})


def test_heatmap_panels_one_per_image(data_dir):
    manifest = data_dir / "flickr30k" / "test.jsonl"
    record = json.loads(manifest.read_text().splitlines()[0])
    outcome = {"image_id": record["image_id"], "query": 0, "text": "A square", "hit": False}
    results = {
        "manifest": str(manifest),
        "queries": [outcome, dict(outcome, hit=True)],
        "heatmaps": [np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)],
    }
    assert len(heatmap_panels(results)) == 2
    (panel,) = heatmap_panels(results, one_per_image=True)
    assert panel["title"] == "A square (miss)"
    assert panel["image_id"] == record["image_id"]
