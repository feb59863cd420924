"""Builders of small stand-in modules in the real file formats.

Tests, notebook tests and users without the published `modules.tar.gz` use
these to exercise the same loading code as the real modules:

- `write_vgg16_slim_checkpoint`: a TF1 checkpoint with the TF-slim VGG16
  variable names and shapes and random values;
- `write_vgg16_keras_weights`: the same kind of weights as a Keras HDF5 file,
  in the legacy layout of the official ImageNet file or the Keras 3 layout;
- `write_elmo_hub_module`: a TF1 Hub-format module with the signatures and
  outputs of the ELMo module, computed by a tiny real network.

The values are random, so the features mean nothing; shapes, names, file
layouts and the padding behaviour match the real modules.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np
import tensorflow as tf

from mmgrounding.modules import VGG16_CONV_LAYERS, vgg16_slim_variable_names

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# VGG16


def vgg16_random_weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Draw random VGG16 convolution weights in the slim layout.

    He-normal kernels keep the deep features from vanishing or overflowing
    through the 13 ReLU layers.

    Returns:
        slim layer name (`conv1_1` ...) -> (kernel [3, 3, in, out] float32,
        bias [out] float32); conv1_1 expects RGB input channels.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for layer, _, kernel_shape in VGG16_CONV_LAYERS:
        fan_in = kernel_shape[0] * kernel_shape[1] * kernel_shape[2]
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=kernel_shape).astype(np.float32)
        bias = rng.normal(0.0, 0.01, size=kernel_shape[-1]).astype(np.float32)
        weights[layer] = (kernel, bias)
    return weights


def write_slim_checkpoint(path: str | os.PathLike, variables: Mapping[str, np.ndarray], version: str = "v2") -> Path:
    """Write named arrays as a TF1 `tf.compat.v1.train.Saver` checkpoint.

    Args:
        path: the checkpoint path: the single file for "v1", the prefix of
            `.index` and `.data-*` for "v2". Its folder is created.
        variables: checkpoint name -> value.
        version: "v1" (the format of the 2016 slim releases) or "v2".

    Returns:
        `path`, which `tf.train.load_checkpoint` reads.
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_version = tf.compat.v1.train.SaverDef.V1 if version == "v1" else tf.compat.v1.train.SaverDef.V2

    graph = tf.Graph()
    with graph.as_default():
        assignments = {}
        for name, value in variables.items():
            value = np.asarray(value)
            # Reference variables, as TF1 slim created them.
            variable = tf.compat.v1.get_variable(
                name, shape=value.shape, dtype=tf.as_dtype(value.dtype), use_resource=False,
                initializer=tf.compat.v1.zeros_initializer(),
            )
            placeholder = tf.compat.v1.placeholder(variable.dtype.base_dtype, value.shape)
            assignments[variable.assign(placeholder)] = (placeholder, value)
        saver = tf.compat.v1.train.Saver(write_version=write_version)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for assignment, (placeholder, value) in assignments.items():
                session.run(assignment, {placeholder: value})
            saver.save(session, str(path), write_meta_graph=False, write_state=False)
    return path


def write_vgg16_slim_checkpoint(
    path: str | os.PathLike,
    seed: int = 0,
    weights: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    version: str = "v2",
    extra_variables: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write VGG16 convolution weights under the TF-slim variable names.

    Args:
        path: checkpoint path, e.g. `modules/vgg_16.ckpt`.
        seed: seed of `vgg16_random_weights`, used when `weights` is None.
        weights: slim layer name -> (kernel, bias), as `vgg16_random_weights`.
        version: "v1" or "v2" checkpoint format.
        extra_variables: more entries to store, e.g. `global_step` or classifier
            variables, to test that loaders skip or report them. The classifier
            (fc6 [7, 7, 512, 4096] ...) is left out by default because it
            would add about 480 MB.

    Returns:
        `path`.
    """
    weights = vgg16_random_weights(seed) if weights is None else weights
    variables = {}
    for layer, _, _ in VGG16_CONV_LAYERS:
        weights_name, biases_name = vgg16_slim_variable_names(layer)
        variables[weights_name], variables[biases_name] = weights[layer]
    variables.update(extra_variables or {})
    return write_slim_checkpoint(path, variables, version=version)


def write_vgg16_keras_weights(
    path: str | os.PathLike,
    seed: int = 0,
    weights: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Write VGG16 convolution weights as a Keras weights file.

    The kernels are converted from the slim layout to the Keras ImageNet one:
    conv1_1's input channels are reversed, because the Keras release expects
    BGR input. A model loaded from this file with Keras preprocessing thus
    computes what the slim checkpoint of the same `weights` computes, up to the
    0.001 differences between the two releases' channel means.

    Args:
        path: a name ending in `.weights.h5` gets the Keras 3 layout written by
            `keras.Model.save_weights`. Any other `.h5` name, such as the
            official `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, gets
            the legacy Keras 2 HDF5 layout of that official file.
        seed: seed of `vgg16_random_weights`, used when `weights` is None.
        weights: slim layer name -> (kernel, bias) with RGB input channels.

    Returns:
        `path`.
    """
    path = Path(path)
    if path.suffix != ".h5":
        raise ValueError(f"{path}: a Keras weights file name must end in .h5 or .weights.h5")
    weights = vgg16_random_weights(seed) if weights is None else weights
    keras_weights = {}
    for layer, keras_name, _ in VGG16_CONV_LAYERS:
        kernel, bias = weights[layer]
        if layer == "conv1_1":
            kernel = kernel[:, :, ::-1, :]
        keras_weights[keras_name] = (np.ascontiguousarray(kernel, dtype=np.float32), np.asarray(bias, np.float32))

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".weights.h5"):
        _write_keras3_weights(path, keras_weights)
    else:
        _write_legacy_keras_weights(path, keras_weights)
    return path


