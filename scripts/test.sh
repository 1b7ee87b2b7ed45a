#!/usr/bin/env bash
# Set up (first time, test tools and chromium included) and run the test suite; arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
