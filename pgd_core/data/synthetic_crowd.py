"""A synthetic CrowdHuman-format data set: crowds of drawn people in ``.odgt`` files.

:func:`make_crowdhuman_like` writes a folder that :mod:`pgd_core.data.odgt` reads
and mmdet's CrowdHumanDataset trains on, deterministic by seed. Only numpy,
Pillow and the standard library are used (no torch or mmdet).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pgd_core.data.manifest import DatasetInfo, validate_dataset_name, write_manifest

# Argument checks and the atomic folder swap are shared with the shapes generator.
from pgd_core.data.synthetic_shapes import _check_image_size, _check_int, write_dataset_atomically

__all__ = ["make_crowdhuman_like"]

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
