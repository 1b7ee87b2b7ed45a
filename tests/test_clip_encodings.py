"""A clip's jobs started together encode each frame once between them (streamer/clip/encodings.py),
and each object is tracked exactly as it is alone."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from streamer.clip.encodings import SharedEncodings
from streamer.clip.job import FramePrompt, TrackJob
from streamer.clip.video_io import probe
from streamer.metrics import REGISTRY
from tests.test_clip_media import LIMITS, write_clip


def test_a_pass_alone_keeps_nothing_and_passes_together_take_each_others_frames() -> None:
    shared = SharedEncodings(keep=2)
    made: list[int] = []
    taken = frames_encoded("shared")

    def encode(n: int) -> Callable[[], object]:
        return lambda: made.append(n) or object()

    a = shared.walk(forward=True, start=0, frames=20)  # one pass: nothing is kept for it
    first = shared.get(0, encode(0))
    assert shared.get(0, encode(0)) is not first and shared.held == 0
    b = shared.walk(forward=True, start=0, frames=20)  # a second: the first to a frame encodes it
    frame1 = shared.get(1, encode(1))
    assert shared.get(1, encode(1)) is frame1
    shared.get(2, encode(2))
    shared.get(3, encode(3))
    assert shared.held == 2  # the newest two: frame 1 has gone
    shared.get(1, encode(1))
    assert made == [0, 0, 1, 2, 3, 1] and frames_encoded("shared") - taken == 1
    a.leave()  # one left: what was kept goes
    assert shared.held == 0
    b.leave()
    with pytest.raises(ValueError, match="keep <= pace"):
        SharedEncodings(keep=0)


def test_a_frame_both_passes_stepped_goes_before_one_still_to_be_taken() -> None:
    """The one behind encodes a frame it missed (13) between the other's 14 and 15: 13 goes
    when 15 comes, not 14, which it takes next."""
    shared = SharedEncodings(keep=2)
    ahead = shared.walk(forward=True, start=10, frames=20)
    behind = shared.walk(forward=True, start=10, frames=20)
    for i in range(10, 14):
        ahead.stepped(i)
    for i in range(10, 13):
        behind.stepped(i)
    f14 = shared.get(14, object)
    ahead.stepped(14)
    shared.get(13, object)
    behind.stepped(13)
    shared.get(15, object)
    ahead.stepped(15)
    assert shared.get(14, object) is f14
    ahead.leave()
    behind.leave()


async def test_a_pass_ahead_waits_for_one_a_few_frames_behind_and_no_other() -> None:
    shared = SharedEncodings(keep=2, pace=8)
    ahead = shared.walk(forward=True, start=10, frames=20)  # 6 frames left at 14: pace's 8 hold
    for i in range(10, 14):
        await asyncio.wait_for(ahead.turn(i), 1)  # alone: never waits
        ahead.stepped(i)
    behind = shared.walk(forward=True, start=10, frames=20)  # a job started late: 4 behind
    far = shared.walk(forward=True, start=0, frames=20)  # 14 behind: never waited for
    backward = shared.walk(forward=False, start=9, frames=20)  # the other way: never waited for
    turn = asyncio.create_task(ahead.turn(14))
    await asyncio.sleep(0.05)
    assert not turn.done()  # frame 14 would push out frames `behind` has still to take
    for i in range(10, 12):
        behind.stepped(i)
        await asyncio.sleep(0.01)
    assert not turn.done()  # 12 and 13 still to come, 11 gone after 14: still waiting
    behind.stepped(12)
    await asyncio.wait_for(turn, 1)  # two behind: 13 and 14 are both held once 14 is encoded
    ahead.stepped(14)
    turn = asyncio.create_task(ahead.turn(16))
    await asyncio.sleep(0.05)
    assert not turn.done()
    behind.leave()  # its job was cancelled: the one ahead goes on
    await asyncio.wait_for(turn, 1)
    for walk in (ahead, far, backward):
        walk.leave()


@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize("frames,waits", [(130, True), (120, False)])
async def test_a_pass_waits_for_one_further_behind_while_it_has_three_times_the_gap_left(
    forward: bool, frames: int, waits: bool
) -> None:
    """Waiting while the other catches up, then walking in step, ends the pass ahead sooner than
    walking apart while the frames it has left are enough (encodings.py): 31 frames behind is
    waited for with 100 left (130 frames), not with 90 (120 frames)."""
    shared = SharedEncodings(keep=2, pace=8)
    last = frames - 1
    at = 30 if forward else last - 30  # where the pass ahead is: 31 frames from the other's start
    ahead = shared.walk(forward, start=at, frames=frames)
    behind = shared.walk(forward, start=0 if forward else last, frames=frames)
    turn = asyncio.create_task(ahead.turn(at))
    await asyncio.sleep(0.05)
    assert turn.done() is not waits
    for i in range(29):  # to 2 frames behind: the two walk in step from here
        behind.stepped(i if forward else last - i)
    await asyncio.wait_for(turn, 1)
    ahead.leave()
    behind.leave()


async def test_a_pass_standing_still_says_for_whom_once_and_a_brief_wait_says_nothing() -> None:
    """A job that stands still while another catches up says which (its progress shows it), as
    the wait passes `say_after_s`; as it goes on, or is cancelled, it says it no longer waits."""
    for say_after_s, says in ((0.05, True), (60.0, False)):
        shared = SharedEncodings(keep=2, pace=8, say_after_s=say_after_s)
        ahead = shared.walk(forward=True, start=5, frames=20, owner=1)
        behind = shared.walk(forward=True, start=0, frames=20, owner=2)  # 6 frames behind
        said: list[int | None] = []
        turn = asyncio.create_task(ahead.turn(5, said.append))
        await asyncio.sleep(0.2)
        assert said == ([2] if says else [])
        for i in range(3):  # 3 behind now: still waiting, said once
            behind.stepped(i)
        await asyncio.sleep(0.01)
        assert said == ([2] if says else []) and not turn.done()
        behind.stepped(3)
        await asyncio.wait_for(turn, 1)
        assert said == ([2, None] if says else [])
        # Cancelled (its job was) while waiting and said: it says it no longer waits.
        ahead.stepped(5)
        turn = asyncio.create_task(ahead.turn(9, said.append))
        await asyncio.sleep(0.2)
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn
        assert said == ([2, None, 2, None] if says else [])
        ahead.leave()
        behind.leave()


def frames_encoded(source: str) -> float:
    """/metrics' fmu_clip_frames_encoded_total for `source`."""
    return REGISTRY.get_sample_value("fmu_clip_frames_encoded_total", {"source": source}) or 0.0


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the tracker's image-encoder runs (one entry a frame encoded)."""
    from workers.vision import tracker

    calls: list[int] = []
    real = tracker.encode_image

    def counted(model: Any, image: Any) -> Any:
        calls.append(1)
        return real(model, image)

    monkeypatch.setattr(tracker, "encode_image", counted)
    yield calls


