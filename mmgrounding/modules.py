"""Find and validate the pretrained modules before any training starts.

The `modules/` folder follows the layout of the `modules.tar.gz` archive
published with the code of Akbari et al., CVPR 2019:

- `vgg_16.ckpt`: a TF-slim VGG16 checkpoint with variables under `vgg_16/`,
  either one V1 file or a V2 `vgg_16.ckpt.index` plus `vgg_16.ckpt.data-*`;
- `pnasnet_large_2.ckpt`: a TF-slim PNASNet-5 Large checkpoint with variables
  under `pnasnet_large/`;
- `ELMo/`: the ELMo TF-Hub module in the TF1 Hub format (`saved_model.pb`,
  `tfhub_module.pb`, `variables/`).

VGG16 also accepts the Keras ImageNet weights file
`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`, and ELMo a TF-Hub handle
already unpacked in `TFHUB_CACHE_DIR`. Every check here reads only file names,
checkpoint indexes and HDF5 headers, so it is cheap enough to run before
building any model. Nothing here downloads; the one way to let TF-Hub download
is `elmo_module_path(url, allow_download=True)`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import h5py
import tensorflow as tf

logger = logging.getLogger(__name__)

VGG16_SLIM_CHECKPOINT = "vgg_16.ckpt"
PNASNET_SLIM_CHECKPOINT = "pnasnet_large_2.ckpt"
ELMO_FOLDER = "ELMo"

# Keras weight files accepted for VGG16, in the order they are looked for: the
# official ImageNet files of keras.applications (legacy Keras 2 HDF5 layout,
# with and without the classifier) and a Keras 3 `save_weights` file.
VGG16_KERAS_WEIGHT_FILES = (
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg16.weights.h5",
)

# ELMo handles looked up in the TF-Hub cache when modules/ELMo is absent. The
# encoder calls only the `tokens` signature and checks its outputs on load.
ELMO_HUB_HANDLES = (
    "https://tfhub.dev/google/elmo/3",
    "https://tfhub.dev/google/elmo/2",
)

BACKBONES_WITHOUT_MODULES = frozenset({"efficientnet_lite0"})
TEXT_ENCODERS_WITHOUT_MODULES = frozenset({"minilm"})

_UNPACK_HINT = "unpack modules.tar.gz into {modules_dir} (see modules/README.md)"

# Output channels of the 13 convolutions of VGG16 (configuration D), per block.
_VGG16_BLOCK_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class ModuleError(FileNotFoundError, ValueError):
    """A pretrained module is missing, incomplete or of the wrong kind.

    It is both a `FileNotFoundError` and a `ValueError`, so callers can catch
    either. The message names the path, what is wrong and how to fix it.
    """


def _vgg16_conv_layers() -> tuple[tuple[str, str, tuple[int, int, int, int]], ...]:
    layers = []
    in_channels = 3
    for block, widths in enumerate(_VGG16_BLOCK_WIDTHS, start=1):
        for index, width in enumerate(widths, start=1):
            layers.append((f"conv{block}_{index}", f"block{block}_conv{index}", (3, 3, in_channels, width)))
            in_channels = width
    return tuple(layers)


# (slim layer name, Keras layer name, kernel shape [rows, cols, in, out]) for
# every VGG16 convolution in network order. The slim variables of a layer are
# `vgg_16/conv{block}/{name}/weights` and `.../biases`.
VGG16_CONV_LAYERS = _vgg16_conv_layers()


def vgg16_slim_variable_names(layer: str) -> tuple[str, str]:
    """Return the slim checkpoint names (weights, biases) of a VGG16 layer such as `conv4_3`."""
    block = layer.split("_")[0]
    return f"vgg_16/{block}/{layer}/weights", f"vgg_16/{block}/{layer}/biases"


# ---------------------------------------------------------------------------
# VGG16


def vgg16_weights_source(modules_dir: str | os.PathLike | None) -> tuple[str, Path]:
    """Locate the VGG16 weights in a modules folder.

    Args:
        modules_dir: the modules folder, or directly a slim checkpoint path
            (V1 file or V2 prefix) or a Keras `.h5` weights file.

    Returns:
        `("slim", checkpoint_path)` where `checkpoint_path` is what
        `tf.train.load_checkpoint` takes, or `("keras", h5_path)`. A slim
        checkpoint wins when both are present.

    Raises:
        ModuleError: the folder or every accepted weight file is missing.
    """
    if modules_dir is None:
        raise ModuleError(
            "the vgg16 backbone needs a modules folder with vgg_16.ckpt; pass modules_dir and "
            + _UNPACK_HINT.format(modules_dir="it")
        )
    path = Path(modules_dir)
    if path.is_file() and path.name.endswith(".h5"):
        return "keras", path
    if path.is_file() or _has_v2_index(path):
        _check_v2_shards(path)
        return "slim", path
    if not path.is_dir():
        raise ModuleError(f"modules folder {path} not found; create it and " + _UNPACK_HINT.format(modules_dir=path))

    checkpoint = path / VGG16_SLIM_CHECKPOINT
    if checkpoint.is_file() or _has_v2_index(checkpoint):
        _check_v2_shards(checkpoint)
        return "slim", checkpoint
    for name in VGG16_KERAS_WEIGHT_FILES:
        if (path / name).is_file():
            return "keras", path / name
    raise ModuleError(
        f"{path} is missing {VGG16_SLIM_CHECKPOINT} (or {VGG16_SLIM_CHECKPOINT}.index with its data "
        f"shards, or the Keras file {VGG16_KERAS_WEIGHT_FILES[0]}); " + _UNPACK_HINT.format(modules_dir=path)
    )


def _has_v2_index(prefix: Path) -> bool:
    return Path(f"{prefix}.index").is_file()


def _check_v2_shards(prefix: Path) -> None:
    if prefix.is_file() or not _has_v2_index(prefix):
        return
    if not list(prefix.parent.glob(f"{prefix.name}.data-*")):
        raise ModuleError(
            f"{prefix}.index exists but no {prefix.name}.data-* shard is next to it; copy the whole "
            "checkpoint (index and data files) from modules.tar.gz"
        )


def slim_checkpoint_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read the variable names and shapes of a TF1 or TF2 name-based checkpoint.

    Raises:
        ModuleError: the file is not a readable checkpoint.
    """
    try:
        reader = tf.train.load_checkpoint(str(path))
    except (tf.errors.OpError, ValueError) as error:
        raise ModuleError(
            f"{path} is not a readable TensorFlow checkpoint ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0]}); replace it with the file from modules.tar.gz"
        ) from error
    return reader.get_variable_to_shape_map()


