#!/usr/bin/env bash
# The CUDA checks, on a machine with a GPU (about 5 minutes on one GPU; 8 at most):
#   1. the tests marked `cuda` (tests/cuda/: every META_ARCH's forward on CUDA, one AMP training
#      step of SegStudent/SAN/OVSeg in float16 and bfloat16, the teacher cache built on CUDA and
#      read on CPU, the predictor and the export on CUDA, train_net.py --num-gpus 1 and NCCL);
#      a skipped test fails this script (a GPU machine must run them all, bfloat16 aside);
#   2. a short benchmark of the student (EfficientNet-B0 SegStudent) against the CLIP ViT-B/16
#      teacher, global and dense, at 512x512, in float32, float16 and bfloat16 (random weights:
#      they cost the same as trained ones; no download). Results: $OUT/bench_<dtype>.json.
#
#   scripts/check_gpu.sh                 # OUT=out/check_gpu, PYTHON=python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-out/check_gpu}
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'check_gpu.sh: no CUDA device visible (torch.cuda.is_available() is False)')"
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', \
torch.__version__, '| CUDA', torch.version.cuda, '| bf16:', torch.cuda.is_bf16_supported())"

echo "== 1. tests marked cuda"
timeout 300 "$PYTHON" -m pytest -q -rs -m cuda tests/cuda | tee "$OUT/tests.log"
# every cuda test ran: a skip here is a failure, except bfloat16 on a GPU without it
if grep "^SKIPPED" "$OUT/tests.log" | grep -v "no bfloat16" >/dev/null; then
    echo "check_gpu.sh: cuda tests were skipped on a GPU machine (see above)" >&2
    exit 1
fi

echo "== 2. benchmark: student vs CLIP ViT-B/16 (global + dense), 512x512, batch 1"
for dtype in none float16 bfloat16; do
    timeout 120 "$PYTHON" tools/benchmark.py --config-file configs/voc.yaml --device cuda \
        --size 512 --batch-size 1 --iters 20 --warmup 5 --skip-training --skip-flops \
        --autocast "$dtype" --output "$OUT/bench_${dtype/none/float32}.json" \
        MODEL.TIMM.WEIGHTS "" MODEL.CLIPDISTILL.TEACHER.WEIGHTS "" MODEL.DEVICE cuda
done
echo "check_gpu.sh: all passed; benchmark JSON in $OUT/"
