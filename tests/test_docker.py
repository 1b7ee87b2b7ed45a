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


def test_replicas_compose_feeds_haproxy_every_variable_and_a_server_per_replica() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.replicas.yaml").read_text())
    cfg = (ROOT / "docker" / "haproxy.cfg").read_text()
    services = compose["services"]
    lb = services["lb"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    assert set(re.findall(r"\$\{(\w+)\}", cfg)) == set(lb["environment"])
    replicas = {n: s for n, s in services.items() if n.startswith("replica")}
    servers = re.findall(r'^\s*server \S+ "\$\{(\w+)\}"', cfg, re.M)
    assert len(servers) == len(replicas) == 2
    # Each replica listens where the balancer sends it, and reaches the one shared vLLM.
    ports = {lb["environment"][v].rsplit(":", 1)[1] for v in servers}
    assert ports == {re.search(r"--port (\d+)", r["command"])[1] for r in replicas.values()}
    for r in replicas.values():
        assert r["network_mode"] == "host"  # WebRTC media reaches the replica directly
        assert "--vlm-url http://127.0.0.1:8000/v1" in r["command"]
    assert services["vllm"]["image"] == compose_vllm_image()


def compose_vllm_image() -> str:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["vllm"][
        "image"
    ]