@pytest.mark.timeout(300)
@pytest.mark.parametrize("late", [0, 4])
async def test_two_objects_tracked_together_encode_each_frame_once_and_track_as_alone(
    model: Any, clip_path: Path, encodes: list[int], late: int
) -> None:
    """Both prompted on frame 10 of the 40-frame clip, so both passes run: 30 frames forward,
    11 backward, each frame once per job. The second starts `late` frames after the first (a
    second click a moment later): the first waits for it, and from there they share."""
    info = probe(clip_path, LIMITS)
    pool = ThreadPoolExecutor(1)  # the one vision thread

    async def run_vision(fn: Any, *a: Any, **k: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(fn, *a, **k)
        )

    prompts = {
        1: {10: FramePrompt([(100.0, 60.0)], [1])},  # the moving square
        2: {10: FramePrompt(box=(4.0, 4.0, 60.0, 50.0))},  # the background in a corner
    }

    def job(oid: int, encodings: SharedEncodings | None) -> TrackJob:
        return TrackJob(
            job_id=f"j{oid}",
            obj_id=oid,
            path=clip_path,
            info=info,
            prompts=prompts[oid],
            model=model,
            run_vision=run_vision,
            results={},
            encodings=encodings,
        )

    counted = {source: frames_encoded(source) for source in ("encoded", "shared")}
    try:
        alone = [job(1, None), job(2, None)]
        for j in alone:
            await j.run()
        encoded_alone = len(encodes)
        encodes.clear()
        shared = SharedEncodings()
        together = [job(1, shared), job(2, shared)]
        first = asyncio.create_task(together[0].run())
        while together[0].progress.done < late:
            await asyncio.sleep(0.001)
        await asyncio.gather(first, together[1].run())
    finally:
        pool.shutdown()

    steps = 30 + 11
    assert [j.state for j in alone + together] == ["done"] * 4
    assert encoded_alone == 2 * steps
    # /metrics counts every step, by where its encoding came from (the jobs alone passed no
    # shared encodings: not counted)
    moved = {source: frames_encoded(source) - n for source, n in counted.items()}
    assert moved["encoded"] == len(encodes) and moved["encoded"] + moved["shared"] == 2 * steps
    # In step on one vision thread: every frame encoded once, but those the first job stepped
    # before the second started (the second encodes them again as it catches up), and, as the
    # passes turn round, those the first steps back before the second has turned too: on a
    # loaded machine, where finishing the forward pass waits on an idle-priority decode, that
    # was 5 (it can be the whole backward pass, 11). Without sharing: 2 x 41.
    assert steps + late <= len(encodes) <= steps + late + 11, moved
    for a, t in zip(alone, together, strict=True):
        assert t.results == a.results  # every frame's RLE, box and presence, bit for bit
        assert len(t.results) == info.frame_count
    assert shared.held == 0  # both ended: nothing is kept


@pytest.mark.slow
async def test_fmu_live_track_gives_the_same_export_with_objects_tracked_together(
    sam2_tiny_random: Any, tmp_path: Path, encodes: list[int]
) -> None:
    from streamer.clip.batch import BatchTracker
    from streamer.clip.limits import ClipLimits
    from streamer.clip.track_prompts import parse_box, parse_point
    from streamer.services import Services
    from streamer.settings import Settings

    clip = write_clip(tmp_path / "a.mp4", frames=8, width=96, height=64)
    exports, counts = [], []
    for jobs in (1, 2):
        settings = Settings(weights="random", device="cpu", max_clip_jobs=jobs)
        services = Services(settings, vision_model=sam2_tiny_random)
        tracker = BatchTracker(
            services,
            out=tmp_path / f"out{jobs}",
            limits=ClipLimits.from_settings(settings),
            prompts=[parse_point("12,32"), parse_box("50,10,90,50")],
            video=False,
            progress=False,
        )
        encodes.clear()
        try:
            (outcome,) = await tracker.run([clip])
        finally:
            await services.aclose()
        assert outcome.state == "done", outcome
        exports.append((tmp_path / f"out{jobs}" / "a.mp4" / "export.json").read_text())
        counts.append(len(encodes))
    assert exports[0] == exports[1]
    assert counts[0] == 16 and counts[1] < 12, counts  # 8 frames x 2 objects; shared: about 8
