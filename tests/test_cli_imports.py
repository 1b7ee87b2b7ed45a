"""`--help` (and a command's option errors) answer at once: no model library is imported on the way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each command imports only when it runs: seconds of start-up (and GBs for torch) each.
HEAVY = ("torch", "sam2", "transformers", "ray", "vllm", "peft")
PROBE = (
    "import sys, main\n"
    "try:\n"
    "    main.cli(sys.argv[1:])\n"
    "except SystemExit:\n"
    "    pass\n"
    f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
)


@pytest.mark.parametrize("command", [[], ["track"], ["eval"], ["dataset"], ["merge-lora"]])
def test_help_imports_no_model_library(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
