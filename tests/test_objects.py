"""The object core every mode shares: the table's rules, the one label policy, results, and describe/chat events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from streamer.objects import vlm
from streamer.objects.events import parse_event
from streamer.objects.labels import label_from_description
from streamer.objects.requests import check_point
from streamer.objects.results import summarize
from streamer.objects.table import ObjectRefused, ObjectTable
from workers.masks import rle_decode
from workers.reasoning.errors import VLMError
from workers.reasoning.reasoner import NextClick, TokenEvent, VerdictEvent

# -- the table ---------------------------------------------------------------------------------


def test_a_negative_click_never_starts_an_object() -> None:
    table = ObjectTable(cap=4, where="clip")
    with pytest.raises(ObjectRefused) as info:
        table.check_new(negative=True)
    assert info.value.code == "bad_prompt" and info.value.http_status == 422
    assert "select the object first" in str(info.value)


def test_the_cap_and_ids() -> None:
    table = ObjectTable(cap=2, where="image")
    assert [table.add("click").id, table.add("find", "red cup").id] == [1, 2]
    with pytest.raises(ObjectRefused) as info:
        table.check_new()
    assert info.value.code == "too_many_objects" and info.value.http_status == 409
    assert "at most 2 objects per image" in str(info.value)
    assert table.get(2).label == "red cup" and table.get(1).label == "object 1"
    with pytest.raises(ObjectRefused) as info:
        table.get(9)
    assert info.value.code == "unknown_object" and "(objects: 1, 2)" in str(info.value)


async def test_removed_ids_are_not_reused() -> None:
    table = ObjectTable(cap=4, where="session")
    table.add("click")
    await table.remove(1)
    assert table.add("click").id == 2  # a late event about object 1 cannot land on a new one


# (description, label) - the one label policy of every mode
LABELS = [
    ("A red mug.", "A red mug"),  # the first sentence
    ("A red mug, half full, on a desk.", "A red mug"),  # the first clause
    ("A small red ceramic coffee mug with a chipped handle.", "A small red ceramic coffee mug…"),
    ("   ", ""),  # nothing to name it by: the old label stays (see described())
    ("A 3.5 cm wide red mug. It is full.", "A 3.5 cm wide red mug"),  # a number's point
    ("一个红色的杯子，放在桌子上。", "一个红色的杯子"),  # Chinese clauses
    (
        "这是一个放在木制桌子上的红色陶瓷咖啡杯子旁边还有一个蓝色的碗",
        "这是一个放在木制桌子上的红色陶瓷咖啡杯…",
    ),
    ("Supercalifragilisticexpialidocious-shaped mug", "Supercalifragilisticexpialidocious-shap…"),
    ("A red\x00\u200b mug\x1b[31m, full", "A red mug [31m"),  # no control characters
    ("Is it a mug? Yes.", "Is it a mug"),
    ("A mug... on a desk", "A mug"),
    ("Object: a red mug.", "Object: a red mug"),
]


@pytest.mark.parametrize("description,label", LABELS)
def test_label_policy(description: str, label: str) -> None:
    import unicodedata

    assert label_from_description(description) == label
    wide = sum(unicodedata.east_asian_width(ch) in "WF" for ch in label)
    assert len(label) + wide <= 40  # columns, the "…" too


def test_a_description_renames_the_object_and_opens_its_chat() -> None:
    obj = ObjectTable(cap=1, where="clip").add("find", "mug")
    obj.described("A red mug, half full.", "verified", 0.8, 1)
    assert obj.label == "A red mug" and obj.info().verdict == "verified"
    obj.remember("What is in it?", "Coffee.")
    assert obj.chat_history() == [
        {"role": "assistant", "content": "A red mug, half full."},
        {"role": "user", "content": "What is in it?"},
        {"role": "assistant", "content": "Coffee."},
    ]
    obj.described("   ", "unverified")
    assert obj.label == "A red mug"


def test_a_click_outside_the_picture_is_refused() -> None:
    check_point((0, 119.5), 160, 120, "image")
    with pytest.raises(ObjectRefused, match=r"outside the image \(0..159, 0..119\)"):
        check_point((160, 5), 160, 120, "image")


# -- results -----------------------------------------------------------------------------------


def test_result_of_a_mask() -> None:
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    r = summarize(mask, 0.9)
    assert r.box == (2.0, 1.0, 5.0, 3.0) and r.present
    assert np.array_equal(rle_decode(r.rle), mask)
    assert r.event(4).model_dump()["id"] == 4
    assert not summarize(mask, 0.2).present  # SAM2 doubts the object is there
    assert not summarize(np.zeros((6, 8), bool), 0.9).present  # nothing to show
    assert summarize(np.zeros((6, 8), bool), 0.9).box is None


# -- describe and chat events ------------------------------------------------------------------


class FakeReasoner:
    def __init__(self, answer: list[str], fail: bool = False) -> None:
        self.answer = answer
        self.fail = fail
        self.histories: list[list[dict[str, str]]] = []

    async def chat(
        self, frame: Any, mask: Any, history: list[dict[str, str]], question: str
    ) -> AsyncIterator[str]:
        self.histories.append(list(history))
        if self.fail:
            raise VLMError("the VLM server closed the connection")
        for piece in self.answer:
            yield piece


async def describe_stream(fail: bool = False) -> AsyncIterator[Any]:
    yield TokenEvent("A red ", 1)
    if fail:
        raise VLMError("the VLM server went away")
    yield TokenEvent("mug.", 1)
    yield VerdictEvent("A red mug.", "verified", 0.8123456, 1, (1.0, 2.0, 3.0, 4.0))


async def collect(events: AsyncIterator[Any]) -> list[dict[str, Any]]:
    out = []
    async for ev in events:
        # every event is one of the documented ones and survives the wire
        out.append(parse_event(ev.model_dump_json()).model_dump())
    return out


async def test_describe_events_and_what_they_leave_on_the_object() -> None:
    table = ObjectTable(cap=2, where="image")
    table.add("click")
    events = await collect(vlm.describe(table, 1, describe_stream(), frame_index=0))
    assert [e["type"] for e in events] == [
        "description_start",
        "description_token",
        "description_token",
        "verdict",
        "objects",
    ]
    assert events[3]["iou"] == 0.8123 and events[3]["box"] == (1.0, 2.0, 3.0, 4.0)
    assert events[4]["objects"][0]["label"] == "A red mug"
    assert table.get(1).description == "A red mug."


async def test_a_vlm_failure_ends_the_stream_with_an_error_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = ObjectTable(cap=2, where="clip")
    table.add("click")
    with caplog.at_level(logging.WARNING, logger="fmu.vlm"):
        events = await collect(vlm.describe(table, 1, describe_stream(fail=True), frame_index=3))
    assert events[-1]["type"] == "error" and events[-1]["code"] == "vlm_error"
    # The server log says it too (it said nothing: a VLM failing was seen on the page only).
    assert caplog.messages == [events[-1]["message"]]
    assert (
        "went away" in events[-1]["message"]
        and "The object and its mask stay" in events[-1]["message"]
    )
    assert table.get(1).description is None
    # the object is free again: the next describe is not refused as busy
    assert (await collect(vlm.describe(table, 1, describe_stream(), frame_index=3)))[-1]


async def test_a_vlm_failure_in_auto_refine_ends_it_with_an_error_and_a_done_event() -> None:
    class FailingClicker:
        async def next_click(self, *args: Any) -> Any:
            raise VLMError("the VLM server went away")

    async def apply(positive: bool, point: tuple[float, float]) -> Any:
        raise AssertionError("no click is applied when the VLM failed")

    table = ObjectTable(cap=2, where="image")
    table.add("click")
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    events = await collect(
        vlm.auto_refine(
            table, 1, FailingClicker(), np.zeros((8, 8, 3), np.uint8), mask, apply, max_steps=3
        )
    )
    assert [e["type"] for e in events] == ["error", "refine_done"]
    assert events[0]["code"] == "vlm_error" and "went away" in events[0]["message"]
    assert events[1]["reason"] == "error" and events[1]["steps"] == 0
    table.get(1).check_idle("refine")  # the object is free again


async def test_a_stop_while_a_refused_click_is_applied_ends_the_refine_as_stopped() -> None:
    """A stop that lands while SAM2 applies the VLM's click, which is then refused: the refine's
    own end says `stopped`, as the stop's answer does (it said `error`, the stop `stopped`)."""

    class Clicker:
        async def next_click(self, *args: Any) -> Any:
            return NextClick("positive", (3.0, 3.0), "a click", (3.0, 3.0))

    applying, refuse = asyncio.Event(), asyncio.Event()

    async def apply(positive: bool, point: tuple[float, float]) -> Any:
        applying.set()
        await refuse.wait()
        raise ObjectRefused("bad_prompt", "the click is off the object's frame", 1)

    table = ObjectTable(cap=2, where="image")
    obj = table.add("click")
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    events = vlm.auto_refine(
        table, 1, Clicker(), np.zeros((8, 8, 3), np.uint8), mask, apply, max_steps=3
    )
    obj.refine_task = asyncio.create_task(collect(events))
    await applying.wait()
    stopping = asyncio.create_task(vlm.stop_refine(obj))
    await asyncio.sleep(0)  # the stop has come; the click is still being applied
    refuse.set()
    (done, said), refined = await stopping, await obj.refine_task
    assert said  # the refine said so itself
    assert refined == [done.model_dump()]
    assert (done.reason, done.steps) == ("stopped", 0)


