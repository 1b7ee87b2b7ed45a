"""LiveSession's pieces without a peer: the outbox, the session state, the watchdog, the snapshot board."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamer.live.frame_ids import band_height, read_frame_id, write_frame_id
from streamer.live.lifecycle import (
    SessionState,
    SessionStateError,
    Snapshot,
    SnapshotBoard,
    Watchdog,
)
from streamer.live.outbox import Outbox, OutboxClosed

# -- outbox ------------------------------------------------------------------------------------


async def drain(box: Outbox) -> list[str]:
    """Everything the outbox hands out now, in order (a sender that keeps up)."""
    out = []
    while True:
        try:
            text = await asyncio.wait_for(box.get(), 0.05)
        except asyncio.TimeoutError:
            return out
        out.append(text)
        box.sent()


async def test_outbox_keeps_control_in_order_and_only_the_newest_overlay_and_status() -> None:
    box = Outbox()
    box.put_latest("overlay", "overlay 1")
    box.put("token a")
    box.put_latest("status", "status 1")
    box.put_latest("overlay", "overlay 2")  # replaces overlay 1: a slow page skips frames
    box.put("token b")
    assert await drain(box) == ["token a", "token b", "overlay 2", "status 1"]


async def test_outbox_get_sleeps_until_something_is_put() -> None:
    box = Outbox()
    getter = asyncio.ensure_future(box.get())
    done, _ = await asyncio.wait({getter}, timeout=0.01)
    assert not done  # nothing to send: the sender sleeps instead of polling
    box.put("verdict")
    assert await getter == "verdict"


async def test_outbox_drained_waits_for_control_messages_not_overlays() -> None:
    box = Outbox()
    box.put("last notice")
    box.put_latest("overlay", "overlay")
    waiter = asyncio.ensure_future(box.drained())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await box.get() == "last notice"
    await asyncio.sleep(0)
    assert not waiter.done()  # taken, but not yet sent
    box.sent()
    await asyncio.wait_for(waiter, 1)


async def test_outbox_while_closing_sends_control_only_and_refuses_after_close() -> None:
    box = Outbox()
    box.put_latest("overlay", "overlay")
    box.put("why the session ends")
    box.control_only = True
    assert await drain(box) == ["why the session ends"]
    box.close()
    with pytest.raises(OutboxClosed):
        box.put("too late")
    with pytest.raises(OutboxClosed):
        box.put_latest("status", "too late")


def test_outbox_says_when_a_page_stopped_reading() -> None:
    box = Outbox(max_queued=2)
    assert box.put("a") and box.put("b")
    assert box.put("c") is False  # full: the session closes instead of growing without bound
    with pytest.raises(ValueError, match="overlay"):
        box.put_latest("tokens", "x")


# -- session state -----------------------------------------------------------------------------


def test_session_state_refuses_steps_out_of_order() -> None:
    state = SessionState()
    assert state.accepting
    state.start()
    with pytest.raises(SessionStateError, match="starts once"):
        state.start()
    assert state.begin_close("idle timeout") is True
    assert not state.accepting and state.reason == "idle timeout"
    assert state.begin_close("again") is False  # a second close waits for the first
    assert state.reason == "idle timeout"
    state.finish_close()
    assert state.closed.is_set()
    with pytest.raises(SessionStateError):
        state.start()  # a closed session never starts again
    with pytest.raises(SessionStateError):
        state.finish_close()


def test_finish_close_needs_begin_close() -> None:
    with pytest.raises(SessionStateError, match="without begin_close"):
        SessionState().finish_close()


# -- watchdog ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_closes_an_unpaired_session_after_the_pairing_timeout() -> None:
    clock = Clock()
    dog = Watchdog(idle_timeout_s=120.0, pairing_timeout_s=30.0, clock=clock)
    clock.now += 29.0
    assert dog.check(websocket_attached=False) is None
    clock.now += 2.0
    reason, notice = dog.check(websocket_attached=False)  # type: ignore[misc]
    assert reason == "no websocket attached within 30 s" and notice == ""
    assert dog.check(websocket_attached=True) is None  # paired: only idleness counts


def test_watchdog_closes_an_idle_session_and_activity_keeps_it_open() -> None:
    clock = Clock()
    dog = Watchdog(idle_timeout_s=10.0, clock=clock)
    assert dog.pairing_timeout_s == 10.0  # never longer than the idle timeout
    clock.now += 8.0
    dog.touch()  # a frame or a message
    clock.now += 8.0
    assert dog.check(websocket_attached=True) is None
    clock.now += 3.0
    reason, notice = dog.check(websocket_attached=True)  # type: ignore[misc]
    assert reason == "idle timeout" and "after 10 s without frames or messages" in notice


# -- snapshot board ----------------------------------------------------------------------------


def snapshot(index: int, visible: set[int]) -> Snapshot:
    masks = {oid: np.ones((2, 2), bool) for oid in visible}
    return Snapshot(index, np.zeros((2, 2, 3), np.uint8), masks, frozenset(visible))


async def test_snapshot_board_wakes_a_waiter_on_the_first_frame_that_shows_the_object() -> None:
    board = SnapshotBoard()
    waiter = asyncio.ensure_future(board.wait_for(lambda s: 3 in s.visible, timeout_s=5))
    await asyncio.sleep(0)
    board.publish(snapshot(1, set()))
    await asyncio.sleep(0)
    assert not waiter.done()  # frame 1 does not show object 3
    board.publish(snapshot(2, {3}))
    got = await asyncio.wait_for(waiter, 1)
    assert got is not None and got.frame_index == 2


async def test_snapshot_board_answers_at_once_when_the_newest_frame_already_shows_it() -> None:
    board = SnapshotBoard()
    board.publish(snapshot(7, {1}))
    got = await board.wait_for(lambda s: 1 in s.visible, timeout_s=0)
    assert got is not None and got.frame_index == 7


async def test_snapshot_board_without_a_timeout_waits_until_cancelled() -> None:
    """A resume's restore waits for the first frame as long as its session does (it gave up
    after a fixed 30 s, silently, where --session-first-frame-timeout-s is longer)."""
    board = SnapshotBoard()
    waiter = asyncio.ensure_future(board.wait_for(lambda s: True, timeout_s=None))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    board.publish(snapshot(1, set()))
    got = await asyncio.wait_for(waiter, 1)
    assert got is not None and got.frame_index == 1
    idle = asyncio.ensure_future(SnapshotBoard().wait_for(lambda s: True, timeout_s=None))
    await asyncio.sleep(0.05)
    idle.cancel()  # the session closing
    with pytest.raises(asyncio.CancelledError):
        await idle


async def test_snapshot_board_gives_up_after_the_timeout() -> None:
    board = SnapshotBoard()
    board.publish(snapshot(1, set()))
    assert await board.wait_for(lambda s: 1 in s.visible, timeout_s=0.01) is None


def test_a_dropped_sessions_objects_are_kept_once_for_the_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from streamer.http.access import ANONYMOUS_OWNER
    from streamer.live import registry
    from streamer.live.resume import DROPPED, Parked
    from streamer.settings import Settings

    assert "websocket closed" in DROPPED and "the page closed the session" not in DROPPED
    now = [1000.0]
    monkeypatch.setattr(registry.time, "monotonic", lambda: now[0])
    reg = registry.LiveRegistry(SimpleNamespace(settings=Settings(session_idle_timeout_s=60)))
    reg.owners.update(a=ANONYMOUS_OWNER, c=ANONYMOUS_OWNER)  # admitted by this browser
    parked = Parked(objects=[], boxes={}, frame_size=(320, 240), next_id=2)
    reg._forget(SimpleNamespace(id="a", parked=parked))  # type: ignore[arg-type]
    reg._forget(SimpleNamespace(id="b", parked=None))  # type: ignore[arg-type]  # nothing kept
    assert reg.take_parked("b") is None
    assert reg.take_parked("a") is parked
    assert reg.take_parked("a") is None  # once: a second page cannot take them again
    reg._forget(SimpleNamespace(id="c", parked=parked))  # type: ignore[arg-type]
    now[0] += 61  # past the idle timeout
    assert reg.take_parked("c") is None


def test_watchdog_closes_a_session_whose_peer_sends_no_video() -> None:
    # four sockets that only ping must not hold the live slots
    clock = Clock()
    dog = Watchdog(idle_timeout_s=120.0, first_frame_timeout_s=20.0, clock=clock)
    for _ in range(5):
        clock.now += 5.0
        dog.touch()  # pings
    reason, notice = dog.check(websocket_attached=True)  # type: ignore[misc]
    assert reason == "no video within 20 s" and "TURN" in notice


def test_watchdog_closes_a_session_whose_video_stopped_though_messages_go_on() -> None:
    clock = Clock()
    dog = Watchdog(idle_timeout_s=10.0, first_frame_timeout_s=5.0, clock=clock)
    clock.now += 1.0
    dog.frame_arrived()
    for _ in range(3):
        clock.now += 4.0
        dog.touch()
    reason, notice = dog.check(websocket_attached=True)  # type: ignore[misc]
    assert reason == "video stopped" and "no video for 10 s" in notice
    assert "closed" in notice


@pytest.mark.parametrize(
    ("width", "height", "frame_id"),
    [
        (320, 240, 0),  # smallest id: every bit cell black, only the white marker
        (320, 240, 0xFFFF),  # largest id: every bit cell white
        (640, 480, 12345),
        (162, 120, 777),  # a width the cells do not divide
    ],
)
def test_frame_id_band_names_the_frame_and_is_cropped_off(
    width: int, height: int, frame_id: int
) -> None:
    picture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    sent = write_frame_id(picture, frame_id)
    assert sent.shape == (height + band_height(width), width, 3)
    got, cropped = read_frame_id(sent)
    assert got == frame_id
    assert np.array_equal(cropped, picture)


def test_a_frame_without_a_band_has_no_id() -> None:
    # A page that asked for frame ids but sends plain camera frames: no id is invented.
    picture = np.full((240, 320, 3), 200, dtype=np.uint8)
    got, _ = read_frame_id(picture)
    assert got is None


async def test_stopping_find_all_while_it_adds_a_region_leaves_nothing_in_the_tracker() -> None:
    """Stop pressed while the vision thread is adding an accepted region: the add still finishes
    there, and is undone, so the tracker draws no object the list does not have."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from streamer.live import answers
    from streamer.objects import find_all
    from streamer.objects.table import ObjectTable
    from streamer.scheduler import VisionScheduler

    adding, stopped = threading.Event(), threading.Event()
    snap = Snapshot(0, np.zeros((40, 40, 3), np.uint8), {}, frozenset())

    class Tracker:
        def __init__(self) -> None:
            self.ids: set[int] = set()

        def add_object(self, oid: int, **prompt: object) -> None:
            adding.set()
            assert stopped.wait(30), "Stop was never pressed"  # the add ends after the Stop
            self.ids.add(oid)

        def keep(self, oid: int) -> None:
            pass

        def remove(self, oid: int) -> None:
            self.ids.remove(oid)

        def propose(self, grid: object) -> object:
            m = np.zeros((40, 40), bool)
            m[2:8, 2:8] = True
            return snap, [SimpleNamespace(mask=m, box=(2.0, 2.0, 8.0, 8.0))] * 2

    class Reasoner:
        async def classify_regions(self, frame: object, masks: list[object], phrase: str) -> object:
            return SimpleNamespace(matches=[True] * len(masks))

    spawned: list[asyncio.Task[None]] = []
    scheduler = VisionScheduler(ThreadPoolExecutor(1))
    session = SimpleNamespace(
        id="s",
        objects=ObjectTable(16, "session"),
        tracker=Tracker(),
        services=SimpleNamespace(run_vision_live=scheduler.run),
        spawn=lambda coro, name: spawned.append(asyncio.ensure_future(coro)),
    )
    site = answers._LiveFindSite(session, snap)  # type: ignore[arg-type]

    async def run() -> None:
        async for _ in find_all.find_all(site, Reasoner(), "cups", find_all.FindAllLimits()):
            pass

    task = asyncio.ensure_future(run())
    assert await asyncio.to_thread(adding.wait, 30), "find-all never added the region"
    task.cancel()  # stop_find
    stopped.set()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.gather(*spawned)
    await scheduler.run("s", lambda: None)  # after whatever the vision thread still had
    assert len(session.objects) == 0 and session.tracker.ids == set()


