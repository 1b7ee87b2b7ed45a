#!/usr/bin/env bash
# Installs everything FMU Live needs into ./.venv, from nothing, idempotently.
#   scripts/setup.sh          runtime (what `scripts/run.sh` needs)
#   scripts/setup.sh --dev    plus the test tools and Debian's chromium for the browser tests
#                             and, in ./.venv-vllm, the vLLM server for the reasoning tests
# Re-running is cheap: the install is skipped while requirements.lock and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

dev=0
[ "${1:-}" = "--dev" ] && dev=1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
    [ "$apt_updated" = 1 ] || { as_root apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Python 3.10-3.12 interpreter (sam2 needs >= 3.10; the lock was resolved on 3.11).
PY="${FMU_PYTHON:-$(python_between 3.10 3.12)}"
if [ -z "$PY" ]; then
    echo "setup: need Python 3.10-3.12; installing Debian's python3" >&2
    apt_install python3 python3-venv python3-dev
    PY=python3
fi

# Shared libraries that opencv-headless / av wheels expect, and the browser for the tests.
# `grep` without -q reads all its input: with -q it exits at the first match, ldconfig dies of
# SIGPIPE, and pipefail then reads a present library as missing (and runs apt-get, and so sudo).
need=()
libs="$(ldconfig -p 2>/dev/null || true)"
grep libGL.so.1 <<<"$libs" >/dev/null || need+=(libgl1)
grep libglib-2.0.so.0 <<<"$libs" >/dev/null || need+=(libglib2.0-0)
if [ "$dev" = 1 ] && ! command -v chromium >/dev/null; then
    need+=(chromium fonts-dejavu-core)
fi
# The HTTPS start-up test makes a throwaway certificate with it.
if [ "$dev" = 1 ] && ! command -v openssl >/dev/null; then
    need+=(openssl)
fi
# The load-balancer tests start Debian's HAProxy with docker/haproxy.cfg.
if [ "$dev" = 1 ] && ! command -v haproxy >/dev/null; then
    need+=(haproxy)
fi
[ "${#need[@]}" = 0 ] || { echo "setup: apt-get install ${need[*]}" >&2; apt_install "${need[@]}"; }

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv; "$PY" -m venv .venv; }
fi

stamp=.venv/.fmu-installed
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python dependencies into .venv (first run downloads torch, a few GB)" >&2
    pip_for .venv
    "${pip[@]}" --upgrade pip setuptools wheel
    # torch first: sam2 builds against it without build isolation (which would fetch another torch).
    "${pip[@]}" -c requirements.lock torch torchvision
    SAM2_BUILD_CUDA=0 "${pip[@]}" --no-build-isolation -r requirements.lock
    "${pip[@]}" --no-deps --no-build-isolation -e .
    check_torch .venv setup
    echo "$want" > "$stamp"
fi

# The real vLLM server the reasoning tests talk to, in a venv of its own (scripts/setup_vllm.sh).
if [ "$dev" = 1 ]; then scripts/setup_vllm.sh; fi
