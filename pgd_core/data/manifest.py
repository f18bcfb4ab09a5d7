"""Catalogue of named data sets under a configured data root.

A data set is a folder ``<data_root>/<name>/`` holding a manifest
``pgd_dataset.json``::

    {"format": "coco",
     "classes": ["circle", "square"],
     "splits": {"train": {"ann_file": "annotations/train.json",
                          "img_dir": "images/train"},
                "val": {...}}}

Users only ever name a data set (the REST API passes names, never paths), so
this module is the single place where a name becomes a path; it therefore
validates names and manifest paths strictly enough that nothing outside the
data set folder can be reached through them.

Only the standard library is used: the REST API imports this module and must
not pull in torch or mmdet.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

#: File name of the manifest inside a data set folder.
MANIFEST_NAME = "pgd_dataset.json"
#: Annotation formats the training code knows how to load.
FORMATS = ("coco", "crowdhuman")
#: Annotation-file suffix each format requires; catching a swapped file here
#: gives a clearer error than the loader failing deep inside mmdet.
_ANN_SUFFIX = {"coco": ".json", "crowdhuman": ".odgt"}
#: CrowdHuman annotates one class; the loader maps every box to it.
_CROWDHUMAN_CLASSES = ("person",)

_REQUIRED_KEYS = ("format", "classes", "splits")
_SPLIT_KEYS = ("ann_file", "img_dir")
# Leading dot excluded: hidden folders are reserved for temporary folders of
# generators (see synthetic_shapes.py) and "." / ".." would escape the data root.
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_MAX_NAME_LEN = 128


class DatasetError(ValueError):
    """A data set cannot be used; the message names the offending file."""


@dataclass(frozen=True)
class SplitInfo:
    """One split of a data set; both paths are absolute."""

    ann_file: Path
    img_dir: Path


@dataclass(frozen=True)
class DatasetInfo:
    """A validated data set manifest with absolute paths."""

    name: str
    root: Path
    format: str
    classes: tuple[str, ...]
    # Excluded from hashing because dicts are unhashable; equality still uses it.
    splits: dict[str, SplitInfo] = field(hash=False)

    @property
    def num_classes(self) -> int:
        """Number of object classes."""
        return len(self.classes)

    @property
    def manifest(self) -> Path:
        """Absolute path of the manifest file."""
        return self.root / MANIFEST_NAME

    def split(self, name: str) -> SplitInfo:
        """Return split ``name``; raise DatasetError listing the known splits."""
        try:
            return self.splits[name]
        except KeyError:
            available = ", ".join(sorted(self.splits)) or "none"
            raise DatasetError(
                f"{self.manifest}: data set {self.name!r} has no split {name!r} "
                f"(available: {available})"
            ) from None


# --------------------------------------------------------------------------- names


def validate_dataset_name(name: object) -> str:
    """Return ``name`` if it is a safe data set name, else raise DatasetError.

    Allowed: 1-128 characters from ``[A-Za-z0-9_.-]``, not starting with a dot
    (which also rules out ``.`` and ``..``).
    """
    if not isinstance(name, str):
        raise DatasetError(f"data set name must be a string, got {type(name).__name__}")
    if len(name) > _MAX_NAME_LEN or _NAME_RE.fullmatch(name) is None:
        raise DatasetError(
            f"invalid data set name {name!r}: use 1-{_MAX_NAME_LEN} characters "
            "from [A-Za-z0-9_.-], not starting with '.'"
        )
    return name


# ------------------------------------------------------------------ manifest checks


def _check_format(where: str, value: object) -> str:
    if not isinstance(value, str) or value not in FORMATS:
        raise DatasetError(
            f"{where}: field 'format': unknown format {value!r} "
            f"(expected one of: {', '.join(FORMATS)})"
        )
    return value


def _check_classes(where: str, value: object, fmt: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: field 'classes': must be a non-empty list of strings")
    seen: set[str] = set()
    for i, cls in enumerate(value):
        if not isinstance(cls, str) or not cls.strip():
            raise DatasetError(f"{where}: field 'classes[{i}]': must be a non-empty string")
        if cls in seen:
            raise DatasetError(f"{where}: field 'classes[{i}]': duplicate class name {cls!r}")
        seen.add(cls)
    classes = tuple(value)
    if fmt == "crowdhuman" and classes != _CROWDHUMAN_CLASSES:
        raise DatasetError(
            f"{where}: field 'classes': crowdhuman data sets must have classes "
            f"{list(_CROWDHUMAN_CLASSES)}, got {list(classes)}"
        )
    return classes


def _check_rel_path(where: str, field_name: str, value: object) -> PurePosixPath:
    """Validate a manifest path: relative, no '..', so it stays in the data set.

    The check is lexical on purpose: an administrator may symlink a large image
    folder into the data set, but a manifest can never point outside it.
    """
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: field '{field_name}': must be a non-empty string")
    if "\\" in value or "\x00" in value:
        raise DatasetError(
            f"{where}: field '{field_name}': {value!r} contains a backslash or NUL; "
            "use '/' separators"
        )
    path = PurePosixPath(value)
    if path.is_absolute():
        raise DatasetError(
            f"{where}: field '{field_name}': {value!r} must be relative to the data set folder"
        )
    if ".." in path.parts:
        raise DatasetError(
            f"{where}: field '{field_name}': {value!r} leaves the data set folder ('..')"
        )
    return path


_RelSplits = dict[str, tuple[PurePosixPath, PurePosixPath]]


def _check_splits(where: str, value: object, fmt: str) -> _RelSplits:
    if not isinstance(value, dict) or not value:
        raise DatasetError(f"{where}: field 'splits': must be a non-empty object")
    out: _RelSplits = {}
    for split_name, entry in value.items():
        prefix = f"splits.{split_name}"
        if not split_name.strip():
            raise DatasetError(f"{where}: field 'splits': split names must be non-empty")
        if not isinstance(entry, dict):
            raise DatasetError(
                f"{where}: field '{prefix}': must be an object with keys {', '.join(_SPLIT_KEYS)}"
            )
        _check_keys(where, prefix, entry, _SPLIT_KEYS)
        ann = _check_rel_path(where, f"{prefix}.ann_file", entry["ann_file"])
        img = _check_rel_path(where, f"{prefix}.img_dir", entry["img_dir"])
        if ann.suffix.lower() != _ANN_SUFFIX[fmt]:
            raise DatasetError(
                f"{where}: field '{prefix}.ann_file': {fmt} annotations must be a "
                f"{_ANN_SUFFIX[fmt]} file, got {str(ann)!r}"
            )
        out[split_name] = (ann, img)
    return out


def _check_keys(where: str, prefix: str, obj: Mapping[str, Any], required: Sequence[str]) -> None:
    """Require exactly ``required``: unknown keys are usually typos ("clases")."""
    label = f"field '{prefix}'" if prefix else "manifest"
    missing = [k for k in required if k not in obj]
    if missing:
        raise DatasetError(f"{where}: {label}: missing key(s) {', '.join(missing)}")
    unknown = sorted(k for k in obj if k not in required)
    if unknown:
        raise DatasetError(f"{where}: {label}: unknown key(s) {', '.join(unknown)}")


def _parse_manifest(where: str, data: object) -> tuple[str, tuple[str, ...], _RelSplits]:
    """Structural validation shared by the reader and the writer."""
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: manifest must be a JSON object, got {type(data).__name__}")
    _check_keys(where, "", data, _REQUIRED_KEYS)
    fmt = _check_format(where, data["format"])
    classes = _check_classes(where, data["classes"], fmt)
    splits = _check_splits(where, data["splits"], fmt)
    return fmt, classes, splits


def read_json_file(path: Path, what: str = "manifest") -> object:
    """Parse a JSON file; every failure is a DatasetError naming the file (and the
    line and column of a syntax error). ``what`` names the file's role in messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} does not exist") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


