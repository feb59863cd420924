"""Copy the photos of the bundled sample set out of installed Python packages.

The sample set in this folder (`sample.jsonl` plus `images/`) uses only natural
photographs that scikit-image, scikit-learn and matplotlib ship inside their
wheels under permissive terms; SOURCES.md lists the source and licence of each.
This script redoes the copy step: it finds each file in the installed package,
checks its SHA-256 against the file that was annotated, and copies the bytes
unchanged (no decoding, resizing or re-encoding) into `images/`. The captions
and boxes in `sample.jsonl` were written by hand and are not produced here.

The packages are not runtime dependencies of mmgrounding, so run the script
from a scratch environment:

    python3.11 -m venv /tmp/sample-venv
    /tmp/sample-venv/bin/pip install "scikit-image==0.26.0" "scikit-learn==1.9.1" "matplotlib==3.11.2"
    /tmp/sample-venv/bin/python data/sample/make_sample.py

Nothing is downloaded: every photo used here is inside the wheel itself, and
scikit-image images that its `pooch` fetcher downloads on first use are not used.
Pass `--accept-changed` to copy a file whose checksum differs from the annotated
one (a different package version); check its boxes again before committing it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SamplePhoto:
    """One photo of the sample set and where an installed package keeps it."""

    image_id: str
    package: str  # import name, such as "skimage"
    distribution: str  # name on the package index, for the version lookup
    path_in_package: str
    sha256: str

    @property
    def file_name(self) -> str:
        return self.image_id + Path(self.path_in_package).suffix


SAMPLE_PHOTOS = (
    SamplePhoto("astronaut", "skimage", "scikit-image", "data/astronaut.png",
                "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    SamplePhoto("camera", "skimage", "scikit-image", "data/camera.png",
                "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    SamplePhoto("chelsea", "skimage", "scikit-image", "data/chelsea.png",
                "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    SamplePhoto("coffee", "skimage", "scikit-image", "data/coffee.png",
                "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    SamplePhoto("rocket", "skimage", "scikit-image", "data/rocket.jpg",
                "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    SamplePhoto("hubble_deep_field", "skimage", "scikit-image", "data/hubble_deep_field.jpg",
                "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    SamplePhoto("china", "sklearn", "scikit-learn", "datasets/images/china.jpg",
                "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    SamplePhoto("flower", "sklearn", "scikit-learn", "datasets/images/flower.jpg",
                "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    SamplePhoto("grace_hopper", "matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
)


class SampleSourceError(RuntimeError):
    """A photo of the sample set is missing from, or differs in, the installed package."""


def find_package_file(photo: SamplePhoto) -> Path:
    """Return the path of `photo` inside its installed package, without importing the package."""
    spec = importlib.util.find_spec(photo.package)
    if spec is None or not spec.submodule_search_locations:
        raise SampleSourceError(
            f"package {photo.package!r} is not installed; install {photo.distribution} "
            f"(see the top of {Path(__file__).name}) and run again"
        )
    source = Path(next(iter(spec.submodule_search_locations))) / photo.path_in_package
    if not source.is_file():
        raise SampleSourceError(
            f"{source} is missing from {photo.distribution} "
            f"{importlib.metadata.version(photo.distribution)}; install the version named "
            f"in SOURCES.md"
        )
    return source


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_sample_photos(output_dir: Path, accept_changed: bool = False) -> list[Path]:
    """Copy every photo of `SAMPLE_PHOTOS` byte for byte into `output_dir`.

    Raises `SampleSourceError` when a package or file is missing, or when a
    file's SHA-256 differs from the annotated one and `accept_changed` is false,
    because the boxes in sample.jsonl are only valid for those exact pixels.
    Returns the written paths.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for photo in SAMPLE_PHOTOS:
        source = find_package_file(photo)
        version = importlib.metadata.version(photo.distribution)
        checksum = file_sha256(source)
        if checksum != photo.sha256:
            message = (
                f"{source} ({photo.distribution} {version}) has SHA-256 {checksum}, "
                f"but the annotated file has {photo.sha256}"
            )
            if not accept_changed:
                raise SampleSourceError(
                    message + "; install the version named in SOURCES.md, or pass "
                    "--accept-changed and check every box of this image again"
                )
            logger.warning("%s; copying it anyway because --accept-changed is set", message)

        target = output_dir / photo.file_name
        shutil.copyfile(source, target)
        logger.info("copied %s from %s %s to %s", photo.path_in_package,
                    photo.distribution, version, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=SAMPLE_DIR / "images",
        help="folder that receives the image files (default: images/ next to this script)",
    )
    parser.add_argument(
        "--accept-changed", action="store_true",
        help="copy files whose SHA-256 differs from the annotated ones instead of stopping",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        written = copy_sample_photos(args.output_dir, args.accept_changed)
    except SampleSourceError as error:
        logger.error("%s", error)
        return 1
    logger.info("copied %d photos into %s", len(written), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
