"""The README stays true: its config table lists every setting, and its two commands exist."""

from __future__ import annotations

import os
import re
from pathlib import Path

from streamer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_configuration_table_lists_every_setting_with_its_env_var() -> None:
    for name in Settings.model_fields:
        flag, env = "--" + name.replace("_", "-"), "FMU_" + name.upper()
        assert re.search(rf"\| `{re.escape(flag)}` \| `{env}` \|", README), f"{flag} missing"


def test_the_two_commands_exist_and_ci_runs_the_test_one() -> None:
    block = README.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].split()[0] for line in block.strip().splitlines()]
    assert commands == ["scripts/run.sh", "scripts/test.sh"]
    for command in commands:
        assert os.access(ROOT / command, os.X_OK), f"{command} is not executable"
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
