"""The vision thread's scheduler: live frames go ahead of clip jobs and images, and live sessions
take turns, whatever order the calls arrived in."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from streamer.scheduler import BACKGROUND, VisionScheduler


async def test_live_lanes_run_round_robin_ahead_of_background_work() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    scheduler = VisionScheduler(executor)
    gate = threading.Event()
    ran: list[str] = []

    def step(name: str) -> str:
        if name == "clip-0":
            gate.wait(10)  # the vision thread is busy with a clip frame while the rest arrive
        ran.append(name)
        return name

    calls = [asyncio.ensure_future(scheduler.run(BACKGROUND, step, "clip-0"))]
    await asyncio.sleep(0)
    # a clip job's next frames, then a flood from session A, then one frame of session B
    calls += [asyncio.ensure_future(scheduler.run(BACKGROUND, step, f"clip-{i}")) for i in (1, 2)]
    calls += [asyncio.ensure_future(scheduler.run("A", step, f"A-{i}")) for i in range(3)]
    calls += [asyncio.ensure_future(scheduler.run("B", step, "B-0"))]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*calls)
    executor.shutdown()
    assert results == ["clip-0", "clip-1", "clip-2", "A-0", "A-1", "A-2", "B-0"]  # answers match
    # B's frame does not wait behind A's flood; the clip job waits behind live calls, and gets a
    # turn after LIVE_TURNS_PER_BACKGROUND (3) of them, so it is never starved
    assert ran == ["clip-0", "A-0", "B-0", "A-1", "clip-1", "A-2", "clip-2"]


async def test_an_error_reaches_its_caller_and_the_thread_goes_on() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    scheduler = VisionScheduler(executor)

    def bad() -> None:
        raise ValueError("a click outside the picture")

    with pytest.raises(ValueError, match="outside"):
        await scheduler.run("A", bad)
    assert await scheduler.run(BACKGROUND, lambda: 7) == 7
    executor.shutdown()


async def test_a_cancelled_call_is_skipped() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    scheduler = VisionScheduler(executor)
    gate = threading.Event()
    ran: list[str] = []
    first = asyncio.ensure_future(scheduler.run(BACKGROUND, lambda: gate.wait(10)))
    await asyncio.sleep(0)
    gone = asyncio.ensure_future(scheduler.run("A", ran.append, "gone"))  # the page went away
    kept = asyncio.ensure_future(scheduler.run("A", ran.append, "kept"))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    await first
    await kept
    assert ran == ["kept"]
    executor.shutdown()
