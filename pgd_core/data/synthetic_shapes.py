"""Deterministic synthetic COCO data set of simple coloured shapes.

Used for smoke tests, demos and CI, where real detection data sets are too
large. The images are small, but they exercise what PGD cares about: objects
from tiny (``min_size`` px) to large (~60 % of the image), several per image,
overlapping (later shapes are drawn over earlier ones), and some images with no
objects at all.

Everything is a pure function of the arguments: each image has its own random
generator seeded by ``(seed, split, index)``, so the same call writes
byte-identical files, and adding images to a split does not change the others.

Only numpy and Pillow are used (no torch): the REST API may call this.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pgd_core.data.manifest import (
    DatasetInfo,
    load_dataset_info,
    validate_dataset_name,
    write_manifest,
)

#: Shape (= class name) and the hue (0-1) of its colour family, in class order.
SHAPES: tuple[tuple[str, float], ...] = (
    ("rectangle", 0.00),  # red
    ("ellipse", 0.33),  # green
    ("triangle", 0.62),  # blue
    ("cross", 0.15),  # yellow
    ("ring", 0.83),  # magenta
    ("diamond", 0.50),  # cyan
    ("star", 0.07),  # orange
    ("hexagon", 0.74),  # purple
)
MAX_CLASSES = len(SHAPES)

#: Largest object side as a fraction of the shorter image side.
MAX_OBJECT_FRACTION = 0.6
#: Probability that an image has no objects (images without GT matter to
#: detectors: they must produce no boxes there).
EMPTY_IMAGE_PROB = 0.1
#: An earlier object must keep this fraction of its pixels visible when later
#: shapes are drawn over it; a fully hidden but annotated object is label noise.
MIN_VISIBLE_FRACTION = 0.35
#: Placement attempts per object before it is dropped.
PLACEMENT_TRIES = 10
#: Smallest accepted image side and object size; below these the shapes are
#: no longer recognisable.
MIN_IMAGE_SIDE = 16
MIN_OBJECT_SIZE = 4
#: Sanity bound on the image side, to catch unit mistakes before filling a disk.
MAX_IMAGE_SIDE = 4096
#: Standard deviation of the pixel noise added over the whole image.
NOISE_STD = 6.0

_SPLITS = ("train", "val")


@dataclass(frozen=True)
class _Object:
    """One drawn object: class index and tight box (x, y, w, h) in pixels."""

    label: int
    x: int
    y: int
    w: int
    h: int


# ----------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    # bool is an int subclass; True as a count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_image_size(image_size: object) -> tuple[int, int]:
    if not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(f"image_size must be a (width, height) pair, got {image_size!r}")
    width = _check_int("image_size width", image_size[0], MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
    height = _check_int("image_size height", image_size[1], MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)
    return width, height


def _max_object_side(width: int, height: int) -> int:
    return int(MAX_OBJECT_FRACTION * min(width, height))


# ------------------------------------------------------------------- drawing


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape in arbitrary units (rescaled later)."""
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "hexagon":
        return [(math.cos(a), math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
    if shape == "star":
        points = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for shape {shape!r}")


def _fit_polygon(points: list[tuple[float, float]], w: int, h: int) -> list[tuple[float, float]]:
    """Stretch a polygon so its extent is exactly the box [0, w-1] x [0, h-1]."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [((x - x0) / (x1 - x0) * (w - 1), (y - y0) / (y1 - y0) * (h - 1)) for x, y in points]


def _shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean mask[h, w] of ``shape`` filling a w x h box (Pillow rasteriser)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    box = (0, 0, w - 1, h - 1)
    if shape == "rectangle":
        draw.rectangle(box, fill=255)
    elif shape == "ellipse":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(2, round(0.22 * min(w, h))))
    elif shape == "cross":
        t = max(1, round(min(w, h) / 3))
        top, left = (h - t) // 2, (w - t) // 2
        draw.rectangle((0, top, w - 1, top + t - 1), fill=255)
        draw.rectangle((left, 0, left + t - 1, h - 1), fill=255)
    else:
        draw.polygon(_fit_polygon(_unit_polygon(shape), w, h), fill=255)
    return np.asarray(canvas) > 0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-saturation linear gradient (float32[h, w, 3]); objects are saturated."""
    base = rng.uniform(60.0, 180.0) + rng.uniform(-15.0, 15.0, size=3)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    amplitude = rng.uniform(10.0, 40.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs / max(width - 1, 1) * math.cos(angle) + ys / max(height - 1, 1) * math.sin(angle)
    ramp = 2.0 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) - 1.0
    return (base[None, None, :] + amplitude * ramp[..., None]).astype(np.float32)


def _object_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    """A colour from class ``label``'s family: jittered hue, strong saturation."""
    hue = (SHAPES[label][1] + rng.uniform(-0.03, 0.03)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0))
    return np.array(rgb, dtype=np.float32) * 255.0


def _sample_box_size(rng: np.random.Generator, min_size: int, max_side: int) -> tuple[int, int]:
    """Log-uniform side (many small, some large objects) with a mild aspect jitter."""
    side = math.exp(rng.uniform(math.log(min_size), math.log(max_side)))
    aspect = math.exp(rng.uniform(-0.3, 0.3))
    w = int(np.clip(round(side * math.sqrt(aspect)), min_size, max_side))
    h = int(np.clip(round(side / math.sqrt(aspect)), min_size, max_side))
    return w, h


def _tight_box(mask: np.ndarray, x: int, y: int) -> tuple[int, int, int, int] | None:
    """Box (x, y, w, h) of the full shape; the rasteriser may leave edges empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x0, y0 = int(cols[0]), int(rows[0])
    return x + x0, y + y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1


def _place(
    rng: np.random.Generator,
    owner: np.ndarray,
    visible: list[int],
    full_area: list[int],
    shape: str,
    min_size: int,
    max_side: int,
) -> tuple[np.ndarray, int, int] | None:
    """Find a position where the new shape leaves earlier objects visible enough.

    Returns (mask, x, y) of the accepted placement, or None after
    PLACEMENT_TRIES failures.
    """
    height, width = owner.shape
    for _ in range(PLACEMENT_TRIES):
        w, h = _sample_box_size(rng, min_size, max_side)
        x = int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        mask = _shape_mask(shape, w, h)
        covered = owner[y : y + h, x : x + w][mask]
        lost = np.bincount(covered[covered >= 0], minlength=len(visible))
        remaining = np.asarray(visible, dtype=np.int64) - lost
        if np.all(remaining >= MIN_VISIBLE_FRACTION * np.asarray(full_area, dtype=np.float64)):
            return mask, x, y
    return None


def _render_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    num_classes: int,
    max_objects: int,
    min_size: int,
) -> tuple[np.ndarray, list[_Object]]:
    """Draw one image; return uint8[h, w, 3] pixels and its objects in draw order."""
    pixels = _background(rng, width, height)
    owner = np.full((height, width), -1, dtype=np.int64)  # topmost object per pixel
    visible: list[int] = []
    full_area: list[int] = []
    objects: list[_Object] = []
    max_side = _max_object_side(width, height)
    count = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, max_objects + 1))
    for _ in range(count):
        label = int(rng.integers(num_classes))
        placed = _place(rng, owner, visible, full_area, SHAPES[label][0], min_size, max_side)
        if placed is None:
            continue
        mask, x, y = placed
        box = _tight_box(mask, x, y)
        if box is None:
            continue
        # Occlusion: the new shape is painted over whatever is below it.
        region = owner[y : y + mask.shape[0], x : x + mask.shape[1]]
        lost = np.bincount(region[mask][region[mask] >= 0], minlength=len(visible))
        visible = [v - int(lost[k]) for k, v in enumerate(visible)]
        region[mask] = len(objects)
        pixels[y : y + mask.shape[0], x : x + mask.shape[1]][mask] = _object_colour(rng, label)
        area = int(mask.sum())
        visible.append(area)
        full_area.append(area)
        objects.append(_Object(label, *box))
    pixels += rng.normal(0.0, NOISE_STD, size=pixels.shape).astype(np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), objects


# ------------------------------------------------------------------- writing


def _coco_annotation(ann_id: int, image_id: int, obj: _Object, width: int, height: int) -> dict:
    # Boxes are inside the image by construction; clipping guards the invariant.
    x0, y0 = max(0, obj.x), max(0, obj.y)
    x1, y1 = min(width, obj.x + obj.w), min(height, obj.y + obj.h)
    w, h = max(1, x1 - x0), max(1, y1 - y0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.label + 1,
        "bbox": [x0, y0, w, h],
        "area": float(w * h),
        "iscrowd": 0,
        # The box as a polygon: COCO tools expect a segmentation on every instance.
        "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]],
    }


def _write_split(
    root: Path,
    split_index: int,
    split: str,
    num_images: int,
    *,
    seed: int,
    width: int,
    height: int,
    classes: Sequence[str],
    max_objects: int,
    min_size: int,
) -> None:
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_index, index])
        pixels, objects = _render_image(rng, width, height, len(classes), max_objects, min_size)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels, "RGB").save(img_dir / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj in objects:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, obj, width, height))
    coco = {
        "info": {"description": "pgd synthetic shapes", "version": "1", "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)
        ],
    }
    ann_file = root / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco, separators=(",", ":")) + "\n", encoding="utf-8")


def _target_exists(target: Path, overwrite: bool) -> bool:
    """Whether ``target`` exists; raise FileExistsError unless it may be replaced."""
    if not (target.exists() or target.is_symlink()):
        return False
    if not overwrite:
        raise FileExistsError(f"{target}: data set already exists (pass overwrite=True)")
    if target.is_symlink() or not target.is_dir():
        # overwrite=True is meant for regenerating a data set, not for
        # deleting whatever else happens to carry its name.
        raise FileExistsError(f"{target}: exists and is not a folder; refusing to replace it")
    return True


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished folder to ``target``, replacing it if allowed."""
    if not _target_exists(target, overwrite):
        os.rename(tmp, target)
        return
    # Move the old data set aside first: a crash in between leaves it intact
    # in a hidden sibling instead of deleting it before the new one is in place.
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, trash / target.name)
    os.rename(tmp, target)
    shutil.rmtree(trash)


