"""Clip jobs replacing each other: a refinement's job waits for the one it replaces to let go of
the clip, and a Cancel (or another click) meanwhile still cancels it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from streamer.clip import store as clip_store
from streamer.clip.job import FramePrompt
from streamer.clip.state import Track


class SlowJob:
    """A stand-in TrackJob: tracking takes a while, and a cancel takes a moment to wind down
    (settling a decode, closing the reader), as the real one does."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.state, self.obj_id = name, log, "queued", 1

    def public(self) -> dict[str, Any]:
        return {
            "job_id": self.name,
            "object_id": 1,
            "state": self.state,
            "phase": "forward",
            "done": 0,
            "total": 1,
            "percent": 0.0,
            "fps": 0.0,
            "eta_s": None,
            "anchor_frame": 0,
            "error": None,
            "position": None,
        }

    async def run(self) -> None:
        self.state = "running"
        self.log.append(f"{self.name} started")
        try:
            await asyncio.sleep(30)  # the whole clip
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(0.3))  # winding down
            self.state = "cancelled"
            raise
        self.state = "done"


def slow_jobs_store(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[clip_store.ClipStore, list[SlowJob], list[str]]:
    """A clip store whose jobs are SlowJobs (no database, no model): (store, its jobs, their log)."""
    settings = SimpleNamespace(
        max_clip_jobs=2, data_dir="/nonexistent", max_objects=16, vlm_max_in_flight_per_session=2
    )
    services = SimpleNamespace(settings=settings, vision_model=object(), vision_unavailable=None)
    store = clip_store.ClipStore(services, SimpleNamespace(submit=lambda *a, **k: None))
    log: list[str] = []
    jobs: list[SlowJob] = []

    def job_of(clip: Any, oid: int, job_id: str, **kw: Any) -> SlowJob:
        jobs.append(SlowJob(f"J{len(jobs) + 1}", log))
        return jobs[-1]

    monkeypatch.setattr(store, "job_of", job_of)
    monkeypatch.setattr(store, "save_object", lambda clip, oid: None)
    monkeypatch.setattr(clip_store, "require_vision", lambda services: object())
    return store, jobs, log


async def test_cancel_right_after_a_refinement_cancels_the_new_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, jobs, log = slow_jobs_store(monkeypatch)
    track = Track(prompts={0: FramePrompt([(1.0, 1.0)], [1])})
    clip = SimpleNamespace(id="c", tracks={1: track}, publish=lambda message: None)

    store.start_job(clip, 1)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    store.start_job(clip, 1)  # type: ignore[arg-type]  # a refinement click: J1 winds down
    await asyncio.sleep(0.05)
    # The person presses Cancel while J1 still winds down: J2 never tracks the clip.
    await asyncio.wait_for(store.stop_job(track), 5)
    assert log == ["J1 started"] and jobs[1].state == "cancelled"
    assert not track.running
    while jobs[0].state != "cancelled":  # J1 winds down on its own
        await asyncio.sleep(0.05)


async def test_an_object_removed_while_its_refinement_waits_hears_nothing_after_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job a refinement replaced winds down after the object is removed: the page hears no
    job of it after `removed` (it would show a Resume for an object that is gone)."""
    from streamer.objects.table import ObjectTable

    store, jobs, log = slow_jobs_store(monkeypatch)
    heard: list[Any] = []
    objects = ObjectTable(16, "clip")
    oid = objects.add("click").id
    track = Track(prompts={0: FramePrompt([(1.0, 1.0)], [1])})
    clip = SimpleNamespace(id="c", tracks={oid: track}, objects=objects, publish=heard.append)

    store.start_job(clip, oid)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    store.start_job(clip, oid)  # type: ignore[arg-type]  # a refinement click: J1 winds down
    await asyncio.sleep(0.05)
    await asyncio.wait_for(store.remove_objects(clip, [oid]), 5)  # type: ignore[arg-type]
    while jobs[0].state != "cancelled":  # J1 winds down on its own
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)  # its last words, if any, are said by now
    kinds = [m.type for m in heard]
    assert "removed" in kinds, kinds
    after = heard[kinds.index("removed") + 1 :]
    assert [m.type for m in after] == ["objects"], [m.model_dump() for m in after]
