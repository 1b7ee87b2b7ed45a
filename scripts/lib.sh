# What scripts/setup.sh and scripts/setup_vllm.sh both need (sourced by them, not run).

# python_between 3.10 3.12: the first Python on PATH whose version is in that range, or nothing.
python_between() {
    local cand
    for cand in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$cand" >/dev/null && "$cand" - "$1" "$2" 2>/dev/null <<'EOF_PY'
import sys
lo, hi = (tuple(int(p) for p in v.split(".")) for v in sys.argv[1:])
sys.exit(not lo <= sys.version_info[:2] <= hi)
EOF_PY
        then
            echo "$cand"
            return
        fi
    done
}

# pip_for VENV: sets the array `pip` to that venv's quiet `pip install`.
# Some machines point pip's find-links at a local CPU-only torch wheel ("+cpu"), which pip prefers
# for torch==X and which breaks torchvision (sam2 and vLLM need it): then install without
# find-links, keeping the configured index. `grep` without -q reads all its input: with -q it exits
# at the first match, pip dies of SIGPIPE, and pipefail reads a match as none.
pip_for() {
    local py="$1/bin/python" index
    pip=("$py" -m pip install -q --disable-pip-version-check)
    if "$py" -m pip config list 2>/dev/null | grep find-links >/dev/null || [ -n "${PIP_FIND_LINKS:-}" ]; then
        index="$("$py" -m pip config get global.index-url 2>/dev/null || true)"
        pip=(env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null ${index:+PIP_INDEX_URL=$index} "${pip[@]}")
    fi
}

# check_torch VENV WHO [MODULE...]: the venv imports torch, torchvision and the modules, and its
# torch is not the CPU-only build; a broken pair shows up here, not in a test.
check_torch() {
    local venv=$1 who=$2
    shift 2
    "$venv/bin/python" - "$who" "$@" <<'EOF_PY'
import importlib, sys
import torch, torchvision  # noqa: F401
for name in sys.argv[2:]:
    importlib.import_module(name)
v = torch.__version__
sys.exit(f"{sys.argv[1]}: got the CPU-only torch {v}; torchvision needs PyPI's default build" if "+cpu" in v else 0)
EOF_PY
}
