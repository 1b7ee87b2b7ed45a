#!/usr/bin/env bash
# The GPU figures in one run, on a CUDA machine after `scripts/setup.sh --dev` (or any Python with
# torch, sam2 and transformers: PYTHON=python3): our step part by part, tracking beside sam2's
# official predictor at 1024 px in bf16, the streaming peers at 1024 px, bf16 against fp32 masks,
# a clip's objects sharing encodings, then the tracking run again under torch.compile. Most
# important first; each step has its own time limit and a failed step does not stop the rest, so a
# short lease still brings back the first figures. About 7 minutes on one H200 (the clip step
# unmeasured there: up to 2.5 more), and up to 5 more for the compiled run. JSON and
# tables in $GPU_OUT (default benchmarks/out/gpu); benchmarks/RESULTS.md (On a GPU) has the last.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${GPU_OUT:-benchmarks/out/gpu}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu.sh: no CUDA GPU")' \
    || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
"$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers",
transformers.__version__)' | tee -a "$out/gpu.txt"

failed=0
step() {  # step NAME SECONDS COMMAND...: its table in $out/NAME.txt, its stderr in NAME.log
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" --out "$out/$name.json" >"$out/$name.txt" 2>"$out/$name.log"
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - start)) s" | tee -a "$out/steps.txt"
    [ "$rc" -eq 0 ] || failed=1
}

# our step part by part, and refinements with and without cuDNN's attention (RESULTS.md, On a GPU)
step step-profile-1024 90 "$py" benchmarks/step_profile.py --image-size 1024 --device cuda --profile
# ours (bf16 on CUDA) against the official predictor under bf16 autocast
step tracking-1024 120 "$py" benchmarks/tracking.py --image-size 1024 --device cuda \
    --frames 500 --official-frames 200 --timing-frames 100
# every streaming peer in bf16 (transformers' models in bf16 weights and session); the steps alone
# took about 180 s on an H200: each peer's GPU memory run (--rss-frames 300) wants 2 minutes more
step peers-1024 180 "$py" benchmarks/peers.py --sizes 1024 --objects 1 3 --frames 100 \
    --device cuda --peer-precision bf16 --rss-frames 0 --threads 0
# how far bf16 masks are from fp32 ones on the GPU
step precision-1024 45 "$py" benchmarks/precision.py --image-size 1024 --device cuda
# a clip's two objects, the second clicked 20 frames after the first: sharing each frame's
# encoding with the catch-up, beside the rule before and one after another (the encoder's share of
# a step, which the catch-up's third assumes, is step-profile's; RESULTS.md, Several objects)
step clip-objects-1024 150 "$py" benchmarks/clip.py --device cuda --image-size 1024 \
    --frames 200 --objects 2 --stagger 20 --skip-official --clicks 5 --threads 4
# the same with the image encoder and memory attention compiled: did not finish in 150 s on an
# H200 (the first frames compile), so give it a lease of its own
step tracking-1024-compile 300 "$py" benchmarks/tracking.py --image-size 1024 --device cuda \
    --frames 300 --official-frames 100 --timing-frames 100 --compile
exit "$failed"
