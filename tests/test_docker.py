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
    # Each replica listens where the balancer sends it (FMU_PORT, which the image's health check
    # reads too), and reaches the one shared vLLM.
    ports = {lb["environment"][v].rsplit(":", 1)[1] for v in servers}
    assert ports == {r["environment"]["FMU_PORT"] for r in replicas.values()}
    assert "os.environ['FMU_PORT']" in healthcheck() and "--port" not in str(replicas)
    volumes = [r["volumes"] for r in replicas.values()]
    assert volumes[0] != volumes[1]  # each its own data dir: clips and images stay per replica
    for r in replicas.values():
        assert r["network_mode"] == "host"  # WebRTC media reaches the replica directly
        assert "--vlm-url http://127.0.0.1:8000/v1" in r["command"]
        # ...at this host's addresses: a loopback bind offers loopback ICE candidates only and
        # answers only to localhost. Serving the network, each needs the one token HAProxy sends.
        assert "--host" not in r["command"] and "FMU_HOST" not in r["environment"]
        assert r["environment"]["FMU_AUTH_TOKEN"].startswith("${FMU_AUTH_TOKEN:?")
    assert lb["environment"]["FMU_AUTH_TOKEN"].startswith("${FMU_AUTH_TOKEN:?")
    assert services["vllm"]["image"] == compose_vllm_image()
    # vLLM answers anyone who reaches it (no API key): published for this host's replicas only.
    assert services["vllm"]["ports"] == ["127.0.0.1:8000:8000"]


def healthcheck() -> str:
    (line,) = [
        x for x in (ROOT / "docker" / "Dockerfile").read_text().splitlines() if "HEALTHCHECK" in x
    ]
    return line


def test_the_image_listens_everywhere_and_its_health_check_finds_it() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ENV .*FMU_HOST=0\.0\.0\.0 .*FMU_PORT=8080", text, re.M)
    assert "/healthz" in healthcheck()


def test_haproxy_waits_for_a_whole_overlay_render() -> None:
    # export.mp4 answers only once the whole overlay video is rendered: minutes on a long clip.
    cfg = (ROOT / "docker" / "haproxy.cfg").read_text()
    (timeout,) = re.findall(r"set-timeout server (\d+)m if \{ path_end /export\.mp4 \}", cfg)
    assert int(timeout) >= 30


def compose_vllm_image() -> str:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["vllm"][
        "image"
    ]


def test_haproxys_own_503_speaks_the_apps_error_body() -> None:
    """Every replica full or down: the balancer answers itself, in the body the page reads."""
    import json

    from tests.test_http_errors import assert_error_body

    cfg = (ROOT / "docker" / "haproxy.cfg").read_text()
    (body,) = re.findall(r'http-error status 503 content-type application/json string "(.*)"', cfg)
    answer = json.loads(body.replace('\\"', '"'))
    assert_error_body(answer, "haproxy's 503")
    assert answer["code"] == "busy"