def check_vgg16_slim_checkpoint(path: str | os.PathLike) -> None:
    """Check that a slim checkpoint has every VGG16 convolution with the right shape.

    Raises:
        ModuleError: variables are missing or have other shapes; a PNASNet
            checkpoint gets a message saying so.
    """
    shapes = slim_checkpoint_shapes(path)
    if not any(name.startswith("vgg_16/") for name in shapes):
        kind = _describe_checkpoint(shapes)
        raise ModuleError(
            f"{path} is not a VGG16 checkpoint: it has no variables under vgg_16/ ({kind}); use "
            f"{VGG16_SLIM_CHECKPOINT} from modules.tar.gz or the slim vgg_16_2016_08_28 release"
        )
    problems = []
    for layer, _, kernel_shape in VGG16_CONV_LAYERS:
        weights, biases = vgg16_slim_variable_names(layer)
        for name, expected in ((weights, list(kernel_shape)), (biases, [kernel_shape[-1]])):
            if name not in shapes:
                problems.append(f"{name} is missing")
            elif list(shapes[name]) != expected:
                problems.append(f"{name} has shape {list(shapes[name])}, expected {expected}")
    if problems:
        raise ModuleError(f"{path} does not match VGG16: " + "; ".join(problems[:6]) + _more(problems, 6))


def _describe_checkpoint(shapes: dict[str, list[int]]) -> str:
    scopes = sorted({name.split("/")[0] for name in shapes})
    if "pnasnet_large" in scopes:
        return "it looks like a PNASNet-5 Large checkpoint"
    if not scopes:
        return "it has no variables"
    return "its top-level scopes are " + ", ".join(scopes[:5]) + _more(scopes, 5)