def test_a_closing_session_takes_no_websocket_but_a_resume_still_waits_for_it() -> None:
    from types import SimpleNamespace

    from streamer.http.access import request_owner
    from streamer.live import registry
    from streamer.settings import Settings

    reg = registry.LiveRegistry(SimpleNamespace(settings=Settings()))
    state = SessionState()
    state.start()
    session = SimpleNamespace(state=state, closed=state.closed)
    reg.sessions["a"], reg.owners["a"] = session, request_owner.get()  # type: ignore[assignment]
    assert reg.find("a") is session
    state.begin_close("peer connection failed")
    assert reg.find("a") is None  # its websocket would get a sender that waits forever
    assert reg.find("a", closing=True) is session  # an offer resuming it waits for its close
    state.finish_close()
    assert reg.find("a", closing=True) is None


@pytest.mark.parametrize(
    ("step_s", "expected"),
    [(0.1, 10.0), (0.5, 2.0), (1.4, 1 / 1.4), (4.0, 0.25)],
)
def test_the_status_rate_is_one_over_the_step_however_slow_the_step(
    step_s: float, expected: float
) -> None:
    """The status line's fps, read at every moment between frames: a tracker step of over a
    second (a CPU) read 0.0 half the time in a 2 s window, as if the stream had stopped."""
    from streamer.live.ingest import FrameRate

    rate = FrameRate()
    for i in range(30):
        rate.tick(100 + i * step_s)
    last = 100 + 29 * step_s
    for frac in (0.0, 0.3, 0.6, 0.99):  # whenever the status is sent, until the next frame
        assert rate.per_second(last + frac * step_s) == pytest.approx(expected, rel=0.01)


