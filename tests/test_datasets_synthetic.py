"""Tests for the data set catalogue (pgd_core.data.manifest) and the synthetic
shapes generator (pgd_core.data.synthetic_shapes). Neither needs torch."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgd_core.data.manifest import (
    MANIFEST_NAME,
    DatasetError,
    DatasetInfo,
    SplitInfo,
    list_datasets,
    load_dataset_info,
    validate_dataset_name,
    write_manifest,
)
from pgd_core.data.synthetic_shapes import MAX_CLASSES, SHAPES, make_coco_shapes

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small images keep the generator cheap; 40 images give every statistic below
# enough samples while staying well under a second.
BIG_KW = dict(num_train=40, num_val=4, image_size=(128, 112), num_classes=MAX_CLASSES, seed=3)


# ------------------------------------------------------------------ helpers


def _files(root: Path) -> dict[str, bytes]:
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}


def _coco(info: DatasetInfo, split: str = "train") -> dict:
    return json.loads(info.split(split).ann_file.read_text())


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _make_coco_dataset(root: Path, name: str = "ds", manifest: object | None = None) -> Path:
    """Hand-made minimal COCO data set; ``manifest`` overrides the default."""
    folder = root / name
    (folder / "annotations").mkdir(parents=True)
    (folder / "images" / "train").mkdir(parents=True)
    (folder / "annotations" / "train.json").write_text("{}")
    if manifest is None:
        manifest = {
            "format": "coco",
            "classes": ["a", "b"],
            "splits": {"train": {"ann_file": "annotations/train.json", "img_dir": "images/train"}},
        }
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / MANIFEST_NAME).write_text(text)
    return folder


def _manifest(**overrides: object) -> dict:
    base = {
        "format": "coco",
        "classes": ["a", "b"],
        "splits": {"train": {"ann_file": "annotations/train.json", "img_dir": "images/train"}},
    }
    base.update(overrides)
    return base


def _train_split(
    ann_file: object = "annotations/train.json", img_dir: object = "images/train"
) -> dict:
    """Default manifest with the train split's paths replaced."""
    return _manifest(splits={"train": {"ann_file": ann_file, "img_dir": img_dir}})


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    return make_coco_shapes(tmp_path_factory.mktemp("big"), "big", **BIG_KW)


# --------------------------------------------------------------- synthetic


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = make_coco_shapes(tmp_path / "r1", num_train=4, num_val=2, seed=7)
    b = make_coco_shapes(tmp_path / "r2", num_train=4, num_val=2, seed=7)
    files_a, files_b = _files(a.root), _files(b.root)
    assert len(files_a) == 4 + 2 + 2 + 1  # images, annotation files, manifest
    assert files_a == files_b


def test_other_seed_gives_different_files(tmp_path: Path) -> None:
    a = _files(make_coco_shapes(tmp_path / "r1", num_train=4, num_val=2, seed=7).root)
    b = _files(make_coco_shapes(tmp_path / "r2", num_train=4, num_val=2, seed=8).root)
    assert a.keys() == b.keys()
    assert a[MANIFEST_NAME] == b[MANIFEST_NAME]
    assert a["annotations/train.json"] != b["annotations/train.json"]
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))


def test_adding_images_keeps_existing_ones(tmp_path: Path) -> None:
    # Each image is seeded on its own: growing a split must not reshuffle it.
    a = _files(make_coco_shapes(tmp_path / "r1", num_train=3, num_val=1).root)
    b = _files(make_coco_shapes(tmp_path / "r2", num_train=5, num_val=1).root)
    assert all(a[k] == b[k] for k in a if k.endswith(".png"))


