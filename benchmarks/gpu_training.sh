#!/usr/bin/env bash
# Issue 15's GPU half in one call of the device machine, most important first, each step under
# its own time limit so that a slow step costs only itself (records are appended cell by cell):
#   1. the CUDA tests of every zoo model (tests/zoo/test_cuda.py);
#   2. the bf16 matrix-multiply peak (for MFU);
#   3. the training table in bf16 (mixed precision: autocast over float32 weights, as the
#      quality trainer trains) against Hugging Face at $SEQLEN, and ours in float32 at 1024
#      for the bf16 / fp32 ratio (benchmarks/perf_targets.py --suite training);
#   4. each model's training step under torch.compile beside the eager one at 1024;
#   5. the target table from whatever was measured.
# About 8 minutes on an H100; records, table and log land in $OUT (or reports/train-gpu).
#
#   bash benchmarks/gpu_training.sh          # on the device machine (`run`, timeout_s 600)
#   DEVICE=cpu VARIANT=tiny SEQLEN=64,128 COMPILE_AT=64 bash benchmarks/gpu_training.sh  # dry run
set -uo pipefail
device=${DEVICE:-cuda}
variant=${VARIANT:-small}
seqlen=${SEQLEN:-1024,4096}
compile_at=${COMPILE_AT:-1024}
out=${OUT:-reports/train-gpu}
records="$out/train-$device.jsonl"
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$out/log.txt") 2>&1

echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
python - <<'EOF' || { echo "== nothing measured"; exit 2; }
import importlib.util, torch
missing = [m for m in ("typer", "rich", "pandas", "yaml", "transformers")
           if importlib.util.find_spec(m) is None]
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
raise SystemExit(f"missing: {', '.join(missing)}" if missing else 0)
EOF
if [ "$device" = cuda ]; then
    echo "== 1. CUDA tests"
    timeout 150 python -m pytest tests/zoo/test_cuda.py -m gpu -q -p no:cacheprovider | tail -4
fi
echo "== 2. bf16 peak"
timeout 60 python -m harness.cli bench --calibrate --device "$device" --dtype bfloat16
echo "== 3. training against HF in bf16"
timeout 300 python benchmarks/perf_targets.py --suite training --device "$device" \
    --variant "$variant" --dtype bfloat16 --seqlen "$seqlen" --repeat 10 --timeout 90 \
    --results "$records" > /dev/null
echo "== 4. torch.compile for training"
timeout 330 python -m harness.cli bench gpt bert rwkv --mode train --device "$device" \
    --variant "$variant" --dtype bfloat16 --seqlen "$compile_at" --compile --repeat 10 \
    --timeout 100 --results "$records" > /dev/null
echo "== 5. the table"
python benchmarks/perf_targets.py --suite training --check-only --results "$records" \
    --markdown "$out/targets-$device.md" --fastest-records "$out/fastest-$device.jsonl"
echo "== done at $(date -u +%FT%TZ)"
