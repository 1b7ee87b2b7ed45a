#!/usr/bin/env bash
# Set up (first time, test tools and chromium included) and run the test suite; arguments go to pytest.
# On two pytest-xdist workers (FMU_TEST_WORKERS; 0: one process, as plain pytest), the work split
# as tests/parallel.py says.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest -n "${FMU_TEST_WORKERS:-2}" "$@"