async def test_one_describe_at_a_time_per_object() -> None:
    table = ObjectTable(cap=2, where="session")
    table.add("click")
    first = vlm.describe(table, 1, describe_stream(), frame_index=0)
    await first.__anext__()  # under way
    with pytest.raises(ObjectRefused) as info:
        table.get(1).check_idle("describe")
    assert info.value.code == "busy"
    await first.aclose()
    table.get(1).check_idle("describe")


async def test_chat_keeps_its_history_on_the_server() -> None:
    table = ObjectTable(cap=2, where="image")
    table.add("click").described("A red mug.", "verified")
    reasoner = FakeReasoner(["It is ", "red."])
    events = await collect(vlm.chat(table, 1, reasoner, None, None, "What colour?"))
    assert [e["type"] for e in events] == ["chat_token", "chat_token", "chat_done"]
    assert events[-1]["answer"] == "It is red."
    await collect(vlm.chat(table, 1, reasoner, None, None, "And the handle?"))
    assert reasoner.histories[1] == [
        {"role": "assistant", "content": "A red mug."},
        {"role": "user", "content": "What colour?"},
        {"role": "assistant", "content": "It is red."},
    ]
    failing = FakeReasoner([], fail=True)
    events = await collect(vlm.chat(table, 1, failing, None, None, "Why?"))
    assert events == [
        {
            "type": "error",
            "code": "vlm_error",
            "message": "could not answer about object 1: the VLM server closed the connection",
            "object_id": 1,
            "request": "chat",
            "phrase": None,  # a Find's only
            "fatal": False,
        }
    ]
    assert len(table.get(1).history) == 4  # a failed turn is not remembered


