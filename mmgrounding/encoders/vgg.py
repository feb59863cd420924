"""VGG16 convolutional backbone (Simonyan and Zisserman, configuration D) in Keras 3.

The layers follow the TF-slim definition `nets/vgg.py` of tensorflow/models:
3x3 convolutions with 'SAME' padding and ReLU, and 2x2 max pools with stride 2
and slim's default 'VALID' padding, which floors odd sizes. At 299 px the
conv4 maps are therefore 37x37 and the conv5 maps 18x18. The fully connected
layers (`fc6`..`fc8`) and `pool5` are not built because no level uses them.

Weights come from a TF-slim checkpoint (`vgg_16.ckpt`, read by variable name)
or from a Keras ImageNet weights file (`block1_conv1` ...); see
`mmgrounding.modules.vgg16_weights_source`. The two releases expect different
input scaling, so the model built for each applies its own preprocessing.
"""

from __future__ import annotations

import logging
import os

import h5py
import keras
import numpy as np
import tensorflow as tf

from mmgrounding.encoders.visual import register_backbone
from mmgrounding.modules import (
    VGG16_CONV_LAYERS,
    ModuleError,
    check_vgg16_slim_checkpoint,
    keras_h5_layer_weights,
    vgg16_slim_variable_names,
    vgg16_weights_source,
)

logger = logging.getLogger(__name__)

# Level order of the MG method: the deeper block first.
LEVEL_NAMES = ("conv5_1", "conv5_3", "conv4_1", "conv4_3")

# TF-slim VGG16 takes RGB pixels 0..255 minus the ImageNet channel means.
SLIM_RGB_MEANS = (123.68, 116.78, 103.94)
# The Keras ImageNet VGG16 weights come from Caffe: BGR pixels 0..255 minus
# the BGR channel means (keras.applications.imagenet_utils, mode "caffe").
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)

# Checkpoint entries that belong to the classifier or to training, not to the
# convolutions; they are skipped without a warning.
_IGNORED_SLIM_SCOPES = ("vgg_16/fc6/", "vgg_16/fc7/", "vgg_16/fc8/")
# The 2016 slim release also stores its input means as `vgg_16/mean_rgb`.
_IGNORED_SLIM_NAMES = frozenset({"global_step", "beta1_power", "beta2_power", "vgg_16/mean_rgb"})
_OPTIMIZER_SLOTS = frozenset(
    {"Momentum", "Adam", "Adam_1", "RMSProp", "RMSProp_1", "Adagrad", "Ftrl", "Ftrl_1", "ExponentialMovingAverage"}
)
_IGNORED_KERAS_LAYERS = frozenset({"fc1", "fc2", "predictions"})


class ChannelMeanSubtraction(keras.layers.Layer):
    """Per-channel mean subtraction, optionally after reversing RGB to BGR.

    Input: float32 RGB [batch, height, width, 3] with values 0..255.
    Output: float32 [batch, height, width, 3].
    """

    def __init__(self, means: tuple[float, float, float], rgb_to_bgr: bool = False, **kwargs):
        super().__init__(**kwargs)
        if len(means) != 3:
            raise ValueError(f"means must have 3 values, one per channel, got {means!r}")
        self.means = tuple(float(mean) for mean in means)
        self.rgb_to_bgr = bool(rgb_to_bgr)

    def call(self, images):
        if self.rgb_to_bgr:
            images = keras.ops.flip(images, axis=-1)
        return images - keras.ops.convert_to_tensor(self.means, dtype=images.dtype)

    def get_config(self):
        return {**super().get_config(), "means": self.means, "rgb_to_bgr": self.rgb_to_bgr}


def build_vgg16(image_size: int = 299, preprocessing: str = "slim") -> keras.Model:
    """Build the VGG16 convolutions with Keras' initial (random) weights.

    Args:
        image_size: height and width of the square input in pixels.
        preprocessing: "slim" subtracts `SLIM_RGB_MEANS` from RGB input;
            "keras" converts to BGR and subtracts `CAFFE_BGR_MEANS`.

    Returns:
        a functional `keras.Model` from float32 RGB images 0..255
        [batch, image_size, image_size, 3] to a dict of the ReLU outputs
        `conv4_1`, `conv4_3` [batch, h4, w4, 512] and `conv5_1`, `conv5_3`
        [batch, h5, w5, 512], where h4 = floor(image_size / 8) and
        h5 = floor(h4 / 2). Its layers carry the slim names (`conv1_1` ...)
        and `model.level_names` is `LEVEL_NAMES`.
    """
    if preprocessing == "slim":
        scaling = ChannelMeanSubtraction(SLIM_RGB_MEANS, name="preprocessing")
    elif preprocessing == "keras":
        scaling = ChannelMeanSubtraction(CAFFE_BGR_MEANS, rgb_to_bgr=True, name="preprocessing")
    else:
        raise ValueError(f"preprocessing must be 'slim' or 'keras', got {preprocessing!r}")
    if image_size < 16:
        raise ValueError(f"image_size {image_size} is too small: VGG16 pools 4 times, use at least 16 pixels")

    images = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="images")
    features = scaling(images)
    endpoints = {}
    block = 1
    for layer_name, _, kernel_shape in VGG16_CONV_LAYERS:
        layer_block = int(layer_name[4])
        if layer_block != block:
            features = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name=f"pool{block}")(features)
            block = layer_block
        features = keras.layers.Conv2D(
            kernel_shape[-1], 3, padding="same", activation="relu", name=layer_name
        )(features)
        if layer_name in LEVEL_NAMES:
            endpoints[layer_name] = features

    model = keras.Model(images, endpoints, name="vgg16")
    model.level_names = LEVEL_NAMES
    return model


