#!/usr/bin/env bash
# Here (with a package registry): fetch what bench/gpu_device.sh needs on a lent
# GPU machine, which has no network. The device image measured on 2026-12-04 has
# Python 3.12 and torch 2.11 + CUDA 13 but no OpenMMLab packages, so this takes
# pure wheels and Python 3.12 manylinux wheels for the compiled ones, plus mmcv's
# source (its ops are compiled there). Versions are this project's pins, read
# from .venv so that the device runs what the tests ran.
#
#     bash bench/gpu_prepare.sh
#
# fills two folders (ignored by git), each under the 64 MiB one run may carry:
#   .whl/      mmengine, mmdet, mmcv's source, scipy (mmdet.models imports it) ... ~46 MB
#   .whl-cv2/  opencv-python-headless (mmcv imports cv2)                          ~50 MB
# then, on a warm device machine (its /tmp/site is kept between calls):
#   run(command="bash bench/gpu_device.sh", carry=[".whl-cv2"])   # installs cv2 only
#   run(command="bash bench/gpu_device.sh", carry=[".whl"])       # the rest, then measures
# A device that already has cv2 needs the second call only.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=.venv/bin/pip
test -x "$PIP" || { echo "gpu_prepare: run make setup first (versions come from .venv)" >&2; exit 2; }
pin() { "$PIP" show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
binary() {  # binary DEST REQUIREMENT...: Python 3.12 manylinux (or pure) wheels
    local dest=$1
    shift
    "$PIP" download --dest "$dest" --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 --platform any "$@"
}
rm -rf .whl .whl-cv2
mkdir -p .whl .whl-cv2
wanted=()
for name in mmengine addict termcolor yapf platformdirs mmdet pycocotools terminaltables \
    shapely pydantic pydantic_core annotated_types typing_inspection typing_extensions \
    faster_coco_eval setuptools tqdm scipy rich markdown-it-py mdurl pygments; do
    version=$(pin "$name")
    if [ -z "$version" ]; then
        echo "gpu_prepare: $name is not in .venv; skipped" >&2
        continue
    fi
    wanted+=("$name==$version")
done
binary .whl "${wanted[@]}"
"$PIP" download --dest .whl --no-deps --no-binary=:all: "mmcv==$(pin mmcv)"
# The headless build of .venv's OpenCV: the same cv2, the smaller wheel.
binary .whl-cv2 "opencv-python-headless==$(pin opencv-python)"
du -sh .whl .whl-cv2
