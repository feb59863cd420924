"""PNASNet-5 Large (Liu et al., 2018, "Progressive Neural Architecture Search")
as a frozen Keras 3 backbone, loaded from the published TF-slim checkpoint.

Written from the TF-slim definition in tensorflow/models
(research/slim/nets/nasnet/pnasnet.py, nasnet.py and nasnet_utils.py), read for
its structure, scope names and shapes. The network, in slim's terms:

- Stem: `conv0`, a 3x3 stride-2 'VALID' convolution with 96 channels
  (32 x stem multiplier 3), then `conv0_bn` and no activation. Then two
  stride-2 cells `cell_stem_0` and `cell_stem_1` with 54 and 108 filters
  (216 / 4 and 216 / 2).
- Cells `cell_0` ... `cell_11` with 216 filters; cells 4 and 8 have stride 2
  and double the filters to 432 and 864. A cell concatenates its five
  combinations, so it outputs 5 x filters channels: 1080, 2160 and 4320.
- Each cell starts from two hidden states: h0 = BN(1x1(ReLU(input))) and
  h1 = the output two cells back. If h1 has a larger spatial size it goes
  through a factorized reduction, otherwise if its channels differ through
  ReLU, 1x1 `prev_1x1` and `prev_bn`. Combination i adds a left and a right
  branch; a branch in a stride-2 cell is strided only when it reads h0 or h1.
- Every convolution has no bias and is followed by batch norm with scale and
  center, epsilon 1e-3 (`nasnet_large_arg_scope`). Padding is 'SAME' except
  in `conv0`.

Inference only: batch norm uses its moving statistics, and drop path and the
dropout before the classifier are training-time regularisers that are left
out. The auxiliary head `aux_7` exists only in slim's training graph, so it is
not built here and its variables are skipped when a checkpoint has them.

Level maps are the slim end points `Cell_5`, `Cell_7` (stride 16, 2160
channels), `Cell_9` and `Cell_11` (stride 32, 4320 channels): 19x19 and 10x10
at 299 pixels, 21x21 and 11x11 at 331 pixels.

Keras layer names are the slim scopes with "/" written as "." (Keras rejects
"/" in layer names), so every Keras weight maps to one slim variable name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mmgrounding.encoders.visual import register_backbone

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FILENAME",
    "LEVEL_NAMES",
    "SLIM_SCOPE",
    "CheckpointMismatchError",
    "build_pnasnet_large",
    "count_parameters",
    "find_checkpoint",
    "load_slim_checkpoint",
    "pnasnet_large_backbone",
    "slim_variables",
]

CHECKPOINT_FILENAME = "pnasnet_large_2.ckpt"
# The grounding release saved the slim model under this variable scope; the
# original slim release (model.ckpt) has no scope, and both load.
SLIM_SCOPE = "pnasnet_large"
LEVEL_NAMES = ("Cell_5", "Cell_7", "Cell_9", "Cell_11")

NUM_CONV_FILTERS = 216
NUM_CELLS = 12
_STEM_MULTIPLIER = 3
_REDUCTION_CELLS = (4, 8)  # slim's calc_reduction_layers(12, 2)
_BATCH_NORM_EPSILON = 1e-3
_MIN_IMAGE_SIZE = 32

# The PNASNet-5 cell: for each of the five combinations, the (operation,
# hidden state) of its left and right branch. Hidden state 0 is h0, 1 is h1,
# and 2 + i is the output of combination i.
_COMBINATIONS = (
    (("separable_5x5_2", 1), ("max_pool_3x3", 1)),
    (("separable_7x7_2", 0), ("max_pool_3x3", 0)),
    (("separable_5x5_2", 0), ("separable_3x3_2", 0)),
    (("separable_3x3_2", 4), ("max_pool_3x3", 0)),
    (("separable_3x3_2", 1), ("none", 0)),
)

# Keras weight name -> last component of the slim variable name.
_SLIM_WEIGHT_NAMES = {
    "kernel": "weights",
    "depthwise_kernel": "depthwise_weights",
    "pointwise_kernel": "pointwise_weights",
    "bias": "biases",
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
}
_MOVING_STATISTICS = ("moving_mean", "moving_variance")
_OPTIMIZER_SLOTS = {"Momentum", "RMSProp", "RMSProp_1", "Adam", "Adam_1", "Adagrad", "Ftrl", "Ftrl_1"}
_LISTED_NAMES = 20


class CheckpointMismatchError(ValueError):
    """A checkpoint whose variable names or shapes do not fit the model."""


# --------------------------------------------------------------------------
# Network


def build_pnasnet_large(
    image_size: int | None = None,
    include_top: bool = False,
    num_classes: int = 1001,
    num_conv_filters: int = NUM_CONV_FILTERS,
) -> keras.Model:
    """Build PNASNet-5 Large with freshly initialised weights.

    The model maps RGB images with values 0..255, [batch, image_size,
    image_size, 3], to a dict of level maps. An `image_size` of None accepts
    any spatial size. `Cell_5` and `Cell_7` are [batch, height/16, width/16,
    10 x num_conv_filters], and `Cell_9` and `Cell_11` are [batch, height/32,
    width/32, 20 x num_conv_filters], with sizes rounded up. With
    `include_top` the dict also has `Logits` [batch, num_classes] from slim's
    `final_layer/FC`.
    `num_conv_filters` is slim's hyper-parameter of that name; only 216 fits
    the published checkpoint, and smaller values make quick test models.
    """
    if image_size is not None and image_size < _MIN_IMAGE_SIZE:
        # Below this size a stride-2 cell can leave a 1x1 map unchanged, and
        # slim would then wire the next cell differently from this model.
        raise ValueError(f"image_size {image_size} is too small; use at least {_MIN_IMAGE_SIZE} pixels")
    if num_conv_filters < 4 or num_conv_filters % 4:
        raise ValueError(f"num_conv_filters must be a positive multiple of 4, got {num_conv_filters}")
    if include_top and num_classes < 1:
        raise ValueError(f"num_classes must be positive with include_top, got {num_classes}")

    images = keras.Input((image_size, image_size, 3), name="images")
    # Inception preprocessing: 0..255 -> [-1, 1].
    net = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(images)
    net = _conv(net, _STEM_MULTIPLIER * 32, 3, "conv0", strides=2, padding="valid")
    net = _batch_norm(net, "conv0_bn")

    # Each entry: (tensor, number of stride-2 steps taken since conv0). The
    # step count replaces slim's comparison of static widths, so the wiring
    # also holds when the spatial size is unknown.
    outputs: list[tuple[keras.KerasTensor, int] | None] = [None, (net, 0)]
    stem_filters = (num_conv_filters // 4, num_conv_filters // 2)
    for index, filters in enumerate(stem_filters):
        outputs.append(_cell(outputs[-1], outputs[-2], filters, 2, f"cell_stem_{index}"))

    levels = {}
    filters = num_conv_filters
    for index in range(NUM_CELLS):
        strides = 2 if index in _REDUCTION_CELLS else 1
        if strides == 2:
            filters *= 2
        outputs.append(_cell(outputs[-1], outputs[-2], filters, strides, f"cell_{index}"))
        if f"Cell_{index}" in LEVEL_NAMES:
            levels[f"Cell_{index}"] = outputs[-1][0]

    if include_top:
        top = keras.layers.ReLU()(outputs[-1][0])
        top = keras.layers.GlobalAveragePooling2D()(top)
        levels["Logits"] = keras.layers.Dense(num_classes, name=_layer_name("final_layer/FC"))(top)
    return keras.Model(images, levels, name="pnasnet_large")


def _layer_name(scope: str) -> str:
    return scope.replace("/", ".")


def _conv(net, filters: int, kernel_size: int, scope: str, strides: int = 1, padding: str = "same"):
    layer = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=_layer_name(scope)
    )
    return layer(net)


def _batch_norm(net, scope: str):
    layer = keras.layers.BatchNormalization(epsilon=_BATCH_NORM_EPSILON, name=_layer_name(scope))
    return layer(net, training=False)


def _relu_conv_bn(net, filters: int, conv_scope: str, bn_scope: str, strides: int = 1):
    net = keras.layers.ReLU()(net)
    net = _conv(net, filters, 1, conv_scope, strides=strides)
    return _batch_norm(net, bn_scope)


def _cell(current, previous, filters: int, strides: int, scope: str):
    """Run one PNASNet-5 cell.

    `current` and `previous` are (tensor [batch, height, width, channels],
    stride-2 steps) for the last and the second-to-last cell output, and
    `previous` is None for the first stem cell. Returns (tensor [batch,
    height / strides, width / strides, 5 x filters], steps).
    """
    net, steps = current
    if previous is None:
        # The first stem cell has no earlier output, and slim then takes its
        # input, unadapted, as h1.
        hidden_prev = net
    else:
        hidden_prev = _match_previous(previous, steps, filters, scope)
    hidden = [_relu_conv_bn(net, filters, f"{scope}/1x1", f"{scope}/beginning_bn"), hidden_prev]

    for index, branches in enumerate(_COMBINATIONS):
        results = []
        for side, (operation, source) in zip(("left", "right"), branches):
            branch_strides = strides if source < 2 else 1
            branch_scope = f"{scope}/comb_iter_{index}/{side}"
            results.append(_operation(hidden[source], operation, filters, branch_strides, branch_scope))
        hidden.append(keras.layers.Add()(results))

    # The output concatenates all five combinations, because slim marks only h0 and h1 as used.
    net = keras.layers.Concatenate()(hidden[2:])
    return net, steps + (1 if strides == 2 else 0)


def _match_previous(previous, steps: int, filters: int, scope: str):
    """Bring the output two cells back to this cell's size and `filters` channels."""
    hidden_prev, prev_steps = previous
    if prev_steps != steps:
        # It is one stride-2 step larger than the cell input.
        hidden_prev = keras.layers.ReLU()(hidden_prev)
        return _factorized_reduction(hidden_prev, filters, scope)
    if hidden_prev.shape[-1] != filters:
        return _relu_conv_bn(hidden_prev, filters, f"{scope}/prev_1x1", f"{scope}/prev_bn")
    return hidden_prev


