"""The compose file stays runnable as documented: vLLM pinned to our version, model positional."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_the_vllm_we_pin_with_the_model_positional() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    pin = re.search(r'^vllm = \["vllm==([^"]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M)
    assert pin, "pyproject.toml pins vllm in its [vllm] extra"
    version = pin.group(1)
    vllm = compose["services"]["vllm"]
    assert vllm["image"] == f"vllm/vllm-openai:v{version}"
    command = vllm["command"].split()
    # the image's entrypoint is `vllm serve`: the model comes first, and --model is deprecated
    assert command[0].startswith("${FMU_VLM_MODEL") and "--model" not in command
    assert "--gpu-memory-utilization" in command and "--max-model-len" in command
    app = compose["services"]["app"]["command"]
    assert re.search(r"--vlm-family \$\{FMU_VLM_FAMILY:-auto\}", app)