def _is_ignored_slim_variable(name: str) -> bool:
    return (
        name.startswith(_IGNORED_SLIM_SCOPES)
        or name in _IGNORED_SLIM_NAMES
        or name.rsplit("/", 1)[-1] in _OPTIMIZER_SLOTS
    )


def _set_conv_weights(model: keras.Model, layer_name: str, kernel: np.ndarray, bias: np.ndarray, source: str) -> None:
    layer = model.get_layer(layer_name)
    expected = [tuple(weight.shape) for weight in layer.weights]
    if [kernel.shape, bias.shape] != expected:
        raise ModuleError(
            f"{source}: weights for {layer_name} have shapes {[kernel.shape, bias.shape]}, expected {expected}"
        )
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])


def _check_all_filled(model: keras.Model, filled: set[str], source: str) -> None:
    unfilled = sorted(layer.name for layer in model.layers if layer.weights and layer.name not in filled)
    if unfilled:
        raise ModuleError(f"{source} has no weights for the model layers {unfilled}")


def load_vgg16_slim_weights(model: keras.Model, checkpoint: str | os.PathLike) -> list[str]:
    """Copy the convolutions of a TF-slim VGG16 checkpoint into `model`, by variable name.

    Every convolution of `model` is filled from `vgg_16/convN/convN_M/weights`
    and `.../biases`. Classifier (`fc6`..`fc8`), `global_step` and optimizer
    slot entries are skipped.

    Returns:
        the other checkpoint entries that no layer used, also logged as a
        warning.

    Raises:
        ModuleError: the checkpoint is not VGG16 or a shape differs.
    """
    check_vgg16_slim_checkpoint(checkpoint)
    reader = tf.train.load_checkpoint(str(checkpoint))
    used = set()
    for layer_name, _, _ in VGG16_CONV_LAYERS:
        weights_name, biases_name = vgg16_slim_variable_names(layer_name)
        kernel = reader.get_tensor(weights_name)
        bias = reader.get_tensor(biases_name)
        _set_conv_weights(model, layer_name, kernel, bias, str(checkpoint))
        used.update((weights_name, biases_name))
    _check_all_filled(model, {layer_name for layer_name, _, _ in VGG16_CONV_LAYERS}, str(checkpoint))

    unused = sorted(
        name for name in reader.get_variable_to_shape_map() if name not in used and not _is_ignored_slim_variable(name)
    )
    if unused:
        logger.warning("%s: %d variables are not used by VGG16: %s", checkpoint, len(unused), ", ".join(unused))
    logger.info("loaded VGG16 weights from the slim checkpoint %s", checkpoint)
    return unused


def load_vgg16_keras_weights(model: keras.Model, path: str | os.PathLike) -> list[str]:
    """Copy the convolutions of a Keras VGG16 weights file into `model`, by layer name.

    Reads the legacy HDF5 layout of the official ImageNet files and the Keras 3
    `.weights.h5` layout (see `mmgrounding.modules.keras_h5_layer_weights`).
    Layer `block{B}_conv{I}` fills `conv{B}_{I}`; the classifier layers `fc1`,
    `fc2` and `predictions` are skipped.

    Returns:
        the other layers with weights that no layer used, also logged as a
        warning.

    Raises:
        ModuleError: a layer is missing or a shape differs.
    """
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ModuleError(f"{path} is not a readable HDF5 file ({error}); download it again") from error
    with h5:
        layers = keras_h5_layer_weights(h5)
        for layer_name, keras_name, _ in VGG16_CONV_LAYERS:
            if keras_name not in layers:
                raise ModuleError(f"{path} has no layer {keras_name}; it is not a Keras VGG16 weights file")
            weights = [dataset[()] for dataset in layers[keras_name]]
            if len(weights) != 2:
                raise ModuleError(f"{path}: layer {keras_name} has {len(weights)} weights, expected kernel and bias")
            _set_conv_weights(model, layer_name, weights[0], weights[1], str(path))
        _check_all_filled(model, {layer_name for layer_name, _, _ in VGG16_CONV_LAYERS}, str(path))
        used = {keras_name for _, keras_name, _ in VGG16_CONV_LAYERS}
        unused = sorted(name for name in layers if name not in used and name not in _IGNORED_KERAS_LAYERS)
    if unused:
        logger.warning("%s: %d layers are not used by VGG16: %s", path, len(unused), ", ".join(unused))
    logger.info("loaded VGG16 weights from the Keras file %s", path)
    return unused


@register_backbone("vgg16")
def load_vgg16(modules_dir: str | os.PathLike | None, image_size: int = 299) -> keras.Model:
    """Build the frozen VGG16 backbone with the weights found in `modules_dir`.

    See `build_vgg16` for the input and outputs and
    `mmgrounding.modules.vgg16_weights_source` for where the weights come from.
    """
    kind, path = vgg16_weights_source(modules_dir)
    model = build_vgg16(image_size, preprocessing=kind)
    if kind == "slim":
        load_vgg16_slim_weights(model, path)
    else:
        load_vgg16_keras_weights(model, path)
    model.trainable = False
    return model