def test_the_status_rate_falls_to_zero_when_frames_stop() -> None:
    from streamer.live.ingest import FrameRate

    rate = FrameRate()
    assert rate.per_second(5.0) == 0.0  # no frame yet
    for i in range(20):
        rate.tick(i * 0.1)  # 10 fps, the last at 1.9 s
    assert rate.per_second(2.0) == pytest.approx(10.0, rel=0.01)
    stalled = [rate.per_second(t) for t in (3.0, 4.0, 6.0)]
    assert stalled == sorted(stalled, reverse=True) and stalled[0] < 10.0 / 2
    assert rate.per_second(12.0) == 0.0  # nothing for 10 s


async def test_a_new_object_waiting_for_its_first_frame_holds_no_vlm_turn() -> None:
    """With a share of one VLM request, a new object whose mask shows on no frame yet waits for
    one without its turn: another object's description starts meanwhile (it waited the whole
    first-view wait, up to 10 s), and the new one is described once a frame shows it."""
    from types import SimpleNamespace

    from streamer.live import answers
    from streamer.live.session import LiveSession
    from streamer.settings import Settings

    started: list[int] = []

    class Reasoner:
        async def describe_verified(self, rgb: np.ndarray, mask: np.ndarray) -> object:
            started.append(int(mask.sum()))  # which object: their masks differ in size
            yield SimpleNamespace(type="token", text="a square", attempt=1)
            yield SimpleNamespace(
                type="verdict",
                description="a square",
                verdict="verified",
                iou=0.9,
                attempts=1,
                box=None,
                note=None,
            )

    settings = Settings(weights="random", vlm_max_in_flight_per_session=1)
    services = SimpleNamespace(settings=settings, reasoner=Reasoner(), descriptions_off=None)
    session = LiveSession(services)  # type: ignore[arg-type]
    sent: list[object] = []
    session.send = sent.append  # type: ignore[method-assign]
    new, shown = session.objects.add("click").id, session.objects.add("click").id
    rgb = np.zeros((20, 20, 3), np.uint8)
    small, big = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    small[2:4, 2:4] = True  # 4 pixels: the new object's
    big[5:15, 5:15] = True  # 100 pixels: the shown one's

    answers.start_describe(session, new, wait_for_view=True)  # no frame shows it yet
    await asyncio.sleep(0)
    answers.start_describe(
        session, shown, view=(Snapshot(0, rgb, {shown: big}, frozenset({shown})), big)
    )
    waiting = session.objects.get(new).describe_task
    done = session.objects.get(shown).describe_task
    await done
    assert started == [100] and not waiting.done()  # described while the new one still waits
    session.snapshots.publish(Snapshot(1, rgb, {new: small}, frozenset({new})))
    await waiting
    assert started == [100, 4]
    verdicts = [m for m in sent if getattr(m, "type", None) == "verdict"]
    assert [v.object_id for v in verdicts] == [shown, new]


