#!/usr/bin/env bash
# Issue 15's GPU half in one call of the device machine (under its 600 s limit), most important
# first, each step under its own time limit so that a slow step costs only itself (records are
# appended cell by cell):
#   1. the CUDA tests of every zoo model (tests/zoo/test_cuda.py);
#   2. the training table in bf16 (mixed precision: autocast over float32 weights, as the
#      quality trainer trains) against Hugging Face at $SEQLEN for GPT, BERT and RWKV, and ours
#      in float32 at 1024 for the bf16 / fp32 ratio (benchmarks/perf_targets.py --suite training,
#      which first measures the matrix-multiply peaks that MFU is taken against);
#   3. each of those models' training step under torch.compile beside the eager one at 1024;
#   4. the same table for LLaMA, RoBERTa, Mamba and Mamba-2 (group train-more);
#   5. the target table from whatever was measured;
#   6. the models added after the targets were set, GPT-NeoX, BLOOM, OPT, GPT-J and T5, against
#      Hugging Face (group train-newer): not in a first call's 600 s, so a call of its own
#      (STEPS="6 5", which redraws the table with them).
# Records, table and log land in $OUT (or reports/train-gpu). STEPS="2 3 5" runs some steps.
#
#   bash benchmarks/gpu_training.sh          # on the device machine (`run`, timeout_s 600)
#   STEPS="6 5" bash benchmarks/gpu_training.sh   # a second call, if device time is left
#   DEVICE=cpu VARIANT=tiny SEQLEN=64,128 COMPILE_AT=64 bash benchmarks/gpu_training.sh  # dry run
set -uo pipefail
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
variant=${VARIANT:-small}
seqlen=${SEQLEN:-1024,4096}
compile_at=${COMPILE_AT:-1024}
out=${OUT:-reports/train-gpu}
steps=" ${STEPS:-1 2 3 4 5} "  # run in this order, whatever order they are named in
records="$out/train-$device.jsonl"
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$out/log.txt") 2>&1

echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git)"
"$py" - <<'EOF' || { echo "== nothing measured"; exit 2; }
import importlib.util, torch
missing = [m for m in ("typer", "rich", "pandas", "yaml", "transformers")
           if importlib.util.find_spec(m) is None]
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
raise SystemExit(f"missing: {', '.join(missing)}" if missing else 0)
EOF
step() { [[ $steps == *" $1 "* ]] && echo "== $1. $2 ($(date -u +%T))"; }
if [ "$device" = cuda ] && step 1 "CUDA tests"; then
    timeout 100 "$py" -m pytest tests/zoo/test_cuda.py -m gpu -q -p no:cacheprovider | tail -4
fi
step 2 "training against HF in bf16" && timeout 200 "$py" benchmarks/perf_targets.py \
    --suite training --only train,train-bf16 --device "$device" --variant "$variant" \
    --dtype bfloat16 --seqlen "$seqlen" --repeat 10 --timeout 60 --results "$records" > /dev/null
step 3 "torch.compile for training" && timeout 150 "$py" -m harness.cli bench gpt bert rwkv \
    --mode train --device "$device" --variant "$variant" --dtype bfloat16 \
    --seqlen "$compile_at" --compile --repeat 10 --timeout 70 --results "$records" > /dev/null
step 4 "the other models against HF" && timeout 120 "$py" benchmarks/perf_targets.py \
    --suite training --only train-more --device "$device" --variant "$variant" \
    --dtype bfloat16 --seqlen "$seqlen" --repeat 10 --timeout 30 --no-calibrate \
    --results "$records" > /dev/null
step 6 "the newer models against HF" && timeout 400 "$py" benchmarks/perf_targets.py \
    --suite training --only train-newer --device "$device" --variant "$variant" \
    --dtype bfloat16 --seqlen "$seqlen" --repeat 10 --timeout 45 \
    --results "$records" > /dev/null
step 5 "the table" && "$py" benchmarks/perf_targets.py --suite training --check-only \
    --results "$records" --markdown "$out/targets-$device.md" \
    --fastest-records "$out/fastest-$device.jsonl"
echo "== done at $(date -u +%FT%TZ)"