# --------------------------------------------------------------------- public API


def load_dataset_info(data_root: str | os.PathLike[str], name: str) -> DatasetInfo:
    """Load and validate the manifest of data set ``name`` under ``data_root``.

    Raises:
        DatasetError: on a bad name, a missing folder or manifest, a malformed
            or invalid manifest, or a split whose files do not exist. The
            message always names the offending file.
    """
    validate_dataset_name(name)
    root = Path(data_root).resolve() / name
    if not root.is_dir():
        raise DatasetError(f"{root}: data set {name!r} not found (no such folder)")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: data set {name!r} has no manifest")
    fmt, classes, rel_splits = _parse_manifest(str(manifest), read_json_file(manifest))
    splits = {
        split_name: _resolve_split(manifest, root, split_name, ann, img)
        for split_name, (ann, img) in rel_splits.items()
    }
    return DatasetInfo(name=name, root=root, format=fmt, classes=classes, splits=splits)


def _resolve_split(
    manifest: Path, root: Path, split_name: str, ann: PurePosixPath, img: PurePosixPath
) -> SplitInfo:
    ann_file, img_dir = root / ann, root / img
    if not ann_file.is_file():
        raise DatasetError(
            f"{manifest}: field 'splits.{split_name}.ann_file': "
            f"annotation file {ann_file} does not exist"
        )
    if not img_dir.is_dir():
        raise DatasetError(
            f"{manifest}: field 'splits.{split_name}.img_dir': "
            f"image folder {img_dir} does not exist"
        )
    return SplitInfo(ann_file=ann_file, img_dir=img_dir)


