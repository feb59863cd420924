"""Pieces every dataset converter shares.

A converter reads one public release format and writes `OUT/<split>.jsonl`
(the manifest, see `mmgrounding.data.manifest`) and `OUT/<split>.summary.json`
(what it kept, skipped and repaired, by reason). Image paths in the manifest
are `images/<file>`: `OUT/images` is a symbolic link to the release's image
folder, or a real folder holding copies of the kept images with
`copy_images=True`, so a large image folder never has to be copied.

Both output files are written under a temporary name and renamed when
complete, and records are sorted by image id, so an interrupted conversion
that is run again produces the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from mmgrounding.data.images import ImageError, exif_orientation, load_image, read_image_size
from mmgrounding.data.manifest import Record, manifest_path, validate_record, write_manifest
from mmgrounding.files import use_default_permissions

logger = logging.getLogger(__name__)

IMAGES_DIR_NAME = "images"
CHECK_MODES = ("decode", "header", "exists")
# Each skip or repair reason is logged with its details this many times;
# later ones are only counted, so a damaged release does not flood the log.
_DETAILS_PER_REASON = 5
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConversionReport:
    """Counts of what a conversion kept, skipped, repaired and noted, by reason.

    Units are plain nouns such as "images", "queries", "regions", "captions".
    """

    def __init__(self, source: str, split: str):
        self.source = source
        self.split = split
        self.kept: Counter[str] = Counter()
        self.skipped: dict[str, Counter[str]] = {}
        self.repaired: dict[str, Counter[str]] = {}
        self.notes: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}

    def keep(self, unit: str, count: int = 1) -> None:
        self.kept[unit] += count

    def skip(self, unit: str, reason: str, detail: str | None = None) -> None:
        counter = self.skipped.setdefault(unit, Counter())
        counter[reason] += 1
        self._log("skipped", unit, reason, counter[reason], detail)

    def repair(self, unit: str, reason: str, detail: str | None = None) -> None:
        counter = self.repaired.setdefault(unit, Counter())
        counter[reason] += 1
        self._log("repaired", unit, reason, counter[reason], detail)

    def note(self, reason: str, detail: str | None = None) -> None:
        """Count something worth reporting that changed nothing."""
        self.notes[reason] += 1
        self._log("noted", "", reason, self.notes[reason], detail)

    def _log(self, action: str, unit: str, reason: str, count: int, detail: str | None) -> None:
        if count > _DETAILS_PER_REASON:
            return
        what = f"{action} {unit} ({reason})" if unit else f"{action}: {reason}"
        suffix = f": {detail}" if detail else ""
        more = " (later cases are only counted)" if count == _DETAILS_PER_REASON else ""
        logger.warning("%s %s%s%s", self.source, what, suffix, more)

    def to_dict(self) -> dict[str, Any]:
        def plain(counters: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
            return {unit: dict(sorted(c.items())) for unit, c in sorted(counters.items())}

        summary = {
            "source": self.source,
            "split": self.split,
            "manifest": f"{self.split}.jsonl",
            "kept": dict(sorted(self.kept.items())),
            "skipped": plain(self.skipped),
            "repaired": plain(self.repaired),
            "notes": dict(sorted(self.notes.items())),
        }
        summary.update(self.extra)
        return summary

    def log_summary(self) -> None:
        kept = ", ".join(f"{n} {unit}" for unit, n in sorted(self.kept.items())) or "nothing"
        logger.info("%s %s: kept %s", self.source, self.split, kept)
        for title, counters in (("skipped", self.skipped), ("repaired", self.repaired)):
            for unit, counter in sorted(counters.items()):
                for reason, n in sorted(counter.items()):
                    logger.info("%s %s: %s %d %s (%s)", self.source, self.split, title, n, unit, reason)
        for reason, n in sorted(self.notes.items()):
            logger.info("%s %s: noted %d x %s", self.source, self.split, n, reason)


def check_split_name(split: str) -> str:
    """Return `split` if it is usable as a file name, else raise ValueError."""
    if not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise ValueError(
            f"split name {split!r} is invalid; use letters, digits, '.', '_' or '-' "
            "(it becomes the file name <split>.jsonl)"
        )
    return split


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return `path` as a Path, or raise FileNotFoundError naming `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    return path


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """Return `path` as a Path, or raise FileNotFoundError naming `what` it should be."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} not found or not a folder")
    return path


def read_json(path: Path) -> Any:
    """Parse a JSON file, raising ValueError that names the file when it is invalid."""
    try:
        with path.open("rb") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None


