"""CrowdHuman: the strict .odgt reader, the synthetic crowd generator, and the
MR^-2 / AP / JI evaluation (hand-checked cases, then mmdet 3.3's CrowdHumanMetric
as the reference on random crowded data)."""

from __future__ import annotations

import itertools
import json
import queue
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgd_core.data.manifest import DatasetError, load_dataset_info
from pgd_core.data.odgt import (
    OdgtRecord,
    read_image_sizes,
    read_odgt,
    summarize_odgt,
)
from pgd_core.data.synthetic_crowd import make_crowdhuman_like
from pgd_core.evaluation.crowdhuman import (
    JI_SCORE_THRESHOLDS,
    METRIC_KEYS,
    CrowdHumanEvalError,
    DetectionError,
    crowdhuman_evaluate,
    crowdhuman_metrics,
    plot_mr_fppi,
)

GOOD_LINE = {"ID": "img-a", "gtboxes": []}


# ----------------------------------------------------------------------------- helpers


def entry(fbox: list[float], tag: str = "person", ignore: int | None = 0, **extra_fields) -> dict:
    """A gtboxes entry; ``ignore=None`` leaves ``extra`` out entirely."""
    box = {"tag": tag, "fbox": fbox, "vbox": list(fbox), "hbox": list(fbox), "head_attr": {}}
    if ignore is not None:
        box["extra"] = {"ignore": ignore}
    box.update(extra_fields)
    return box