def _operation(net, operation: str, filters: int, strides: int, scope: str):
    """Apply one branch operation: [batch, h, w, c] -> [batch, h / strides, w / strides, filters]."""
    if operation.startswith("separable_"):
        kernel_size = int(operation.split("_")[1].split("x")[0])
        return _separable_stack(net, filters, kernel_size, strides, scope)
    if operation == "max_pool_3x3":
        net = keras.layers.MaxPooling2D(3, strides=strides, padding="same")(net)
        if net.shape[-1] != filters:
            net = _conv(net, filters, 1, f"{scope}/1x1")
            net = _batch_norm(net, f"{scope}/bn_1")
        return net
    if operation == "none":
        if strides > 1 or net.shape[-1] != filters:
            net = _relu_conv_bn(net, filters, f"{scope}/1x1", f"{scope}/bn_1", strides=strides)
        return net
    raise ValueError(f"unknown cell operation {operation!r}")


def _separable_stack(net, filters: int, kernel_size: int, strides: int, scope: str):
    # Two ReLU -> separable conv -> BN layers; only the first one is strided.
    for layer_index in (1, 2):
        net = keras.layers.ReLU()(net)
        net = keras.layers.SeparableConv2D(
            filters,
            kernel_size,
            strides=strides if layer_index == 1 else 1,
            padding="same",
            depth_multiplier=1,
            use_bias=False,
            name=_layer_name(f"{scope}/separable_{kernel_size}x{kernel_size}_{layer_index}"),
        )(net)
        net = _batch_norm(net, f"{scope}/bn_sep_{kernel_size}x{kernel_size}_{layer_index}")
    return net


