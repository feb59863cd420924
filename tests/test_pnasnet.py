"""Tests of the PNASNet-5 Large backbone and its slim checkpoint loader.

The full-size stand-in checkpoint (345 MB) is written once per session. Checks
of values and of loader errors use a narrow variant (num_conv_filters=8) with
the same names and wiring, so they run in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mmgrounding.encoders import pnasnet
from mmgrounding.encoders.pnasnet import (
    CHECKPOINT_FILENAME,
    LEVEL_NAMES,
    CheckpointMismatchError,
    build_pnasnet_large,
    count_parameters,
    load_slim_checkpoint,
    slim_variables,
)
from mmgrounding.encoders.visual import backbone_names, load_backbone
from mmgrounding.testing.pnasnet_standin import (
    pnasnet_large_variable_shapes,
    write_pnasnet_slim_checkpoint,
    write_tf1_checkpoint,
)

SMALL_FILTERS = 8
SMALL_IMAGE_SIZE = 64

# Variables read off the slim source by hand: (name, shape).
KNOWN_SLIM_VARIABLES = (
    ("conv0/weights", (3, 3, 3, 96)),
    ("cell_stem_0/1x1/weights", (1, 1, 96, 54)),
    ("cell_stem_0/comb_iter_0/left/separable_5x5_1/depthwise_weights", (5, 5, 96, 1)),
    ("cell_stem_0/comb_iter_0/left/separable_5x5_1/pointwise_weights", (1, 1, 96, 54)),
    ("cell_stem_0/comb_iter_0/left/bn_sep_5x5_2/gamma", (54,)),
    ("cell_stem_0/comb_iter_0/right/1x1/weights", (1, 1, 96, 54)),
    ("cell_stem_0/comb_iter_4/right/bn_1/moving_variance", (54,)),
    ("cell_stem_1/path1_conv/weights", (1, 1, 96, 54)),
    ("cell_stem_1/path2_conv/weights", (1, 1, 96, 54)),
    ("cell_stem_1/final_path_bn/beta", (108,)),
    ("cell_0/path1_conv/weights", (1, 1, 270, 108)),
    ("cell_1/prev_1x1/weights", (1, 1, 540, 216)),
    ("cell_1/prev_bn/moving_mean", (216,)),
    ("cell_4/1x1/weights", (1, 1, 1080, 432)),
    ("cell_4/comb_iter_1/left/separable_7x7_1/depthwise_weights", (7, 7, 432, 1)),
    ("cell_4/comb_iter_4/right/1x1/weights", (1, 1, 432, 432)),
    ("cell_5/final_path_bn/gamma", (432,)),
    ("cell_9/path2_conv/weights", (1, 1, 2160, 432)),
    ("cell_11/comb_iter_3/left/separable_3x3_2/pointwise_weights", (1, 1, 864, 864)),
    ("final_layer/FC/weights", (4320, 1001)),
    ("final_layer/FC/biases", (1001,)),
)
# Variables slim does not create: pools on same-width inputs need no 1x1, and
# the 'none' branch of a stride-1 cell is the identity.
ABSENT_SLIM_VARIABLES = (
    "cell_0/comb_iter_1/right/1x1/weights",
    "cell_0/comb_iter_4/right/1x1/weights",
    "cell_stem_0/prev_1x1/weights",
    "cell_2/path1_conv/weights",
)


@pytest.fixture(scope="session")
def modules_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modules")
    write_pnasnet_slim_checkpoint(folder / CHECKPOINT_FILENAME, seed=1)
    return folder


@pytest.fixture(scope="module")
def full_model():
    return build_pnasnet_large(None, include_top=True)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.ckpt"
    return write_pnasnet_slim_checkpoint(path, seed=2, num_conv_filters=SMALL_FILTERS)


def small_shapes(**options):
    return pnasnet_large_variable_shapes(num_conv_filters=SMALL_FILTERS, **options)


@pytest.fixture(scope="module")
def small_model():
    # Shared, because building takes seconds; each test loads the weights it reads.
    return build_pnasnet_large(SMALL_IMAGE_SIZE, num_conv_filters=SMALL_FILTERS)


@pytest.fixture(scope="module")
def small_classifier():
    return build_pnasnet_large(SMALL_IMAGE_SIZE, include_top=True, num_conv_filters=SMALL_FILTERS)


# --------------------------------------------------------------------------
# Architecture


@pytest.mark.parametrize(
    ("image_size", "stride16", "stride32"),
    [(299, 19, 10), (331, 21, 11)],
)
def test_level_shapes(full_model, image_size, stride16, stride32):
    import keras

    outputs = full_model.compute_output_spec(keras.KerasTensor((2, image_size, image_size, 3)))
    assert outputs["Cell_5"].shape == (2, stride16, stride16, 2160)
    assert outputs["Cell_7"].shape == (2, stride16, stride16, 2160)
    assert outputs["Cell_9"].shape == (2, stride32, stride32, 4320)
    assert outputs["Cell_11"].shape == (2, stride32, stride32, 4320)
    assert outputs["Logits"].shape == (2, 1001)


def test_names_match_standin_both_ways(full_model):
    model_shapes = {name: tuple(weight.shape) for name, weight in slim_variables(full_model).items()}
    standin_shapes = pnasnet_large_variable_shapes(scope="")

    assert sorted(set(model_shapes) - set(standin_shapes)) == []
    assert sorted(set(standin_shapes) - set(model_shapes)) == []
    assert {name: shape for name, shape in model_shapes.items() if standin_shapes[name] != shape} == {}
    assert len(model_shapes) == 1179


@pytest.mark.parametrize(("name", "shape"), KNOWN_SLIM_VARIABLES)
def test_known_slim_variable(full_model, name, shape):
    variables = slim_variables(full_model)
    assert name in variables
    assert tuple(variables[name].shape) == shape


@pytest.mark.parametrize("name", ABSENT_SLIM_VARIABLES)
def test_variable_slim_does_not_create(full_model, name):
    assert name not in slim_variables(full_model)
    assert name not in pnasnet_large_variable_shapes(scope="")


def test_parameter_count_published(full_model):
    standin_count = sum(
        int(np.prod(shape))
        for name, shape in pnasnet_large_variable_shapes(scope="").items()
        if not name.endswith(("/moving_mean", "/moving_variance"))
    )
    assert count_parameters(full_model) == standin_count
    assert count_parameters(full_model) == 86_061_989
    assert round(count_parameters(full_model) / 1e6, 1) == 86.1


def test_image_size_too_small():
    with pytest.raises(ValueError, match="image_size 16"):
        build_pnasnet_large(16)


# --------------------------------------------------------------------------
# Values against a direct TensorFlow reference


def reference_forward(checkpoint, images, num_conv_filters):
    """Run slim's PNASNet-5 with tf.nn ops on the checkpoint tensors; return levels and logits.

    Written from the slim source independently of the Keras model: it wires
    cells by comparing static widths as slim does.
    """
    reader = tf.train.load_checkpoint(str(checkpoint))

    def get(name):
        return tf.constant(reader.get_tensor(f"pnasnet_large/{name}"))

    def batch_norm(x, scope):
        return tf.nn.batch_normalization(
            x, get(f"{scope}/moving_mean"), get(f"{scope}/moving_variance"),
            get(f"{scope}/beta"), get(f"{scope}/gamma"), 1e-3,
        )

    def conv_bn(x, conv_scope, bn_scope, stride=1):
        return batch_norm(tf.nn.conv2d(tf.nn.relu(x), get(f"{conv_scope}/weights"), stride, "SAME"), bn_scope)

    def separable(x, scope, kernel_size, stride):
        for layer in (1, 2):
            name = f"{scope}/separable_{kernel_size}x{kernel_size}_{layer}"
            x = tf.nn.separable_conv2d(
                tf.nn.relu(x), get(f"{name}/depthwise_weights"), get(f"{name}/pointwise_weights"),
                [1, stride, stride, 1], "SAME",
            )
            x = batch_norm(x, f"{scope}/bn_sep_{kernel_size}x{kernel_size}_{layer}")
            stride = 1
        return x

    def branch(x, operation, scope, stride, filters):
        if operation.startswith("separable"):
            return separable(x, scope, int(operation[10]), stride)
        if operation == "max_pool_3x3":
            x = tf.nn.max_pool2d(x, 3, stride, "SAME")
            if x.shape[-1] != filters:
                x = batch_norm(tf.nn.conv2d(x, get(f"{scope}/1x1/weights"), 1, "SAME"), f"{scope}/bn_1")
            return x
        if stride > 1 or x.shape[-1] != filters:
            return conv_bn(x, f"{scope}/1x1", f"{scope}/bn_1", stride)
        return x

    operations = ["separable_5x5_2", "max_pool_3x3", "separable_7x7_2", "max_pool_3x3", "separable_5x5_2",
                  "separable_3x3_2", "separable_3x3_2", "max_pool_3x3", "separable_3x3_2", "none"]
    sources = [1, 1, 0, 0, 0, 0, 4, 0, 1, 0]

    def cell(net, prev, filters, stride, scope):
        if prev is None:
            prev = net
        elif prev.shape[2] != net.shape[2]:
            shifted = tf.pad(tf.nn.relu(prev), [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
            paths = [
                tf.nn.conv2d(tf.nn.relu(prev)[:, ::2, ::2, :], get(f"{scope}/path1_conv/weights"), 1, "SAME"),
                tf.nn.conv2d(shifted[:, ::2, ::2, :], get(f"{scope}/path2_conv/weights"), 1, "SAME"),
            ]
            prev = batch_norm(tf.concat(paths, axis=3), f"{scope}/final_path_bn")
        elif prev.shape[-1] != filters:
            prev = conv_bn(prev, f"{scope}/prev_1x1", f"{scope}/prev_bn")
        states = [conv_bn(net, f"{scope}/1x1", f"{scope}/beginning_bn"), prev]
        for i in range(5):
            combined = 0
            for j, side in ((2 * i, "left"), (2 * i + 1, "right")):
                step = stride if sources[j] < 2 else 1
                combined += branch(states[sources[j]], operations[j], f"{scope}/comb_iter_{i}/{side}", step, filters)
            states.append(combined)
        return tf.concat(states[2:], axis=3)

    net = tf.constant(images / 127.5 - 1.0, tf.float32)
    net = batch_norm(tf.nn.conv2d(net, get("conv0/weights"), 2, "VALID"), "conv0_bn")
    outputs = [None, net]
    specs = [("cell_stem_0", num_conv_filters // 4, 2), ("cell_stem_1", num_conv_filters // 2, 2)]
    filters = num_conv_filters
    for i in range(12):
        stride = 2 if i in (4, 8) else 1
        filters *= stride
        specs.append((f"cell_{i}", filters, stride))
    for scope, filters, stride in specs:
        outputs.append(cell(outputs[-1], outputs[-2], filters, stride, scope))
    levels = {name: outputs[int(name.split("_")[1]) + 4].numpy() for name in LEVEL_NAMES}
    pooled = tf.reduce_mean(tf.nn.relu(outputs[-1]), axis=[1, 2])
    levels["Logits"] = (pooled @ get("final_layer/FC/weights") + get("final_layer/FC/biases")).numpy()
    return levels


def test_outputs_match_tensorflow_reference(small_checkpoint, small_classifier):
    model = small_classifier
    load_slim_checkpoint(model, small_checkpoint)
    images = np.random.default_rng(3).uniform(0, 255, (2, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE, 3)).astype("float32")

    outputs = {name: np.asarray(value) for name, value in model(images).items()}
    reference = reference_forward(small_checkpoint, images, SMALL_FILTERS)

    assert outputs["Cell_5"].shape == (2, 4, 4, 10 * SMALL_FILTERS)
    assert outputs["Cell_11"].shape == (2, 2, 2, 20 * SMALL_FILTERS)
    for name, expected in reference.items():
        scale = float(np.abs(expected).max())
        assert scale > 0
        np.testing.assert_allclose(outputs[name], expected, rtol=0, atol=1e-4 * scale, err_msg=name)


def test_batch_equals_single_images(small_checkpoint, small_model):
    model = small_model
    load_slim_checkpoint(model, small_checkpoint)
    images = np.random.default_rng(4).uniform(0, 255, (2, SMALL_IMAGE_SIZE, SMALL_IMAGE_SIZE, 3)).astype("float32")

    batched = model(images)["Cell_9"]
    single = model(images[1:])["Cell_9"]
    np.testing.assert_allclose(np.asarray(batched)[1:], np.asarray(single), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# Loader errors and skipped variables


def test_missing_and_extra_variables_named(tmp_path, small_model):
    shapes = small_shapes(num_classes=0)
    del shapes["pnasnet_large/cell_3/comb_iter_2/right/bn_sep_3x3_1/gamma"]
    shapes["pnasnet_large/cell_3/comb_iter_2/right/extra/weights"] = (1, 1, 8, 8)
    shapes["pnasnet_large/conv0/weights"] = (3, 3, 3, 5)
    path = write_tf1_checkpoint(tmp_path / "broken.ckpt", shapes)
    model = small_model
    conv0_before = np.asarray(slim_variables(model)["conv0/weights"]).copy()

    with pytest.raises(CheckpointMismatchError) as error:
        load_slim_checkpoint(model, path)
    message = str(error.value)
    assert str(path) in message
    assert "pnasnet_large/cell_3/comb_iter_2/right/bn_sep_3x3_1/gamma" in message
    assert "pnasnet_large/cell_3/comb_iter_2/right/extra/weights" in message
    assert "pnasnet_large/conv0/weights (3, 3, 3, 5) != (3, 3, 3, 96)" in message
    np.testing.assert_array_equal(np.asarray(slim_variables(model)["conv0/weights"]), conv0_before)


def test_many_missing_variables_listed_with_count(tmp_path, small_model):
    shapes = {name: shape for name, shape in small_shapes().items() if not name.startswith("pnasnet_large/cell_1")}
    path = write_tf1_checkpoint(tmp_path / "partial.ckpt", shapes)

    with pytest.raises(CheckpointMismatchError, match=r"variables missing from the checkpoint: .* and \d+ more"):
        load_slim_checkpoint(small_model, path)


def test_classifier_size_mismatch(small_checkpoint):
    model = build_pnasnet_large(SMALL_IMAGE_SIZE, include_top=True, num_classes=10, num_conv_filters=SMALL_FILTERS)
    with pytest.raises(CheckpointMismatchError, match=r"final_layer/FC/weights \(160, 1001\) != \(160, 10\)"):
        load_slim_checkpoint(model, small_checkpoint)


def test_training_state_skipped_unscoped_v1(tmp_path, small_model):
    # The layout of slim's own release: no model scope, the aux head, a
    # global step inside the drop-path scope, and optimizer state.
    shapes = small_shapes(scope="", include_aux_head=True)
    shapes["global_step"] = ()
    shapes["cell_stem_0/comb_iter_0/left/global_step"] = ()
    shapes["cell_0/1x1/weights/Momentum"] = shapes["cell_0/1x1/weights"]
    shapes["cell_0/1x1/weights/ExponentialMovingAverage"] = shapes["cell_0/1x1/weights"]
    path = write_tf1_checkpoint(tmp_path / "model.ckpt", shapes, write_version="V1")
    assert path.is_file()
    model = small_model

    load_slim_checkpoint(model, path)

    reader = tf.train.load_checkpoint(str(path))
    for name in ("conv0/weights", "cell_11/comb_iter_4/left/bn_sep_3x3_2/moving_variance"):
        np.testing.assert_array_equal(np.asarray(slim_variables(model)[name]), reader.get_tensor(name))


def test_unknown_slot_is_left_over(tmp_path, small_model):
    shapes = small_shapes(num_classes=0)
    shapes["pnasnet_large/not_a_layer/Momentum"] = (2,)
    path = write_tf1_checkpoint(tmp_path / "slot.ckpt", shapes)
    with pytest.raises(CheckpointMismatchError, match="not in the model: pnasnet_large/not_a_layer/Momentum"):
        load_slim_checkpoint(small_model, path)


def test_vgg_checkpoint_rejected(tmp_path, small_model):
    shapes = {
        "vgg_16/conv1/conv1_1/weights": (3, 3, 3, 64),
        "vgg_16/conv1/conv1_1/biases": (64,),
        "global_step": (),
    }
    path = write_tf1_checkpoint(tmp_path / "vgg_16.ckpt", shapes)
    with pytest.raises(CheckpointMismatchError, match="not a PNASNet-5 Large checkpoint.*vgg_16/conv1/conv1_1/biases"):
        load_slim_checkpoint(small_model, path)


def test_not_a_checkpoint_file(tmp_path, small_model):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is no checkpoint")
    with pytest.raises(CheckpointMismatchError, match="failed to read"):
        load_slim_checkpoint(small_model, path)


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_backbone("pnasnet_large", tmp_path, 299)
    assert str(tmp_path / CHECKPOINT_FILENAME) in str(error.value)
    assert "modules.tar.gz" in str(error.value)


def test_modules_dir_required():
    with pytest.raises(ValueError, match="modules_dir is required"):
        load_backbone("pnasnet_large", None, 299)


# --------------------------------------------------------------------------
# Registered backbone on the full-size stand-in


def test_load_backbone_from_modules_folder(modules_dir):
    assert "pnasnet_large" in backbone_names()

    model = load_backbone("pnasnet_large", modules_dir, 299)

    assert tuple(model.level_names) == LEVEL_NAMES
    assert model.trainable is False
    reader = tf.train.load_checkpoint(str(pnasnet.find_checkpoint(modules_dir)))
    name = "cell_8/comb_iter_0/left/separable_5x5_1/depthwise_weights"
    np.testing.assert_array_equal(
        np.asarray(slim_variables(model)[name]), reader.get_tensor(f"pnasnet_large/{name}")
    )

    images = np.random.default_rng(5).uniform(0, 255, (1, 299, 299, 3)).astype("float32")
    outputs = {name: np.asarray(value) for name, value in model(images).items()}
    assert {name: value.shape for name, value in outputs.items()} == {
        "Cell_5": (1, 19, 19, 2160),
        "Cell_7": (1, 19, 19, 2160),
        "Cell_9": (1, 10, 10, 4320),
        "Cell_11": (1, 10, 10, 4320),
    }
    for level in LEVEL_NAMES:
        assert np.isfinite(outputs[level]).all(), level