def write_odgt(path: Path, records: list[dict | str]) -> Path:
    """One line per record; strings are written verbatim (for malformed lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def det(image_id: str, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score}


def iou_xywh(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def files_of(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- read_odgt


def test_read_odgt_keeps_boxes_and_ignore_regions(tmp_path: Path) -> None:
    path = write_odgt(
        tmp_path / "a.odgt",
        [
            {
                "ID": "273271,c9db000d5146c15",
                "gtboxes": [
                    entry([-5, 2, 10, 20]),  # crosses the border: allowed
                    entry([30, 2, 10.5, 20], ignore=1),  # flagged person
                    entry([50, 0, 40, 10], tag="mask"),  # mask region, no ignore flag needed
                    entry([60, 2, 10, 20], ignore=None, vbox=[60, 2, 0, 0]),  # no extra; empty vbox
                ],
            },
            {"ID": "b", "gtboxes": [], "unknown_field": 1},
        ],
    )
    records = read_odgt(path)
    assert [r.image_id for r in records] == ["273271,c9db000d5146c15", "b"]
    first = records[0]
    assert first.line == 1 and first.file_name == "273271,c9db000d5146c15.jpg"
    assert first.tags == ("person", "person", "mask", "person")
    assert first.ignore.tolist() == [False, True, True, False]
    np.testing.assert_array_equal(first.fboxes[1], [30, 2, 10.5, 20])
    np.testing.assert_array_equal(first.vboxes[3], [60, 2, 0, 0])
    assert first.person_fboxes().shape == (2, 4) and first.ignore_fboxes().shape == (2, 4)
    assert records[1].num_boxes == 0 and records[1].fboxes.shape == (0, 4)
    with pytest.raises(ValueError):
        first.fboxes[0, 0] = 1.0  # records are read-only


def test_summary_reports_ignored_boxes(tmp_path: Path) -> None:
    path = write_odgt(
        tmp_path / "s.odgt",
        [
            {
                "ID": "a",
                "gtboxes": [
                    entry([0, 0, 5, 9]),
                    entry([9, 0, 5, 9], ignore=1),
                    entry([0, 0, 50, 9], tag="mask", ignore=1),
                ],
            },
            {"ID": "b", "gtboxes": [entry([0, 0, 5, 9]), entry([9, 0, 5, 9], tag="mask")]},
        ],
    )
    summary = summarize_odgt(read_odgt(path))
    assert (summary.num_images, summary.num_boxes, summary.num_persons) == (2, 5, 2)
    assert (summary.num_ignored, summary.num_mask, summary.num_flagged) == (3, 2, 1)
    assert summary.report("s.odgt") == (
        "s.odgt: 2 images, 5 boxes: 2 persons evaluated, 3 ignored "
        "(2 'mask' regions, 1 with extra.ignore=1)"
    )


def test_read_odgt_accepts_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "crlf.odgt"
    path.write_bytes(b'{"ID": "a", "gtboxes": []}\r\n{"ID": "b", "gtboxes": []}\r\n\r\n\n')
    assert [r.image_id for r in read_odgt(path)] == ["a", "b"]


BAD_LINES = [
    # (line 2 content, expected message part, box index named or None)
    ('{"ID": "b", "gtboxes": [', "invalid JSON", None),
    ("[1, 2]", "must be a JSON object", None),
    ({"gtboxes": []}, "missing field 'ID'", None),
    ({"ID": "b"}, "missing field 'gtboxes'", None),
    ({"ID": 7, "gtboxes": []}, "field 'ID'", None),
    ({"ID": "", "gtboxes": []}, "field 'ID'", None),
    ({"ID": "../etc/x", "gtboxes": []}, "cannot be used as a file name", None),
    ({"ID": "b", "gtboxes": {}}, "field 'gtboxes': must be a list", None),
    ({"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), 3]}, "must be an object", 1),
    (
        {
            "ID": "b",
            "gtboxes": [
                entry([0, 0, 1, 1]),
                {"tag": "person", "fbox": [0, 0, 1, 1], "vbox": [0, 0, 1, 1]},
            ],
        },
        "hbox",
        1,
    ),
    ({"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), {"fbox": [0, 0, 1, 1]}]}, "tag", 1),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 1, 1], tag="people")]},
        "unknown tag 'people'",
        1,
    ),
    ({"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 1])]}, "field 'fbox'", 1),
    ({"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, "1", 1])]}, "field 'fbox'", 1),
    ({"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, True, 1])]}, "field 'fbox'", 1),
    (
        '{"ID": "b", "gtboxes": [{"tag": "person", "fbox": [0, 0, NaN, 1], "vbox": [0, 0, 1, 1],'
        ' "hbox": [0, 0, 1, 1]}]}',
        "finite",
        0,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 0, 10])]},
        "width and height must be > 0",
        1,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 5, -3])]},
        "width and height must be > 0",
        1,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 5, 5], vbox=[0, 0, -1, 2])]},
        "field 'vbox': width and height must be >= 0",
        1,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 5, 5], extra=[1])]},
        "field 'extra'",
        1,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 5, 5], ignore=2)]},
        "field 'extra.ignore': must be 0 or 1",
        1,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 5, 5], ignore=True)]},
        "field 'extra.ignore'",
        1,
    ),
    (
        {"ID": "b", "gtboxes": [entry([0, 0, 1, 1]), entry([0, 0, 5, 5], head_attr="x")]},
        "field 'head_attr'",
        1,
    ),
    ({"ID": "img-a", "gtboxes": []}, "repeats line 1", None),
]


@pytest.mark.parametrize(("line", "message", "box"), BAD_LINES)
def test_read_odgt_errors_name_file_line_and_box(
    tmp_path: Path, line: object, message: str, box: int | None
) -> None:
    path = write_odgt(tmp_path / "bad.odgt", [GOOD_LINE, line, GOOD_LINE | {"ID": "c"}])
    with pytest.raises(DatasetError) as info:
        read_odgt(path)
    text = str(info.value)
    assert str(path) in text and "line 2" in text and message in text, text
    if box is not None:
        assert f"gtboxes[{box}]" in text, text


def test_read_odgt_blank_line_between_records(tmp_path: Path) -> None:
    path = tmp_path / "blank.odgt"
    path.write_text('{"ID": "a", "gtboxes": []}\n\n{"ID": "b", "gtboxes": []}\n')
    with pytest.raises(DatasetError, match=r"blank\.odgt: line 2: blank line"):
        read_odgt(path)


def test_read_odgt_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.odgt"
    path.write_bytes(b'{"ID": "a", "gtboxes": []}\n{"ID": "\xe9", "gtboxes": []}\n')
    with pytest.raises(DatasetError, match=r"latin\.odgt: line 2: not valid UTF-8"):
        read_odgt(path)


def test_read_odgt_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.odgt: annotation file does not exist"):
        read_odgt(tmp_path / "nope.odgt")
    (tmp_path / "empty.odgt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.odgt: annotation file contains no records"):
        read_odgt(tmp_path / "empty.odgt")


# ----------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory):
    """The default synthetic data set (16 train + 8 val images, seed 0)."""
    root = tmp_path_factory.mktemp("crowd")
    return make_crowdhuman_like(root)


def test_generator_layout_and_manifest(crowd) -> None:
    info = load_dataset_info(crowd.root.parent, crowd.name)
    assert info.format == "crowdhuman" and info.classes == ("person",)
    for split, count in (("train", 16), ("val", 8)):
        records = read_odgt(info.split(split).ann_file)
        assert len(records) == count
        cache = json.loads((info.root / f"id_hw_{split}.json").read_text())
        sizes = read_image_sizes(info.split(split).img_dir, records)
        for record in records:
            assert sizes[record.image_id] == (320, 240)
            assert cache[record.image_id] == [240, 320]  # mmdet's (height, width)
            with Image.open(info.split(split).img_dir / record.file_name) as image:
                assert image.format == "JPEG"
        assert len(list(info.split(split).img_dir.iterdir())) == count
    assert not [p for p in info.root.parent.iterdir() if p.name.startswith(".")]


def test_generator_is_deterministic(tmp_path: Path) -> None:
    kw = dict(num_train=3, num_val=2, image_size=(160, 120), seed=5)
    a = files_of(make_crowdhuman_like(tmp_path / "a", **kw).root)
    b = files_of(make_crowdhuman_like(tmp_path / "b", **kw).root)
    c = files_of(make_crowdhuman_like(tmp_path / "c", **(kw | {"seed": 6})).root)
    assert a == b
    assert a.keys() != c.keys()  # IDs depend on the seed, as does everything else


def test_generator_makes_crowds(crowd) -> None:
    records = read_odgt(crowd.split("train").ann_file) + read_odgt(crowd.split("val").ann_file)
    counts, pairs, aspects, crossing = [], [], [], 0
    for record in records:
        boxes = record.fboxes[np.array(record.tags) == "person"]
        counts.append(len(boxes))
        pairs.append(sum(iou_xywh(a, b) > 0.5 for a, b in itertools.combinations(boxes, 2)))
        aspects.extend(boxes[:, 2] / boxes[:, 3])
        right, bottom = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        crossing += int(
            ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (right > 320) | (bottom > 240)).sum()
        )
    assert min(counts) >= 1 and max(counts) <= 30  # people hidden behind others are dropped
    assert np.mean(counts) >= 10
    # CrowdHuman averages 2.4 person pairs with IoU > 0.5 per image (COCO: 0.02).
    assert np.mean(pairs) >= 1.5
    assert 0.37 <= np.mean(aspects) <= 0.45
    assert crossing > 0


def test_generator_has_both_kinds_of_ignore_region(crowd) -> None:
    summary = summarize_odgt(read_odgt(crowd.split("train").ann_file))
    assert summary.num_mask > 0 and summary.num_flagged > 0
    assert 0.03 <= summary.num_flagged / summary.num_boxes <= 0.25
    assert summary.num_persons > 0.75 * summary.num_boxes


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_people": 0}, "min_people"),
        ({"min_people": 8, "max_people": 4}, "must not exceed"),
        ({"max_people": 501}, "max_people"),
        ({"num_val": 0}, "num_val"),
        ({"image_size": (8, 240)}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"num_train": True}, "num_train"),
    ],
)
def test_generator_rejects_bad_arguments(tmp_path: Path, kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        make_crowdhuman_like(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_generator_overwrite_rules(tmp_path: Path) -> None:
    kw = dict(num_train=1, num_val=1, image_size=(64, 48))
    with pytest.raises(DatasetError):
        make_crowdhuman_like(tmp_path, "../x", **kw)
    first = make_crowdhuman_like(tmp_path, "c", **kw)
    with pytest.raises(FileExistsError):
        make_crowdhuman_like(tmp_path, "c", **kw)
    second = make_crowdhuman_like(tmp_path, "c", seed=1, overwrite=True, **kw)
    assert first.root == second.root
    assert read_odgt(second.split("val").ann_file)[0].image_id.startswith("200000,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_generator_loads_in_mmdet_crowdhuman_dataset(crowd) -> None:
    pytest.importorskip("mmdet")
    from mmdet.datasets import CrowdHumanDataset

    before = files_of(crowd.root)
    for split in ("train", "val"):
        records = read_odgt(crowd.split(split).ann_file)
        dataset = CrowdHumanDataset(
            data_root=str(crowd.root),
            ann_file=f"{split}.odgt",
            data_prefix=dict(img=f"images/{split}/"),
            pipeline=[],
            test_mode=True,
        )
        assert len(dataset) == len(records)
        ignored = 0
        for index, record in enumerate(records):
            info = dataset.get_data_info(index)
            assert info["img_id"] == record.image_id and Path(info["img_path"]).is_file()
            assert (info["height"], info["width"]) == (240, 320)
            flags = [inst["ignore_flag"] for inst in info["instances"]]
            assert flags == record.ignore.astype(int).tolist()
            boxes = np.array([inst["bbox"] for inst in info["instances"]]).reshape(-1, 4)
            np.testing.assert_array_equal(boxes[:, :2], record.fboxes[:, :2])
            np.testing.assert_array_equal(boxes[:, 2:], record.fboxes[:, :2] + record.fboxes[:, 2:])
            ignored += sum(flags)
        assert ignored == summarize_odgt(records).num_ignored
    # The id_hw caches were found, so mmdet neither decoded images nor wrote into the data set.
    assert files_of(crowd.root) == before


# ----------------------------------------------------------------------------- metrics


@pytest.fixture()
def two_images(tmp_path: Path) -> Path:
    """Image a: 3 persons and a mask region; image b: 2 persons and a flagged person."""
    return write_odgt(
        tmp_path / "val.odgt",
        [
            {
                "ID": "a",
                "gtboxes": [
                    entry([0, 0, 20, 50]),
                    entry([40, 0, 20, 50]),
                    entry([80, 0, 20, 50]),
                    entry([200, 0, 60, 40], tag="mask"),
                ],
            },
            {
                "ID": "b",
                "gtboxes": [
                    entry([0, 0, 20, 50]),
                    entry([100, 0, 20, 50]),
                    entry([300, 0, 20, 50], ignore=1),
                ],
            },
        ],
    )


PERSONS = {
    "a": [[0, 0, 20, 50], [40, 0, 20, 50], [80, 0, 20, 50]],
    "b": [[0, 0, 20, 50], [100, 0, 20, 50]],
}


def perfect_detections() -> list[dict]:
    scores = iter([0.95, 0.9, 0.85, 0.8, 0.75])
    return [det(image, box, next(scores)) for image, boxes in PERSONS.items() for box in boxes]


def test_perfect_detections(two_images: Path) -> None:
    metrics = crowdhuman_metrics(two_images, perfect_detections())
    assert list(metrics) == list(METRIC_KEYS)
    assert metrics["MR"] == 0.0
    assert metrics["AP"] == pytest.approx(100 * (1 - 1 / 5), abs=1e-12)  # from the first point
    assert metrics["JI"] == 100.0


def test_no_detections(two_images: Path) -> None:
    evaluation = crowdhuman_evaluate(two_images, [])
    assert evaluation.metrics == {"MR": 100.0, "AP": 0.0, "JI": 0.0}
    assert evaluation.recall.size == 0 and evaluation.num_persons == 5


def test_half_missed(two_images: Path) -> None:
    path = write_odgt(
        two_images.parent / "half.odgt",
        [
            {
                "ID": "h",
                "gtboxes": [
                    entry([0, 0, 20, 50]),
                    entry([40, 0, 20, 50]),
                    entry([80, 0, 20, 50]),
                    entry([120, 0, 20, 50]),
                ],
            }
        ],
    )
    metrics = crowdhuman_metrics(
        path, [det("h", [0, 0, 20, 50], 0.9), det("h", [80, 0, 20, 50], 0.8)]
    )
    # PR curve (0.25, 1) -> (0.5, 1): area 0.25; no FP, so every FPPI reads the last miss rate.
    assert metrics["AP"] == pytest.approx(25.0)
    assert metrics["MR"] == pytest.approx(50.0)
    assert metrics["JI"] == pytest.approx(50.0)  # k / (m + n - k) = 2 / (4 + 2 - 2)


def test_false_positives_only(two_images: Path) -> None:
    dets = [det("a", [500, 500, 20, 50], 0.9), det("b", [150, 0, 20, 50], 0.5)]
    evaluation = crowdhuman_evaluate(two_images, dets)
    assert evaluation.metrics == {"MR": 100.0, "AP": 0.0, "JI": 0.0}
    np.testing.assert_array_equal(evaluation.fppi, [0.5, 1.0])


def test_hand_computed_mixed_case(tmp_path: Path) -> None:
    path = write_odgt(
        tmp_path / "m.odgt",
        [{"ID": "a", "gtboxes": [entry([0, 0, 10, 20]), entry([50, 0, 10, 20])]}],
    )
    dets = [
        det("a", [0, 0, 10, 20], 0.9),
        det("a", [100, 0, 10, 20], 0.8),
        det("a", [50, 0, 10, 20], 0.7),
    ]
    evaluation = crowdhuman_evaluate(path, dets)
    # TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3, FPPI 0 1 1 (one image).
    np.testing.assert_allclose(evaluation.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(evaluation.precision, [1.0, 0.5, 2 / 3])
    assert evaluation.metrics["AP"] == pytest.approx(100 * 0.5 * (0.5 + 2 / 3) / 2)
    # Every reference FPPI (<= 1) is first reached at the FP, where the miss rate is 0.5.
    assert evaluation.metrics["MR"] == pytest.approx(50.0)
    np.testing.assert_allclose(evaluation.mr_reference_miss_rate, 0.5)
    # JI: all 3 kept up to 0.6 -> 2/3; > 0.7 keeps TP+FP -> 1/3; > 0.8 keeps TP -> 1/2.
    expected = [2 / 3] * 7 + [1 / 3, 1 / 2, 0.0]
    np.testing.assert_allclose(evaluation.ji_per_threshold, 100 * np.array(expected))
    assert evaluation.metrics["JI"] == pytest.approx(200 / 3)


def test_duplicate_detection_is_a_false_positive(tmp_path: Path) -> None:
    path = write_odgt(tmp_path / "d.odgt", [{"ID": "a", "gtboxes": [entry([0, 0, 10, 20])]}])
    evaluation = crowdhuman_evaluate(
        path, [det("a", [0, 0, 10, 20], 0.9), det("a", [0, 1, 10, 20], 0.8)]
    )
    np.testing.assert_array_equal(evaluation.precision, [1.0, 0.5])
    assert evaluation.metrics["JI"] == 100.0  # the 0.8 threshold drops the duplicate


def test_ignore_regions_absorb_detections(two_images: Path) -> None:
    base = perfect_detections()[:4] + [det("a", [120, 60, 20, 50], 0.6)]  # one miss, one FP
    reference = crowdhuman_evaluate(two_images, base)
    absorbed = [
        det("a", [210, 5, 20, 30], 0.99),  # inside the mask region
        det("a", [190, 0, 30, 40], 0.7),  # 2/3 of its area inside the mask region
        det("b", [300, 0, 20, 50], 0.97),  # on the flagged person
        det("b", [302, 3, 16, 40], 0.5),  # inside the flagged person
    ]
    evaluation = crowdhuman_evaluate(two_images, base + absorbed)
    assert evaluation.metrics == reference.metrics
    np.testing.assert_array_equal(evaluation.ji_per_threshold, reference.ji_per_threshold)
    assert evaluation.num_ignored_detections == 4 and reference.num_ignored_detections == 0
    # Just under half inside (IoA 0.5 is not > 0.5): a false positive again.
    outside = crowdhuman_evaluate(two_images, base + [det("a", [180, 0, 40, 40], 0.99)])
    assert outside.metrics["AP"] < reference.metrics["AP"]


def test_iou_of_exactly_half_matches_for_ji_only(tmp_path: Path) -> None:
    path = write_odgt(tmp_path / "e.odgt", [{"ID": "a", "gtboxes": [entry([0, 0, 10, 10])]}])
    evaluation = crowdhuman_evaluate(path, [det("a", [0, 0, 10, 5], 0.9)])  # IoU exactly 0.5
    # The toolkit: AP/MR need IoU > 0.5, JI pairs IoU >= 0.5.
    assert evaluation.metrics["AP"] == 0.0 and evaluation.metrics["MR"] == 100.0
    assert evaluation.metrics["JI"] == 100.0


def test_boxes_are_clipped_to_the_image_when_sizes_are_given(tmp_path: Path) -> None:
    path = write_odgt(tmp_path / "c.odgt", [{"ID": "a", "gtboxes": [entry([-20, 0, 40, 100])]}])
    dets = [det("a", [0, 0, 20, 100], 0.9)]  # the visible half of the truncated person
    clipped = crowdhuman_metrics(path, dets, image_sizes={"a": (100, 100)})
    unclipped = crowdhuman_metrics(path, dets)  # IoU exactly 0.5: no AP match
    assert clipped == {"MR": 0.0, "AP": 0.0, "JI": 100.0}  # AP 0: a single GT, see the doc
    assert unclipped["MR"] == 100.0


def test_ji_leaves_unmatched_the_boxes_inside_ignore_regions(tmp_path: Path) -> None:
    # Person p half under a mask region; d_in is inside the region, d_out is not, both IoU >= .5
    # with p. Either can be p's match; the one left over is only neutral if it is d_in.
    path = write_odgt(
        tmp_path / "j.odgt",
        [{"ID": "a", "gtboxes": [entry([0, 0, 20, 40]), entry([12, 0, 40, 40], tag="mask")]}],
    )
    d_in = det("a", [6, 0, 16, 40], 0.9)  # IoU 14*40/(22*40) = .64 with p, IoA 10/16 > .5
    d_out = det("a", [0, 0, 18, 40], 0.8)  # IoU .9, IoA 6/18 < .5
    for dets in ([d_in, d_out], [d_out, d_in]):
        evaluation = crowdhuman_evaluate(path, dets)
        assert evaluation.metrics["JI"] == 100.0  # k = 1, m = 1, n = 2 - 1 ignored
        assert evaluation.ji_counts[0, 0].tolist() == [1, 1, 1]


def test_evaluation_is_independent_of_detection_order(two_images: Path) -> None:
    rng = np.random.default_rng(0)
    xs, scores = rng.uniform(0, 100, 12), rng.random(12)
    dets = perfect_detections() + [
        det("a", [float(x), 5.0, 20.0, 50.0], float(s)) for x, s in zip(xs, scores, strict=True)
    ]
    reference = crowdhuman_metrics(two_images, dets)
    for _ in range(3):
        shuffled = [dets[i] for i in rng.permutation(len(dets))]
        assert crowdhuman_metrics(two_images, shuffled) == reference


def test_records_can_be_passed_instead_of_a_path(two_images: Path) -> None:
    records: list[OdgtRecord] = read_odgt(two_images)
    assert crowdhuman_metrics(records, perfect_detections()) == crowdhuman_metrics(
        two_images, perfect_detections()
    )


def test_images_without_boxes_are_allowed(tmp_path: Path) -> None:
    path = write_odgt(
        tmp_path / "e.odgt",
        [{"ID": "a", "gtboxes": [entry([0, 0, 10, 20])]}, {"ID": "empty", "gtboxes": []}],
    )
    metrics = crowdhuman_metrics(
        path, [det("a", [0, 0, 10, 20], 0.9), det("empty", [5, 5, 10, 20], 0.95)]
    )
    # Up to threshold 0.8: image a 1/1, image "empty" 0/(0 + 1 - 0); at 0.9 both are 0.
    assert metrics["JI"] == 50.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not a dict", "must be a dict"),
        ({"image_id": "a", "bbox": [0, 0, 1, 1], "score": 0.5}, "missing key(s) category_id"),
        (det("zzz", [0, 0, 1, 1], 0.5), "image_id 'zzz' is not an ID"),
        (det(3, [0, 0, 1, 1], 0.5), "image_id 3 is not an ID"),
        (det("a", [0, 0, 1, 1], 0.5) | {"category_id": 2}, "category_id must be 1"),
        (det("a", [0, 0, 1], 0.5), "bbox must be [x, y, w, h]"),
        (det("a", [0, 0, "1", 1], 0.5), "bbox must be"),
        (det("a", [0, 0, float("nan"), 1], 0.5), "bbox must be"),
        (det("a", [0, 0, True, 1], 0.5), "bbox must be"),
        (det("a", [0, 0, -1, 1], 0.5), "negative width or height"),
        (det("a", [0, 0, 1, 1], float("inf")), "score must be a finite number"),
        (det("a", [0, 0, 1, 1], "0.5"), "score must be a finite number"),
        (det("a", [0, 0, 1, 1], None), "score must be a finite number"),
    ],
)
def test_bad_detections_are_named_by_index(two_images: Path, bad: object, message: str) -> None:
    dets = [det("a", [0, 0, 20, 50], 0.9), bad, det("b", [0, 0, 20, 50], 0.9)]
    with pytest.raises(DetectionError) as info:
        crowdhuman_metrics(two_images, dets)
    assert "detections[1]" in str(info.value) and message in str(info.value), str(info.value)


def test_other_input_errors(two_images: Path, tmp_path: Path) -> None:
    with pytest.raises(CrowdHumanEvalError, match="list of dicts"):
        crowdhuman_metrics(two_images, {"image_id": "a"})
    with pytest.raises(CrowdHumanEvalError, match="no entry for ID 'b'"):
        crowdhuman_metrics(two_images, [], image_sizes={"a": (100, 100)})
    for bad_size in ((0, 100), (100, 100, 3), "100x100"):
        with pytest.raises(CrowdHumanEvalError, match="width, height"):
            crowdhuman_metrics(two_images, [], image_sizes={"a": bad_size, "b": (100, 100)})
    records = read_odgt(two_images)
    with pytest.raises(CrowdHumanEvalError, match=r"repeat image ID\(s\) \['a'\]"):
        crowdhuman_metrics(records + records[:1], [])
    only_ignored = write_odgt(
        tmp_path / "i.odgt", [{"ID": "a", "gtboxes": [entry([0, 0, 9, 9], tag="mask")]}]
    )
    with pytest.raises(CrowdHumanEvalError, match="no person box"):
        crowdhuman_metrics(only_ignored, [])
    with pytest.raises(DatasetError, match="does not exist"):
        crowdhuman_metrics(tmp_path / "missing.odgt", [])


def test_plot_mr_fppi(two_images: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(1)
    xs, scores = rng.uniform(0, 300, 30), rng.random(30)
    dets = perfect_detections()[:4] + [
        det("a", [float(x), 60.0, 20.0, 50.0], float(s)) for x, s in zip(xs, scores, strict=True)
    ]
    for name, detections in (("mixed", dets), ("perfect", perfect_detections()), ("none", [])):
        target = tmp_path / "plots" / f"{name}.png"
        assert plot_mr_fppi(crowdhuman_evaluate(two_images, detections), target) == target
        assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(target) as image:
            assert image.width > 400 and image.height > 300
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "mixed.png",
        "none.png",
        "perfect.png",
    ]


# ----------------------------------------------------------------------------- vs mmdet 3.3


def random_crowd(
    seed: int, num_images: int = 20, ignore: bool = True
) -> tuple[list[str], dict, list[tuple]]:
    """Crowded odgt lines, {ID: (w, h)} and per image (ID, w, h, float32 xyxy, float32 scores).

    Persons cross the image border (so clipping matters), ~8 % are flagged and
    0-2 mask regions per image get detections of their own; detections are
    jittered persons (some twice) plus false positives.
    """
    rng = np.random.default_rng(seed)
    lines, sizes, predictions = [], {}, []
    for index in range(num_images):
        image_id = f"{index},{seed:x}"
        width, height = int(rng.integers(300, 700)), int(rng.integers(250, 500))
        count = int(rng.integers(20, 41))
        h = rng.uniform(0.2, 0.7, count) * height
        w = h * rng.uniform(0.35, 0.45, count)
        boxes = np.stack(
            [
                rng.uniform(-0.2, 1.0, count) * width - 0.3 * w,
                rng.uniform(0.0, 1.0, count) * height - 0.5 * h,
                w,
                h,
            ],
            1,
        ).round()
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 2)
        flags = (rng.random(count) < 0.08).astype(int) if ignore else np.zeros(count, int)
        masks = np.concatenate(
            [
                rng.uniform(0, 0.7, (2, 2)) * (width, height),
                rng.uniform(0.1, 0.35, (2, 2)) * (width, height),
            ],
            1,
        )
        masks = masks[: int(rng.integers(0, 3)) if ignore else 0].round()
        gtboxes = [entry(b.tolist(), ignore=int(f)) for b, f in zip(boxes, flags, strict=True)]
        gtboxes += [entry(b.tolist(), tag="mask", ignore=1) for b in masks]
        lines.append(json.dumps({"ID": image_id, "gtboxes": gtboxes}))
        sizes[image_id] = (width, height)
        real = np.concatenate(
            [boxes[rng.random(count) < 0.85], boxes[rng.random(count) < 0.3], masks]
        )
        real = real + rng.normal(0, 0.08, real.shape) * np.tile(real[:, 2:], 2)
        n_fp = int(rng.integers(5, 40))
        fp = np.stack(
            [
                rng.uniform(-20, width, n_fp),
                rng.uniform(-20, height, n_fp),
                rng.uniform(10, 150, n_fp),
                rng.uniform(20, 300, n_fp),
            ],
            1,
        )
        xywh = np.concatenate([real, fp])
        xywh[:, 2:] = np.abs(xywh[:, 2:]) + 1
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).astype(np.float32)
        scores = np.concatenate([rng.beta(4, 2, len(real)), rng.beta(1.5, 4, n_fp)])
        predictions.append((image_id, width, height, xyxy, scores.astype(np.float32)))
    return lines, sizes, predictions


def our_detections(predictions: list[tuple]) -> list[dict]:
    """x + w gives back mmdet's float32 x2 exactly (its results2json makes the same xywh)."""
    return [
        det(image_id, [x1, y1, x2 - x1, y2 - y1], score)
        for image_id, _, _, xyxy, scores in predictions
        for (x1, y1, x2, y2), score in zip(xyxy.tolist(), scores.tolist(), strict=True)
    ]


