#!/usr/bin/env bash
# The GPU check: one command on a GPU machine without internet (about 8 minutes).
#
#   bash benchmarks/gpu_check.sh            # SD 1.5's architecture (random weights) at 512 px on the GPU
#   bash benchmarks/gpu_check.sh --architecture sdxl   # SDXL base's at 1024 px (sd21: SD 2.1 768-v's):
#                                           # the cost of choosing that family, projected on its config
#   bash benchmarks/gpu_check.sh --reduced  # CI's form: the tiny architecture on CPU (tests/test_benchmarks.py;
#                                           # --architecture sdxl --reduced: SDXL's tiny kind)
#
# What the machine lacks (diffusers, open-clip-torch, torch-fidelity, snakemake, ...)
# is installed from the wheels in $WHEELS (default .whl/, git-ignored;
# docs/performance.md says how to download them where there is internet).
# diffusers' examples/textual_inversion/textual_inversion.py, carried as
# $WHEELS/textual_inversion.py (never committed), runs beside tibalance's TI on
# the same model, seed images and settings. Results under $OUT (default
# gpu_check/): bench.json, projection.md, example.txt, the tests' output.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tibalance-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/tibalance-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

ARCH=sd15
if [ "${1:-}" = "--architecture" ]; then ARCH=${2:?--architecture sd15, sd21 or sdxl}; shift 2; fi
case $ARCH in
  sd15) CONFIGS="config/config.yaml" ;;
  sd21) CONFIGS="config/config.yaml" ;;
  sdxl) CONFIGS="config/config.yaml config/flowers-sdxl.yaml" ;;
  *) echo "gpu_check: --architecture $ARCH is not sd15, sd21 or sdxl" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--reduced" ]; then
  # the family's tiny kind (sd15: tiny, sd21: tiny-sd2, sdxl: tiny-sdxl)
  TINY=tiny; [ "$ARCH" = sd21 ] && TINY=tiny-sd2; [ "$ARCH" = sdxl ] && TINY=tiny-sdxl
  $PY benchmarks/bench_generative.py --architecture "$TINY" --device cpu --steps 3 --ti-batch 2 --lora-batch 2 \
    --sample-batch 2 --sample-steps 2 --json "$OUT/bench.json"
  $PY benchmarks/project_cost.py "$OUT/bench.json" $CONFIGS | tee "$OUT/projection.md"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY benchmarks/bench_generative.py --architecture "$ARCH" --steps 20 --ti-batch 4 8 --lora-batch 4 \
  --sample-batch 8 32 --sample-steps 25 --save-model "$OUT/$ARCH" --json "$OUT/bench.json"
$PY benchmarks/project_cost.py "$OUT/bench.json" $CONFIGS | tee "$OUT/projection.md"
$PY benchmarks/project_cost.py "$OUT/bench.json" $CONFIGS --classes 102 | tee -a "$OUT/projection.md"

if [ "$ARCH" != sd15 ]; then
  echo "diffusers' textual_inversion.py side-by-side: SD 1.5's architecture only" | tee "$OUT/example.txt"
elif [ -f "$WHEELS/textual_inversion.py" ]; then
  # the example at batch 4, 10 and 30 steps: its steps/s from the difference (its set-up apart)
  $PY -m tibalance.rehearsal "$OUT/photos" --per-class 4 >/dev/null
  for n in 10 30; do
    s=$($PY -c 'import time; print(time.time())')
    $PY "$WHEELS/textual_inversion.py" --pretrained_model_name_or_path "$OUT/$ARCH" \
      --train_data_dir "$OUT/photos/red_poppy" --learnable_property object --placeholder_token "<x>" \
      --initializer_token flower --resolution 512 --train_batch_size 4 --max_train_steps $n \
      --learning_rate 5e-3 --lr_scheduler constant --lr_warmup_steps 0 --mixed_precision bf16 \
      --validation_steps 100000 --save_steps 100000 --checkpointing_steps 100000 --dataloader_num_workers 0 \
      --output_dir "$OUT/example$n" > "$OUT/example$n.log" 2>&1
    echo "$n $($PY -c "import time; print(time.time() - $s)")" >> "$OUT/example.txt"
  done
  awk 'NR==1{a=$2} NR==2{printf "diffusers example: %.3f steps/s at batch 4 (%.3f image-steps/s)\n", 20/($2-a), 80/($2-a)}' \
    "$OUT/example.txt" | tee -a "$OUT/example.txt"
else
  echo "diffusers' textual_inversion.py not carried ($WHEELS/textual_inversion.py): no side-by-side" | tee "$OUT/example.txt"
fi

$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/tests.txt"
