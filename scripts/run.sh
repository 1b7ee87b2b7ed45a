#!/usr/bin/env bash
# Set up (first time) and start FMU Live; all arguments go to main.py (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python main.py "$@"