class HangingReasoner:
    """A VLM whose answers never come (until the request is given up)."""

    async def chat(
        self, frame: Any, mask: Any, history: list[dict[str, str]], question: str
    ) -> AsyncIterator[str]:
        import asyncio

        await asyncio.Event().wait()
        yield ""


async def test_one_session_holds_at_most_its_share_of_the_vlm() -> None:
    import asyncio

    table = ObjectTable(cap=4, where="session", vlm_cap=2)
    for _ in range(3):
        table.add("click")
    hung = [
        asyncio.ensure_future(_drain(vlm.chat(table, oid, HangingReasoner(), None, None, "?")))
        for oid in (1, 2)
    ]
    while table.vlm_share.running < 2:  # both requests are at the VLM
        await asyncio.sleep(0)
    with pytest.raises(ObjectRefused) as refused:
        await _drain(vlm.chat(table, 3, HangingReasoner(), None, None, "?"))
    assert refused.value.code == "busy" and "its share" in str(refused.value)
    other = ObjectTable(cap=4, where="session", vlm_cap=2)  # another page is not held up
    other.add("click")
    other_chat = asyncio.ensure_future(
        _drain(vlm.chat(other, 1, FakeReasoner(["fine"]), None, None, "?"))
    )
    assert [e.type for e in await other_chat][-1] == "chat_done"
    for task in hung:  # a hung request given up frees the session's share
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)
    assert table.vlm_share.running == 0
    assert [
        e.type for e in await _drain(vlm.chat(table, 3, FakeReasoner(["ok"]), None, None, "?"))
    ][-1] == "chat_done"


async def _drain(events: AsyncIterator[Any]) -> list[Any]:
    return [e async for e in events]


# -- checked find ------------------------------------------------------------------------------


class _FindSite:
    """A mode's find side whose every box segments to a small square (handles are the boxes)."""

    frame_index = 0

    def __init__(self) -> None:
        self.table = ObjectTable(cap=8, where="image")
        self.frame = np.zeros((40, 40, 3), np.uint8)
        self.discarded: list[Any] = []

    async def segment(self, box: Any) -> tuple[Any, Any, Any]:
        mask = np.zeros((40, 40), bool)
        mask[2:8, 2:8] = True
        return mask, self.frame, box

    async def discard(self, handle: Any) -> None:
        self.discarded.append(handle)

    async def track(self, label: str, box: Any, handle: Any, check: Any) -> tuple[int, None]:
        return self.table.add("find", label).id, None


class _Grounded:
    def __init__(self, box: tuple[float, ...]) -> None:
        self.box, self.label, self.score = box, "cup", 0.9


