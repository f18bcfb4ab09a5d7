"""CrowdHuman annotations: a strict ``.odgt`` reader.

The format is one JSON object per line::

    {"ID": "273271,c9db000d5146c15",
     "gtboxes": [{"tag": "person", "fbox": [x, y, w, h], "vbox": [...], "hbox": [...],
                  "extra": {"ignore": 0, ...}, "head_attr": {...}}, ...]}

and the image of a record is ``<img_dir>/<ID>.jpg``. Full-body boxes (``fbox``)
are what detectors learn and are evaluated on; boxes tagged ``"mask"``
(crowds, reflections, posters) and boxes with ``extra.ignore == 1`` are
ignore regions.

The reader is strict because its consumers are not: mmdet's CrowdHumanDataset
raises a bare KeyError mid-epoch on a missing key, and its CrowdHumanMetric
silently turns an unknown tag into an ignore region. Here every problem is a
DatasetError naming the file, the line and the box.

Only numpy, Pillow and the standard library are used (no torch or mmdet), so
the REST API and the evaluation code can import this module. The synthetic
CrowdHuman-like generator is :mod:`pgd_core.data.synthetic_crowd`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pgd_core.data.manifest import DatasetError

__all__ = [
    "TAGS",
    "OdgtRecord",
    "OdgtSummary",
    "read_image_sizes",
    "read_odgt",
    "summarize_odgt",
]

#: Box tags of the format; anything else is an error (mmdet would silently ignore it).
TAGS = ("person", "mask")
#: Box fields every entry carries; mmdet's CrowdHumanDataset reads all three.
BOX_KEYS = ("fbox", "vbox", "hbox")
_MAX_REPR = 80


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, eq=False)
class OdgtRecord:
    """One image (one line) of an ``.odgt`` file; boxes in file order.

    Attributes:
        image_id: The record's ``ID``; its image is ``<img_dir>/<image_id>.jpg``.
        line: 1-based line number in the file, for messages downstream.
        tags: Tag of each box, ``"person"`` or ``"mask"``.
        fboxes, vboxes, hboxes: float64[N, 4] full-body, visible and head boxes
            (x, y, w, h) in pixels, read-only.
        ignore: bool[N], True for ignore regions (tag ``"mask"`` or
            ``extra.ignore == 1``), read-only.
    """

    image_id: str
    line: int
    tags: tuple[str, ...]
    fboxes: np.ndarray
    vboxes: np.ndarray
    hboxes: np.ndarray
    ignore: np.ndarray

    @property
    def file_name(self) -> str:
        """Image file name, as the format (and mmdet's loader) derive it from the ID."""
        return f"{self.image_id}.jpg"

    @property
    def num_boxes(self) -> int:
        """All boxes, ignore regions included."""
        return len(self.tags)

    @property
    def num_ignored(self) -> int:
        """Ignore regions (``mask`` boxes and boxes flagged ``extra.ignore``)."""
        return int(self.ignore.sum())

    def person_fboxes(self) -> np.ndarray:
        """float64[P, 4] (x, y, w, h) full-body boxes that are evaluated."""
        return self.fboxes[~self.ignore]

    def ignore_fboxes(self) -> np.ndarray:
        """float64[R, 4] (x, y, w, h) ignore regions."""
        return self.fboxes[self.ignore]


@dataclass(frozen=True)
class OdgtSummary:
    """Counts over an ``.odgt`` file, so callers can report what was ignored."""

    num_images: int
    num_boxes: int
    num_persons: int
    num_ignored: int
    num_mask: int
    num_flagged: int

    def report(self, name: str = "annotations") -> str:
        """One line for logs, e.g. ``val.odgt: 8 images, 150 boxes: 138 persons, 12 ignored``."""
        return (
            f"{name}: {self.num_images} images, {self.num_boxes} boxes: "
            f"{self.num_persons} persons evaluated, {self.num_ignored} ignored "
            f"({self.num_mask} 'mask' regions, {self.num_flagged} with extra.ignore=1)"
        )


def summarize_odgt(records: Iterable[OdgtRecord]) -> OdgtSummary:
    """Count images, boxes, evaluated persons and ignore regions (split by reason)."""
    images = boxes = ignored = mask = 0
    for record in records:
        images += 1
        boxes += record.num_boxes
        ignored += record.num_ignored
        mask += sum(tag == "mask" for tag in record.tags)
    return OdgtSummary(
        num_images=images,
        num_boxes=boxes,
        num_persons=boxes - ignored,
        num_ignored=ignored,
        num_mask=mask,
        num_flagged=ignored - mask,
    )


# --------------------------------------------------------------------------- reading


def _short(value: object) -> str:
    """repr() cut to a readable length: a bad field may be a megabyte-long string."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


#: Exact types json.loads gives for numbers (``type(True)`` is bool, so booleans are refused).
_NUMBER_TYPES = (int, float)


def _is_number(value: object) -> bool:
    # json.loads accepts NaN/Infinity: refuse them too.
    return (
        isinstance(value, _NUMBER_TYPES) and type(value) in _NUMBER_TYPES and math.isfinite(value)
    )


def _check_box(where: str, key: str, value: object, *, positive: bool) -> list[float]:
    """Return ``value`` as [x, y, w, h]; ``positive`` requires w, h > 0 instead of >= 0.

    Only ``fbox`` must be non-degenerate: a fully occluded body or an invisible
    head can legitimately have an empty visible/head box.
    """
    # type() checks instead of isinstance: this runs for every box of a ~40 MB file.
    if type(value) is not list or len(value) != 4 or not all(map(_is_number, value)):
        raise DatasetError(
            f"{where}: field '{key}': must be [x, y, w, h] with 4 finite numbers, "
            f"got {_short(value)}"
        )
    w, h = value[2], value[3]
    if (positive and (w <= 0 or h <= 0)) or w < 0 or h < 0:
        bound = "> 0" if positive else ">= 0"
        raise DatasetError(
            f"{where}: field '{key}': width and height must be {bound}, got w={w}, h={h}"
        )
    return [float(v) for v in value]


def _check_ignore_flag(where: str, box: Mapping[str, Any]) -> bool:
    """Whether ``extra.ignore`` is set; ``extra`` and its ``ignore`` are optional."""
    extra = box.get("extra", {})
    if not isinstance(extra, dict):
        raise DatasetError(f"{where}: field 'extra': must be an object, got {_short(extra)}")
    flag = extra.get("ignore", 0)
    if isinstance(flag, bool) or flag not in (0, 1):
        raise DatasetError(f"{where}: field 'extra.ignore': must be 0 or 1, got {_short(flag)}")
    head_attr = box.get("head_attr", {})
    if not isinstance(head_attr, dict):
        raise DatasetError(
            f"{where}: field 'head_attr': must be an object, got {_short(head_attr)}"
        )
    return flag == 1


def _parse_box(where: str, box: object) -> tuple[str, list[list[float]], bool]:
    """(tag, [fbox, vbox, hbox], ignore) of one ``gtboxes`` entry."""
    if not isinstance(box, dict):
        raise DatasetError(f"{where}: must be an object, got {_short(box)}")
    missing = [key for key in ("tag", *BOX_KEYS) if key not in box]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {', '.join(missing)}")
    tag = box["tag"]
    if tag not in TAGS:
        raise DatasetError(
            f"{where}: field 'tag': unknown tag {_short(tag)} (expected one of: {', '.join(TAGS)})"
        )
    boxes = [_check_box(where, key, box[key], positive=key == "fbox") for key in BOX_KEYS]
    flagged = _check_ignore_flag(where, box)
    return tag, boxes, tag == "mask" or flagged


def _check_image_id(where: str, value: object) -> str:
    """The ID names a file (``<ID>.jpg``), so it must not be able to leave the image folder."""
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{where}: field 'ID': must be a non-empty string, got {_short(value)}")
    if any(c in value for c in "/\\\x00") or value in (".", ".."):
        raise DatasetError(f"{where}: field 'ID': {_short(value)} cannot be used as a file name")
    return value


def _readonly(rows: list[list[float]]) -> np.ndarray:
    array = np.array(rows, dtype=np.float64).reshape(-1, 4)
    array.setflags(write=False)
    return array


def _parse_record(path: Path, lineno: int, text: str) -> OdgtRecord:
    """Parse and validate one line; errors name ``path``, the line and the box."""
    where = f"{path}: line {lineno}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: invalid JSON at column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: must be a JSON object, got {type(data).__name__}")
    for key in ("ID", "gtboxes"):
        if key not in data:
            raise DatasetError(f"{where}: missing field '{key}'")
    image_id = _check_image_id(where, data["ID"])
    if not isinstance(data["gtboxes"], list):
        raise DatasetError(
            f"{where}: field 'gtboxes': must be a list, got {type(data['gtboxes']).__name__}"
        )
    tags, fboxes, vboxes, hboxes, ignore = [], [], [], [], []
    for index, box in enumerate(data["gtboxes"]):
        tag, (fbox, vbox, hbox), ignored = _parse_box(f"{where}: gtboxes[{index}]", box)
        tags.append(tag)
        fboxes.append(fbox)
        vboxes.append(vbox)
        hboxes.append(hbox)
        ignore.append(ignored)
    ignore_array = np.array(ignore, dtype=bool)
    ignore_array.setflags(write=False)
    return OdgtRecord(
        image_id=image_id,
        line=lineno,
        tags=tuple(tags),
        fboxes=_readonly(fboxes),
        vboxes=_readonly(vboxes),
        hboxes=_readonly(hboxes),
        ignore=ignore_array,
    )


def _read_lines(path: Path) -> list[str]:
    """Decoded lines of ``path`` without line ends; decoding errors name the line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file does not exist") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read annotation file ({exc.strerror or exc})") from None
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{path}: line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    return lines


