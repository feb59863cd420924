"""Tests of the VGG16 backbone and its two weight formats.

The weights are random stand-ins written in the real formats by
mmgrounding.testing.standins: a TF1 slim checkpoint and Keras HDF5 files.
"""

import logging

import keras
import numpy as np
import pytest

from mmgrounding import modules
from mmgrounding.encoders import vgg
from mmgrounding.encoders.visual import backbone_names, load_backbone
from mmgrounding.modules import ModuleError
from mmgrounding.testing import standins

LEGACY_FILE = modules.VGG16_KERAS_WEIGHT_FILES[0]
SMALL_SIZE = 64


@pytest.fixture(scope="module")
def vgg_weights():
    return standins.vgg16_random_weights(seed=7)


@pytest.fixture(scope="module")
def slim_dir(tmp_path_factory, vgg_weights):
    folder = tmp_path_factory.mktemp("slim")
    standins.write_vgg16_slim_checkpoint(folder / "vgg_16.ckpt", weights=vgg_weights)
    return folder


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return rng.uniform(0.0, 255.0, size=(2, SMALL_SIZE, SMALL_SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def slim_outputs(slim_dir, images):
    model = load_backbone("vgg16", slim_dir, SMALL_SIZE)
    return {name: value.numpy() for name, value in model(images).items()}


def assert_same_outputs(actual, expected, relative=1e-5):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        scale = np.abs(expected[name]).max()
        assert scale > 0, f"{name} is all zero, so the comparison proves nothing"
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=relative * scale, err_msg=name)


def test_vgg16_registered():
    assert "vgg16" in backbone_names()


def test_shapes_at_299(slim_dir):
    model = load_backbone("vgg16", slim_dir, 299)
    outputs = model(np.full((1, 299, 299, 3), 128.0, np.float32))
    assert model.level_names == ("conv5_1", "conv5_3", "conv4_1", "conv4_3")
    assert outputs["conv4_1"].shape == (1, 37, 37, 512)
    assert outputs["conv4_3"].shape == (1, 37, 37, 512)
    assert outputs["conv5_1"].shape == (1, 18, 18, 512)
    assert outputs["conv5_3"].shape == (1, 18, 18, 512)
    assert not model.trainable
    assert not model.trainable_weights


def test_shapes_at_224(slim_dir):
    model = load_backbone("vgg16", slim_dir, 224)
    outputs = model(np.zeros((1, 224, 224, 3), np.float32))
    assert outputs["conv4_3"].shape == (1, 28, 28, 512)
    assert outputs["conv5_3"].shape == (1, 14, 14, 512)


def test_outputs_after_relu(slim_outputs):
    for name, value in slim_outputs.items():
        assert np.isfinite(value).all(), name
        assert value.min() >= 0.0, name
        assert value.max() > 0.0, name


def test_slim_names_map_every_layer(slim_dir, vgg_weights):
    shapes = modules.slim_checkpoint_shapes(slim_dir / "vgg_16.ckpt")
    model = vgg.build_vgg16(SMALL_SIZE)
    assert vgg.load_vgg16_slim_weights(model, slim_dir / "vgg_16.ckpt") == []

    names = [name for layer, _, _ in modules.VGG16_CONV_LAYERS for name in modules.vgg16_slim_variable_names(layer)]
    assert len(names) == 26
    assert len(set(names)) == 26
    assert set(names) == set(shapes)

    conv_layers = [layer.name for layer in model.layers if layer.weights]
    assert conv_layers == [layer for layer, _, _ in modules.VGG16_CONV_LAYERS]
    for layer, (kernel, bias) in vgg_weights.items():
        loaded_kernel, loaded_bias = model.get_layer(layer).get_weights()
        np.testing.assert_array_equal(loaded_kernel, kernel, err_msg=layer)
        np.testing.assert_array_equal(loaded_bias, bias, err_msg=layer)


def test_slim_v1_file_matches_v2(tmp_path, vgg_weights, images, slim_outputs):
    standins.write_vgg16_slim_checkpoint(tmp_path / "vgg_16.ckpt", weights=vgg_weights, version="v1")
    assert (tmp_path / "vgg_16.ckpt").is_file()
    model = load_backbone("vgg16", tmp_path, SMALL_SIZE)
    assert_same_outputs({name: value.numpy() for name, value in model(images).items()}, slim_outputs, relative=0)


def test_keras_legacy_matches_slim(tmp_path, vgg_weights, images, slim_outputs):
    standins.write_vgg16_keras_weights(tmp_path / LEGACY_FILE, weights=vgg_weights)
    model = load_backbone("vgg16", tmp_path, SMALL_SIZE)
    assert model.get_layer("preprocessing").rgb_to_bgr
    # The two releases' means differ by up to 0.001, about 1e-5 of the input scale.
    assert_same_outputs({name: value.numpy() for name, value in model(images).items()}, slim_outputs, relative=1e-4)


def test_keras3_file_matches_slim(tmp_path, vgg_weights, images, slim_outputs):
    standins.write_vgg16_keras_weights(tmp_path / "vgg16.weights.h5", weights=vgg_weights)
    model = load_backbone("vgg16", tmp_path, SMALL_SIZE)
    assert_same_outputs({name: value.numpy() for name, value in model(images).items()}, slim_outputs, relative=1e-4)


def test_legacy_file_matches_keras_applications(tmp_path, vgg_weights, images):
    path = standins.write_vgg16_keras_weights(tmp_path / LEGACY_FILE, weights=vgg_weights)
    reference = keras.applications.VGG16(weights=str(path), include_top=False, input_shape=(SMALL_SIZE, SMALL_SIZE, 3))
    reference_conv4_3 = keras.Model(reference.input, reference.get_layer("block4_conv3").output)
    expected = reference_conv4_3(keras.applications.vgg16.preprocess_input(images.copy())).numpy()

    model = load_backbone("vgg16", tmp_path, SMALL_SIZE)
    np.testing.assert_allclose(model(images)["conv4_3"].numpy(), expected, rtol=1e-5, atol=1e-3)


def test_slim_preprocessing_subtracts_rgb_means():
    layer = vgg.ChannelMeanSubtraction(vgg.SLIM_RGB_MEANS)
    pixel = np.array([[[[200.0, 100.0, 50.0]]]], np.float32)
    np.testing.assert_allclose(layer(pixel).numpy()[0, 0, 0], [200.0 - 123.68, 100.0 - 116.78, 50.0 - 103.94], rtol=1e-6)


def test_keras_preprocessing_flips_to_bgr():
    layer = vgg.ChannelMeanSubtraction(vgg.CAFFE_BGR_MEANS, rgb_to_bgr=True)
    pixel = np.array([[[[200.0, 100.0, 50.0]]]], np.float32)
    expected = [50.0 - 103.939, 100.0 - 116.779, 200.0 - 123.68]
    np.testing.assert_allclose(layer(pixel).numpy()[0, 0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(
        layer(pixel).numpy(), keras.applications.vgg16.preprocess_input(pixel.copy()), rtol=1e-6
    )


def test_extra_variables_reported(tmp_path, vgg_weights, caplog):
    extra = {
        "global_step": np.int64(1000),
        "vgg_16/fc8/biases": np.zeros(1000, np.float32),
        "vgg_16/conv1/conv1_1/weights/Momentum": np.zeros((3, 3, 3, 64), np.float32),
        "vgg_16/mean_rgb": np.array([123.68, 116.78, 103.94], np.float32),
        "vgg_16/mystery/weights": np.zeros(3, np.float32),
    }
    standins.write_vgg16_slim_checkpoint(tmp_path / "vgg_16.ckpt", weights=vgg_weights, extra_variables=extra)
    model = vgg.build_vgg16(SMALL_SIZE)
    with caplog.at_level(logging.WARNING, logger="mmgrounding.encoders.vgg"):
        unused = vgg.load_vgg16_slim_weights(model, tmp_path / "vgg_16.ckpt")
    assert unused == ["vgg_16/mystery/weights"]
    assert "vgg_16/mystery/weights" in caplog.text
    assert "fc8" not in caplog.text
    assert "mean_rgb" not in caplog.text


def test_keras_top_layers_skipped(tmp_path, vgg_weights):
    import h5py

    path = standins.write_vgg16_keras_weights(tmp_path / LEGACY_FILE, weights=vgg_weights)
    with h5py.File(path, "r+") as h5:
        for name in ("fc1", "mystery"):
            group = h5.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode()])
            group.create_dataset(f"{name}/kernel:0", data=np.zeros((2, 2), np.float32))
        h5.attrs["layer_names"] = np.array(list(h5.attrs["layer_names"]) + [b"fc1", b"mystery"])
    model = vgg.build_vgg16(SMALL_SIZE, preprocessing="keras")
    assert vgg.load_vgg16_keras_weights(model, path) == ["mystery"]


def test_pnasnet_checkpoint_rejected(tmp_path):
    variables = {"pnasnet_large/cell_11/comb_iter_0/left/separable_5x5/depthwise_weights": np.zeros((5, 5, 8, 1), np.float32)}
    standins.write_slim_checkpoint(tmp_path / "vgg_16.ckpt", variables)
    with pytest.raises(ModuleError, match="not a VGG16 checkpoint") as caught:
        load_backbone("vgg16", tmp_path, SMALL_SIZE)
    assert "PNASNet-5 Large" in str(caught.value)


def test_missing_modules_rejected(tmp_path):
    with pytest.raises(ModuleError, match="is missing vgg_16.ckpt"):
        load_backbone("vgg16", tmp_path, SMALL_SIZE)
    with pytest.raises(ModuleError, match="pass modules_dir"):
        load_backbone("vgg16", None, SMALL_SIZE)


def test_invalid_preprocessing_rejected():
    with pytest.raises(ValueError, match="preprocessing must be 'slim' or 'keras', got 'caffe'"):
        vgg.build_vgg16(SMALL_SIZE, preprocessing="caffe")