def list_datasets(data_root: str | os.PathLike[str]) -> list[DatasetInfo]:
    """All data sets under ``data_root``, sorted by name.

    Folders without a manifest, hidden folders (generators' temporary folders)
    and folders whose name is not a valid data set name are skipped; a broken
    manifest raises DatasetError rather than hiding the data set silently.
    """
    root = Path(data_root).resolve()
    return [load_dataset_info(root, name) for name in dataset_names(root)]


def dataset_names(data_root: str | os.PathLike[str]) -> list[str]:
    """Names of the folders under ``data_root`` that hold a manifest, sorted (the
    ones :func:`list_datasets` reads; a manifest is not read here)."""
    root = Path(data_root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: data root does not exist")
    names = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.is_dir() or _NAME_RE.fullmatch(entry.name) is None:
            continue
        if len(entry.name) > _MAX_NAME_LEN or not (entry / MANIFEST_NAME).is_file():
            continue
        names.append(entry.name)
    return names


def write_manifest(
    root: str | os.PathLike[str],
    *,
    format: str,  # noqa: A002 - mirrors the manifest key
    classes: Sequence[str],
    splits: Mapping[str, Mapping[str, str | PurePath]],
) -> Path:
    """Write ``<root>/pgd_dataset.json`` atomically and return its path.

    ``splits`` maps a split name to ``{"ann_file": ..., "img_dir": ...}`` with
    paths relative to ``root``. The content is validated with the same rules as
    :func:`load_dataset_info` (except file existence, so a generator may write
    the manifest before or after its files). The file is written to a temporary
    file in the same folder and moved into place with ``os.replace`` so readers
    never see a half-written manifest.
    """
    root = Path(root)
    manifest = root / MANIFEST_NAME
    data = {
        "format": format,
        "classes": list(classes),
        "splits": {str(split): _split_entry(entry) for split, entry in splits.items()},
    }
    _parse_manifest(str(manifest), data)
    payload = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    _atomic_write(manifest, payload)
    return manifest


def _split_entry(entry: object) -> object:
    """JSON form of a split entry; non-mappings pass through for validation to reject."""
    if not isinstance(entry, Mapping):
        return entry
    return {str(key): _as_posix(value) for key, value in entry.items()}


def _as_posix(value: object) -> object:
    """Store paths with '/' separators; leave non-paths for validation to reject."""
    return value.as_posix() if isinstance(value, PurePath) else value


def _atomic_write(path: Path, payload: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp creates 0600; the manifest must be readable by the API
            # server, which may run as another user.
            os.fchmod(fh.fileno(), 0o644)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no stray temporary file behind on any failure, then re-raise.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