def read_odgt(path: str | os.PathLike[str]) -> list[OdgtRecord]:
    """Read and validate a CrowdHuman ``.odgt`` file, one record per line, in file order.

    Ignore regions are kept (flagged in ``OdgtRecord.ignore``), never dropped;
    use :func:`summarize_odgt` for the counts. Trailing blank lines are allowed;
    a blank line between records is an error because mmdet's loader would fail
    on it.

    Raises:
        DatasetError: missing/unreadable file, no records, invalid UTF-8 or
            JSON, a missing or ill-typed field, an ``fbox`` with width or height
            <= 0 (``vbox``/``hbox`` < 0), an unknown tag, an ``ID`` unusable as
            a file name, or a repeated ``ID``. The message names the file, the
            line and, for box errors, ``gtboxes[i]``.
    """
    path = Path(path)
    lines = _read_lines(path)
    last = max((i for i, text in enumerate(lines) if text.strip()), default=-1)
    if last < 0:
        raise DatasetError(f"{path}: annotation file contains no records")
    records: list[OdgtRecord] = []
    first_line: dict[str, int] = {}
    for lineno, text in enumerate(lines[: last + 1], start=1):
        if not text.strip():
            raise DatasetError(f"{path}: line {lineno}: blank line between records")
        record = _parse_record(path, lineno, text)
        if record.image_id in first_line:
            raise DatasetError(
                f"{path}: line {lineno}: ID {record.image_id!r} repeats line "
                f"{first_line[record.image_id]}"
            )
        first_line[record.image_id] = lineno
        records.append(record)
    return records


def read_image_sizes(
    img_dir: str | os.PathLike[str], records: Iterable[OdgtRecord]
) -> dict[str, tuple[int, int]]:
    """(width, height) of each record's image, reading only the image headers.

    The CrowdHuman toolkit clips boxes to the image before matching, so its
    evaluation needs these sizes (see ``pgd_core.evaluation.crowdhuman``).
    """
    sizes = {}
    for record in records:
        image_path = Path(img_dir) / record.file_name
        try:
            with Image.open(image_path) as image:
                sizes[record.image_id] = (int(image.width), int(image.height))
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"{image_path}: cannot read image of ID {record.image_id!r} ({exc})"
            ) from None
    return sizes