class _TwoCups:
    """Grounds two cups; says yes to the first check and then fails (busy, a timeout)."""

    def __init__(self) -> None:
        self.checks = 0

    async def ground(self, frame: Any, phrase: str) -> list[Any]:
        return [_Grounded((2, 2, 8, 8)), _Grounded((20, 20, 30, 30))]

    async def check_match(self, frame: Any, mask: Any, phrase: str) -> Any:
        self.checks += 1
        if self.checks > 1:
            raise VLMError("the VLM is busy")
        return type("Check", (), {"match": True, "answer": "Yes."})()


async def test_a_vlm_failure_after_a_kept_candidate_reports_what_was_kept() -> None:
    """The second cup's check fails: the first cup, already tracked, is listed and reported, the
    failure is said, and the unchecked candidate leaves nothing behind."""
    from streamer.objects.events import FindResultMessage, ObjectsMessage
    from streamer.objects.find import find

    site = _FindSite()
    events = [e async for e in find(site, _TwoCups(), "cup")]
    listed, result = events
    assert isinstance(listed, ObjectsMessage) and [o.id for o in listed.objects] == [1]
    assert isinstance(result, FindResultMessage) and [o.object_id for o in result.objects] == [1]
    assert "the VLM is busy" in (result.message or "") and "not checked" in (result.message or "")
    assert site.discarded == [(20, 20, 30, 30)]


async def test_a_vlm_failure_before_anything_is_kept_refuses_the_find() -> None:
    from streamer.objects.find import find

    reasoner = _TwoCups()
    reasoner.checks = 1  # the first check already fails
    site = _FindSite()
    with pytest.raises(ObjectRefused) as refused:
        async for _ in find(site, reasoner, "cup"):
            pass
    assert refused.value.code == "vlm_error" and len(site.table) == 0


async def test_past_its_share_a_request_waits_its_turn_in_order() -> None:
    """Turns come in the order asked; one gone while waiting (a remove, a client gone), or gone
    once its turn came but before it took it, passes the turn on: no one waits for ever."""
    import asyncio

    from streamer.objects.share import VLMShare

    share = VLMShare(1, "image")
    order: list[str] = []

    async def ask(name: str) -> None:
        await share.turn(2)
        with share.slot(2):
            order.append(name)
            await asyncio.sleep(0)

    async def queued(*names: str) -> list[asyncio.Task[None]]:
        tasks = [asyncio.ensure_future(ask(n)) for n in names]
        while share.waiting < len(names):
            await asyncio.sleep(0)
        return tasks

    holder = contextlib.ExitStack()
    holder.enter_context(share.slot(1))  # the share is full
    a, gone, b, c = await queued("a", "gone", "b", "c")
    with pytest.raises(ObjectRefused):  # not waiting its turn: refused at once
        share.slot(3).__enter__()
    gone.cancel()
    holder.close()
    await asyncio.gather(a, b, c)
    assert order == ["a", "b", "c"] and gone.cancelled()

    holder.enter_context(share.slot(1))
    told, d = await queued("told then gone", "d")
    holder.close()  # "told then gone"'s turn has come...
    told.cancel()  # ...and it is gone before it took it: "d" gets the turn
    await asyncio.gather(d, told, return_exceptions=True)
    assert order == ["a", "b", "c", "d"]
    assert share.running == share.waiting == 0


async def test_a_request_with_room_in_the_share_does_not_queue_behind_a_turn_already_given() -> (
    None
):
    """Share of 2: A waits; both holders end, so A's turn comes and one slot is still free. C,
    asking before A has taken its turn, takes the free slot at once (it queued behind A, and
    with A holding its slot no one woke it)."""
    import asyncio

    from streamer.objects.share import VLMShare

    share = VLMShare(2, "clip")
    x, y = contextlib.ExitStack(), contextlib.ExitStack()
    x.enter_context(share.slot(1))
    y.enter_context(share.slot(2))
    a = asyncio.ensure_future(share.turn(3))
    while share.waiting < 1:
        await asyncio.sleep(0)
    x.close()  # A's turn comes...
    y.close()  # ...and a slot is free besides
    c = share.turn(4).__await__()
    with pytest.raises(StopIteration):  # C's turn, at once: no suspension
        c.send(None)
    await a


async def test_a_request_waits_for_its_share_at_most_its_bound() -> None:
    import asyncio

    from streamer.objects.share import VLMShare

    share = VLMShare(1, "image", wait_s=0.05)
    with share.slot(1), pytest.raises(ObjectRefused) as refused:
        await share.turn(2)
    assert refused.value.code == "busy" and "still running after 0.05 s" in str(refused.value)
    assert share.waiting == 0 and share.running == 0
    await asyncio.wait_for(share.turn(3), 1)  # the next one is not held up by it