def test_coco_structure_ids_and_boxes(big: DatasetInfo) -> None:
    width, height = BIG_KW["image_size"]
    for split, count in (("train", BIG_KW["num_train"]), ("val", BIG_KW["num_val"])):
        coco = _coco(big, split)
        images = coco["images"]
        assert len(images) == count
        assert [c["id"] for c in coco["categories"]] == list(range(1, MAX_CLASSES + 1))
        assert [c["name"] for c in coco["categories"]] == [s for s, _ in SHAPES]
        image_ids = [im["id"] for im in images]
        assert len(set(image_ids)) == count and min(image_ids) >= 1
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) and (not ann_ids or min(ann_ids) >= 1)
        for im in images:
            assert (im["width"], im["height"]) == (width, height)
            with Image.open(big.split(split).img_dir / im["file_name"]) as pil:
                assert pil.size == (width, height) and pil.mode == "RGB"
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert ann["image_id"] in image_ids
            assert 1 <= ann["category_id"] <= MAX_CLASSES
            assert ann["iscrowd"] == 0
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0
            assert x + w <= width and y + h <= height
            assert ann["area"] == w * h
            assert ann["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_all_classes_appear(big: DatasetInfo) -> None:
    labels = {a["category_id"] for a in _coco(big)["annotations"]}
    assert labels == set(range(1, MAX_CLASSES + 1))


def test_small_and_large_boxes(big: DatasetInfo) -> None:
    sides = [max(a["bbox"][2:]) for a in _coco(big)["annotations"]]
    assert any(s < 32 for s in sides)
    assert any(s >= 0.4 * min(BIG_KW["image_size"]) for s in sides)
    assert min(min(a["bbox"][2:]) for a in _coco(big)["annotations"]) >= 8 - 1


def test_some_images_are_empty(big: DatasetInfo) -> None:
    coco = _coco(big)
    annotated = {a["image_id"] for a in coco["annotations"]}
    assert 0 < len(coco["images"]) - len(annotated) < len(coco["images"]) // 2


def test_objects_overlap(big: DatasetInfo) -> None:
    by_image: dict[int, list[list[int]]] = {}
    for ann in _coco(big)["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    overlaps = [_iou(a, b) for boxes in by_image.values() for a, b in combinations(boxes, 2)]
    assert sum(o > 0.05 for o in overlaps) >= 3


def test_boxes_enclose_coloured_objects(tmp_path: Path) -> None:
    # Objects are saturated and the background nearly grey, so a saturated
    # pixel outside every box would mean a box smaller than its shape.
    info = make_coco_shapes(tmp_path, num_train=6, num_val=1, seed=1)
    coco = _coco(info)
    for im in coco["images"]:
        rgb = np.asarray(Image.open(info.split("train").img_dir / im["file_name"]), dtype=np.int32)
        saturated = (rgb.max(-1) - rgb.min(-1)) > 90
        inside = np.zeros_like(saturated)
        for ann in coco["annotations"]:
            if ann["image_id"] == im["id"]:
                x, y, w, h = ann["bbox"]
                inside[y : y + h, x : x + w] = True
        assert not (saturated & ~inside).any()


def test_load_round_trip(big: DatasetInfo) -> None:
    info = load_dataset_info(big.root.parent, "big")
    assert info == big
    assert info.format == "coco" and info.num_classes == MAX_CLASSES
    assert info.classes == tuple(s for s, _ in SHAPES)
    expected = SplitInfo(info.root / "annotations/val.json", info.root / "images/val")
    assert info.split("val") == expected
    assert info.root.is_absolute() and info.split("train").ann_file.is_absolute()
    with pytest.raises(DatasetError, match=r"no split 'test'.*available: train, val") as exc:
        info.split("test")
    assert MANIFEST_NAME in str(exc.value)


def test_existing_target_needs_overwrite(tmp_path: Path) -> None:
    make_coco_shapes(tmp_path, num_train=1, num_val=1, num_classes=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_coco_shapes(tmp_path, num_train=1, num_val=1)
    info = make_coco_shapes(tmp_path, num_train=2, num_val=1, num_classes=4, overwrite=True)
    assert info.num_classes == 4 and len(_coco(info)["images"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temp folders left


def test_overwrite_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "shapes").write_text("not a data set")
    with pytest.raises(FileExistsError, match="not a folder"):
        make_coco_shapes(tmp_path, num_train=1, num_val=1, overwrite=True)
    assert (tmp_path / "shapes").read_text() == "not a data set"
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pgd_core.data.synthetic_shapes as synthetic

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_coco_shapes(tmp_path, num_train=1, num_val=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_train=0), "num_train"),
        (dict(num_val=-1), "num_val"),
        (dict(num_train=True), "num_train"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=MAX_CLASSES + 1), "num_classes"),
        (dict(max_objects=0), "max_objects"),
        (dict(min_size=2), "min_size"),
        (dict(min_size=97), "min_size"),  # > 60 % of 160
        (dict(image_size=(160,)), "image_size"),
        (dict(image_size=(0, 160)), "width"),
        (dict(image_size=(160, 8.5)), "height"),
        (dict(seed=-1), "seed"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_coco_shapes(tmp_path, **kwargs)
    assert not (tmp_path / "shapes").exists()


def test_invalid_name_rejected_by_generator(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="invalid data set name"):
        make_coco_shapes(tmp_path / "root", "../escape")
    assert not (tmp_path / "escape").exists()


# ---------------------------------------------------------------- catalogue


@pytest.mark.parametrize(
    "name", ["../etc", "..", ".", "", "a/b", "a\\b", ".hidden", "x" * 129, "é", None]
)
def test_bad_names(tmp_path: Path, name: object) -> None:
    with pytest.raises(DatasetError, match="data set name"):
        load_dataset_info(tmp_path, name)  # type: ignore[arg-type]


def test_good_names() -> None:
    for name in ("shapes", "coco-2017", "crowd_human.v1", "A1"):
        assert validate_dataset_name(name) == name


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as exc:
        load_dataset_info(tmp_path, "nope")
    assert str(tmp_path / "nope") in str(exc.value)


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(DatasetError, match="no manifest") as exc:
        load_dataset_info(tmp_path, "ds")
    assert str(tmp_path / "ds" / MANIFEST_NAME) in str(exc.value)


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    folder = _make_coco_dataset(tmp_path, manifest='{\n  "format": "coco",\n  oops\n}')
    with pytest.raises(DatasetError, match=r"invalid JSON at line 3 column 3") as exc:
        load_dataset_info(tmp_path, "ds")
    assert str(folder / MANIFEST_NAME) in str(exc.value)


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ([1, 2], "must be a JSON object"),
        ({"format": "coco", "classes": ["a"]}, "missing key.*splits"),
        (_manifest(clases=["a"]), "unknown key.*clases"),
        (_manifest(format="voc"), "unknown format 'voc'"),
        (_manifest(format=3), "field 'format'"),
        (_manifest(classes=[]), "field 'classes'"),
        (_manifest(classes="a"), "field 'classes'"),
        (_manifest(classes=["a", ""]), r"classes\[1\]"),
        (_manifest(classes=["a", 1]), r"classes\[1\]"),
        (_manifest(classes=["a", "a"]), "duplicate class name 'a'"),
        (_manifest(splits={}), "field 'splits'"),
        (_manifest(splits={"train": "annotations/train.json"}), "splits.train"),
        (_manifest(splits={"train": {"ann_file": "annotations/train.json"}}), "missing.*img_dir"),
        (_train_split(ann_file=5), "splits.train.ann_file"),
        (_train_split(ann_file="annotations/train.txt"), "must be a .json file"),
        (_train_split(ann_file="annotations/no.json"), r"splits.train.ann_file.*does not exist"),
        (_train_split(img_dir="images/nope"), r"splits.train.img_dir.*does not exist"),
        (_train_split(ann_file="../x.json"), r"leaves the data set folder"),
        (_train_split(img_dir="images/../../x"), r"splits.train.img_dir.*leaves the data set"),
        (_train_split(ann_file="/etc/passwd.json"), "must be relative"),
        (_train_split(ann_file="annotations\\train.json"), "backslash"),
        (_manifest(format="crowdhuman"), "crowdhuman data sets must have classes"),
        (_manifest(format="crowdhuman", classes=["person"]), "must be a .odgt file"),
    ],
)
def test_invalid_manifest(tmp_path: Path, manifest: object, match: str) -> None:
    folder = _make_coco_dataset(tmp_path, manifest=manifest)
    with pytest.raises(DatasetError, match=match) as exc:
        load_dataset_info(tmp_path, "ds")
    assert str(folder / MANIFEST_NAME) in str(exc.value)


def test_traversal_target_not_touched(tmp_path: Path) -> None:
    # The escaping file exists: the check must be on the path, not existence.
    (tmp_path / "x.json").write_text("{}")
    _make_coco_dataset(tmp_path, manifest=_train_split(ann_file="../x.json"))
    with pytest.raises(DatasetError, match="leaves the data set folder"):
        load_dataset_info(tmp_path, "ds")


def test_crowdhuman_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "ch"
    (folder / "Images").mkdir(parents=True)
    (folder / "annotation_train.odgt").write_text("")
    write_manifest(
        folder,
        format="crowdhuman",
        classes=["person"],
        splits={"train": {"ann_file": Path("annotation_train.odgt"), "img_dir": "Images"}},
    )
    info = load_dataset_info(tmp_path, "ch")
    assert info.format == "crowdhuman" and info.classes == ("person",)
    assert info.split("train").ann_file == folder / "annotation_train.odgt"


def test_write_manifest_validates_and_is_atomic(tmp_path: Path) -> None:
    folder = _make_coco_dataset(tmp_path)
    before = (folder / MANIFEST_NAME).read_bytes()
    with pytest.raises(DatasetError, match="unknown format"):
        write_manifest(folder, format="yolo", classes=["a"], splits=_train_split()["splits"])
    with pytest.raises(DatasetError, match="leaves the data set folder"):
        splits = _train_split(ann_file="../a.json")["splits"]
        write_manifest(folder, format="coco", classes=["a"], splits=splits)
    with pytest.raises(DatasetError, match="field 'splits.train'"):
        write_manifest(folder, format="coco", classes=["a"], splits={"train": "a.json"})
    assert (folder / MANIFEST_NAME).read_bytes() == before  # rejected writes change nothing
    path = write_manifest(
        folder,
        format="coco",
        classes=["z"],
        splits={"train": {"ann_file": "annotations/train.json", "img_dir": "images/train"}},
    )
    assert path == folder / MANIFEST_NAME
    assert load_dataset_info(tmp_path, "ds").classes == ("z",)
    assert sorted(p.name for p in folder.iterdir()) == ["annotations", "images", MANIFEST_NAME]


def test_list_datasets(tmp_path: Path) -> None:
    make_coco_shapes(tmp_path, "zeta", num_train=1, num_val=1)
    _make_coco_dataset(tmp_path, "alpha")
    (tmp_path / "no_manifest").mkdir()  # skipped: not a data set
    (tmp_path / "README.txt").write_text("not a folder")
    _make_coco_dataset(tmp_path, ".zeta.abc.tmp")  # generator temp folder: skipped
    infos = list_datasets(tmp_path)
    assert [i.name for i in infos] == ["alpha", "zeta"]
    assert infos[1].classes == ("rectangle", "ellipse", "triangle")


def test_list_datasets_broken_manifest_raises(tmp_path: Path) -> None:
    _make_coco_dataset(tmp_path, "good")
    folder = _make_coco_dataset(tmp_path, "bad", manifest="{not json")
    with pytest.raises(DatasetError) as exc:
        list_datasets(tmp_path)
    assert str(folder / MANIFEST_NAME) in str(exc.value)


def test_list_datasets_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="data root does not exist"):
        list_datasets(tmp_path / "missing")
    assert list_datasets(tmp_path) == []


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_import_does_not_pull_in_torch() -> None:
    code = (
        "import sys; import pgd_core.data.manifest, pgd_core.data.synthetic_shapes; "
        "assert 'torch' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