def make_coco_shapes(
    data_root: str | os.PathLike[str],
    name: str = "shapes",
    *,
    num_train: int = 16,
    num_val: int = 8,
    image_size: tuple[int, int] = (160, 160),
    num_classes: int = 3,
    max_objects: int = 6,
    min_size: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> DatasetInfo:
    """Generate the synthetic data set ``<data_root>/<name>`` and return its info.

    Args:
        data_root: Folder holding the named data sets (created if missing).
        name: Data set name (see :func:`pgd_core.data.manifest.validate_dataset_name`).
        num_train, num_val: Number of images per split (>= 1).
        image_size: (width, height) in pixels, each in [16, 4096].
        num_classes: 1..8; classes are ``SHAPES[:num_classes]``.
        max_objects: Most objects per image (>= 1); ~10 % of images have none.
        min_size: Smallest object side in pixels; the largest is 60 % of the
            shorter image side, so ``min_size`` must not exceed it.
        seed: Non-negative seed; the same arguments give byte-identical files.
        overwrite: Replace an existing ``<data_root>/<name>``.

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
    num_classes = _check_int("num_classes", num_classes, 1, MAX_CLASSES)
    max_objects = _check_int("max_objects", max_objects, 1)
    max_side = _max_object_side(width, height)
    min_size = _check_int("min_size", min_size, MIN_OBJECT_SIZE, max_side)
    seed = _check_int("seed", seed, 0)

    classes = [shape for shape, _ in SHAPES[:num_classes]]

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
                classes=classes,
                max_objects=max_objects,
                min_size=min_size,
            )
        splits = {
            s: {"ann_file": f"annotations/{s}.json", "img_dir": f"images/{s}"} for s in _SPLITS
        }
        write_manifest(tmp, format="coco", classes=classes, splits=splits)

    return write_dataset_atomically(data_root, name, fill, overwrite=overwrite)


def write_dataset_atomically(
    data_root: str | os.PathLike[str],
    name: str,
    fill: Callable[[Path], None],
    *,
    overwrite: bool = False,
) -> DatasetInfo:
    """Let ``fill`` write a data set into a hidden temporary folder, then rename it
    to ``<data_root>/<name>``: a crash never leaves a half-written data set.

    Raises:
        FileExistsError: if the data set exists and ``overwrite`` is False.
    """
    data_root = Path(data_root)
    target = data_root / name
    # Fail before spending time on generation; checked again at the rename.
    _target_exists(target, overwrite)
    data_root.mkdir(parents=True, exist_ok=True)
    # Hidden sibling on the same file system, so the final rename is atomic and
    # list_datasets never sees a half-written data set.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=data_root))
    try:
        tmp.chmod(0o755)  # mkdtemp creates 0700; the API server must read it
        fill(tmp)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset_info(data_root, name)
