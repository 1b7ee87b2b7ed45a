"""The `fmu-live` program: commands dispatch to their own parsers; no command serves as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["track", "eval", "dataset", "merge-lora"])
def test_each_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.cli([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fmu-live {command}")


@pytest.mark.parametrize(
    "argv,served_with",
    [
        ([], []),  # `fmu-live` / `python main.py` alone: the server, as before
        (["--port", "9000"], ["--port", "9000"]),
        (["serve", "--port", "9000"], ["--port", "9000"]),
    ],
)
def test_no_command_serves(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], served_with: list[str]
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(main, "main", lambda args: calls.append(args) or 0)
    assert main.cli(argv) == 0
    assert calls == [served_with]


def test_server_help_lists_the_commands() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--vlm-url" in proc.stdout
    for command in ("fmu-live track", "fmu-live eval", "fmu-live dataset", "fmu-live merge-lora"):
        assert command in proc.stdout


def test_console_script_points_at_cli() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["fmu-live"] == "main:cli"
    assert "main" in project["tool"]["setuptools"]["py-modules"]


def test_readme_has_a_section_per_command_and_its_examples_use_real_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    for command in main.COMMANDS:
        assert f"### `fmu-live {command}`" in readme, f"no README section for {command}"
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    examples = [b.replace("\\\n", " ") for b in blocks if b.startswith("fmu-live ")]
    assert {e.split()[1] for e in examples} == set(main.COMMANDS)
    for example in examples:
        command = example.split()[1]
        with pytest.raises(SystemExit):
            main.cli([command, "--help"])
        known = set(re.findall(r"--[a-z0-9-]+", capsys.readouterr().out))
        used = set(re.findall(r"(?<![\w-])--[a-z0-9-]+", example.split("\n")[0]))
        assert used <= known, f"{command}: {sorted(used - known)} are not options"
