"""CrowdHuman annotations: a strict ``.odgt`` reader and a synthetic crowd generator.

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
the REST API and the evaluation code can import this module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pgd_core.datasets import (
    DatasetError,
    DatasetInfo,
    validate_dataset_name,
    write_manifest,
)

# Argument checks and the atomic folder swap are shared with the shapes generator.
from pgd_core.synthetic import _check_image_size, _check_int, write_dataset_atomically

__all__ = [
    "TAGS",
    "OdgtRecord",
    "OdgtSummary",
    "make_crowdhuman_like",
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
    return type(value) in _NUMBER_TYPES and math.isfinite(value)


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


# ------------------------------------------------------------------------ generator
#
# People are drawn as simple silhouettes (head, torso with arms, two legs) in
# full-body boxes of aspect ~0.4, standing in 1-3 groups whose members overlap
# heavily; nearer people (lower feet) are bigger and drawn on top, like in a
# street photo. Some boxes extend past the image border (truncated people),
# as real CrowdHuman full-body boxes do.

#: Range of full-body box width / height.
PERSON_ASPECT = (0.36, 0.46)
#: A person with less of its silhouette visible than this is not annotated at
#: all (nobody could see it), and one with less than MIN_SURE_FRACTION visible
#: is annotated ``extra.ignore = 1`` (an annotator could not tell it is a person).
MIN_VISIBLE_FRACTION = 0.02
MIN_SURE_FRACTION = 0.05
#: Probability that a person is a grey "statue" (annotated ``extra.ignore = 1``).
STATUE_PROB = 0.05
#: Probability that an image has a distant dense crowd annotated as a ``mask`` region.
MASK_REGION_PROB = 0.5
#: Most people per image accepted (a sanity bound).
MAX_PEOPLE = 500
JPEG_QUALITY = 90
_NOISE_STD = 4.0
_SPLITS = ("train", "val")
# Silhouette part labels; 0 is background.
_HEAD, _BODY, _LEGS = 1, 2, 3


@dataclass(frozen=True)
class _Person:
    """A full-body box in pixels (may extend past the image) and whether it is a statue."""

    x: int
    y: int
    w: int
    h: int
    statue: bool


def _sample_people(rng: np.random.Generator, width: int, height: int, count: int) -> list[_Person]:
    """People in 1-3 overlapping groups, sorted far to near (drawing order)."""
    groups = int(rng.integers(1, 4))
    centres = rng.uniform(0.1 * width, 0.9 * width, size=groups)
    feet_lines = rng.uniform(0.5 * height, 1.0 * height, size=groups)
    people, feet = [], []
    for _ in range(count):
        g = int(rng.integers(groups))
        foot = float(
            np.clip(feet_lines[g] + rng.normal(0.0, 0.15 * height), 0.3 * height, 1.1 * height)
        )
        # Perspective: people standing lower in the frame are closer, hence taller.
        h = height * (0.12 + 0.4 * foot / height) * math.exp(rng.normal(0.0, 0.1))
        w = h * rng.uniform(*PERSON_ASPECT)
        cx = float(np.clip(centres[g] + rng.normal(0.0, 0.2 * width), 0.0, width))
        statue = bool(rng.random() < STATUE_PROB)
        people.append(
            _Person(
                x=round(cx - w / 2),
                y=round(foot - h),
                w=max(2, round(w)),
                h=max(4, round(h)),
                statue=statue,
            )
        )
        feet.append(foot)
    order = np.argsort(np.asarray(feet), kind="stable")
    return [people[i] for i in order]


def _silhouette(w: int, h: int) -> np.ndarray:
    """uint8[h, w] part labels of a standing person filling a w x h box."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
        return (x0 * (w - 1), y0 * (h - 1), x1 * (w - 1), y1 * (h - 1))

    draw.rectangle(box(0.22, 0.52, 0.47, 1.0), fill=_LEGS)
    draw.rectangle(box(0.53, 0.52, 0.78, 1.0), fill=_LEGS)
    draw.rectangle(box(0.0, 0.15, 1.0, 0.5), fill=_BODY)  # shoulders and arms
    draw.rectangle(box(0.14, 0.13, 0.86, 0.56), fill=_BODY)
    draw.ellipse(box(0.28, 0.0, 0.72, 0.14), fill=_HEAD)
    return np.asarray(canvas)


def _person_colours(rng: np.random.Generator, statue: bool) -> np.ndarray:
    """float32[4, 3] colour per part label (row 0 unused)."""
    if statue:
        grey = rng.uniform(90.0, 170.0)
        return np.full((4, 3), grey, dtype=np.float32) + rng.uniform(-8, 8, (4, 1)).astype(
            np.float32
        )
    skin = np.array([225.0, 180.0, 150.0]) * rng.uniform(0.45, 1.05)
    shirt, trousers = rng.uniform(20.0, 235.0, size=(2, 3))
    return np.stack([skin, skin, shirt, trousers]).astype(np.float32)