def _more(items: list, listed: int) -> str:
    return f" and {len(items) - listed} more" if len(items) > listed else ""


def keras_h5_layer_weights(h5: h5py.File) -> dict[str, list[h5py.Dataset]]:
    """List the weights of every layer in a Keras weights file, in layer order.

    Reads two layouts. The legacy Keras 1/2 HDF5 layout of the official
    ImageNet files has a root attribute `layer_names` (optionally under
    `model_weights/`) and a group per layer whose attribute `weight_names`
    orders its datasets. The Keras 3 `.weights.h5` layout has groups
    `layers/<key>/vars` whose attribute `name` is the layer name and whose
    datasets `0`, `1`, ... are its variables.

    Returns:
        layer name -> its weight datasets (not yet read), kernel before bias;
        layers without weights are left out.

    Raises:
        ModuleError: the file is in neither layout.
    """
    root = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" in root.attrs:
        layers = {}
        for layer in root.attrs["layer_names"]:
            layer = _as_str(layer)
            group = root[layer]
            names = [_as_str(name) for name in group.attrs.get("weight_names", [])]
            if names:
                layers[layer] = [group[name] for name in names]
        return layers
    if "layers" in root:
        layers = {}
        for group in root["layers"].values():
            variables = group.get("vars")
            if variables is None or not len(variables):
                continue
            name = _as_str(variables.attrs.get("name", group.name.rsplit("/", 1)[-1]))
            layers[name] = [variables[key] for key in sorted(variables, key=int)]
        return layers
    raise ModuleError(
        f"{h5.filename} is not a Keras weights file: it has neither the legacy `layer_names` "
        "attribute nor a Keras 3 `layers` group; use vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 "
        "from keras.applications"
    )


def _as_str(value: bytes | str) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def check_vgg16_keras_weights(path: str | os.PathLike) -> None:
    """Check that a Keras weights file has every VGG16 convolution with the right shape.

    Raises:
        ModuleError: the file is unreadable, or layers are missing or have
            other shapes.
    """
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ModuleError(f"{path} is not a readable HDF5 file ({error}); download it again") from error
    with h5:
        layers = keras_h5_layer_weights(h5)
        problems = []
        for _, keras_name, kernel_shape in VGG16_CONV_LAYERS:
            if keras_name not in layers:
                problems.append(f"layer {keras_name} is missing")
                continue
            shapes = [tuple(dataset.shape) for dataset in layers[keras_name]]
            if shapes != [kernel_shape, (kernel_shape[-1],)]:
                problems.append(f"layer {keras_name} has weight shapes {shapes}, expected {[kernel_shape, (kernel_shape[-1],)]}")
    if problems:
        raise ModuleError(f"{path} does not match the Keras VGG16 layout: " + "; ".join(problems[:6]) + _more(problems, 6))


# ---------------------------------------------------------------------------
# PNASNet


def pnasnet_checkpoint_path(modules_dir: str | os.PathLike | None) -> Path:
    """Locate and check `pnasnet_large_2.ckpt` in a modules folder.

    Args:
        modules_dir: the modules folder, or directly the checkpoint path.

    Returns:
        the checkpoint path that `tf.train.load_checkpoint` takes.

    Raises:
        ModuleError: the checkpoint is missing or has no PNASNet-5 Large cells.
    """
    if modules_dir is None:
        raise ModuleError(
            f"the pnasnet_large backbone needs a modules folder with {PNASNET_SLIM_CHECKPOINT}; pass "
            "modules_dir and " + _UNPACK_HINT.format(modules_dir="it")
        )
    path = Path(modules_dir)
    if path.is_dir():
        if not path.joinpath(PNASNET_SLIM_CHECKPOINT).is_file() and not _has_v2_index(path / PNASNET_SLIM_CHECKPOINT):
            raise ModuleError(f"{path} is missing {PNASNET_SLIM_CHECKPOINT}; " + _UNPACK_HINT.format(modules_dir=path))
        path = path / PNASNET_SLIM_CHECKPOINT
    elif not path.is_file() and not _has_v2_index(path):
        raise ModuleError(f"modules folder {path} not found; create it and " + _UNPACK_HINT.format(modules_dir=path))
    _check_v2_shards(path)

    shapes = slim_checkpoint_shapes(path)
    # PNASNet-5 Large has cells 0..11; cell 11 is the deepest level the model uses.
    # The grounding release scopes the variables under pnasnet_large/; the
    # TF-slim release has the same names without the scope.
    if not any(name.startswith(("pnasnet_large/cell_11/", "cell_11/")) for name in shapes):
        kind = "it looks like a VGG16 checkpoint" if any(n.startswith("vgg_16/") for n in shapes) else _describe_checkpoint(shapes)
        raise ModuleError(
            f"{path} is not a PNASNet-5 Large checkpoint: it has no variables under "
            f"pnasnet_large/cell_11/ ({kind}); use {PNASNET_SLIM_CHECKPOINT} from modules.tar.gz"
        )
    return path


