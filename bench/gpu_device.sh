#!/usr/bin/env bash
# On a lent GPU machine (no network), from the repository root, with .whl/ and/or
# .whl-cv2/ carried (bench/gpu_prepare.sh fills them here; one run carries at most
# 64 MiB, so they travel in two calls): install the wheels beside the device's own
# torch into /tmp/site (kept while the machine stays warm), and once everything
# imports, build mmcv's CPU ops (training steps need only its Python modules and a
# loadable _ext; its CUDA ops are not compiled, to save minutes) and run
# bench/gpu_step.py and bench/gpu_dist_check.py. What they print goes to $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
export PYTHONPATH=/tmp/site
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee "$OUT/device.txt"
nvidia-smi -L | tee -a "$OUT/device.txt" || true
for folder in .whl-cv2 .whl; do
    if compgen -G "$folder/*.whl" >/dev/null; then
        python3 -m pip install --no-index --no-deps --upgrade --target /tmp/site "$folder"/*.whl \
            >>"$OUT/pip.log" 2>&1
        echo "installed $(ls "$folder"/*.whl | wc -l) wheels from $folder" | tee -a "$OUT/device.txt"
    fi
done
missing=$(python3 - <<'PY'
import importlib.util
print(" ".join(m for m in ("cv2", "scipy", "mmengine", "mmdet") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    echo "not yet importable: $missing; run again carrying the other folder" | tee -a "$OUT/device.txt"
    exit 3
fi
src=$(ls -d /tmp/mmcv-*/ 2>/dev/null || true)
if [ -z "$src" ]; then
    tar -xzf .whl/mmcv-*.tar.gz -C /tmp
    src=$(ls -d /tmp/mmcv-*/)
fi
if ! compgen -G "$src/mmcv/_ext*.so" >/dev/null; then
    start=$(date +%s)
    (cd "$src" && CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
        python3 setup.py build_ext --inplace >"$OUT/mmcv-build.log" 2>&1)
    echo "mmcv ops built in $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
fi
export PYTHONPATH="$src:/tmp/site:$PWD"
python3 -c "import mmcv.ops, mmdet; print('mmcv ops OK, mmdet', mmdet.__version__)"
python3 bench/gpu_step.py --device cuda 2>&1 | tee "$OUT/gpu_step.txt"
gpus=$(nvidia-smi -L | wc -l)
python3 -m torch.distributed.run --standalone --nproc-per-node "$gpus" bench/gpu_dist_check.py \
    2>&1 | tee "$OUT/gpu_dist_check.txt" || true