def mmdet_reference(ann_file: Path, predictions: list[tuple], tmp_path: Path) -> dict:
    """mmdet's unrounded MR/AP/JI (fractions) and per-image (k, m, n) for each threshold."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    from mmdet.evaluation.metrics import CrowdHumanMetric

    metric = CrowdHumanMetric(ann_file=str(ann_file), num_ji_process=1)
    metric.process(
        {},
        [
            {
                "img_id": image_id,
                "ori_shape": (height, width),
                "pred_instances": {"bboxes": torch.from_numpy(xyxy), "scores": torch.from_numpy(s)},
            }
            for image_id, width, height, xyxy, s in predictions
        ],
    )
    samples = metric.load_eval_samples(metric.results2json(metric.results, str(tmp_path / "r")))
    matches = metric.compare(samples)
    num_gt = sum(s.gt_num - s.ign_num for s in samples.values())
    counts = np.zeros((len(samples), len(JI_SCORE_THRESHOLDS), 3), dtype=np.int64)
    ji = []
    for t, threshold in enumerate(0.1 * i for i in range(10)):  # eval_ji, in-process
        results: queue.Queue = queue.Queue()
        for i, (image_id, sample) in enumerate(samples.items()):
            metric.compute_ji_with_ignore(results, {image_id: sample}, threshold)
            counts[i, t] = [results.queue[-1][key] for key in ("k", "m", "n")]
        ji.append(metric.gather(list(results.queue))[1])
    return {
        "MR": metric.eval_mr(matches, num_gt, len(samples)),
        "AP": metric.eval_ap(matches, num_gt, len(samples)),
        "JI": max(ji),
        "ji_counts": counts,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ignore", [True, False], ids=["with-ignore", "no-ignore"])
def test_matches_mmdet_crowdhuman_metric(tmp_path: Path, seed: int, ignore: bool) -> None:
    lines, sizes, predictions = random_crowd(seed, ignore=ignore)
    ann_file = tmp_path / "val.odgt"
    ann_file.write_text("\n".join(lines) + "\n")
    theirs = mmdet_reference(ann_file, predictions, tmp_path)
    evaluation = crowdhuman_evaluate(ann_file, our_detections(predictions), image_sizes=sizes)
    ours = evaluation.metrics
    assert 0 < ours["MR"] < 100 and 0 < ours["AP"] < 100  # not a degenerate comparison
    # Same matching, same float32 overlaps, same accumulation order: equal to rounding.
    assert ours["MR"] == pytest.approx(100 * theirs["MR"], abs=1e-9)
    assert ours["AP"] == pytest.approx(100 * theirs["AP"], abs=1e-9)
    # JI: k is the maximum matching size for both; m and n can only be smaller here
    # (we leave boxes in ignore regions unmatched whenever a maximum matching can).
    k, m, n = np.moveaxis(evaluation.ji_counts, -1, 0)
    tk, tm, tn = np.moveaxis(theirs["ji_counts"], -1, 0)
    np.testing.assert_array_equal(k, tk)
    assert (m <= tm).all() and (n <= tn).all()
    # mmdet's denominator has + 1e-6, i.e. up to 1e-4 in percent.
    assert ours["JI"] >= 100 * theirs["JI"] - 1e-9
    if not ignore:
        np.testing.assert_array_equal(evaluation.ji_counts, theirs["ji_counts"])
        assert ours["JI"] == pytest.approx(100 * theirs["JI"], abs=1e-4)


def test_public_mmdet_output_equals_ours_rounded(tmp_path: Path) -> None:
    """compute_metrics() as a validation loop calls it (JI in a worker process), no ignore."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    from mmdet.evaluation.metrics import CrowdHumanMetric

    lines, sizes, predictions = random_crowd(7, num_images=10, ignore=False)
    ann_file = tmp_path / "val.odgt"
    ann_file.write_text("\n".join(lines) + "\n")
    metric = CrowdHumanMetric(ann_file=str(ann_file), num_ji_process=1)
    metric.process(
        {},
        [
            {
                "img_id": image_id,
                "ori_shape": (height, width),
                "pred_instances": {"bboxes": torch.from_numpy(xyxy), "scores": torch.from_numpy(s)},
            }
            for image_id, width, height, xyxy, s in predictions
        ],
    )
    theirs = metric.compute_metrics(metric.results)
    ours = crowdhuman_metrics(ann_file, our_detections(predictions), image_sizes=sizes)
    assert theirs["mMR"] == round(ours["MR"] / 100, 4)
    assert theirs["mAP"] == round(ours["AP"] / 100, 4)
    assert abs(theirs["JI"] - ours["JI"] / 100) <= 5e-5 + 1e-6
