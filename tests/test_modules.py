"""Tests of the pretrained-module checks in mmgrounding.modules.

The modules are stand-ins in the real file formats from
mmgrounding.testing.standins; nothing here touches the network.
"""

import hashlib
import logging
import shutil

import numpy as np
import pytest

from mmgrounding import modules
from mmgrounding.modules import ModuleError, check_modules, elmo_module_path, vgg16_weights_source
from mmgrounding.testing import standins

ELMO_HANDLE = "https://tfhub.dev/google/elmo/3"


@pytest.fixture(scope="module")
def vgg_weights():
    return standins.vgg16_random_weights(seed=3)


@pytest.fixture(scope="module")
def slim_dir(tmp_path_factory, vgg_weights):
    folder = tmp_path_factory.mktemp("slim")
    standins.write_vgg16_slim_checkpoint(folder / "vgg_16.ckpt", weights=vgg_weights)
    return folder


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory, vgg_weights):
    folder = tmp_path_factory.mktemp("keras")
    standins.write_vgg16_keras_weights(folder / modules.VGG16_KERAS_WEIGHT_FILES[0], weights=vgg_weights)
    return folder


@pytest.fixture(scope="module")
def elmo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elmo_modules")
    standins.write_elmo_hub_module(folder / "ELMo")
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "tfhub_cache"
    cache.mkdir()
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    return cache


def pnasnet_like_variables():
    return {
        "pnasnet_large/conv0/weights": np.zeros((3, 3, 3, 96), np.float32),
        "pnasnet_large/cell_11/comb_iter_0/left/separable_5x5/depthwise_weights": np.zeros((5, 5, 16, 1), np.float32),
        "global_step": np.int64(0),
    }


def test_module_error_is_both_kinds():
    error = ModuleError("modules/ELMo is missing saved_model.pb")
    assert isinstance(error, FileNotFoundError)
    assert isinstance(error, ValueError)
    assert str(error) == "modules/ELMo is missing saved_model.pb"


# VGG16


def test_vgg16_source_prefers_slim(slim_dir, keras_dir):
    shutil.copy(keras_dir / modules.VGG16_KERAS_WEIGHT_FILES[0], slim_dir / modules.VGG16_KERAS_WEIGHT_FILES[0])
    try:
        assert vgg16_weights_source(slim_dir) == ("slim", slim_dir / "vgg_16.ckpt")
    finally:
        (slim_dir / modules.VGG16_KERAS_WEIGHT_FILES[0]).unlink()


def test_vgg16_source_finds_keras_file(keras_dir):
    assert vgg16_weights_source(keras_dir) == ("keras", keras_dir / modules.VGG16_KERAS_WEIGHT_FILES[0])


def test_vgg16_source_accepts_file_paths(slim_dir, keras_dir):
    h5 = keras_dir / modules.VGG16_KERAS_WEIGHT_FILES[0]
    assert vgg16_weights_source(h5) == ("keras", h5)
    assert vgg16_weights_source(slim_dir / "vgg_16.ckpt") == ("slim", slim_dir / "vgg_16.ckpt")


def test_vgg16_source_v1_single_file(tmp_path):
    standins.write_slim_checkpoint(tmp_path / "vgg_16.ckpt", {"vgg_16/conv1/conv1_1/biases": np.zeros(64, np.float32)}, "v1")
    assert (tmp_path / "vgg_16.ckpt").is_file()
    assert vgg16_weights_source(tmp_path) == ("slim", tmp_path / "vgg_16.ckpt")


