"""COCO instances annotations: a strict validator with a summary of what it found.

The format (only the fields detection training and evaluation read)::

    {"images": [{"id": 1, "file_name": "000001.png", "width": 640, "height": 480}, ...],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 3,
                      "bbox": [x, y, w, h], "area": 1234.5, "iscrowd": 0}, ...],
     "categories": [{"id": 3, "name": "circle"}, ...]}

The validator is strict because its consumers are not: mmdet 3.3's
CocoDataset silently skips annotations whose category is not among the
configured classes, whose box lies outside the image, whose ``area`` is not
positive or that carry a truthy ``ignore`` key, and it raises a bare KeyError
mid-load on a missing ``area``; pycocotools silently keeps only the last of
two entries with the same id. Here every such problem is a DatasetError naming
the file and the offending entry, and nothing is dropped: crowd boxes
(``iscrowd = 1``, COCO's own ignore convention, which mmdet turns into ignore
flags) and images without boxes (which the training config's
``filter_empty_gt`` skips) are counted in :class:`CocoSummary` instead.

Only the standard library is used (no torch or mmdet), so the REST
API can import this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pgd_core.data.manifest import DatasetError, read_json_file

__all__ = ["CocoSummary", "validate_coco"]

_TOP_KEYS = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "width", "height")
# ``area`` is not optional in practice: mmdet's CocoDataset and COCOeval both read it.
_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area")
_CATEGORY_KEYS = ("id", "name")
_MAX_REPR = 80


@dataclass(frozen=True)
class CocoSummary:
    """Counts over a COCO instances file, so callers can report what is ignored.

    Attributes:
        num_images: Image entries.
        num_boxes: Annotations, crowd boxes included.
        num_ignored: Crowd boxes (``iscrowd = 1``): ignore regions in training
            and evaluation, never learnt as objects.
        num_empty_images: Images without any annotation (crowd boxes count as
            annotations); training skips them (``filter_empty_gt``).
        num_degenerate: Boxes of zero width or height, which mmdet skips.
    """

    num_images: int
    num_boxes: int
    num_ignored: int
    num_empty_images: int
    num_degenerate: int = 0

    def report(self, name: str = "annotations") -> str:
        """One line for logs, e.g. ``shapes/train: 16 images, 52 boxes, 0 ignored (iscrowd),
        2 without boxes``."""
        return (
            f"{name}: {self.num_images} images, {self.num_boxes} boxes, "
            f"{self.num_ignored} ignored (iscrowd), {self.num_degenerate} skipped "
            f"(zero size), {self.num_empty_images} without boxes"
        )


# --------------------------------------------------------------------------- helpers


def _short(value: object) -> str:
    """repr() cut to a readable length: a bad field may be a megabyte-long string."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _is_int(value: object) -> bool:
    # type() instead of isinstance: bool is an int subclass, and True is never an id.
    return type(value) is int


def _is_number(value: object) -> bool:
    # json.loads accepts NaN/Infinity: refuse them too (and booleans, via type()).
    return (type(value) is int or type(value) is float) and math.isfinite(value)


def _missing(entry: dict, keys: Iterable[str]) -> str:
    return ", ".join(key for key in keys if key not in entry)


def _top_level(path: Path, data: object) -> tuple[list, list, list]:
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    missing = _missing(data, _TOP_KEYS)
    if missing:
        raise DatasetError(f"{path}: missing top-level key(s) {missing}")
    for key in _TOP_KEYS:
        if not isinstance(data[key], list):
            raise DatasetError(
                f"{path}: top-level '{key}' must be a list, got {type(data[key]).__name__}"
            )
    if not data["images"]:
        raise DatasetError(f"{path}: 'images' is empty")
    if not data["categories"]:
        raise DatasetError(f"{path}: 'categories' is empty")
    return data["images"], data["annotations"], data["categories"]


# ------------------------------------------------------------------------ sections


def _check_categories(path: Path, categories: list) -> dict[int, str]:
    """Category id -> name; ids and names must be unique."""
    names: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for index, cat in enumerate(categories):
        where = f"{path}: categories[{index}]"
        if not isinstance(cat, dict):
            raise DatasetError(f"{where}: must be an object, got {_short(cat)}")
        missing = _missing(cat, _CATEGORY_KEYS)
        if missing:
            raise DatasetError(f"{where}: missing field(s) {missing}")
        cat_id, name = cat["id"], cat["name"]
        if not _is_int(cat_id):
            raise DatasetError(f"{where}: field 'id': must be an integer, got {_short(cat_id)}")
        where = f"{where} (category id {cat_id})"
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{where}: field 'name': must be a non-empty string")
        if cat_id in names:
            raise DatasetError(
                f"{where}: duplicate category id {cat_id} (also named {names[cat_id]!r})"
            )
        if name in seen_names:
            raise DatasetError(
                f"{where}: duplicate category name {name!r} (also category id {seen_names[name]})"
            )
        names[cat_id] = name
        seen_names[name] = cat_id
    return names


