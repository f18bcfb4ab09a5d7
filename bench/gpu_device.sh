#!/usr/bin/env bash
# On a lent GPU machine (no network), from the repository root, with .whl/ carried
# (bench/gpu_prepare.sh fills it here): install the wheels beside the device's own
# torch, build mmcv's CPU ops (training steps need only its Python modules and a
# loadable _ext; the device's CUDA build is not compiled, to save minutes), then
# run bench/gpu_step.py and bench/gpu_dist_check.py. Everything printed and the
# step log go to $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
export PYTHONPATH=/tmp/site
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee "$OUT/device.txt"
nvidia-smi -L | tee -a "$OUT/device.txt" || true
python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1
tar -xzf .whl/mmcv-*.tar.gz -C /tmp
src=$(ls -d /tmp/mmcv-*/)
start=$(date +%s)
(cd "$src" && CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
    python3 setup.py build_ext --inplace >"$OUT/mmcv-build.log" 2>&1)
echo "mmcv ops built in $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
export PYTHONPATH="$src:/tmp/site:$PWD"
python3 -c "import mmcv.ops, mmdet; print('mmcv ops OK, mmdet', mmdet.__version__)"
python3 bench/gpu_step.py --device cuda 2>&1 | tee "$OUT/gpu_step.txt"
gpus=$(nvidia-smi -L | wc -l)
python3 -m torch.distributed.run --standalone --nproc-per-node "$gpus" bench/gpu_dist_check.py \
    2>&1 | tee "$OUT/gpu_dist_check.txt" || true