def test_vgg16_missing_folder(tmp_path):
    with pytest.raises(ModuleError, match="not found") as caught:
        vgg16_weights_source(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(caught.value)
    assert "modules/README.md" in str(caught.value)


def test_vgg16_missing_checkpoint(tmp_path):
    with pytest.raises(ModuleError, match="is missing vgg_16.ckpt") as caught:
        check_modules(tmp_path, "vgg16", "minilm")
    assert "unpack modules.tar.gz" in str(caught.value)


def test_vgg16_needs_modules_dir():
    with pytest.raises(ModuleError, match="pass modules_dir"):
        vgg16_weights_source(None)


def test_vgg16_index_without_data(tmp_path, slim_dir):
    shutil.copy(slim_dir / "vgg_16.ckpt.index", tmp_path / "vgg_16.ckpt.index")
    with pytest.raises(ModuleError, match=r"no vgg_16\.ckpt\.data-\* shard"):
        vgg16_weights_source(tmp_path)


def test_vgg16_slim_check_passes(slim_dir):
    found = check_modules(slim_dir, "vgg16", "minilm")
    assert found == {"backbone": str(slim_dir / "vgg_16.ckpt"), "text_encoder": ""}


def test_vgg16_keras_check_passes(keras_dir):
    found = check_modules(keras_dir, "vgg16", "minilm")
    assert found["backbone"] == str(keras_dir / modules.VGG16_KERAS_WEIGHT_FILES[0])


def test_vgg16_rejects_pnasnet_checkpoint(tmp_path):
    standins.write_slim_checkpoint(tmp_path / "vgg_16.ckpt", pnasnet_like_variables())
    with pytest.raises(ModuleError, match="not a VGG16 checkpoint") as caught:
        check_modules(tmp_path, "vgg16", "minilm")
    assert "PNASNet" in str(caught.value)
    assert str(tmp_path / "vgg_16.ckpt") in str(caught.value)


def test_vgg16_wrong_shape_named(tmp_path, vgg_weights):
    weights = dict(vgg_weights)
    kernel, bias = weights["conv5_3"]
    weights["conv5_3"] = (kernel[..., :256], bias[:256])
    standins.write_vgg16_slim_checkpoint(tmp_path / "vgg_16.ckpt", weights=weights)
    with pytest.raises(ModuleError) as caught:
        check_modules(tmp_path, "vgg16", "minilm")
    message = str(caught.value)
    assert "vgg_16/conv5/conv5_3/weights has shape [3, 3, 512, 256], expected [3, 3, 512, 512]" in message
    assert "vgg_16/conv5/conv5_3/biases has shape [256], expected [512]" in message


def test_vgg16_missing_variable_named(tmp_path, vgg_weights):
    variables = {}
    for layer, _, _ in modules.VGG16_CONV_LAYERS:
        weights_name, biases_name = modules.vgg16_slim_variable_names(layer)
        variables[weights_name], variables[biases_name] = vgg_weights[layer]
    del variables["vgg_16/conv4/conv4_1/biases"]
    standins.write_slim_checkpoint(tmp_path / "vgg_16.ckpt", variables)
    with pytest.raises(ModuleError, match="vgg_16/conv4/conv4_1/biases is missing"):
        check_modules(tmp_path, "vgg16", "minilm")


def test_vgg16_unreadable_checkpoint(tmp_path):
    (tmp_path / "vgg_16.ckpt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModuleError, match="not a readable TensorFlow checkpoint"):
        check_modules(tmp_path, "vgg16", "minilm")


def test_vgg16_keras_file_missing_layer(tmp_path, keras_dir):
    import h5py

    path = tmp_path / modules.VGG16_KERAS_WEIGHT_FILES[0]
    shutil.copy(keras_dir / modules.VGG16_KERAS_WEIGHT_FILES[0], path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["layer_names"] = np.array([name for name in h5.attrs["layer_names"] if name != b"block3_conv2"])
    with pytest.raises(ModuleError, match="layer block3_conv2 is missing"):
        check_modules(tmp_path, "vgg16", "minilm")


def test_vgg16_keras_file_not_hdf5(tmp_path):
    (tmp_path / modules.VGG16_KERAS_WEIGHT_FILES[0]).write_bytes(b"<html>not found</html>")
    with pytest.raises(ModuleError, match="not a readable HDF5 file"):
        check_modules(tmp_path, "vgg16", "minilm")


# PNASNet


def test_pnasnet_checkpoint_found(tmp_path):
    standins.write_slim_checkpoint(tmp_path / modules.PNASNET_SLIM_CHECKPOINT, pnasnet_like_variables())
    found = check_modules(tmp_path, "pnasnet_large", "minilm")
    assert found["backbone"] == str(tmp_path / modules.PNASNET_SLIM_CHECKPOINT)


def test_pnasnet_rejects_vgg_checkpoint(tmp_path, slim_dir):
    for path in slim_dir.glob("vgg_16.ckpt*"):
        shutil.copy(path, tmp_path / path.name.replace("vgg_16.ckpt", modules.PNASNET_SLIM_CHECKPOINT))
    with pytest.raises(ModuleError, match="not a PNASNet-5 Large checkpoint") as caught:
        check_modules(tmp_path, "pnasnet_large", "minilm")
    assert "VGG16" in str(caught.value)


def test_pnasnet_missing_checkpoint(tmp_path):
    with pytest.raises(ModuleError, match="is missing pnasnet_large_2.ckpt"):
        check_modules(tmp_path, "pnasnet_large", "minilm")


# Components without modules and unknown names


def test_no_modules_needed():
    assert check_modules(None, "efficientnet_lite0", "minilm") == {"backbone": "", "text_encoder": ""}


def test_unknown_names_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        check_modules(tmp_path, "vgg19", "minilm")
    with pytest.raises(ValueError, match="unknown text encoder 'bert'"):
        check_modules(tmp_path, "efficientnet_lite0", "bert")


def test_registered_names_pass_unchecked(monkeypatch):
    from mmgrounding.encoders import text, visual

    text.text_encoder_names()
    visual.backbone_names()
    monkeypatch.setitem(visual._BUILDERS, "tiny_backbone", lambda modules_dir, image_size: None)
    monkeypatch.setitem(text._BUILDERS, "tiny_encoder", lambda modules_dir: None)
    assert check_modules(None, "tiny_backbone", "tiny_encoder") == {"backbone": "", "text_encoder": ""}


# ELMo


def test_elmo_found_in_modules_dir(elmo_dir):
    assert check_modules(elmo_dir, "efficientnet_lite0", "elmo")["text_encoder"] == str(elmo_dir / "ELMo")
    assert elmo_module_path(elmo_dir / "ELMo") == str(elmo_dir / "ELMo")


def test_elmo_missing_folder(tmp_path, hub_cache):
    with pytest.raises(ModuleError, match="is missing the ELMo folder") as caught:
        check_modules(tmp_path, "efficientnet_lite0", "elmo")
    assert "modules/README.md" in str(caught.value)


@pytest.mark.parametrize(
    "removed, message",
    [
        ("saved_model.pb", "ELMo is missing saved_model.pb; unpack modules.tar.gz"),
        ("variables", "ELMo is missing variables/"),
        ("variables/variables.index", "is missing variables.index"),
    ],
)
def test_elmo_incomplete_folder(tmp_path, elmo_dir, hub_cache, removed, message):
    shutil.copytree(elmo_dir / "ELMo", tmp_path / "ELMo")
    target = tmp_path / "ELMo" / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModuleError, match=message) as caught:
        check_modules(tmp_path, "efficientnet_lite0", "elmo")
    assert str(tmp_path / "ELMo") in str(caught.value)


def test_elmo_without_hub_proto_warns(tmp_path, elmo_dir, caplog):
    shutil.copytree(elmo_dir / "ELMo", tmp_path / "ELMo")
    (tmp_path / "ELMo" / "tfhub_module.pb").unlink()
    with caplog.at_level(logging.WARNING, logger="mmgrounding.modules"):
        assert elmo_module_path(tmp_path) == str(tmp_path / "ELMo")
    assert "has no tfhub_module.pb" in caplog.text


# TF-Hub cache


def test_hub_cache_folder_matches_tensorflow_hub(hub_cache):
    from tensorflow_hub import compressed_module_resolver

    expected = hub_cache / hashlib.sha1(ELMO_HANDLE.encode("utf8")).hexdigest()
    assert modules.tfhub_cache_folder(ELMO_HANDLE) == expected
    # The private function that tensorflow_hub 0.16.1 downloads into; it only
    # creates the cache folder and builds the path.
    assert compressed_module_resolver._module_dir(ELMO_HANDLE) == str(expected)


def test_hub_handle_resolved_from_cache(hub_cache, elmo_dir):
    cached = modules.tfhub_cache_folder(ELMO_HANDLE)
    shutil.copytree(elmo_dir / "ELMo", cached)
    assert elmo_module_path(ELMO_HANDLE) == str(cached)


def test_hub_cache_used_without_elmo_folder(tmp_path, hub_cache, elmo_dir):
    cached = modules.tfhub_cache_folder(ELMO_HANDLE)
    shutil.copytree(elmo_dir / "ELMo", cached)
    modules_dir = tmp_path / "modules"
    modules_dir.mkdir()
    assert check_modules(modules_dir, "efficientnet_lite0", "elmo")["text_encoder"] == str(cached)
    assert elmo_module_path(None) == str(cached)


def test_hub_handle_not_cached_needs_permission(hub_cache):
    with pytest.raises(ModuleError, match="would download it") as caught:
        elmo_module_path(ELMO_HANDLE)
    assert "allow_download=True" in str(caught.value)
    assert elmo_module_path(ELMO_HANDLE, allow_download=True) == ELMO_HANDLE


def test_hub_download_in_progress_is_not_cached(hub_cache, elmo_dir):
    cached = modules.tfhub_cache_folder(ELMO_HANDLE)
    shutil.copytree(elmo_dir / "ELMo", cached)
    (hub_cache / f"{cached.name}.lock").write_text("download in progress")
    with pytest.raises(ModuleError, match="not in the TF-Hub cache"):
        elmo_module_path(ELMO_HANDLE)
