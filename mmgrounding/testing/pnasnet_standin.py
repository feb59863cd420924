"""Stand-in for the published PNASNet-5 Large TF-slim checkpoint, for tests.

The variable names and shapes come from the description of the slim graph
below, written from tensorflow/models research/slim/nets/nasnet (pnasnet.py,
nasnet.py and nasnet_utils.py) and kept separate from the Keras model in
`mmgrounding.encoders.pnasnet`, so that comparing the two checks both. It
follows slim's own decisions, made on static widths: slim adapts the output
two cells back with a factorized reduction when its width differs from the
cell input, and with `prev_1x1` when only its channels differ. The values are
random; moving variances are positive.

NOTE: the grounding release's `pnasnet_large_2.ckpt` may or may not hold the
training-only auxiliary head `aux_7` and the classifier `final_layer/FC`,
because that depends on how it was exported. Both are optional here, and the
loader skips them when the model leaves them out.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

__all__ = ["pnasnet_large_variable_shapes", "write_pnasnet_slim_checkpoint", "write_tf1_checkpoint"]

# PNASNet-5 in slim's own encoding (PNasNetNormalCell): per combination, the
# left then the right operation, and the hidden state each reads.
_OPERATIONS = (
    "separable_5x5_2", "max_pool_3x3",
    "separable_7x7_2", "max_pool_3x3",
    "separable_5x5_2", "separable_3x3_2",
    "separable_3x3_2", "max_pool_3x3",
    "separable_3x3_2", "none",
)
_HIDDENSTATE_INDICES = (1, 1, 0, 0, 0, 0, 4, 0, 1, 0)
_NUM_CELLS = 12
_REDUCTION_CELLS = (4, 8)
_AUX_HEAD_CELL = 7  # one before the second reduction cell
# slim decides the wiring on static widths; the published model was trained at 331 px.
_TRAINING_IMAGE_SIZE = 331


def pnasnet_large_variable_shapes(
    num_classes: int = 1001,
    *,
    num_conv_filters: int = 216,
    scope: str = "pnasnet_large",
    include_aux_head: bool = False,
) -> dict[str, tuple[int, ...]]:
    """List the variables of slim's PNASNet-5 Large graph, name -> shape, in creation order.

    `num_classes` 0 leaves out `final_layer/FC`. `scope` is the variable scope
    the model was built in ("" for none). The auxiliary head's 6x6 kernel is
    the one slim builds at 331 pixels.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    prefix = f"{scope}/" if scope else ""

    def conv(name: str, kernel_size: int, inputs: int, outputs: int, variable: str = "weights") -> None:
        shapes[f"{prefix}{name}/{variable}"] = (kernel_size, kernel_size, inputs, outputs)

    def batch_norm(name: str, channels: int) -> None:
        for variable in ("beta", "gamma", "moving_mean", "moving_variance"):
            shapes[f"{prefix}{name}/{variable}"] = (channels,)

    width = (_TRAINING_IMAGE_SIZE - 3) // 2 + 1  # conv0 is 'VALID'
    conv("conv0", 3, 3, 96)
    batch_norm("conv0_bn", 96)
    # (width, channels) of each cell output; None where slim has no earlier output.
    outputs: list[tuple[int, int] | None] = [None, (width, 96)]

    cells = [("cell_stem_0", num_conv_filters // 4, 2), ("cell_stem_1", num_conv_filters // 2, 2)]
    filters = num_conv_filters
    for index in range(_NUM_CELLS):
        stride = 2 if index in _REDUCTION_CELLS else 1
        filters *= stride
        cells.append((f"cell_{index}", filters, stride))

    for name, filters, stride in cells:
        (width, channels), previous = outputs[-1], outputs[-2]
        if previous is None:
            previous_channels = channels
        elif previous[0] != width:
            conv(f"{name}/path1_conv", 1, previous[1], filters // 2)
            conv(f"{name}/path2_conv", 1, previous[1], filters // 2)
            batch_norm(f"{name}/final_path_bn", filters)
            previous_channels = filters
        elif previous[1] != filters:
            conv(f"{name}/prev_1x1", 1, previous[1], filters)
            batch_norm(f"{name}/prev_bn", filters)
            previous_channels = filters
        else:
            previous_channels = previous[1]
        conv(f"{name}/1x1", 1, channels, filters)
        batch_norm(f"{name}/beginning_bn", filters)

        hidden_channels = [filters, previous_channels]
        for iteration in range(5):
            for side, position in (("left", 2 * iteration), ("right", 2 * iteration + 1)):
                operation = _OPERATIONS[position]
                source = _HIDDENSTATE_INDICES[position]
                _operation_variables(
                    f"{name}/comb_iter_{iteration}/{side}",
                    operation,
                    hidden_channels[source],
                    filters,
                    stride if source < 2 else 1,
                    conv,
                    batch_norm,
                )
            hidden_channels.append(filters)

        outputs.append((math.ceil(width / stride), 5 * filters))
        if include_aux_head and name == f"cell_{_AUX_HEAD_CELL}":
            aux_width, aux_channels = outputs[-1]
            kernel_size = (aux_width - 5) // 3 + 1  # 5x5 average pool, stride 3, 'VALID'
            conv(f"aux_{_AUX_HEAD_CELL}/aux_logits/proj", 1, aux_channels, 128)
            batch_norm(f"aux_{_AUX_HEAD_CELL}/aux_logits/aux_bn0", 128)
            conv(f"aux_{_AUX_HEAD_CELL}/aux_logits/Conv", kernel_size, 128, 768)
            batch_norm(f"aux_{_AUX_HEAD_CELL}/aux_logits/aux_bn1", 768)
            shapes[f"{prefix}aux_{_AUX_HEAD_CELL}/aux_logits/FC/weights"] = (768, num_classes)
            shapes[f"{prefix}aux_{_AUX_HEAD_CELL}/aux_logits/FC/biases"] = (num_classes,)

    if num_classes:
        shapes[f"{prefix}final_layer/FC/weights"] = (outputs[-1][1], num_classes)
        shapes[f"{prefix}final_layer/FC/biases"] = (num_classes,)
    return shapes


def _operation_variables(scope, operation, inputs, filters, stride, conv, batch_norm) -> None:
    """Add the variables of one branch: a two-layer separable stack, a pool or 'none'."""
    if operation.startswith("separable"):
        kernel_size = int(operation.split("_")[1][0])
        for layer in (1, 2):
            layer_inputs = inputs if layer == 1 else filters
            name = f"{scope}/separable_{kernel_size}x{kernel_size}_{layer}"
            conv(name, kernel_size, layer_inputs, 1, variable="depthwise_weights")
            conv(name, 1, layer_inputs, filters, variable="pointwise_weights")
            batch_norm(f"{scope}/bn_sep_{kernel_size}x{kernel_size}_{layer}", filters)
    elif operation == "none":
        if stride > 1 or inputs != filters:
            conv(f"{scope}/1x1", 1, inputs, filters)
            batch_norm(f"{scope}/bn_1", filters)
    elif inputs != filters:  # a pool keeps the channels, so a 1x1 convolution matches them
        conv(f"{scope}/1x1", 1, inputs, filters)
        batch_norm(f"{scope}/bn_1", filters)


def write_pnasnet_slim_checkpoint(
    path: str | os.PathLike,
    seed: int = 0,
    num_classes: int = 1001,
    *,
    num_conv_filters: int = 216,
    scope: str = "pnasnet_large",
    include_aux_head: bool = False,
    write_version: str = "V2",
) -> Path:
    """Write a TF1 checkpoint with the variables of slim's PNASNet-5 Large and random values.

    `path` is the checkpoint prefix (V2 writes `path.index` and
    `path.data-00000-of-00001`, V1 one file at `path`). The full model takes
    345 MB and a few seconds; a smaller `num_conv_filters` makes a quick one.
    Returns `path`.
    """
    shapes = pnasnet_large_variable_shapes(
        num_classes, num_conv_filters=num_conv_filters, scope=scope, include_aux_head=include_aux_head
    )
    return write_tf1_checkpoint(path, shapes, seed=seed, write_version=write_version)


def write_tf1_checkpoint(
    path: str | os.PathLike,
    shapes: Mapping[str, tuple[int, ...]],
    seed: int = 0,
    write_version: str = "V2",
) -> Path:
    """Write tf.compat.v1 variables `shapes` (name -> shape) with random values to a checkpoint.

    Kernels are normal with variance 1 / fan-in. Batch-norm gammas lie in
    [0.5, 1.5] and moving variances in [0.5, 2.0]. Betas, moving means and
    biases are normal with standard deviation 0.1.
    """
    if write_version not in ("V1", "V2"):
        raise ValueError(f"write_version must be 'V1' or 'V2', got {write_version!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        variables, assignments = {}, {}
        for name, shape in shapes.items():
            variable = tf.compat.v1.get_variable(
                name, shape, tf.float32, initializer=tf.compat.v1.zeros_initializer(), use_resource=False
            )
            value = tf.compat.v1.placeholder(tf.float32, shape)
            variables[name] = variable
            assignments[name] = (value, variable.assign(value))
        saver = tf.compat.v1.train.Saver(
            var_list=variables,
            write_version=getattr(tf.compat.v1.train.SaverDef, write_version),
        )
        # One run for all assignments: every distinct run call builds a new
        # executor for the graph, which takes seconds per call at this size.
        feed = {assignments[name][0]: _random_value(rng, name, shape) for name, shape in shapes.items()}
        with tf.compat.v1.Session(graph=graph) as session:
            session.run([assign for _, assign in assignments.values()], feed)
            del feed
            saver.save(session, str(path), write_meta_graph=False, write_state=False)
    logger.info("wrote %d variables to %s", len(shapes), path)
    return path


def _random_value(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    last = name.rsplit("/", 1)[-1]
    if last == "gamma":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if last == "moving_variance":
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if last in ("beta", "moving_mean", "biases"):
        return rng.normal(0.0, 0.1, shape).astype(np.float32)
    if len(shape) == 4:
        # Depthwise kernels [k, k, in, 1] read k * k inputs; others k * k * in.
        fan_in = shape[0] * shape[1] * (1 if last == "depthwise_weights" else shape[2])
    else:
        fan_in = shape[0] if shape else 1
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))
