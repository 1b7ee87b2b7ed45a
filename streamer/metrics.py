"""Prometheus metrics: what a person watching the service from outside needs (GET /metrics).

Counters and histograms live in one process-wide registry (the code that moves frames and tokens
increments them wherever it runs); what is read from an app's state at scrape time (live sessions,
clip jobs by state and their fps, database size, disk used) comes from a collector per app.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(name, doc, labels, registry=REGISTRY)


def _histogram(
    name: str, doc: str, labels: tuple[str, ...] = (), *, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(name, doc, labels, buckets=buckets, registry=REGISTRY)


FRAMES_RECEIVED = _counter("fmu_live_frames_received", "Live frames received from cameras.")
FRAMES_PROCESSED = _counter("fmu_live_frames_processed", "Live frames tracked by SAM2.")
FRAMES_DROPPED = _counter(
    "fmu_live_frames_dropped", "Live frames replaced by a newer one before the tracker took them."
)
_MS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TRACKER_STEP = _histogram(
    "fmu_tracker_step_seconds", "One live SAM2 step (encode + every object).", buckets=_MS_BUCKETS
)
OVERLAY_LAG = _histogram(
    "fmu_overlay_lag_seconds",
    "From a live frame's arrival to its overlay being queued for the page.",
    buckets=_MS_BUCKETS,
)
VLM_FIRST_TOKEN = _histogram(
    "fmu_vlm_first_token_seconds",
    "Describe / chat: from the request to the first streamed token.",
    ("request",),
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
VLM_TOTAL = _histogram(
    "fmu_vlm_total_seconds",
    "Describe / chat: the whole answer (a describe includes its verification).",
    ("request",),
    buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
CLIP_FRAMES_ENCODED = _counter(
    "fmu_clip_frames_encoded",
    "Clip job steps by where the frame's encoding came from: encoded, or taken from another job "
    "of the clip walking the same frames.",
    ("source",),
)
VLM_IN_FLIGHT = Gauge("fmu_vlm_in_flight", "Describe / chat requests under way.", registry=REGISTRY)
VLM_REFUSED = _counter("fmu_vlm_refused", "VLM requests refused as busy (too many in flight).")
ERRORS = _counter("fmu_errors", "Requests refused or failed, by error code.", ("code",))
UPLOAD_BYTES = _counter("fmu_upload_bytes", "Bytes of clips and images accepted.", ("kind",))


@contextlib.contextmanager
def vlm_request(request: str) -> Iterator[Any]:
    """Time one describe / chat: call the yielded function at the first token."""
    start = time.monotonic()
    first: list[float] = []

    def token() -> None:
        if not first:
            first.append(time.monotonic())
            VLM_FIRST_TOKEN.labels(request).observe(first[0] - start)

    VLM_IN_FLIGHT.inc()
    try:
        yield token
    finally:
        VLM_IN_FLIGHT.dec()
        VLM_TOTAL.labels(request).observe(time.monotonic() - start)


class AppCollector:
    """What is read from one app's state when /metrics is scraped."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.state
        yield GaugeMetricFamily(
            "fmu_live_sessions", "Live sessions open.", value=len(state.live.sessions)
        )
        jobs = GaugeMetricFamily("fmu_clip_jobs", "Clip tracking jobs by state.", labels=["state"])
        fps = GaugeMetricFamily(
            "fmu_clip_job_fps", "Frames per second of each running clip job.", labels=["job"]
        )
        counts: dict[str, int] = {}
        for clip in state.clips.items.values():
            for track in clip.tracks.values():
                if track.job is None:
                    continue
                counts[track.job.state] = counts.get(track.job.state, 0) + 1
                if track.job.state == "running":
                    fps.add_metric([track.job.job_id], track.job.progress.fps)
        for s in ("queued", "running", "done", "failed", "cancelled", "interrupted"):
            jobs.add_metric([s], counts.get(s, 0))
        yield jobs
        yield fps
        yield GaugeMetricFamily(
            "fmu_database_bytes",
            "Size of the SQLite database (with its WAL).",
            value=state.db.size_bytes(),
        )
        budget = state.settings.disk_budget_mb * 1_000_000
        yield GaugeMetricFamily(
            "fmu_disk_budget_bytes", "The data dir's disk budget (0: none).", value=budget
        )
        yield GaugeMetricFamily(
            "fmu_disk_used_bytes",
            "Bytes under the data dir (media, exports, database).",
            value=disk_used(Path(state.settings.data_dir)),
        )


def disk_used(root: Path) -> int:
    """Bytes of the files under `root`. What is deleted while it walks (a clip removed meanwhile)
    is not counted: os.walk passes over a folder gone before it is listed, where Path.rglob
    (Python 3.11) raised FileNotFoundError."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(folder, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def exposition(app_registry: CollectorRegistry) -> bytes:
    """The Prometheus text format: the process-wide series, then the app's."""
    return generate_latest(REGISTRY) + generate_latest(app_registry)