# ---------------------------------------------------------------------------
# ELMo


def tfhub_cache_folder(handle: str) -> Path:
    """Return the folder where tensorflow_hub caches `handle`.

    tensorflow_hub 0.16.1 (`compressed_module_resolver._module_dir`) stores a
    downloaded module in `$TFHUB_CACHE_DIR/<SHA1 hex of the handle>`, and in
    `<system temp>/tfhub_modules` when TFHUB_CACHE_DIR is unset.
    """
    cache_dir = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    return Path(cache_dir) / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def _cached_module(handle: str) -> Path | None:
    folder = tfhub_cache_folder(handle)
    # tensorflow_hub writes `<folder>.lock` while a download is in progress.
    if folder.joinpath("saved_model.pb").is_file() and not Path(f"{folder}.lock").exists():
        return folder
    return None


def _cached_elmo() -> str | None:
    for handle in ELMO_HUB_HANDLES:
        cached = _cached_module(handle)
        if cached is not None:
            logger.info("using %s from the TF-Hub cache at %s", handle, cached)
            check_elmo_folder(cached)
            return str(cached)
    return None


def elmo_module_path(modules_dir_or_handle: str | os.PathLike | None, allow_download: bool = False) -> str:
    """Resolve where the ELMo TF-Hub module is loaded from, without network access.

    Looks, in this order, at:

    1. a URL handle such as "https://tfhub.dev/google/elmo/3": its folder in the
       TF-Hub cache (`tfhub_cache_folder`). When it is not cached, the handle
       itself is returned, for `hub.load` to download, only with
       `allow_download=True`;
    2. a folder that is itself the module (it contains `saved_model.pb`);
    3. `<modules_dir>/ELMo`;
    4. the cached copies of the handles in `ELMO_HUB_HANDLES`, also when
       `modules_dir_or_handle` is None.

    Returns:
        a local module folder, or the URL handle when downloading is allowed.

    Raises:
        ModuleError: nothing usable was found, the module folder is
            incomplete, or the handle is not cached and downloading is not
            allowed.
    """
    if modules_dir_or_handle is None:
        cached = _cached_elmo()
        if cached is not None:
            return cached
        raise ModuleError(
            "the elmo text encoder needs a modules folder with ELMo/ and no ELMo module is in the "
            f"TF-Hub cache ({tfhub_cache_folder(ELMO_HUB_HANDLES[0]).parent}); pass modules_dir and "
            + _UNPACK_HINT.format(modules_dir="it")
        )
    handle = os.fspath(modules_dir_or_handle)
    if _is_url(handle):
        cached = _cached_module(handle)
        if cached is not None:
            check_elmo_folder(cached)
            return str(cached)
        if allow_download:
            logger.info("%s is not in the TF-Hub cache; tensorflow_hub will download it", handle)
            return handle
        raise ModuleError(
            f"{handle} is not in the TF-Hub cache ({tfhub_cache_folder(handle)}) and loading it would "
            "download it; set TFHUB_CACHE_DIR to a cache that has it, unpack the module into "
            f"modules/{ELMO_FOLDER}, or pass allow_download=True to allow the download"
        )

    path = Path(handle)
    if path.joinpath("saved_model.pb").is_file():
        check_elmo_folder(path)
        return str(path)
    if not path.is_dir():
        raise ModuleError(f"modules folder {path} not found; create it and " + _UNPACK_HINT.format(modules_dir=path))
    if path.joinpath(ELMO_FOLDER).is_dir():
        check_elmo_folder(path / ELMO_FOLDER)
        return str(path / ELMO_FOLDER)
    cached = _cached_elmo()
    if cached is not None:
        logger.info("%s has no %s folder; using the TF-Hub cache", path, ELMO_FOLDER)
        return cached
    raise ModuleError(
        f"{path} is missing the {ELMO_FOLDER} folder and no ELMo module is in the TF-Hub cache "
        f"({tfhub_cache_folder(ELMO_HUB_HANDLES[0]).parent}); " + _UNPACK_HINT.format(modules_dir=path)
    )


