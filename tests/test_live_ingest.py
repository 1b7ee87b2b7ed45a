"""The latest-frame slot: the newest frame wins, replaced frames are counted, nothing queues."""

from __future__ import annotations

import asyncio

from aiortc.mediastreams import MediaStreamError

from streamer.live.ingest import LatestFrameSlot, pump_track


async def test_newest_frame_wins_and_drops_are_counted() -> None:
    slot = LatestFrameSlot()
    for i in range(5):
        slot.put(i)
    assert await slot.take() == 4
    assert (slot.stats.received, slot.stats.taken, slot.stats.dropped) == (5, 1, 4)


async def test_take_waits_for_the_next_frame() -> None:
    slot = LatestFrameSlot()
    waiter = asyncio.create_task(slot.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    slot.put("a")
    assert await asyncio.wait_for(waiter, 1) == "a"
    assert slot.stats.dropped == 0


async def test_close_wakes_the_taker_with_none() -> None:
    slot = LatestFrameSlot()
    waiter = asyncio.create_task(slot.take())
    await asyncio.sleep(0)
    slot.close()
    assert await asyncio.wait_for(waiter, 1) is None
    slot.put("late")  # ignored once closed
    assert await slot.take() is None


class _Track:
    def __init__(self, frames: list[int]) -> None:
        self.frames = frames

    async def recv(self) -> int:
        if not self.frames:
            raise MediaStreamError
        return self.frames.pop(0)


async def test_pump_keeps_only_the_newest_and_closes_at_the_end() -> None:
    slot = LatestFrameSlot()
    await pump_track(_Track([1, 2, 3]), slot)
    assert slot.closed and slot.stats.received == 3 and slot.stats.dropped == 2
