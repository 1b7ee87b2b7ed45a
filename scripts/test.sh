#!/usr/bin/env bash
# Set up (first time, test tools and chromium included) and run the test suite; arguments go to pytest.
# On pytest-xdist workers, as many as the machine has cores, 2 to 4 (FMU_TEST_WORKERS sets it; 0:
# one process, as plain pytest), the work split as tests/parallel.py says.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
cores="$(nproc)"
workers="${FMU_TEST_WORKERS:-$(( cores < 2 ? 2 : (cores > 4 ? 4 : cores) ))}"
exec .venv/bin/python -m pytest -n "$workers" "$@"