def _write_keras3_weights(path: Path, keras_weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    import keras

    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    for name, (kernel, bias) in keras_weights.items():
        model.get_layer(name).set_weights([kernel, bias])
    model.save_weights(path)


def _write_legacy_keras_weights(path: Path, keras_weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    # The layout of keras.applications' VGG16 "notop" file as Keras 2.x saved
    # it: root attributes list every layer, pools included, and each layer
    # group lists its weight names, which are also the dataset paths.
    layer_names = ["input_1"]
    previous_block = "block1"
    for name in keras_weights:
        block = name.split("_")[0]
        if block != previous_block:
            layer_names.append(f"{previous_block}_pool")
            previous_block = block
        layer_names.append(name)
    layer_names.append(f"{previous_block}_pool")

    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = np.array([name.encode("utf8") for name in layer_names])
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["keras_version"] = b"2.2.4"
        for name in layer_names:
            group = h5.create_group(name)
            if name not in keras_weights:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            weight_names = [f"{name}/kernel:0", f"{name}/bias:0"]
            group.attrs["weight_names"] = np.array([weight.encode("utf8") for weight in weight_names])
            for weight_name, value in zip(weight_names, keras_weights[name]):
                group.create_dataset(weight_name, data=value)


# ---------------------------------------------------------------------------
# ELMo

_ELMO_WORD_WIDTH = 512
_ELMO_LSTM_WIDTH = 1024
_ELMO_HASH_BUCKETS = 997

# The ModuleDef proto of tensorflow_hub (module_def.proto) with
# `format = FORMAT_V3` (field 1, varint 3) and no required features.
_MODULE_DEF_V3 = b"\x08\x03"


def write_elmo_hub_module(path: str | os.PathLike, seed: int = 0) -> Path:
    """Export a tiny ELMo stand-in as a TF1 Hub-format module.

    The folder has the files of the real module (`saved_model.pb` with one
    graph variant under the empty tag set, `tfhub_module.pb`, `variables/`,
    `assets/`) and its two signatures:

    - `tokens`: inputs `tokens` string [batch, tokens] and `sequence_len`
      int32 [batch];
    - `default`: input `default` string [batch] of sentences, split on
      whitespace.

    Both return `word_emb` [batch, tokens, 512], `lstm_outputs1` and
    `lstm_outputs2` [batch, tokens, 1024] (forward half first), `elmo`
    [batch, tokens, 1024] (the learned mix of the three layers), `default`
    [batch, 1024] (mean of `elmo` over real tokens) and `sequence_len`.

    `word_emb` looks each token up in a hashed embedding table. Each "LSTM"
    layer is a projection followed by a masked running mean, left to right for
    the forward half and right to left for the backward half. So, like the
    real biLM given `sequence_len`, a token's outputs do not depend on
    padding. Outputs at padded positions are zero.

    Returns:
        `path`, loadable with `hub.load`.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; the SavedModel builder writes only to a new folder")

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        parameters = _elmo_parameters()

        tokens = tf.compat.v1.placeholder(tf.string, [None, None], name="tokens")
        sequence_len = tf.compat.v1.placeholder(tf.int32, [None], name="sequence_len")
        token_outputs = _elmo_outputs(tokens, sequence_len, parameters)

        sentences = tf.compat.v1.placeholder(tf.string, [None], name="sentences")
        words = tf.strings.split(sentences)
        sentence_outputs = _elmo_outputs(
            words.to_tensor(default_value=""), tf.cast(words.row_lengths(), tf.int32), parameters
        )

        info = tf.compat.v1.saved_model.build_tensor_info
        signatures = {
            "tokens": tf.compat.v1.saved_model.build_signature_def(
                inputs={"tokens": info(tokens), "sequence_len": info(sequence_len)},
                outputs={key: info(value) for key, value in token_outputs.items()},
            ),
            "default": tf.compat.v1.saved_model.build_signature_def(
                inputs={"default": info(sentences)},
                outputs={key: info(value) for key, value in sentence_outputs.items()},
            ),
        }
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(str(path))
            # TF1 Hub modules store their default graph variant under the empty tag set.
            builder.add_meta_graph_and_variables(session, tags=[], signature_def_map=signatures, strip_default_attrs=True)
            builder.save()

    path.joinpath("tfhub_module.pb").write_bytes(_MODULE_DEF_V3)
    path.joinpath("assets").mkdir(exist_ok=True)
    logger.info("wrote an ELMo stand-in module to %s", path)
    return path


def _elmo_parameters() -> dict[str, tf.Variable]:
    def variable(name, shape, stddev):
        # Reference variables, as the 2018 ELMo module has.
        return tf.compat.v1.get_variable(
            name, shape=shape, initializer=tf.compat.v1.random_normal_initializer(stddev=stddev), use_resource=False
        )

    half = _ELMO_LSTM_WIDTH // 2
    with tf.compat.v1.variable_scope("bilm"):
        parameters = {"embedding": variable("embedding", [_ELMO_HASH_BUCKETS, _ELMO_WORD_WIDTH], 1.0)}
        for layer, width in (("layer_1", _ELMO_WORD_WIDTH), ("layer_2", _ELMO_LSTM_WIDTH)):
            for direction in ("forward", "backward"):
                parameters[f"{layer}/{direction}"] = variable(f"{layer}/{direction}/kernel", [width, half], width**-0.5)
    with tf.compat.v1.variable_scope("aggregation"):
        parameters["mix_weights"] = variable("weights", [3], 0.1)
        parameters["mix_scale"] = variable("scaling", [], 0.1)
    return parameters


def _running_mean(values: tf.Tensor, mask: tf.Tensor, reverse: bool) -> tf.Tensor:
    """Average `values` [batch, tokens, width] over the real tokens up to each
    position, counting from the end when `reverse`. Padded positions get zero."""
    total = tf.cumsum(values * mask, axis=1, reverse=reverse)
    count = tf.cumsum(mask, axis=1, reverse=reverse)
    return total / tf.maximum(count, 1.0) * mask


def _bidirectional_layer(inputs: tf.Tensor, mask: tf.Tensor, parameters: dict, layer: str) -> tf.Tensor:
    halves = []
    for direction, reverse in (("forward", False), ("backward", True)):
        projected = tf.tanh(tf.einsum("btc,cd->btd", inputs, parameters[f"{layer}/{direction}"]))
        halves.append(_running_mean(projected, mask, reverse))
    return tf.concat(halves, axis=-1)


def _elmo_outputs(tokens: tf.Tensor, sequence_len: tf.Tensor, parameters: dict) -> dict[str, tf.Tensor]:
    mask = tf.sequence_mask(sequence_len, tf.shape(tokens)[1], dtype=tf.float32)[:, :, None]
    buckets = tf.strings.to_hash_bucket_fast(tokens, _ELMO_HASH_BUCKETS)
    word_emb = tf.gather(parameters["embedding"], buckets) * mask
    lstm_outputs1 = _bidirectional_layer(word_emb, mask, parameters, "layer_1")
    lstm_outputs2 = _bidirectional_layer(lstm_outputs1, mask, parameters, "layer_2")

    mix = tf.nn.softmax(parameters["mix_weights"])
    elmo = parameters["mix_scale"] * (
        mix[0] * tf.concat([word_emb, word_emb], axis=-1) + mix[1] * lstm_outputs1 + mix[2] * lstm_outputs2
    )
    default = tf.reduce_sum(elmo, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
    return {
        "word_emb": word_emb,
        "lstm_outputs1": lstm_outputs1,
        "lstm_outputs2": lstm_outputs2,
        "elmo": elmo,
        "default": default,
        "sequence_len": tf.identity(sequence_len),
    }


def write_modules_folder(
    modules_dir: str | os.PathLike, vgg16: bool = True, elmo: bool = True, seed: int = 0
) -> Path:
    """Fill a folder in the layout of `modules.tar.gz` with stand-ins.

    Writes `vgg_16.ckpt` (V2) and the `ELMo/` module as requested; an existing
    `ELMo/` folder is replaced.

    Returns:
        `modules_dir`.
    """
    modules_dir = Path(modules_dir)
    modules_dir.mkdir(parents=True, exist_ok=True)
    if vgg16:
        write_vgg16_slim_checkpoint(modules_dir / "vgg_16.ckpt", seed=seed)
    if elmo:
        shutil.rmtree(modules_dir / "ELMo", ignore_errors=True)
        write_elmo_hub_module(modules_dir / "ELMo", seed=seed)
    return modules_dir