def read_text(path: Path) -> str:
    """Read a text file that may be UTF-8 or Latin-1, with LF, CRLF or CR line ends.

    Returns the text with every line end turned into "\\n". UTF-8 is tried
    first (a byte order mark is dropped); Latin-1 decodes any byte sequence,
    so it is the fallback.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_id_list(path: Path) -> list[str]:
    """Read image ids from a JSON list or from a text file with one id per line.

    Blank lines and lines starting with "#" are ignored. Ids come back as
    strings in file order.
    """
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON id list ({error.msg})") from None
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{path}: an id list must contain only strings or integers")
        return [str(v).strip() for v in values]
    ids = []
    for line in text.split("\n"):
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line)
    return ids


def normalise_whitespace(text: str) -> str:
    """Strip `text` and collapse every run of whitespace into one space."""
    return " ".join(text.split())


def image_sort_key(image_id: str | int) -> tuple[int, int, str]:
    """Order numeric ids by value and put other ids after them, by text."""
    text = str(image_id)
    if text.isdigit():
        return (0, int(text), text)
    return (1, 0, text)


def xywh_to_box(x: float, y: float, width: float, height: float) -> list[int] | None:
    """Convert a box given as corner and size to inclusive pixel bounds.

    Returns [x_min, y_min, x_max, y_max] with x_max = x + width - 1, or None
    when the size is not positive. Fractional bounds widen to whole pixels.
    """
    if not width > 0 or not height > 0:
        return None
    x_min, y_min = math.floor(x), math.floor(y)
    x_max, y_max = math.ceil(x + width) - 1, math.ceil(y + height) - 1
    return [x_min, y_min, max(x_min, x_max), max(y_min, y_max)]


def clip_box(box: list[int], width: int, height: int) -> tuple[list[int] | None, bool]:
    """Clip an inclusive box to a width x height image.

    Returns (box, changed). The box is None when it does not overlap the
    image at all.
    """
    x_min, y_min, x_max, y_max = box
    if x_max < 0 or y_max < 0 or x_min > width - 1 or y_min > height - 1 or x_min > x_max or y_min > y_max:
        return None, True
    clipped = [max(0, x_min), max(0, y_min), min(width - 1, x_max), min(height - 1, y_max)]
    return clipped, clipped != list(box)


def is_safe_relative_path(relative: str) -> bool:
    """Tell whether `relative` is a relative path that stays inside its folder."""
    if not relative or relative.startswith(("/", "\\")) or "\\" in relative or "\x00" in relative:
        return False
    parts = PurePosixPath(relative).parts
    return bool(parts) and ".." not in parts and not re.match(r"^[A-Za-z]:", relative)


class ImageFolder:
    """The `OUT/images` folder of a conversion and the checks on each image.

    With `copy=False`, `OUT/images` becomes a symbolic link to `images_dir`.
    With `copy=True`, it is a real folder and `add` copies each kept image.
    Set `images_dir=None` for converters that write the image files
    themselves (mg-legacy).
    """

    def __init__(
        self,
        out_dir: Path,
        images_dir: Path | None,
        report: ConversionReport,
        check: str = "decode",
        copy: bool = False,
    ):
        if check not in CHECK_MODES:
            raise ValueError(f"image check {check!r} is invalid; choose one of {', '.join(CHECK_MODES)}")
        self.out_dir = out_dir
        self.images_dir = images_dir
        self.report = report
        self.check = check
        self.copy = copy
        self.root = out_dir / IMAGES_DIR_NAME
        self._prepare()

    def _prepare(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.images_dir is None or self.copy:
            if self.root.is_symlink():
                raise ValueError(
                    f"{self.root} is a symbolic link to {os.readlink(self.root)}, but this "
                    "conversion writes image files there; remove the link or choose another --out"
                )
            self.root.mkdir(exist_ok=True)
            return
        target = Path(os.path.abspath(self.images_dir))
        if self.root.is_symlink():
            if os.path.realpath(self.root) != os.path.realpath(target):
                raise ValueError(
                    f"{self.root} already links to {os.readlink(self.root)}, not {target}; "
                    "remove the link or choose another --out"
                )
            return
        if self.root.exists():
            if os.path.realpath(self.root) == os.path.realpath(target):
                return
            raise ValueError(
                f"{self.root} already exists and is not a link to {target}; remove it, "
                "choose another --out, or pass --copy-images to copy the images into it"
            )
        # Create the link under a temporary name first, so a link half made
        # by an interrupted run never sits at the final name.
        temporary = self.out_dir / f".{IMAGES_DIR_NAME}.{os.getpid()}.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        os.symlink(target, temporary, target_is_directory=True)
        os.replace(temporary, self.root)
        logger.info("linked %s -> %s", self.root, target)

    def manifest_path(self, relative: str) -> str:
        """Return the manifest's path for an image at `relative` under the images folder."""
        return f"{IMAGES_DIR_NAME}/{relative}"

    def source_path(self, relative: str) -> Path:
        """Return where the image at `relative` is read from."""
        base = self.images_dir if self.images_dir is not None else self.root
        return base / relative

    def add(
        self,
        relative: str,
        expected_size: tuple[int, int] | None,
        repair_size: bool = False,
    ) -> tuple[int, int] | None:
        """Check one image and, in copy mode, copy it into `OUT/images`.

        `expected_size` is the (width, height) the annotation gives. Returns
        the (width, height) to write in the manifest, or None when the image
        must be skipped; every skip is counted in the report under "images".
        A size that differs from the annotation skips the image, because its
        boxes would not fit, unless `repair_size` is set (for annotations
        without boxes), in which case the file's size is used and counted.
        """
        if not is_safe_relative_path(relative):
            self.report.skip("images", "unsafe_image_path", repr(relative))
            return None
        path = self.source_path(relative)
        if not self._is_present(path):
            return None
        if self.check == "exists":
            size = expected_size
            if size is None:
                raise ValueError(f"{path}: the annotation gives no image size, so use --check-images header or decode")
        else:
            size = self._read_size(path)
            if size is None:
                return None
            if expected_size is not None and size != tuple(expected_size):
                size = self._handle_mismatch(path, size, tuple(expected_size), repair_size)
                if size is None:
                    return None
        if self.copy and self.images_dir is not None:
            self._copy(path, self.root / relative)
        return size

    def _is_present(self, path: Path) -> bool:
        if not path.exists():
            self.report.skip("images", "image_missing", str(path))
            return False
        if path.is_file() and path.stat().st_size == 0:
            self.report.skip("images", "image_empty_file", str(path))
            return False
        return True

    def _read_size(self, path: Path) -> tuple[int, int] | None:
        try:
            if self.check == "header":
                width, height = read_image_size(path)
            else:
                pixels = load_image(path)
                height, width = int(pixels.shape[0]), int(pixels.shape[1])
        except ImageError as error:
            self.report.skip("images", "image_unreadable", str(error))
            return None
        try:
            orientation = exif_orientation(path)
        except ImageError:
            orientation = None
        if orientation not in (None, 1):
            self.report.note(
                "exif_orientation_ignored",
                f"{path} has EXIF orientation {orientation}; boxes refer to the stored pixel grid",
            )
        return int(width), int(height)

    def _handle_mismatch(
        self,
        path: Path,
        size: tuple[int, int],
        expected: tuple[int, int],
        repair_size: bool,
    ) -> tuple[int, int] | None:
        detail = f"{path} is {size[0]}x{size[1]} pixels but the annotation says {expected[0]}x{expected[1]}"
        if tuple(size) == (expected[1], expected[0]):
            detail += " (width and height swapped, as after an EXIF rotation)"
        if repair_size:
            self.report.repair("images", "size_taken_from_file", detail)
            return size
        self.report.skip("images", "image_size_mismatch", detail)
        return None

    def _copy(self, source: Path, destination: Path) -> None:
        if destination.is_file() and _same_content(source, destination):
            return
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
        use_default_permissions(temporary)
        os.close(handle)
        try:
            shutil.copyfile(source, temporary)
            os.replace(temporary, destination)
        except BaseException:
            os.unlink(temporary)
            raise


def _same_content(first: Path, second: Path) -> bool:
    if first.stat().st_size != second.stat().st_size:
        return False
    return first.read_bytes() == second.read_bytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    use_default_permissions(temporary)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_outputs(out_dir: Path, records: Iterable[Record], report: ConversionReport) -> dict[str, Any]:
    """Write the manifest and the summary of one split and return the summary.

    Records are sorted by image id and validated first; a record that fails
    validation here is a converter bug, so its ManifestError propagates.
    """
    ordered = sorted(records, key=lambda record: image_sort_key(record["image_id"]))
    for record in ordered:
        validate_record(record, f"{report.source} image {record.get('image_id')!r}")
    path = manifest_path(out_dir, report.split)
    count = write_manifest(path, ordered)
    report.kept["images"] = count
    summary = report.to_dict()
    summary_path = out_dir / f"{report.split}.summary.json"
    write_atomic(summary_path, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    report.log_summary()
    logger.info("wrote %s and %s", path, summary_path)
    return summary
