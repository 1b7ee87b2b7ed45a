"""GET /metrics: Prometheus text that prometheus_client's own parser reads, and counters that move
as frames, uploads, descriptions and refusals flow through the real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import LiveClient, ServerThread, spotlight_answerer, square_center
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_media import write_clip

pytestmark = pytest.mark.timeout(300)
W, H = 160, 120


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels), as the Prometheus parser reads them."""
    r = httpx.get(f"{base_url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_as_frames_uploads_descriptions_and_refusals_flow(
    sam2_tiny_random: Any, moving_shape: Any, tmp_path: Path
) -> None:
    with ScriptedVLMServer(answer=spotlight_answerer()) as vlm:
        settings = Settings(
            weights="random",
            sam2_image_size=256,
            device="cpu",
            vlm_url=vlm.url,
            data_dir=tmp_path / "data",
        )
        reasoner, _ = build_reasoner(settings)
        app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner)
        with ServerThread(app) as server:
            before = scrape(server.base_url)
            for name in (
                "fmu_live_sessions",
                "fmu_database_bytes",
                "fmu_disk_used_bytes",
                "fmu_tracker_step_seconds_count",
                "fmu_vlm_in_flight",
            ):
                assert (name, ()) in before, name
            assert value(before, "fmu_live_sessions") == 0
            assert value(before, "fmu_database_bytes") > 0

            client = LiveClient(server.base_url)
            track = moving_shape(W, H, fps=15)
            await client.connect(track)
            try:
                await client.wait_message("overlay", timeout=60)
                x, y = square_center(track.index, W, H)
                await client.send(
                    {"type": "click", "x": x, "y": y, "positive": True, "object_id": None}
                )
                await client.wait_message("verdict", timeout=120)
                await client.wait_for(
                    lambda: len(client.of_type("overlay")) >= 5, what="5 overlays"
                )
                during = scrape(server.base_url)
            finally:
                await client.close()

            assert value(during, "fmu_live_sessions") == 1
            processed = value(during, "fmu_live_frames_processed_total") - value(
                before, "fmu_live_frames_processed_total"
            )
            received = value(during, "fmu_live_frames_received_total") - value(
                before, "fmu_live_frames_received_total"
            )
            assert processed >= 5 and received >= processed
            steps = value(during, "fmu_tracker_step_seconds_count") - value(
                before, "fmu_tracker_step_seconds_count"
            )
            assert steps >= 5
            assert value(during, "fmu_overlay_lag_seconds_count") > value(
                before, "fmu_overlay_lag_seconds_count"
            )
            described = value(during, "fmu_vlm_total_seconds_count", request="describe") - value(
                before, "fmu_vlm_total_seconds_count", request="describe"
            )
            assert described == 1
            assert value(during, "fmu_vlm_first_token_seconds_count", request="describe") >= 1

            # an upload and a refused click are counted
            path = write_clip(tmp_path / "c.mp4", frames=10)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
                with open(path, "rb") as f:
                    r = await http.post("/api/clips", files={"file": ("c.mp4", f, "video/mp4")})
                assert r.status_code == 201
                cid = r.json()["id"]
                r = await http.post(
                    f"/api/clips/{cid}/clicks", json={"frame": 0, "x": 5, "y": 5, "negative": True}
                )
                assert r.status_code == 422
            after = scrape(server.base_url)
            uploaded = value(after, "fmu_upload_bytes_total", kind="clip") - value(
                before, "fmu_upload_bytes_total", kind="clip"
            )
            assert uploaded == path.stat().st_size
            refused = value(after, "fmu_errors_total", code="bad_prompt") - value(
                before, "fmu_errors_total", code="bad_prompt"
            )
            assert refused == 1
            assert value(after, "fmu_disk_used_bytes") >= path.stat().st_size
            assert value(after, "fmu_clip_jobs", state="running") == 0


def test_disk_used_counts_on_when_a_folder_goes_while_it_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clip deleted (its folder removed) while the data dir is measured, by an upload's
    retention pass or a /metrics scrape: the files left are counted, and nothing fails (the
    upload answered 500 after it was kept, the scrape 500)."""
    import os
    import shutil

    from streamer.metrics import disk_used

    (tmp_path / "clips" / "gone").mkdir(parents=True)
    (tmp_path / "clips" / "gone" / "video.mp4").write_bytes(b"x" * 100)
    (tmp_path / "fmu.db").write_bytes(b"y" * 7)
    scandir = os.scandir

    def listing_then_delete(path: Any = ".") -> Any:
        listing = scandir(path)
        if (
            not isinstance(path, int) and Path(path) == tmp_path / "clips"
        ):  # listed, then deleted before the walk goes in
            shutil.rmtree(tmp_path / "clips" / "gone")
        return listing

    monkeypatch.setattr(os, "scandir", listing_then_delete)
    assert disk_used(tmp_path) == 7