def _clip_span(start: int, size: int, limit: int) -> tuple[int, int]:
    """The part [lo, hi) of [start, start + size) that lies in [0, limit)."""
    return max(start, 0), min(start + size, limit)


def _draw_person(
    pixels: np.ndarray,
    owner: np.ndarray,
    index: int,
    person: _Person,
    parts: np.ndarray,
    colours: np.ndarray,
) -> None:
    """Paint ``person`` over ``pixels`` and record it as the topmost owner of its pixels."""
    height, width = owner.shape
    x0, x1 = _clip_span(person.x, person.w, width)
    y0, y1 = _clip_span(person.y, person.h, height)
    if x0 >= x1 or y0 >= y1:
        return
    sub = parts[y0 - person.y : y1 - person.y, x0 - person.x : x1 - person.x]
    mask = sub > 0
    pixels[y0:y1, x0:x1][mask] = colours[sub[mask]]
    owner[y0:y1, x0:x1][mask] = index


def _draw_distant_crowd(rng: np.random.Generator, pixels: np.ndarray) -> list[int]:
    """Fill a band with tiny figures (too small to annotate); return its box (x, y, w, h)."""
    height, width = pixels.shape[:2]
    w = max(4, round(width * rng.uniform(0.25, 0.5)))
    h = max(4, round(height * rng.uniform(0.08, 0.18)))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, max(1, round(0.4 * height) - h) + 1))
    for _ in range(max(1, w * h // 12)):
        fh = int(rng.integers(3, 9))
        fw = max(1, round(0.4 * fh))
        fx, fy = int(rng.integers(x, x + w)), int(rng.integers(y, y + h))
        pixels[fy : min(fy + fh, y + h), fx : min(fx + fw, x + w)] = rng.uniform(20, 235, 3)
    return [x, y, w, h]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """float32[h, w, 3]: a muted sky-to-ground vertical gradient."""
    top, bottom = rng.uniform(70.0, 200.0, size=(2, 3))
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    column = (1.0 - t) * top.astype(np.float32) + t * bottom.astype(np.float32)
    return np.repeat(column, width, axis=1)


def _bbox_of(mask: np.ndarray, x0: int, y0: int) -> list[int]:
    """(x, y, w, h) of the True pixels of ``mask`` (offset by x0, y0); zero-size if none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [x0, y0, 0, 0]
    return [
        x0 + int(cols[0]),
        y0 + int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    ]


def _person_entry(index: int, person: _Person, parts: np.ndarray, owner: np.ndarray) -> dict | None:
    """The ``gtboxes`` entry of a drawn person (visibility measured on ``owner``).

    None for a person hidden almost entirely by nearer people or the image border.
    """
    height, width = owner.shape
    x0, x1 = _clip_span(person.x, person.w, width)
    y0, y1 = _clip_span(person.y, person.h, height)
    mine = owner[y0:y1, x0:x1] == index
    visible = int(mine.sum())
    head = parts == _HEAD
    head_rows = np.flatnonzero(head.any(axis=1))
    head_cols = np.flatnonzero(head.any(axis=0))
    hbox = [
        person.x + int(head_cols[0]),
        person.y + int(head_rows[0]),
        int(head_cols[-1] - head_cols[0] + 1),
        int(head_rows[-1] - head_rows[0] + 1),
    ]
    head_in = head[y0 - person.y : y1 - person.y, x0 - person.x : x1 - person.x]
    head_visible = int((mine & head_in).sum()) / max(int(head.sum()), 1)
    visible_fraction = visible / max(int((parts > 0).sum()), 1)
    if visible_fraction < MIN_VISIBLE_FRACTION:
        return None
    ignore = person.statue or visible_fraction < MIN_SURE_FRACTION
    return {
        "tag": "person",
        "fbox": [person.x, person.y, person.w, person.h],
        "vbox": _bbox_of(mine, x0, y0),
        "hbox": hbox,
        "head_attr": {
            "ignore": int(head_visible == 0.0),
            "occ": int(head_visible < 0.5),
            "unsure": 0,
        },
        "extra": {"box_id": index, "occ": int(visible_fraction < 0.5), "ignore": int(ignore)},
    }


def _render_image(
    rng: np.random.Generator, width: int, height: int, min_people: int, max_people: int
) -> tuple[np.ndarray, list[dict]]:
    """One image: uint8[h, w, 3] pixels and its ``gtboxes`` (persons, then any mask region)."""
    pixels = _background(rng, width, height)
    mask_box = _draw_distant_crowd(rng, pixels) if rng.random() < MASK_REGION_PROB else None
    owner = np.full((height, width), -1, dtype=np.int64)
    people = _sample_people(rng, width, height, int(rng.integers(min_people, max_people + 1)))
    silhouettes = [_silhouette(p.w, p.h) for p in people]
    for index, (person, parts) in enumerate(zip(people, silhouettes, strict=True)):
        _draw_person(pixels, owner, index, person, parts, _person_colours(rng, person.statue))
    entries = [
        _person_entry(i, person, parts, owner)
        for i, (person, parts) in enumerate(zip(people, silhouettes, strict=True))
    ]
    gtboxes = [entry for entry in entries if entry is not None]
    if mask_box is not None:
        gtboxes.append(
            {
                "tag": "mask",
                "fbox": mask_box,
                "vbox": list(mask_box),
                "hbox": list(mask_box),
                "head_attr": {},
                "extra": {"ignore": 1},
            }
        )
    pixels += rng.normal(0.0, _NOISE_STD, size=pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), gtboxes


def _image_id(rng: np.random.Generator, split_index: int, index: int) -> str:
    """An ID shaped like CrowdHuman's (``"273271,c9db000d5146c15"``), unique per split/index."""
    return f"{split_index + 1}{index:05d},{int(rng.integers(0, 16**15)):015x}"


def _write_split(
    root: Path,
    split_index: int,
    split: str,
    num_images: int,
    *,
    seed: int,
    width: int,
    height: int,
    min_people: int,
    max_people: int,
) -> None:
    """Write ``images/<split>/<ID>.jpg``, ``<split>.odgt`` and mmdet's ``id_hw_<split>.json``."""
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True)
    lines, sizes = [], {}
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_index, index])
        image_id = _image_id(rng, split_index, index)
        pixels, gtboxes = _render_image(rng, width, height, min_people, max_people)
        Image.fromarray(pixels, "RGB").save(
            img_dir / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY
        )
        lines.append(json.dumps({"ID": image_id, "gtboxes": gtboxes}, separators=(",", ":")))
        sizes[image_id] = [height, width]
    (root / f"{split}.odgt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # mmdet's CrowdHumanDataset otherwise decodes every image to learn its size
    # and then writes this cache next to the data, which may be read-only.
    (root / f"id_hw_{split}.json").write_text(json.dumps(sizes) + "\n", encoding="utf-8")


def _check_people(min_people: object, max_people: object) -> tuple[int, int]:
    low = _check_int("min_people", min_people, 1, MAX_PEOPLE)
    high = _check_int("max_people", max_people, 1, MAX_PEOPLE)
    if low > high:
        raise ValueError(f"min_people ({low}) must not exceed max_people ({high})")
    return low, high


def make_crowdhuman_like(
    data_root: str | os.PathLike[str],
    name: str = "crowd",
    *,
    num_train: int = 16,
    num_val: int = 8,
    image_size: Sequence[int] = (320, 240),
    min_people: int = 5,
    max_people: int = 30,
    seed: int = 0,
    overwrite: bool = False,
) -> DatasetInfo:
    """Generate a synthetic CrowdHuman-format data set ``<data_root>/<name>``.

    Layout: ``train.odgt``/``val.odgt``, images ``images/<split>/<ID>.jpg``,
    mmdet's size caches ``id_hw_<split>.json`` (used by CrowdHumanDataset when
    its ``data_root`` is this folder) and the manifest (format
    ``"crowdhuman"``, classes ``["person"]``). Each image draws
    ``min_people..max_people`` overlapping people; those hidden almost
    entirely (< 2 % visible) are not annotated, about one in ten is
    ``extra.ignore = 1`` (grey statues, people < 5 % visible), and half the
    images have a ``mask`` region over a distant crowd. Each image's content is a
    pure function of ``(seed, split, index)``: the same call writes
    byte-identical files.

    Raises:
        ValueError: on invalid arguments (DatasetError for a bad name).
        FileExistsError: if the data set exists and ``overwrite`` is False.
    """
    validate_dataset_name(name)
    counts = {
        "train": _check_int("num_train", num_train, 1),
        "val": _check_int("num_val", num_val, 1),
    }
    width, height = _check_image_size(image_size)
    min_people, max_people = _check_people(min_people, max_people)
    seed = _check_int("seed", seed, 0)

    def fill(tmp: Path) -> None:
        for split_index, split in enumerate(_SPLITS):
            _write_split(
                tmp,
                split_index,
                split,
                counts[split],
                seed=seed,
                width=width,
                height=height,
                min_people=min_people,
                max_people=max_people,
            )
        splits = {s: {"ann_file": f"{s}.odgt", "img_dir": f"images/{s}"} for s in _SPLITS}
        write_manifest(tmp, format="crowdhuman", classes=["person"], splits=splits)

    return write_dataset_atomically(data_root, name, fill, overwrite=overwrite)