def _check_classes(path: Path, names: Iterable[str], classes: Iterable[str]) -> None:
    declared, wanted = set(names), set(classes)
    if declared == wanted:
        return
    parts = []
    missing = sorted(wanted - declared)
    extra = sorted(declared - wanted)
    if missing:
        parts.append(f"missing from the file: {', '.join(map(repr, missing))}")
    if extra:
        parts.append(f"not in the class list: {', '.join(map(repr, extra))}")
    raise DatasetError(
        f"{path}: category names do not match the data set's classes ({'; '.join(parts)})"
    )


def _check_file_name(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(
            f"{where}: field 'file_name': must be a non-empty string, got {_short(value)}"
        )
    # Joined to the image folder by the loader: it must not be able to leave it.
    # (String tests, not PurePosixPath: this runs for every image of train2017.)
    if "\x00" in value or value.startswith("/") or ".." in value.split("/"):
        raise DatasetError(
            f"{where}: field 'file_name': {_short(value)} must be a relative path "
            "inside the image folder"
        )
    return value


def _check_images(path: Path, images: list) -> dict[int, tuple[str, int, int]]:
    """Image id -> (file_name, width, height); ids and file names must be unique."""
    out: dict[int, tuple[str, int, int]] = {}
    file_ids: dict[str, int] = {}
    for index, image in enumerate(images):
        where = f"{path}: images[{index}]"
        if type(image) is not dict:
            raise DatasetError(f"{where}: must be an object, got {_short(image)}")
        missing = _missing(image, _IMAGE_KEYS)
        if missing:
            raise DatasetError(f"{where}: missing field(s) {missing}")
        image_id = image["id"]
        if not _is_int(image_id):
            raise DatasetError(f"{where}: field 'id': must be an integer, got {_short(image_id)}")
        where = f"{where} (image id {image_id})"
        if image_id in out:
            raise DatasetError(f"{where}: duplicate image id {image_id}")
        file_name = _check_file_name(where, image["file_name"])
        if file_name in file_ids:
            raise DatasetError(
                f"{where}: file_name {file_name!r} is also used by image id {file_ids[file_name]}"
            )
        width, height = image["width"], image["height"]
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            raise DatasetError(
                f"{where}: width and height must be positive integers, "
                f"got width={_short(width)}, height={_short(height)}"
            )
        out[image_id] = (file_name, width, height)
        file_ids[file_name] = image_id
    return out


def _ann_error(path: Path, index: int, ann_id: object, message: str) -> DatasetError:
    return DatasetError(f"{path}: annotations[{index}] (annotation id {ann_id}): {message}")


def _check_annotations(
    path: Path,
    annotations: list,
    images: dict[int, tuple[str, int, int]],
    categories: dict[int, str],
) -> tuple[int, int, set[int]]:
    """Validate every annotation; return (crowd boxes, zero-size boxes, ids of the images
    that have boxes).

    This loop runs ~860k times on COCO train2017: errors are built only once found.
    """
    seen: set[int] = set()
    annotated: set[int] = set()
    crowd = degenerate = 0
    for index, ann in enumerate(annotations):
        if type(ann) is not dict:
            raise DatasetError(
                f"{path}: annotations[{index}]: must be an object, got {_short(ann)}"
            )
        if not (
            "id" in ann
            and "image_id" in ann
            and "category_id" in ann
            and "bbox" in ann
            and "area" in ann
        ):
            raise DatasetError(
                f"{path}: annotations[{index}]"
                + (f" (annotation id {_short(ann['id'])})" if "id" in ann else "")
                + f": missing field(s) {_missing(ann, _ANN_KEYS)}"
            )
        ann_id = ann["id"]
        if type(ann_id) is not int:
            raise DatasetError(
                f"{path}: annotations[{index}]: field 'id': must be an integer, "
                f"got {_short(ann_id)}"
            )
        if ann_id in seen:
            raise _ann_error(path, index, ann_id, f"duplicate annotation id {ann_id}")
        seen.add(ann_id)

        image_id = ann["image_id"]
        image = images.get(image_id) if type(image_id) is int else None
        if image is None:
            raise _ann_error(
                path, index, ann_id, f"image id {_short(image_id)} is not among the images"
            )
        category_id = ann["category_id"]
        if type(category_id) is not int or category_id not in categories:
            raise _ann_error(
                path,
                index,
                ann_id,
                f"category id {_short(category_id)} is not declared in the categories",
            )

        bbox = ann["bbox"]
        if type(bbox) is not list or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise _ann_error(
                path,
                index,
                ann_id,
                f"field 'bbox': must be [x, y, w, h] with 4 finite numbers, got {_short(bbox)}",
            )
        x, y, w, h = bbox
        if w < 0 or h < 0:
            raise _ann_error(
                path,
                index,
                ann_id,
                f"field 'bbox': negative box size w={w}, h={h} (width and height must be >= 0)",
            )
        if w == 0 or h == 0:
            # COCO itself ships such boxes (train2017 ids 918, 2206849); mmdet skips
            # them. Counted and reported, not fatal.
            degenerate += 1
            annotated.add(image_id)
            continue
        _, img_w, img_h = image
        if min(x + w, img_w) <= max(x, 0) or min(y + h, img_h) <= max(y, 0):
            raise _ann_error(
                path,
                index,
                ann_id,
                f"field 'bbox': {bbox} lies outside image id {image_id} ({img_w}x{img_h})",
            )
        area = ann["area"]
        if not _is_number(area) or area <= 0:
            raise _ann_error(
                path, index, ann_id, f"field 'area': must be a number > 0, got {_short(area)}"
            )

        iscrowd = ann.get("iscrowd", 0)
        if type(iscrowd) is not int or (iscrowd != 0 and iscrowd != 1):
            raise _ann_error(
                path, index, ann_id, f"field 'iscrowd': must be 0 or 1, got {_short(iscrowd)}"
            )
        ignore = ann.get("ignore", 0)
        if ignore:
            raise _ann_error(
                path,
                index,
                ann_id,
                f"field 'ignore': {_short(ignore)} is not supported (mmdet would drop the box; "
                "mark ignore regions with iscrowd=1)",
            )
        crowd += iscrowd
        annotated.add(image_id)
    return crowd, degenerate, annotated


def _check_image_files(path: Path, img_dir: Path, images: dict[int, tuple[str, int, int]]) -> None:
    """Every image file must exist; each folder is listed once instead of one stat per image."""
    if not img_dir.is_dir():
        raise DatasetError(f"{path}: image folder {img_dir} does not exist")
    listings: dict[str, set[str]] = {}
    missing: list[tuple[int, str]] = []
    for image_id, (file_name, _, _) in images.items():
        parent, _, base = file_name.rpartition("/")
        files = listings.get(parent)
        if files is None:
            files = listings[parent] = _list_files(img_dir / parent if parent else img_dir)
        if base not in files:
            missing.append((image_id, file_name))
    if missing:
        image_id, file_name = missing[0]
        raise DatasetError(
            f"{path}: {len(missing)} of {len(images)} image files missing from {img_dir}; "
            f"first: {img_dir / file_name} (image id {image_id})"
        )


def _list_files(folder: Path) -> set[str]:
    """Names of the regular files (symlinks followed) in ``folder``; empty if it is missing."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


# --------------------------------------------------------------------- public API


def validate_coco(
    ann_file: str | os.PathLike[str],
    *,
    img_dir: str | os.PathLike[str] | None = None,
    classes: Iterable[str] | None = None,
) -> CocoSummary:
    """Validate a COCO instances json strictly and return its counts.

    Args:
        ann_file: The annotation file.
        img_dir: If given, every image's ``<img_dir>/<file_name>`` must exist.
        classes: If given (the manifest's class list), the category names must
            equal it as a set.

    Checks, each failure a DatasetError naming the file and the entry:

    * the file exists and is UTF-8 JSON (errors give line and column); the top
      level is an object with non-empty lists ``images`` and ``categories`` and
      a list ``annotations``;
    * images: an integer ``id``, a ``file_name`` (relative, no ``..``) and
      positive integer ``width``/``height``; ids and file names are unique;
    * categories: integer ``id`` and non-empty ``name``, both unique; with
      ``classes``, the names missing and extra compared to it are listed;
    * annotations: unique integer ``id``; ``image_id`` among the images and
      ``category_id`` among the categories (both named with the annotation
      id); ``bbox`` is 4 finite numbers; a negative width or height is an
      error naming the annotation id; a zero width or height is counted in
      ``num_degenerate`` (mmdet skips such boxes; COCO train2017 has two);
      other boxes must overlap their image; ``area`` is
      a number > 0 (mmdet reads it and skips boxes without a positive one);
      ``iscrowd``, if present, is 0 or 1; a truthy ``ignore`` key is refused
      (mmdet silently drops such boxes: use ``iscrowd = 1``).

    Boxes narrower or shorter than one pixel but > 0 are accepted, although
    mmdet's CocoDataset skips them in training.

    Returns:
        Counts of images, boxes, crowd (ignored) boxes and images without boxes.

    Raises:
        DatasetError: on any of the problems above.
        TypeError: if ``classes`` is a single string instead of a list of names.
    """
    if isinstance(classes, str):
        raise TypeError("classes must be a list of class names, not a string")
    path = Path(ann_file)
    images_raw, annotations_raw, categories_raw = _top_level(
        path, read_json_file(path, "annotation file")
    )
    categories = _check_categories(path, categories_raw)
    if classes is not None:
        _check_classes(path, categories.values(), classes)
    images = _check_images(path, images_raw)
    crowd, degenerate, annotated = _check_annotations(path, annotations_raw, images, categories)
    if img_dir is not None:
        _check_image_files(path, Path(img_dir), images)
    return CocoSummary(
        num_images=len(images),
        num_boxes=len(annotations_raw),
        num_ignored=crowd,
        num_degenerate=degenerate,
        num_empty_images=len(images) - len(annotated),
    )