def _factorized_reduction(net, filters: int, scope: str):
    """Halve the spatial size without dropping pixels.

    [batch, h, w, c] -> [batch, ceil(h / 2), ceil(w / 2), filters]: one 1x1
    convolution reads the even pixels, the other the odd ones (the input
    shifted by one pixel, zero-filled at the bottom and right edge).
    """
    even = keras.layers.AveragePooling2D(1, strides=2, padding="valid")(net)
    even = _conv(even, filters // 2, 1, f"{scope}/path1_conv")
    shifted = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(net)
    shifted = keras.layers.Cropping2D(((1, 0), (1, 0)))(shifted)
    odd = keras.layers.AveragePooling2D(1, strides=2, padding="valid")(shifted)
    odd = _conv(odd, filters // 2, 1, f"{scope}/path2_conv")
    net = keras.layers.Concatenate()([even, odd])
    return _batch_norm(net, f"{scope}/final_path_bn")


# --------------------------------------------------------------------------
# Slim names and parameter count


def slim_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """Map each slim variable name (without scope) to the model weight it fills."""
    variables = {}
    for layer in model.layers:
        for weight in layer.weights:
            if weight.name not in _SLIM_WEIGHT_NAMES:
                raise ValueError(f"layer {layer.name!r} has weight {weight.name!r} with no slim counterpart")
            name = f"{layer.name.replace('.', '/')}/{_SLIM_WEIGHT_NAMES[weight.name]}"
            variables[name] = weight
    return variables


def count_parameters(model: keras.Model) -> int:
    """Count the learned parameters: all weights except batch-norm moving statistics.

    This is how the published 86.1 M of PNASNet-5 Large is counted (with the
    1001-way classifier); the moving statistics add another 0.18 M.
    """
    return sum(
        int(np.prod(weight.shape))
        for name, weight in slim_variables(model).items()
        if name.rsplit("/", 1)[1] not in _MOVING_STATISTICS
    )


# --------------------------------------------------------------------------
# Checkpoint loading


def find_checkpoint(modules_dir: str | os.PathLike) -> Path:
    """Return the path of `pnasnet_large_2.ckpt` in `modules_dir`, in V1 or V2 format."""
    path = Path(modules_dir) / CHECKPOINT_FILENAME
    _require_checkpoint(path)
    return path


def _require_checkpoint(path: Path) -> None:
    # A V1 checkpoint is one file; V2 is a prefix with .index and .data files.
    if not (path.is_file() or Path(f"{path}.index").is_file()):
        raise FileNotFoundError(
            f"PNASNet-5 Large checkpoint not found: neither {path} nor {path}.index exists; "
            "unpack modules.tar.gz into modules/ (see modules/README.md)"
        )


def load_slim_checkpoint(model: keras.Model, checkpoint_path: str | os.PathLike) -> None:
    """Fill every weight of `model` from the slim checkpoint at `checkpoint_path`.

    Names are matched with or without the `pnasnet_large/` scope. Skipped:
    global steps, moving-average shadows, optimizer slots, the auxiliary head
    `aux_7/` and, when the model has no classifier, `final_layer/`. Raises
    CheckpointMismatchError naming the missing, left-over and wrongly shaped
    variables; no weight changes then.
    """
    path = Path(checkpoint_path)
    _require_checkpoint(path)
    try:
        reader = tf.train.load_checkpoint(str(path))
    except (tf.errors.OpError, ValueError) as error:
        raise CheckpointMismatchError(f"failed to read {path} as a TensorFlow checkpoint ({error}); check the file is a complete checkpoint") from error
    stored_shapes = reader.get_variable_to_shape_map()

    variables = slim_variables(model)
    prefix = _checkpoint_prefix(stored_shapes, path)
    assignments = _match_variables(variables, stored_shapes, prefix, path)
    for name, weight in assignments.items():
        weight.assign(reader.get_tensor(name))
    logger.info("loaded %d PNASNet-5 Large variables from %s", len(assignments), path)


def _checkpoint_prefix(stored_shapes: Mapping[str, list[int]], path: Path) -> str:
    if any(name.startswith(f"{SLIM_SCOPE}/") for name in stored_shapes):
        return f"{SLIM_SCOPE}/"
    if any(name.startswith("cell_stem_0/") for name in stored_shapes):
        return ""
    examples = ", ".join(sorted(stored_shapes)[:5]) or "no variables"
    raise CheckpointMismatchError(
        f"{path} is not a PNASNet-5 Large checkpoint: it has no variable named like "
        f"{SLIM_SCOPE}/cell_stem_0/1x1/weights (found {examples}); "
        f"use the {CHECKPOINT_FILENAME} of the published modules archive"
    )


def _match_variables(
    variables: Mapping[str, keras.Variable],
    stored_shapes: Mapping[str, list[int]],
    prefix: str,
    path: Path,
) -> dict[str, keras.Variable]:
    """Pair checkpoint names with model weights; raise if any name or shape does not fit."""
    has_top = any(name.startswith("final_layer/") for name in variables)
    assignments = {}
    missing, mismatched = [], []
    for name, weight in variables.items():
        stored_name = prefix + name
        if stored_name not in stored_shapes:
            missing.append(stored_name)
        elif tuple(stored_shapes[stored_name]) != tuple(weight.shape):
            mismatched.append(f"{stored_name} {tuple(stored_shapes[stored_name])} != {tuple(weight.shape)}")
        else:
            assignments[stored_name] = weight

    expected = {prefix + name for name in variables}
    left_over = sorted(
        name
        for name in stored_shapes
        if name not in expected and not _is_skipped(name, prefix, expected, has_top)
    )
    if missing or left_over or mismatched:
        problems = []
        for label, names in (
            ("missing from the checkpoint", missing),
            ("in the checkpoint but not in the model", left_over),
            ("with a different shape (checkpoint != model)", mismatched),
        ):
            if names:
                listed = ", ".join(names[:_LISTED_NAMES])
                more = f" and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else ""
                problems.append(f"{len(names)} variables {label}: {listed}{more}")
        raise CheckpointMismatchError(
            f"{path} does not fit PNASNet-5 Large; " + "; ".join(problems)
        )
    return assignments


def _is_skipped(name: str, prefix: str, expected: set[str], has_top: bool) -> bool:
    """Tell whether a checkpoint variable is training state or a head the model leaves out."""
    if name == "global_step" or name.endswith("/global_step") or "ExponentialMovingAverage" in name:
        return True
    base, _, last = name.rpartition("/")
    if last in _OPTIMIZER_SLOTS and base in expected:
        return True
    if not name.startswith(prefix):
        return False
    local = name[len(prefix):]
    return local.startswith("aux_7/") or (not has_top and local.startswith("final_layer/"))


# --------------------------------------------------------------------------
# Registered backbone


def pnasnet_large_backbone(checkpoint_path: str | os.PathLike, image_size: int = 331) -> keras.Model:
    """Build the frozen PNASNet-5 Large backbone with the weights of a slim checkpoint.

    Returns a model from RGB 0..255 [batch, image_size, image_size, 3] to the
    level maps `Cell_5`, `Cell_7`, `Cell_9` and `Cell_11`; see
    `build_pnasnet_large`. Its `level_names` attribute lists them in order.
    """
    model = build_pnasnet_large(image_size)
    load_slim_checkpoint(model, checkpoint_path)
    model.trainable = False
    model.level_names = LEVEL_NAMES
    return model


@register_backbone("pnasnet_large")
def _build_backbone(modules_dir: str | os.PathLike | None, image_size: int) -> keras.Model:
    if modules_dir is None:
        raise ValueError(
            f"modules_dir is required for pnasnet_large: pass the folder that contains {CHECKPOINT_FILENAME} "
            "(unpack modules.tar.gz into modules/ and pass modules/)"
        )
    return pnasnet_large_backbone(find_checkpoint(modules_dir), image_size)
