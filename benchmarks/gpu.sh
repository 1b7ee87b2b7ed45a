#!/usr/bin/env bash
# The GPU figures of the precision issue in one run, on a CUDA machine after `scripts/setup.sh --dev`
# (about 10 minutes on one H200): tracking and peers at 1024 px, bf16, with and without
# torch.compile. JSON in benchmarks/out/gpu/, tables in benchmarks/out/gpu/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/out/gpu
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA GPU")'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

# ours (bf16 on CUDA) against the official predictor under bf16 autocast
"$py" benchmarks/tracking.py --image-size 1024 --device cuda --frames 500 --official-frames 200 \
    --timing-frames 100 --out "$out/tracking-1024.json" | tee "$out/tracking-1024.txt"
"$py" benchmarks/tracking.py --image-size 1024 --device cuda --frames 500 --official-frames 200 \
    --timing-frames 100 --compile --out "$out/tracking-1024-compile.json" \
    | tee "$out/tracking-1024-compile.txt"

# every streaming peer in bf16 (transformers' models in bf16 weights and session), and RSS
"$py" benchmarks/peers.py --sizes 1024 --objects 1 3 --frames 100 --device cuda \
    --peer-precision bf16 --rss-frames 500 --threads 0 --out "$out/peers-1024.json" \
    | tee "$out/peers-1024.txt"
"$py" benchmarks/peers.py --sizes 1024 --objects 1 3 --frames 100 --device cuda \
    --peer-precision bf16 --rss-frames 0 --threads 0 --compile \
    --predictors ours-fp32 ours-bf16 official --out "$out/peers-1024-compile.json" \
    | tee "$out/peers-1024-compile.txt"
