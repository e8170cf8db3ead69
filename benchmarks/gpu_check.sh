#!/usr/bin/env bash
# One prepared GPU check (issue 10): run it once on a machine with a GPU, in under 8 minutes.
#   1. the test suite's CUDA tests (pytest -m cuda);
#   2. images/s of ResNet-20/56/110 in fp32 and bf16, with and without CUDA-graph capture
#      (torch.compile mode reduce-overhead), and the projected time of the full 64k schedule;
#   3. if ResNet-20's projection is under 5 minutes, that full schedule on the CIFAR-10 JPEG
#      copy, with its final test error beside the conventional loop's projected time;
#   4. detection (issue 16): `reslab detect train`'s loop against a conventional torchvision
#      reference-style loop (benchmarks/detect_throughput.py), ResNet-50 C4 and FPN at 600 px;
#   5. with the time left, the precision study (fp32 vs bf16, ResNet-20/56, 3 seeds).
# Everything it prints is also written under $OUT (default ./gpu-check-out).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # on CPU: every step at tiny sizes
#
# Data: local_data/cifar10-jpeg75.tar.gz (git-ignored; copy ../shared/data's file there and
# carry it to the GPU machine), else ../shared/data/cifar10-jpeg75.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY="--dry-run"
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)
echo "== reslab GPU check $(date -u +%FT%TZ) ${DRY}"

if ! python -c "import reslab" 2>/dev/null; then
    python -m pip install --quiet -e ".[test]" || python -m pip install --quiet --no-deps -e .
fi
python - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader

DATA=local_data/cifar10-jpeg75.tar.gz
[ -f "$DATA" ] || DATA=../shared/data/cifar10-jpeg75.tar.gz
[ -f "$DATA" ] || DATA=""

echo "== 1. CUDA tests"
if [ -n "$DRY" ]; then
    python -m pytest -q -m cuda -p no:cacheprovider tests --co 2>&1 | tail -3
else
    timeout 150 python -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tail -15
    rc=$?; [ $rc -eq 5 ] && echo "(no CUDA tests collected)"
fi

echo "== 2+3. throughput and the full schedule"
FULL=()
[ -n "$DATA" ] && FULL=(--full-data "$DATA")
timeout $((470 - ($(date +%s) - started))) python benchmarks/gpu_throughput.py \
    --out "$OUT" --budget-s 150 ${DRY} "${FULL[@]}"
echo "== 4. detection throughput (issue 16)"
if [ -n "$DRY" ]; then
    DET=(--iterations 2 --warmup 1 --min-size 96 --max-size 128 --backbone resnet18
         --data synthetic-det:train=8,test=2,size=128,objects=2)
else
    DET=(--iterations 30 --warmup 5 --min-size 600 --max-size 1000 --backbone resnet50
         --batch-size 4 --data synthetic-det:train=256,test=16,size=600,objects=4)
fi
for head in c4 fpn; do
    timeout 120 python benchmarks/detect_throughput.py --head $head "${DET[@]}" \
        --json "$OUT/detect_throughput_$head.json" 2>&1 | tail -6
done
echo "== 5. the precision study on the GPU, if time is left (issue 10)"
left=$((470 - ($(date +%s) - started)))
if [ -n "$DRY" ]; then
    echo "(dry run: skipped)"
elif [ -n "$DATA" ] && [ $left -gt 150 ]; then
    timeout $left python -m reslab reproduce precision --data "$DATA" --out "$OUT/precision" \
        --models resnet20,resnet56 --seeds 3 --budget 0.015625 --eval-points 8 --jobs 4 \
        --no-progress 2>&1 | tail -5
    cp "$OUT/precision/report.md" "$OUT/precision-report.md" 2>/dev/null
else
    echo "(skipped: ${left}s left)"
fi
echo "== done in $(( $(date +%s) - started )) s; results in $OUT"
