"""docker/prometheus.yml scrapes what the app serves: /metrics with the access token, as Prometheus
sends it (its `authorization` block, the token from its credentials file, Host = the target)."""

from __future__ import annotations

from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from streamer.app import create_app
from streamer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "prometheus-reads-this-token"


def scrape_headers(job: dict, token_files: dict[str, str]) -> dict[str, str]:
    """The headers Prometheus sends for a job (only Bearer authorization is used here)."""
    auth = job.get("authorization")
    if not auth:
        return {}
    assert auth.get("type", "Bearer") == "Bearer"
    return {"Authorization": f"Bearer {token_files[auth['credentials_file']].strip()}"}


def test_the_scrape_config_reads_metrics_from_a_server_with_a_token(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    settings = Settings(data_dir=tmp_path / "data", host="0.0.0.0", auth_token=TOKEN)
    app = create_app(settings, reasoner=None, load_vision=False)
    credentials = (job.get("authorization") or {}).get("credentials_file", "")
    with TestClient(app) as client:
        for target in job["static_configs"][0]["targets"]:
            r = client.get(
                f"http://{target}{job['metrics_path']}",
                headers=scrape_headers(job, {credentials: TOKEN + "\n"}),
            )
            assert r.status_code == 200, (target, r.text)
            names = {f.name for f in text_string_to_metric_families(r.text)}
            assert "fmu_live_sessions" in names
