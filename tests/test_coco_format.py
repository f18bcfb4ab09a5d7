"""The strict COCO instances validator (pgd_core.data.coco): a generated data
set passes with the right counts, and every error names the file and the entry."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from pgd_core.data.coco import CocoSummary, validate_coco
from pgd_core.data.manifest import DatasetError
from pgd_core.data.synthetic_shapes import make_coco_shapes

# ----------------------------------------------------------------------------- helpers

BASE = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 50, "height": 50},
        {"id": 3, "file_name": "c.png", "width": 50, "height": 50},
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 40], "area": 1200.0},
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "bbox": [5.5, 6.0, 10.25, 3.5],
            "area": 35.875,
            "iscrowd": 0,
        },
        {
            "id": 12,
            "image_id": 2,
            "category_id": 2,
            "bbox": [0, 0, 50, 50],
            "area": 2500,
            "iscrowd": 1,
        },
    ],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
}


def coco() -> dict:
    """A fresh copy of the small valid file, for a test to break."""
    return copy.deepcopy(BASE)


def write(tmp_path: Path, data: object, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def error_of(path: Path, **kwargs) -> str:
    """The DatasetError message of validating ``path``; it must name the file."""
    with pytest.raises(DatasetError) as info:
        validate_coco(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def broken(tmp_path: Path, section: str, index: int, **changes) -> Path:
    """The valid file with entry ``section[index]`` updated (``None`` deletes a key)."""
    data = coco()
    entry = data[section][index]
    for key, value in changes.items():
        if value is None:
            del entry[key]
        else:
            entry[key] = value
    return write(tmp_path, data)


# ----------------------------------------------------------------------------- valid files


def test_valid_small_file_counts(tmp_path: Path) -> None:
    summary = validate_coco(write(tmp_path, coco()))
    assert summary == CocoSummary(num_images=3, num_boxes=3, num_ignored=1, num_empty_images=1)
    assert summary.report("toy/train") == (
        "toy/train: 3 images, 3 boxes, 1 ignored (iscrowd), 0 skipped (zero size), 1 without boxes"
    )
    assert summary.report().startswith("annotations: 3 images")


def test_generated_dataset_passes_with_correct_counts(tmp_path: Path) -> None:
    info = make_coco_shapes(tmp_path, "shapes", num_train=12, num_val=4, image_size=(64, 64))
    for split in ("train", "val"):
        s = info.split(split)
        data = json.loads(s.ann_file.read_text())
        annotated = {ann["image_id"] for ann in data["annotations"]}
        summary = validate_coco(s.ann_file, img_dir=s.img_dir, classes=info.classes)
        assert summary.num_images == len(data["images"])
        assert summary.num_boxes == len(data["annotations"]) > 0
        assert summary.num_ignored == 0
        assert summary.num_empty_images == len(data["images"]) - len(annotated)
        assert summary.report(f"shapes/{split}") == (
            f"shapes/{split}: {summary.num_images} images, {summary.num_boxes} boxes, "
            f"0 ignored (iscrowd), 0 skipped (zero size), {summary.num_empty_images} without boxes"
        )


def test_iscrowd_counted_not_dropped(tmp_path: Path) -> None:
    data = coco()
    for ann in data["annotations"]:
        ann["iscrowd"] = 1
    data["annotations"].append(
        {"id": 13, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4}
    )
    summary = validate_coco(write(tmp_path, data))
    assert (summary.num_boxes, summary.num_ignored, summary.num_empty_images) == (4, 3, 0)


def test_no_annotations_is_valid(tmp_path: Path) -> None:
    data = coco()
    data["annotations"] = []
    summary = validate_coco(write(tmp_path, data))
    assert summary == CocoSummary(num_images=3, num_boxes=0, num_ignored=0, num_empty_images=3)


def test_optional_fields_and_extra_keys_accepted(tmp_path: Path) -> None:
    data = coco()
    data["info"] = {"description": "x"}
    data["licenses"] = []
    data["annotations"][0].update(segmentation=[[1, 2, 31, 2, 31, 42]], ignore=0)
    data["categories"][0]["supercategory"] = "shape"
    # Boxes may stick out of the image as long as they overlap it.
    data["annotations"][1]["bbox"] = [-5, -5, 10, 10]
    assert validate_coco(write(tmp_path, data)).num_boxes == 3


# ----------------------------------------------------------------------------- file level


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.json")
    assert "does not exist" in message


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n', encoding="utf-8")
    message = error_of(path)
    assert "invalid JSON at line 3 column 19" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"images": "\xe9"}')
    assert "not valid UTF-8" in error_of(path)


@pytest.mark.parametrize("data", [[], "x", 3, None])
def test_top_level_not_object(tmp_path: Path, data: object) -> None:
    assert "top level must be a JSON object" in error_of(write(tmp_path, data))


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_top_level_key_missing_or_not_list(tmp_path: Path, key: str) -> None:
    data = coco()
    del data[key]
    assert f"missing top-level key(s) {key}" in error_of(write(tmp_path, data))
    data[key] = {"0": {}}
    assert f"top-level '{key}' must be a list, got dict" in error_of(write(tmp_path, data))


@pytest.mark.parametrize("key", ["images", "categories"])
def test_empty_images_or_categories(tmp_path: Path, key: str) -> None:
    data = coco()
    data[key] = []
    data["annotations"] = []
    assert f"'{key}' is empty" in error_of(write(tmp_path, data))


# ----------------------------------------------------------------------------- images


def test_image_not_an_object(tmp_path: Path) -> None:
    data = coco()
    data["images"][1] = [2, "b.png"]
    assert "images[1]: must be an object" in error_of(write(tmp_path, data))


@pytest.mark.parametrize("key", ["id", "file_name", "width", "height"])
def test_image_missing_field(tmp_path: Path, key: str) -> None:
    message = error_of(broken(tmp_path, "images", 1, **{key: None}))
    assert "images[1]" in message and f"missing field(s) {key}" in message


@pytest.mark.parametrize("bad_id", ["2", 2.0, True, None])
def test_image_id_not_integer(tmp_path: Path, bad_id: object) -> None:
    data = coco()
    data["images"][1]["id"] = bad_id
    message = error_of(write(tmp_path, data))
    assert "images[1]: field 'id': must be an integer" in message


@pytest.mark.parametrize(
    ("width", "height"), [(0, 50), (50, -1), (50.0, 50), ("50", 50), (True, 50), (50, None)]
)
def test_image_bad_size(tmp_path: Path, width: object, height: object) -> None:
    data = coco()
    data["images"][2].update(width=width, height=height)
    message = error_of(write(tmp_path, data))
    assert "images[2] (image id 3)" in message
    assert "width and height must be positive integers" in message
    assert f"width={width!r}" in message


def test_duplicate_image_id(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "images", 2, id=1))
    assert "images[2] (image id 1): duplicate image id 1" in message


def test_duplicate_file_name(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "images", 2, file_name="a.png"))
    assert "images[2] (image id 3)" in message
    assert "'a.png' is also used by image id 1" in message


@pytest.mark.parametrize("file_name", ["", "../x.png", "/etc/x.png", "sub/../../x.png", 7])
def test_bad_file_name(tmp_path: Path, file_name: object) -> None:
    message = error_of(broken(tmp_path, "images", 0, file_name=file_name))
    assert "images[0] (image id 1): field 'file_name'" in message


# ----------------------------------------------------------------------------- annotations


def test_annotation_not_an_object(tmp_path: Path) -> None:
    data = coco()
    data["annotations"][2] = None
    assert "annotations[2]: must be an object, got None" in error_of(write(tmp_path, data))


@pytest.mark.parametrize("key", ["image_id", "category_id", "bbox", "area"])
def test_annotation_missing_field_names_id(tmp_path: Path, key: str) -> None:
    message = error_of(broken(tmp_path, "annotations", 1, **{key: None}))
    assert f"annotations[1] (annotation id 11): missing field(s) {key}" in message


def test_annotation_missing_id(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "annotations", 1, id=None, bbox=None))
    assert "annotations[1]: missing field(s) id, bbox" in message


def test_annotation_id_not_integer(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "annotations", 1, id="11"))
    assert "annotations[1]: field 'id': must be an integer, got '11'" in message


def test_duplicate_annotation_id(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "annotations", 2, id=10))
    assert "annotations[2] (annotation id 10): duplicate annotation id 10" in message


@pytest.mark.parametrize(
    "bbox",
    [
        [1, 2, 3],
        [1, 2, 3, 4, 5],
        "1 2 3 4",
        {"x": 1},
        [1, 2, "3", 4],
        [1, 2, True, 4],
        [1, 2, None, 4],
        [1, 2, float("nan"), 4],
        [1, 2, 3, float("inf")],
    ],
)
def test_bbox_not_four_finite_numbers(tmp_path: Path, bbox: object) -> None:
    message = error_of(broken(tmp_path, "annotations", 1, bbox=bbox))
    assert "annotations[1] (annotation id 11): field 'bbox': must be [x, y, w, h]" in message


@pytest.mark.parametrize("bbox", [[1, 2, -3, 4], [1, 2, 3, -0.5]])
def test_negative_box_size_names_annotation(tmp_path: Path, bbox: list) -> None:
    message = error_of(broken(tmp_path, "annotations", 1, bbox=bbox))
    assert "annotation id 11" in message and "negative box size" in message


@pytest.mark.parametrize("bbox", [[1, 2, 0, 4], [1, 2, 3, 0.0], [1, 2, 0, 0]])
def test_zero_size_box_is_counted_not_fatal(tmp_path: Path, bbox: list) -> None:
    # COCO train2017 has two such boxes (area 0): mmdet skips them; we count and report.
    summary = validate_coco(broken(tmp_path, "annotations", 2, bbox=bbox, area=0))
    assert summary.num_degenerate == 1
    assert "1 skipped (zero size)" in summary.report("x")


def test_unknown_image_id_names_annotation_and_image(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "annotations", 1, image_id=99))
    assert "annotation id 11" in message and "image id 99 is not among the images" in message


def test_string_image_id_is_unknown(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "annotations", 0, image_id="1"))
    assert "annotation id 10" in message and "image id '1' is not among" in message


def test_unknown_category_names_annotation_and_category(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "annotations", 2, category_id=7))
    assert "annotation id 12" in message and "category id 7 is not declared" in message


@pytest.mark.parametrize("bbox", [[100, 0, 5, 5], [0, 80, 5, 5], [-10, 0, 10, 5], [0, -9, 5, 9]])
def test_box_outside_image(tmp_path: Path, bbox: list) -> None:
    message = error_of(broken(tmp_path, "annotations", 0, bbox=bbox))
    assert "annotation id 10" in message and "outside image id 1 (100x80)" in message


@pytest.mark.parametrize("area", [0, -1.0, "12", None, float("nan")])
def test_bad_area(tmp_path: Path, area: object) -> None:
    data = coco()
    data["annotations"][0]["area"] = area
    message = error_of(write(tmp_path, data))
    assert "annotation id 10" in message and "field 'area'" in message


@pytest.mark.parametrize("iscrowd", [2, -1, True, "1", 1.0, None])
def test_bad_iscrowd(tmp_path: Path, iscrowd: object) -> None:
    data = coco()
    data["annotations"][1]["iscrowd"] = iscrowd
    message = error_of(write(tmp_path, data))
    assert "annotation id 11" in message and "field 'iscrowd': must be 0 or 1" in message


@pytest.mark.parametrize("ignore", [1, True])
def test_ignore_key_refused(tmp_path: Path, ignore: object) -> None:
    message = error_of(broken(tmp_path, "annotations", 0, ignore=ignore))
    assert "annotation id 10" in message and "field 'ignore'" in message and "iscrowd" in message


# ----------------------------------------------------------------------------- categories


def test_duplicate_category_id(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "categories", 1, id=1))
    assert "categories[1] (category id 1): duplicate category id 1" in message
    assert "'circle'" in message


def test_duplicate_category_name(tmp_path: Path) -> None:
    message = error_of(broken(tmp_path, "categories", 1, name="circle"))
    assert "duplicate category name 'circle'" in message and "category id 1" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": None}, "missing field(s) name"),
        ({"id": None}, "missing field(s) id"),
        ({"id": "2"}, "field 'id': must be an integer"),
        ({"name": ""}, "field 'name': must be a non-empty string"),
        ({"name": 3}, "field 'name': must be a non-empty string"),
    ],
)
def test_bad_category(tmp_path: Path, changes: dict, expected: str) -> None:
    message = error_of(broken(tmp_path, "categories", 1, **changes))
    assert "categories[1]" in message and expected in message


def test_category_not_an_object(tmp_path: Path) -> None:
    data = coco()
    data["categories"][0] = "circle"
    assert "categories[0]: must be an object" in error_of(write(tmp_path, data))


# ----------------------------------------------------------------------------- classes


def test_classes_match_as_a_set(tmp_path: Path) -> None:
    path = write(tmp_path, coco())
    assert validate_coco(path, classes=["square", "circle"]).num_boxes == 3
    assert validate_coco(path, classes=("circle", "square")).num_boxes == 3


def test_classes_mismatch_names_missing_and_extra(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, coco()), classes=["circle", "triangle", "star"])
    assert "do not match the data set's classes" in message
    assert "missing from the file: 'star', 'triangle'" in message
    assert "not in the class list: 'square'" in message


def test_classes_subset_is_a_mismatch(tmp_path: Path) -> None:
    # mmdet would silently drop every 'square' box if only 'circle' were configured.
    message = error_of(write(tmp_path, coco()), classes=["circle"])
    assert "not in the class list: 'square'" in message and "missing from" not in message


def test_classes_as_string_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        validate_coco(write(tmp_path, coco()), classes="circle")


# ----------------------------------------------------------------------------- image files


def _images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"png")
    return folder


def test_image_files_present(tmp_path: Path) -> None:
    img_dir = _images(tmp_path / "imgs", "a.png", "b.png", "c.png")
    assert validate_coco(write(tmp_path, coco()), img_dir=img_dir).num_images == 3


def test_missing_image_file_names_first_and_count(tmp_path: Path) -> None:
    img_dir = _images(tmp_path / "imgs", "b.png")
    message = error_of(write(tmp_path, coco()), img_dir=img_dir)
    assert "2 of 3 image files missing" in message
    assert f"first: {img_dir / 'a.png'} (image id 1)" in message


def test_image_files_in_subfolders(tmp_path: Path) -> None:
    data = coco()
    data["images"][0]["file_name"] = "sub/a.png"
    data["images"][1]["file_name"] = "sub/deeper/b.png"
    path = write(tmp_path, data)
    img_dir = _images(tmp_path / "imgs", "sub/a.png", "sub/deeper/b.png", "c.png")
    assert validate_coco(path, img_dir=img_dir).num_images == 3
    (img_dir / "sub" / "deeper" / "b.png").unlink()
    message = error_of(path, img_dir=img_dir)
    assert "1 of 3 image files missing" in message and "sub/deeper/b.png (image id 2)" in message


def test_folder_is_not_an_image_file(tmp_path: Path) -> None:
    img_dir = _images(tmp_path / "imgs", "a.png", "c.png")
    (img_dir / "b.png").mkdir()
    assert "1 of 3 image files missing" in error_of(write(tmp_path, coco()), img_dir=img_dir)


def test_missing_image_folder(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, coco()), img_dir=tmp_path / "none")
    assert re.search(r"image folder .*none does not exist", message)


# ----------------------------------------------------------------------------- scale


def test_many_annotations_linear(tmp_path: Path) -> None:
    """10k images, 50k boxes: a quadratic check would take minutes, this well under a second."""
    images = [
        {"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(10_000)
    ]
    anns = [
        {
            "id": k,
            "image_id": k % 9_500,
            "category_id": 1 + k % 2,
            "bbox": [1.5, 2.0, 10.0, 20.0],
            "area": 200.0,
            "iscrowd": int(k % 50 == 0),
        }
        for k in range(50_000)
    ]
    data = {"images": images, "annotations": anns, "categories": BASE["categories"]}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    summary = validate_coco(path)
    assert summary == CocoSummary(
        num_images=10_000, num_boxes=50_000, num_ignored=1_000, num_empty_images=500
    )
