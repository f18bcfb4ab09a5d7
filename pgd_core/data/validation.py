"""Check a named dataset's files before a run builds anything on them."""

from __future__ import annotations

from pgd_core.data.coco import validate_coco
from pgd_core.data.manifest import DatasetError, DatasetInfo
from pgd_core.data.odgt import read_odgt, summarize_odgt


def validate_split(info: DatasetInfo, split: str) -> str:
    """Validate one split's annotation file and images; return its one-line report.

    The report states what the format says to ignore (crowd boxes, ``mask`` and
    ``extra.ignore`` regions) and how many boxes that is.

    Raises:
        DatasetError: naming the file, line or annotation at fault.
    """
    files = info.split(split)
    name = f"{info.name}/{split}"
    if info.format == "coco":
        return validate_coco(files.ann_file, img_dir=files.img_dir, classes=info.classes).report(
            name
        )
    records = read_odgt(files.ann_file)
    missing = [r.file_name for r in records if not (files.img_dir / r.file_name).is_file()]
    if missing:
        raise DatasetError(
            f"{files.ann_file}: {len(missing)} image(s) missing from {files.img_dir}, "
            f"first {missing[0]}"
        )
    return summarize_odgt(records).report(name)