def check_elmo_folder(folder: str | os.PathLike) -> None:
    """Check that a folder contains a complete TF1 Hub-format module.

    A missing `tfhub_module.pb` only logs a warning: `hub.load` can still read
    the SavedModel when it has a single graph variant.

    Raises:
        ModuleError: `saved_model.pb` or the variables are missing.
    """
    folder = Path(folder)
    hint = _UNPACK_HINT.format(modules_dir=folder.parent)
    if not folder.is_dir():
        raise ModuleError(f"{folder} not found; " + hint)
    if not folder.joinpath("saved_model.pb").is_file():
        raise ModuleError(f"{folder} is missing saved_model.pb; " + hint)
    variables = folder / "variables"
    if not variables.is_dir():
        raise ModuleError(f"{folder} is missing variables/; " + hint)
    if not variables.joinpath("variables.index").is_file() or not list(variables.glob("variables.data-*")):
        raise ModuleError(f"{variables} is missing variables.index or its variables.data-* shards; " + hint)
    if not folder.joinpath("tfhub_module.pb").is_file():
        logger.warning(
            "%s has no tfhub_module.pb, so it is loaded as a plain SavedModel; if loading fails, " + hint,
            folder,
        )


# ---------------------------------------------------------------------------
# Everything at once


def check_modules(
    modules_dir: str | os.PathLike | None, backbone: str, text_encoder: str
) -> dict[str, str]:
    """Validate the modules that a backbone and a text encoder need, before training.

    Args:
        modules_dir: the modules folder; may be None when neither needs one.
        backbone: `vgg16`, `pnasnet_large` or a backbone that needs no module
            (`efficientnet_lite0`).
        text_encoder: `elmo` or an encoder that needs no module (`minilm`).

    Returns:
        `{"backbone": ..., "text_encoder": ...}`, each the file or folder that
        will be loaded, or "" when the component needs no module.

    Raises:
        ModuleError: a module is missing, incomplete or of the wrong kind.
        ValueError: a name that is not registered. Registered components
            other than those named above pass unchecked.
    """
    found = {"backbone": "", "text_encoder": ""}
    if backbone == "vgg16":
        kind, path = vgg16_weights_source(modules_dir)
        if kind == "slim":
            check_vgg16_slim_checkpoint(path)
        else:
            check_vgg16_keras_weights(path)
        found["backbone"] = str(path)
    elif backbone == "pnasnet_large":
        found["backbone"] = str(pnasnet_checkpoint_path(modules_dir))
    elif backbone not in BACKBONES_WITHOUT_MODULES:
        # Imported here because the registries import the encoders, which
        # import this module.
        from mmgrounding.encoders.visual import backbone_names

        if backbone not in backbone_names():
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {backbone_names()}")
        logger.info("backbone %r is not checked here; its builder loads its own weights", backbone)

    if text_encoder == "elmo":
        found["text_encoder"] = elmo_module_path(modules_dir)
    elif text_encoder not in TEXT_ENCODERS_WITHOUT_MODULES:
        from mmgrounding.encoders.text import text_encoder_names

        if text_encoder not in text_encoder_names():
            raise ValueError(f"unknown text encoder {text_encoder!r}; choose one of {text_encoder_names()}")
        logger.info("text encoder %r is not checked here; its builder loads its own weights", text_encoder)
    return found
