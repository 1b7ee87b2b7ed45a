"""A live session with fake services (no peer): a reconnect's restore keeps the object cap and
never gives an id out twice; a Find's or auto-refine's prompt made on a frame of another size
lands where it was meant on the newest one; a session's checked Finds are bounded."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamer.live import answers, resume
from streamer.live import protocol as p
from streamer.live.lifecycle import Snapshot
from streamer.live.resume import Parked
from streamer.live.session import LiveSession
from streamer.objects.tracked import TrackedObject
from streamer.settings import Settings
from tests.conftest import moving_shape_frame, wait_until

SNAP = Snapshot(0, np.zeros((40, 40, 3), np.uint8), {}, frozenset())


class Tracker:
    """What a session asks of its LiveTracker, without SAM2."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.last_boxes: dict[int, Any] = {}

    def add_object(self, oid: int, **prompt: Any) -> None:
        self.ids.add(oid)
        self.last_boxes[oid] = ((2.0, 2.0, 20.0, 20.0), (40, 40))

    def remove(self, oid: int) -> None:
        self.ids.discard(oid)
        self.last_boxes.pop(oid, None)


async def direct(sid: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def a_session(run_vision_live: Any = direct, reasoner: Any = None, **settings: Any) -> Any:
    services = SimpleNamespace(
        settings=Settings(weights="random", **settings),
        reasoner=reasoner,
        vlm_known_unusable=reasoner is None,
        descriptions_off=None if reasoner is not None else "off",
        run_vision_live=run_vision_live,
    )
    session = LiveSession(services)
    session.sent = []
    session.send = session.sent.append
    session.tracker = Tracker()
    return session


def of_type(session: Any, kind: str) -> list[Any]:
    return [m for m in session.sent if getattr(m, "type", None) == kind]


async def restored(session: Any) -> None:
    await wait_until(lambda: session.resuming is None, 10, "the resume's restore")


def held_restore_of(oid: int) -> tuple[Any, asyncio.Event, asyncio.Event]:
    """A session's run_vision_live whose re-adding of object `oid` (a resume's restore) waits,
    once at SAM2 (`at_sam2` set), until `go`: (it, at_sam2, go)."""
    at_sam2, go = asyncio.Event(), asyncio.Event()

    async def held(sid: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn.__name__ == "add_object" and args == (oid,):
            at_sam2.set()
            await go.wait()
        return fn(*args, **kwargs)

    return held, at_sam2, go


# -- reconnect ---------------------------------------------------------------------------------


async def test_a_click_while_a_resume_restores_cannot_pass_the_object_cap() -> None:
    """Cap 2, two objects coming back; while SAM2 re-adds the second, the person clicks a new
    one (room: 1 of 2). The second no longer fits: it leaves the tracker again, and an error
    says it was not brought back, instead of a third object past the cap."""
    slow_second_restore, at_sam2, go = held_restore_of(2)

    session = a_session(slow_second_restore, max_objects=2)
    objects = [TrackedObject(1, "click", "object 1"), TrackedObject(2, "click", "a red cup")]
    boxes = {1: (2.0, 2.0, 20.0, 20.0), 2: (5.0, 5.0, 25.0, 25.0)}
    session.resume(Parked(objects, boxes, (40, 40), 3))
    session.snapshots.publish(SNAP)
    await at_sam2.wait()
    await session.handle(p.ClickMessage(type="click", x=30, y=30))
    go.set()
    await restored(session)

    assert sorted(o.id for o in session.objects) == [1, 3]
    assert session.tracker.ids == {1, 3}
    (error,) = of_type(session, "error")
    assert (error.code, error.object_id, error.request) == ("too_many_objects", 2, "resume")
    assert error.message.startswith("object 2 (a red cup) was not brought back")
    assert [o.id for o in of_type(session, "objects")[-1].objects] == [1, 3]
    await session.close("test")


@pytest.mark.parametrize("what", ["reset", "remove"])
async def test_objects_removed_while_a_resume_restores_stay_removed(what: str) -> None:
    """Three objects coming back; while SAM2 re-adds the second, the person clears the list
    (reset) or removes the third, not yet back. They stay gone, the id no longer "unknown" (the
    restore brought them back after the reset; the third was refused, then came back too)."""
    slow_second_restore, at_sam2, go = held_restore_of(2)

    session = a_session(slow_second_restore)
    objects = [TrackedObject(i, "click", f"object {i}") for i in (1, 2, 3)]
    boxes = {i: (2.0 * i, 2.0, 20.0, 20.0) for i in (1, 2, 3)}
    session.resume(Parked(objects, boxes, (40, 40), 4))
    session.snapshots.publish(SNAP)
    await at_sam2.wait()
    if what == "reset":
        await session.handle(p.ResetMessage(type="reset"))
    else:
        await session.handle(p.RemoveMessage(type="remove", object_id=3))
    go.set()
    await restored(session)

    left = [] if what == "reset" else [1, 2]
    assert sorted(o.id for o in session.objects) == left
    assert session.tracker.ids == set(left)
    assert of_type(session, "error") == []
    assert [o.id for o in of_type(session, "objects")[-1].objects] == left
    await session.close("test")


async def test_the_objects_a_resume_brings_back_come_as_the_server_kept_them() -> None:
    """A reloaded page has none of its objects' answers: the objects message that ends the
    restore carries each one's description, verdict (IoU, attempts) and chat, as a kept clip's
    or image's objects do; the messages after it the list alone again."""
    kept = TrackedObject(1, "click", "object 1")
    kept.described("a red cup on a desk", "verified", iou=0.83, attempts=2)
    kept.remember("What colour is it?", "Red.")
    session = a_session()
    session.resume(Parked([kept], {1: (2.0, 2.0, 20.0, 20.0)}, (40, 40), 2))
    session.snapshots.publish(SNAP)
    await restored(session)

    (message,) = of_type(session, "objects")
    assert message.restored
    wire = json.loads(message.model_dump_json())["objects"]
    assert wire == [
        {
            "id": 1,
            "label": "a red cup on a desk",
            "source": "click",
            "description": "a red cup on a desk",
            "verdict": "verified",
            "find_check": None,
            "iou": 0.83,
            "attempts": 2,
            "note": None,
            "chat": [
                {"role": "user", "content": "What colour is it?"},
                {"role": "assistant", "content": "Red."},
            ],
        }
    ]
    await session.handle(p.ClickMessage(type="click", x=30, y=30))
    after = of_type(session, "objects")[-1]
    assert not after.restored and "chat" not in json.loads(after.model_dump_json())["objects"][0]
    await session.close("test")


@pytest.mark.parametrize("also_seen", [True, False])
async def test_an_object_that_never_showed_is_said_not_back_after_a_resume(
    also_seen: bool,
) -> None:
    """Object 2 had shown on no frame when the connection dropped (its mask empty since its
    click): there is no box to re-add it from. The resumed page is told so, by name, instead of
    the object going from its list unsaid (or, alone, "the server no longer had this session's
    objects")."""
    old = a_session()
    old.snapshots.publish(SNAP)
    if also_seen:
        await old.handle(p.ClickMessage(type="click", x=10, y=10))
    old.objects.add("click", "a red cup", oid=2)  # in the table, never in the tracker's boxes
    parked = resume.park(old)
    assert parked is not None

    new = a_session()
    new.resume(parked)
    new.snapshots.publish(SNAP)
    await restored(new)
    (error,) = of_type(new, "error")
    assert (error.code, error.object_id, error.request) == ("not_visible", 2, "resume")
    assert error.message.startswith("object 2 (a red cup) was not brought back after the reconnect")
    assert "had not shown on any frame" in error.message and error.message.endswith(
        "click it again"
    )
    back = of_type(new, "objects")[-1]
    assert back.restored and [o.id for o in back.objects] == ([1] if also_seen else [])
    for s in (old, new):
        await s.close("test")


async def test_a_resumed_session_never_gives_out_a_removed_objects_id() -> None:
    """Objects 1 and 2 clicked, 2 removed, then the connection drops: after the resume, the
    next new object is 3, not 2 again (the page may still show answers about the old 2)."""
    old = a_session()
    old.snapshots.publish(SNAP)
    for x in (10, 30):
        await old.handle(p.ClickMessage(type="click", x=x, y=10))
    await old.handle(p.RemoveMessage(type="remove", object_id=2))
    parked = resume.park(old)
    assert parked is not None and [o.id for o in parked.objects] == [1]

    new = a_session()
    new.resume(parked)
    new.snapshots.publish(SNAP)
    await restored(new)
    await new.handle(p.ClickMessage(type="click", x=20, y=20))
    assert of_type(new, "objects")[-1].added == 3
    for s in (old, new):
        await s.close("test")


async def test_a_resume_that_drops_again_passes_on_the_ids_it_gave_out() -> None:
    """A resumed session that drops before its first frame parks the same objects again, and
    an id it gave out meanwhile stays given."""
    session = a_session()
    session.resume(Parked([TrackedObject(1, "click", "object 1")], {1: (2, 2, 9, 9)}, (40, 40), 2))
    session.objects.new_id()  # 2: given out (a Find's candidate) before the drop
    parked = resume.park(session)
    assert parked is not None and [o.id for o in parked.objects] == [1]
    assert parked.next_id == 3
    await session.close("test")


async def test_a_resume_that_drops_while_it_restores_parks_what_it_holds_and_what_is_not_back() -> (
    None
):
    """Two objects coming back; while SAM2 re-adds the second, the person clicks a third, and the
    connection drops. All three are parked: the first as restored, the second with the box it
    came with, the third as clicked."""
    slow_second_restore, at_sam2, go = held_restore_of(2)
    session = a_session(slow_second_restore)
    objects = [TrackedObject(1, "click", "object 1"), TrackedObject(2, "click", "a red cup")]
    session.resume(Parked(objects, {1: (2, 2, 20, 20), 2: (5, 5, 25, 25)}, (40, 40), 3))
    session.snapshots.publish(SNAP)
    await at_sam2.wait()
    await session.handle(p.ClickMessage(type="click", x=30, y=30))
    assert sorted(o.id for o in session.objects) == [1, 3]

    parked = resume.park(session)
    assert parked is not None and [o.id for o in parked.objects] == [1, 2, 3]
    assert parked.boxes[2] == (5, 5, 25, 25) and parked.objects[1].label == "a red cup"
    assert parked.next_id == 4 and parked.unseen == []
    go.set()
    await session.close("test")


def test_park_scales_each_box_from_the_frame_it_was_last_seen_on() -> None:
    """Object 1 last showed on a 192x128 frame, object 2 on the newest, 96x64 (WebRTC lowered
    the resolution): both are parked in the newest frame's pixels."""
    session = a_session()
    session.objects.add("click", oid=1)
    session.objects.add("click", oid=2)
    session.tracker.last_boxes = {
        1: ((96.0, 0.0, 192.0, 128.0), (192, 128)),
        2: ((10.0, 10.0, 20.0, 20.0), (96, 64)),
    }
    session.snapshots.publish(Snapshot(5, np.zeros((64, 96, 3), np.uint8), {}, frozenset()))
    parked = resume.park(session)
    assert parked is not None and parked.frame_size == (96, 64)
    assert parked.boxes == {1: (48.0, 0.0, 96.0, 64.0), 2: (10.0, 10.0, 20.0, 20.0)}


# -- a picture whose size changed --------------------------------------------------------------


def frame(w: int, h: int, i: int = 0) -> Any:
    rgb = moving_shape_frame(i, w, h)
    return SimpleNamespace(to_ndarray=lambda format: rgb, pts=i, time_base=Fraction(1, 15))


def recorded(tracker: Any, method: str) -> list[dict[str, Any]]:
    """The prompts SAM2's tracker gets through `method` (LiveTracker's StreamTracker)."""
    calls: list[dict[str, Any]] = []
    real = getattr(tracker.tracker, method)

    def record(*args: Any, **prompt: Any) -> Any:
        calls.append(prompt)
        return real(*args, **prompt)

    setattr(tracker.tracker, method, record)
    return calls


async def test_a_find_whose_picture_shrank_while_the_vlm_grounded_adds_the_scaled_box(
    sam2_tiny_random: Any,
) -> None:
    """The phrase is grounded on a 192x128 frame; by the time the box is added WebRTC sends
    96x64. The box goes to SAM2 in the new frame's pixels (the same place), not refused as
    outside the frame."""
    from streamer.live.tracking import LiveTracker

    class Reasoner:
        grounded, go = asyncio.Event(), asyncio.Event()

        async def ground(self, rgb: np.ndarray, phrase: str) -> list[Any]:
            h, w = rgb.shape[:2]
            self.grounded.set()
            await self.go.wait()
            return [SimpleNamespace(box=(w / 2, 0.0, float(w), float(h)), label=phrase, score=0.9)]

        async def check_match(self, rgb: np.ndarray, mask: np.ndarray, phrase: str) -> Any:
            return SimpleNamespace(match=True, answer="Yes.")

    reasoner = Reasoner()
    session = a_session(reasoner=reasoner)
    session.tracker = LiveTracker(sam2_tiny_random)
    adds = recorded(session.tracker, "add_object")
    session.snapshots.publish(session.tracker.step(frame(192, 128))[0])
    answers.start_find(session, "the right half", all_candidates=True)
    await reasoner.grounded.wait()
    session.snapshots.publish(session.tracker.step(frame(96, 64, 1))[0])
    reasoner.go.set()
    await wait_until(lambda: of_type(session, "find_result"), 60, "the find's result")

    (result,) = of_type(session, "find_result")
    assert [o.object_id for o in result.objects] == [1], result.message
    assert [a["box"] for a in adds] == [(48.0, 0.0, 96.0, 64.0)]
    await session.close("test")


async def test_an_auto_refine_click_picked_before_the_picture_shrank_lands_scaled(
    sam2_tiny_random: Any,
) -> None:
    """The VLM picks its click on a 192x128 frame; the newest is 96x64 when it is applied: SAM2
    gets it at the same place in the new frame's pixels, the page is told that place (it draws
    the click on the new picture), and the refine goes on."""
    from streamer.live.tracking import LiveTracker

    class Reasoner:
        asked, go = asyncio.Event(), asyncio.Event()
        answers = [
            SimpleNamespace(action="positive", point=(150.0, 100.0), model_point=(150, 100)),
            SimpleNamespace(action="done", answer="done"),
        ]

        async def next_click(self, rgb: Any, mask: Any, target: Any, history: Any) -> Any:
            self.asked.set()
            await self.go.wait()
            nxt = self.answers.pop(0)
            nxt.answer = "..."
            return nxt

    reasoner = Reasoner()
    session = a_session(reasoner=reasoner)
    tracker = session.tracker = LiveTracker(sam2_tiny_random)
    refines = recorded(tracker, "refine")
    snap, _ = tracker.step(frame(192, 128))
    tracker.add_object(1, box=(40.0, 30.0, 120.0, 100.0))
    session.objects.add("click", oid=1)
    mask = np.zeros((128, 192), bool)
    mask[30:100, 40:120] = True  # what the VLM is shown: the object on the 192x128 frame
    session.snapshots.publish(Snapshot(0, snap.rgb, {1: mask}, frozenset({1})))
    answers.start_auto_refine(session, 1, max_steps=4)
    await reasoner.asked.wait()
    session.snapshots.publish(tracker.step(frame(96, 64, 1))[0])
    reasoner.go.set()
    await wait_until(lambda: of_type(session, "refine_done"), 60, "the refine's end")

    assert [r["points"] for r in refines] == [[(75.0, 50.0)]]
    (click,) = of_type(session, "refine_click")
    assert (click.x, click.y) == (75.0, 50.0)
    (done,) = of_type(session, "refine_done")
    assert (done.reason, done.steps) == ("done", 1), done.message
    await session.close("test")


# -- how many Finds at once --------------------------------------------------------------------


async def test_a_sessions_checked_finds_under_way_are_bounded() -> None:
    """With a VLM share of 2, a third Find while two wait for the VLM is refused busy, naming
    its phrase (each waiting Find holds its frame); once they answer, the next Find is taken."""

    class Reasoner:
        go = asyncio.Event()

        async def ground(self, rgb: np.ndarray, phrase: str) -> list[Any]:
            await self.go.wait()
            return []

    session = a_session(reasoner=Reasoner(), vlm_max_in_flight_per_session=2)
    session.snapshots.publish(SNAP)
    for phrase in ("cup", "pen", "hat"):
        await session.handle(p.FindMessage(type="find", phrase=phrase))
    (error,) = of_type(session, "error")
    assert (error.code, error.request, error.phrase) == ("busy", "find", "hat")
    assert "wait for a result" in error.message

    Reasoner.go.set()
    await wait_until(lambda: len(of_type(session, "find_result")) == 2, 10, "the two results")
    await wait_until(lambda: session.task_count == 0, 10, "the finds' tasks to end")
    await session.handle(p.FindMessage(type="find", phrase="hat"))
    await wait_until(lambda: len(of_type(session, "find_result")) == 3, 10, "the third result")
    assert len(of_type(session, "error")) == 1
    await session.close("test")


async def test_a_message_handled_while_the_session_closes_starts_nothing() -> None:
    """Closing has begun (its peer failed, its watchdog fired) and a Find the page sent just
    before is handled: nothing starts. (It started a task after close() had cancelled the
    session's tasks: a VLM request for a session that had ended.)"""

    async def never_answers(*args: Any, **kwargs: Any) -> list[Any]:
        await asyncio.sleep(3600)
        return []

    reasoner = SimpleNamespace(ground=never_answers, check_match=never_answers)
    session = a_session(reasoner=reasoner)
    session.snapshots.publish(SNAP)
    assert session.state.begin_close("peer connection failed")
    await session.handle(p.FindMessage(type="find", phrase="the red cup"))
    assert session.task_count == 0
    assert of_type(session, "error") == []


async def test_a_refusal_of_a_message_that_names_an_object_names_it_too() -> None:
    """A refine click outside the frame, a describe with descriptions off: the error carries
    the object the message named (docs/protocol.md), so the page ends what it waits for on that
    object (it came with no object_id)."""
    session = a_session()
    session.snapshots.publish(SNAP)
    session.objects.add("click")
    await session.handle(p.ClickMessage(type="click", x=-5, y=10, object_id=1))
    await session.handle(p.DescribeMessage(type="describe", object_id=1))
    refused = [(e.code, e.request, e.object_id) for e in of_type(session, "error")]
    assert refused == [("bad_prompt", "click", 1), ("vlm_off", "describe", 1)]


async def test_an_auto_refine_stopped_before_its_vlm_turn_says_it_applied_no_click() -> None:
    """The object's last auto-refine applied 3 clicks; a new one waits for the session's VLM
    share and is stopped there: refine_done says none applied (it said the last run's 3)."""
    session = a_session(reasoner=SimpleNamespace(), vlm_max_in_flight_per_session=1)
    obj = session.objects.add("click")
    mask = np.zeros((40, 40), bool)
    mask[5:20, 5:20] = True
    session.snapshots.publish(Snapshot(0, SNAP.rgb, {obj.id: mask}, frozenset({obj.id})))
    obj.refine_steps = 3
    with session.objects.vlm_share.slot(None):  # another object's describe holds the share
        await session.handle(p.AutoRefineMessage(type="auto_refine", object_id=obj.id))
        await wait_until(lambda: session.objects.vlm_share.waiting == 1, 5, "its VLM turn")
        await session.handle(p.StopRefineMessage(type="stop_refine", object_id=obj.id))
    (done,) = of_type(session, "refine_done")
    assert (done.steps, done.reason) == (0, "stopped")
    assert done.message == "stopped; no click was applied"
    await session.close("test")


async def test_an_auto_refine_stopped_while_sam2_applies_its_click_counts_that_click() -> None:
    """Stop comes while SAM2 applies the VLM's first click: SAM2's thread goes on and the click
    lands, so refine_done counts it (it said "the 0 clicks applied stay" over a changed mask),
    and the click is sent as the others are, before it (the page drew no dot for it)."""
    at_sam2, go = asyncio.Event(), asyncio.Event()

    async def sam2_thread(sid: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn.__name__ != "refine":
            return fn(*args, **kwargs)

        async def running() -> Any:  # as a thread at work: the caller's cancel does not stop it
            at_sam2.set()
            await go.wait()
            return fn(*args, **kwargs)

        return await asyncio.shield(asyncio.ensure_future(running()))

    async def next_click(*args: Any) -> Any:
        return SimpleNamespace(
            action="positive", point=(10.0, 10.0), model_point=(10, 10), answer=""
        )

    session = a_session(sam2_thread, reasoner=SimpleNamespace(next_click=next_click))
    applied: list[int] = []

    def refine(oid: int, **prompt: Any) -> None:  # None: no newer view to show
        applied.append(oid)

    session.tracker.refine = refine
    obj = session.objects.add("click")
    mask = np.zeros((40, 40), bool)
    mask[5:20, 5:20] = True
    session.snapshots.publish(Snapshot(0, SNAP.rgb, {obj.id: mask}, frozenset({obj.id})))
    await session.handle(p.AutoRefineMessage(type="auto_refine", object_id=obj.id))
    await asyncio.wait_for(at_sam2.wait(), 5)
    stopping = asyncio.ensure_future(
        session.handle(p.StopRefineMessage(type="stop_refine", object_id=obj.id))
    )
    await asyncio.sleep(0.05)
    go.set()
    await asyncio.wait_for(stopping, 5)
    assert applied == [obj.id]
    (click,) = of_type(session, "refine_click")
    (done,) = of_type(session, "refine_done")
    assert click.step == 1 and session.sent.index(click) < session.sent.index(done)
    assert (done.steps, done.reason) == (1, "stopped")
    assert done.message == "stopped; the 1 click applied stays"
    await session.close("test")


async def test_a_click_whose_sam2_call_outlasts_the_session_starts_no_description() -> None:
    """The click was handled before the close began; closing began while SAM2 added its object:
    the description a click starts at once does not start (it would ask the VLM for a session
    that had ended)."""

    async def closing_meanwhile(sid: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn.__name__ == "add_object":
            session.state.begin_close("peer connection failed")
        return fn(*args, **kwargs)

    session = a_session(closing_meanwhile, reasoner=SimpleNamespace())
    session.snapshots.publish(SNAP)
    await session.handle(p.ClickMessage(type="click", x=10, y=10))
    assert session.task_count == 0
    assert [e.code for e in of_type(session, "error")] == ["session_closed"]