async def test_a_find_refused_mid_way_names_its_phrase() -> None:
    """A Live Find's error names the phrase asked, as its find_result does: the page ends the
    Find it answers and leaves another one under way waiting (web/finding.js)."""
    from streamer.live import answers
    from streamer.objects.refusal import ObjectRefused

    sent: list = []

    class Session:
        send = staticmethod(sent.append)

    async def events():
        raise ObjectRefused("vlm_error", "the VLM at http://127.0.0.1:9/v1 does not answer")
        yield

    await answers._relay(Session(), events(), "find", "the red cup")  # type: ignore[arg-type]
    (error,) = sent
    assert (error.type, error.code, error.request, error.phrase) == (
        "error",
        "vlm_error",
        "find",
        "the red cup",
    )


async def test_a_new_objects_describe_refused_at_its_click_is_the_describes_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A click makes its object; the description it starts at once, refused there, is answered
    as the describe's refusal (request "describe"): the page ends that description, and takes
    an error of a click (a refine click dropped, request "click") as no description's."""
    from types import SimpleNamespace

    from streamer.live import answers
    from streamer.live import protocol as p
    from streamer.live.session import LiveSession
    from streamer.objects.refusal import ObjectRefused
    from streamer.settings import Settings

    def refused(session: object, oid: int, **kw: object) -> None:
        raise ObjectRefused("busy", f"object {oid} is already being described", oid)

    async def run_vision_live(sid: str, fn: object, *args: object, **kw: object) -> object:
        return fn(*args, **kw)  # type: ignore[operator]

    monkeypatch.setattr(answers, "start_describe", refused)
    services = SimpleNamespace(
        settings=Settings(weights="random"),
        reasoner=object(),
        descriptions_off=None,
        vlm_known_unusable=False,
        run_vision_live=run_vision_live,
    )
    session = LiveSession(services)  # type: ignore[arg-type]
    sent: list[object] = []
    session.send = sent.append  # type: ignore[method-assign]
    session.tracker = SimpleNamespace(add_object=lambda oid, **prompt: None)  # type: ignore[assignment]
    session.snapshots.publish(Snapshot(0, np.zeros((20, 20, 3), np.uint8), {}, frozenset()))
    await session.handle(p.ClickMessage(type="click", x=5.0, y=5.0))
    listed, error = sent
    assert getattr(listed, "added", None) == 1 and getattr(listed, "describe", None) is True
    assert (error.type, error.code, error.object_id, error.request) == (  # type: ignore[attr-defined]
        "error",
        "busy",
        1,
        "describe",
    )
