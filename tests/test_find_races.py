"""Find while the page goes on: a click, a delete or other VLM requests during a Find's seconds
at the VLM. The object cap holds however they interleave, a Find's VLM requests count against
the page's share as describes do, what it did not check is said, and a Live candidate under check
is drawn nowhere until it is kept."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from streamer.objects.events import FindResultMessage
from streamer.objects.find import find
from streamer.objects.find_all import FindAllLimits, find_all
from streamer.objects.table import ObjectTable
from tests.test_objects import _FindSite

pytestmark = pytest.mark.timeout(180)


class Site(_FindSite):
    """A mode's find side (every box segments to a small square; track adds at once, as Clip's)
    with find-all's proposals; `cap` and `share` are its table's."""

    def __init__(self, cap: int = 8, share: int | None = None) -> None:
        super().__init__()
        self.table = ObjectTable(cap, "image", share)

    async def propose(self, grid: Any) -> list[Any]:
        return self.propose_now()

    def propose_now(self) -> list[Any]:
        mask = np.zeros((40, 40), bool)
        mask[2:8, 2:8] = True
        return [SimpleNamespace(mask=mask, box=(2.0, 2.0, 8.0, 8.0))] * 4


class Reasoner:
    """Grounds `boxes`; answers checks `verdicts` in turn (yes past the end), each check held
    until `go` is set; counts the requests at the VLM at once."""

    def __init__(self, boxes: int = 1, verdicts: tuple[bool, ...] = ()) -> None:
        self.boxes = [SimpleNamespace(box=(2 + i, 2, 8 + i, 8), label="cup", score=0.9)
                      for i in range(boxes)]  # fmt: skip
        self.verdicts = list(verdicts)
        self.checking, self.go = asyncio.Event(), asyncio.Event()
        self.go.set()
        self.at_once = self.most = self.asked = 0

    async def _request(self, held: bool = False) -> None:
        self.asked += 1
        self.at_once += 1
        self.most = max(self.most, self.at_once)
        try:
            for _ in range(3):  # an answer takes a while: others may start meanwhile
                await asyncio.sleep(0)
            if held:
                await self.go.wait()
        finally:
            self.at_once -= 1

    async def ground(self, frame: Any, phrase: str) -> list[Any]:
        await self._request()
        return self.boxes

    async def check_match(self, frame: Any, mask: Any, phrase: str) -> Any:
        self.checking.set()
        await self._request(held=True)
        match = self.verdicts.pop(0) if self.verdicts else True
        return SimpleNamespace(match=match, answer="Yes." if match else "No.")

    async def classify_regions(self, frame: Any, masks: list[Any], phrase: str) -> Any:
        self.checking.set()
        await self._request(held=True)
        return SimpleNamespace(matches=[True] * len(masks))


def at_the_vlm(site: Site, reasoner: Reasoner, action: str) -> Any:
    """A Find or find-all under way, held while the VLM checks or classifies."""
    reasoner.go.clear()
    if action == "find":
        return asyncio.ensure_future(drain(find(site, reasoner, "cup")))
    return asyncio.ensure_future(drain(find_all(site, reasoner, "cups", FindAllLimits())))


async def drain(events: Any) -> list[Any]:
    return [e async for e in events]


async def test_a_click_that_takes_the_last_place_while_the_vlm_checks_stops_the_find() -> None:
    """One object of two; a Find's candidate is at the VLM when the person clicks a second: the
    Find keeps nothing past the cap (it tracked a third) and says it stopped there."""
    site, reasoner = Site(cap=2), Reasoner()
    site.table.add("click")
    reasoner.go.clear()
    running = asyncio.ensure_future(drain(find(site, reasoner, "cup")))
    await reasoner.checking.wait()
    site.table.check_new()
    site.table.add("click")  # 2 of 2, while the candidate is checked
    reasoner.go.set()
    result = (await running)[-1]
    assert isinstance(result, FindResultMessage)
    assert len(site.table) == 2 and result.objects == []
    assert "stopped at 2 objects" in (result.message or "")
    assert site.discarded == [(2, 2, 8, 8)]  # the candidate leaves nothing behind


@pytest.mark.parametrize("action", ["find", "find_all"])
async def test_a_reset_while_the_vlm_answers_a_find_stops_it_adding_objects(action: str) -> None:
    """The person resets the objects while a Find's candidate (or find-all's regions) is at the
    VLM: they came back as objects after the reset. Now the Find adds nothing, its candidate
    leaves nothing behind, and its result says why; a click after the reset is not touched."""
    site, reasoner = Site(), Reasoner(boxes=2)
    site.table.add("click")
    running = at_the_vlm(site, reasoner, action)
    await reasoner.checking.wait()
    for oid in site.table.reset():
        await site.table.remove(oid)
    clicked = site.table.add("click")
    reasoner.go.set()
    result = (await running)[-1]
    assert isinstance(result, FindResultMessage) and result.objects == [] and result.cleared
    assert [o.id for o in site.table] == [clicked.id]
    assert "the objects were cleared while it ran" in (result.message or ""), result.message
    assert site.discarded == ([(2, 2, 8, 8)] if action == "find" else [])


async def test_a_reset_while_find_all_asks_the_vlm_stops_its_requests_at_once() -> None:
    """Clear objects while find-all's regions are at the VLM: its requests stop then, not when the
    VLM answers (it went on asking, the page saying "asking the VLM" after the clear), and its
    result says it was stopped by the clear, after how many regions (the count is of those)."""
    site, reasoner = Site(), Reasoner()
    limits = FindAllLimits(regions_per_request=1, max_requests=4, concurrency=2)
    reasoner.go.clear()  # every request held at the VLM
    running = asyncio.ensure_future(drain(find_all(site, reasoner, "cups", limits)))
    while reasoner.at_once < 2:
        await asyncio.sleep(0)
    site.table.reset()
    events = await asyncio.wait_for(running, 30)  # the VLM is still held: go was never set
    result = events[-1]
    assert isinstance(result, FindResultMessage) and result.cleared and result.objects == []
    assert result.message == (
        "stopped after 0 of 4 regions; the objects were cleared while it ran (find again)"
    )
    assert result.count == 0 and result.requests == 0
    assert reasoner.at_once == 0 and reasoner.asked == 2  # both cancelled, none asked after
    assert len(site.table) == 0


async def test_a_finds_vlm_requests_wait_their_turn_in_the_share() -> None:
    """A page's share of one held by a describe: its Find's grounding waits for it (8 Finds sent
    at once held 8 VLM requests, whatever the share), and runs once it is free."""
    site, reasoner = Site(share=1), Reasoner()
    share = site.table.vlm_share
    with share.slot(1):  # a describe of object 1 holds the page's one request
        finds = [asyncio.ensure_future(drain(find(site, reasoner, "cup"))) for _ in range(3)]
        while share.waiting < 3:
            await asyncio.sleep(0)
        assert reasoner.asked == 0
    for events in await asyncio.gather(*finds):
        assert isinstance(events[-1], FindResultMessage)
    assert reasoner.most == 1 and share.running == share.waiting == 0


async def test_find_alls_batches_are_requests_of_the_share() -> None:
    site, reasoner = Site(share=1), Reasoner()
    limits = FindAllLimits(regions_per_request=1, max_requests=4, concurrency=4)
    result = (await drain(find_all(site, reasoner, "cups", limits)))[-1]
    assert result.count == 4 and reasoner.asked == 4
    assert reasoner.most == 1  # its own concurrency of 4 within the page's share of 1


async def test_candidates_a_find_had_no_room_to_check_are_said() -> None:
    """Five cups grounded with room for three: one kept, two turned down, and the two never
    checked are said (the message named only the two turned down, as if nothing else matched)."""
    site, reasoner = Site(cap=4), Reasoner(boxes=5, verdicts=(True, False, False))
    site.table.add("click")
    result = (await drain(find(site, reasoner, "cup")))[-1]
    assert len(result.objects) == 1 and len(result.rejected) == 2
    assert "2 more candidates not checked" in (result.message or "")


def test_an_object_waiting_for_its_vlm_turn_is_in_use() -> None:
    """Retention keeps what a page is waiting on: a describe queued for the share."""
    table = ObjectTable(4, "clip", 1)
    obj = table.add("click")
    assert not obj.busy()
    obj._waiting_kinds.add("describe")  # what take_share marks while it waits its turn
    assert obj.busy()


class LiveTracker:
    """A live tracker whose every prompt is a square on a black 40x40 frame; it keeps the ids."""

    snap: Any = None

    def __init__(self) -> None:
        from streamer.live.lifecycle import Snapshot

        self.snap = Snapshot(0, np.zeros((40, 40, 3), np.uint8), {}, frozenset())
        self.ids: set[int] = set()

    def add_object(self, oid: int, **prompt: Any) -> Any:
        self.ids.add(oid)
        mask = np.zeros((40, 40), bool)
        mask[2:20, 2:20] = True
        return self.snap, mask

    def keep(self, oid: int) -> None:
        pass

    def remove(self, oid: int) -> None:
        self.ids.discard(oid)

    def propose(self, grid: Any) -> Any:
        return self.snap, Site().propose_now()


def live_session(reasoner: Reasoner, run_vision_live: Any = None, max_objects: int = 8) -> Any:
    """A Live session on LiveTracker (no peer): its messages go to `session.sent`."""
    from streamer.live.session import LiveSession
    from streamer.settings import Settings

    async def at_once(sid: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    services = SimpleNamespace(
        settings=Settings(max_objects=max_objects),
        reasoner=reasoner,
        vlm_known_unusable=True,  # no describe at once: not what these are about
        descriptions_off=None,
        run_vision_live=run_vision_live or at_once,
    )
    session = LiveSession(services)  # type: ignore[arg-type]
    session.sent = []  # type: ignore[attr-defined]
    session.send = session.sent.append  # type: ignore[attr-defined,method-assign]
    session.tracker = LiveTracker()  # type: ignore[assignment]
    session.snapshots.publish(session.tracker.snap)
    return session


async def test_a_live_click_that_finds_the_last_place_taken_after_sam2_is_refused() -> None:
    """The click passed the cap while a Find's candidate was at the VLM; the Find kept it during
    the click's SAM2 call: the click is refused (it made a third object of two) and leaves the
    tracker as it was."""
    from streamer.live import answers
    from streamer.live import protocol as p

    held, waiting = asyncio.Event(), asyncio.Event()
    held.set()

    async def run_vision_live(sid: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__name__", "") == "add_object" and "points" in kwargs:  # a click
            waiting.set()
            await held.wait()  # the vision thread is on a frame meanwhile
        return fn(*args, **kwargs)

    reasoner = Reasoner()
    session = live_session(reasoner, run_vision_live, max_objects=2)
    sent = session.sent
    await session.handle(p.ClickMessage(type="click", x=30, y=30))  # 1 of 2
    reasoner.go.clear()
    answers.start_find(session, "cup")
    await reasoner.checking.wait()
    held.clear()
    waiting.clear()
    click = asyncio.ensure_future(session.handle(p.ClickMessage(type="click", x=35, y=35)))
    await waiting.wait()  # past the cap check: 1 < 2
    reasoner.go.set()
    while len(session.objects) < 2:  # the Find keeps its candidate: 2 of 2
        await asyncio.sleep(0)
    held.set()
    await click
    assert len(session.objects) == 2
    assert session.tracker.ids == {o.id for o in session.objects}  # type: ignore[union-attr]
    (error,) = [m for m in sent if getattr(m, "type", "") == "error"]
    assert error.code == "too_many_objects"


@pytest.mark.parametrize("action", ["find", "find_all"])
async def test_a_live_reset_while_the_vlm_answers_a_find_leaves_no_object(action: str) -> None:
    """Reset pressed while Live's Find (or find-all) waits for the VLM: its objects came back
    after the reset, in the list and the tracker. Now none does, and its result says why."""
    from streamer.live import protocol as p

    reasoner = Reasoner()
    session = live_session(reasoner)
    await session.handle(p.ClickMessage(type="click", x=30, y=30))
    reasoner.go.clear()
    await session.handle(p.parse_client_message(f'{{"type": "{action}", "phrase": "cups"}}'))
    await reasoner.checking.wait()
    await session.handle(p.ResetMessage(type="reset"))
    reasoner.go.set()
    while not [m for m in session.sent if m.type == "find_result"]:
        await asyncio.sleep(0.01)
    (result,) = [m for m in session.sent if m.type == "find_result"]
    assert len(session.objects) == 0 and session.tracker.ids == set(), session.sent
    assert result.objects == [] and "cleared while it ran" in (result.message or "")
    assert result.cleared  # the page says it under the Find box, not as an error


def test_a_live_candidate_under_check_is_in_no_overlay_until_kept(sam2_tiny_random: Any) -> None:
    """The overlay carries the session's objects: a Find's candidate, tracked while the VLM
    checks it, was drawn by the page with no row, and stays drawn nowhere if turned down."""
    import json

    from streamer.live.tracking import LiveTracker
    from tests.conftest import moving_shape_frame

    tracker = LiveTracker(sam2_tiny_random)

    def step(i: int) -> tuple[Any, list[int]]:
        rgb = moving_shape_frame(i, 96, 64)
        frame = SimpleNamespace(to_ndarray=lambda format: rgb, pts=i, time_base=Fraction(1, 15))
        snapshot, overlay = tracker.step(frame)
        return snapshot, [o["id"] for o in json.loads(overlay)["objects"]]

    step(0)
    tracker.add_object(1, box=(30.0, 20.0, 60.0, 44.0), trial=True)
    snapshot, drawn = step(1)
    assert 1 in snapshot.masks and drawn == []  # tracked, not drawn
    tracker.keep(1)
    assert step(2)[1] == [1]
    tracker.add_object(2, box=(0.0, 0.0, 20.0, 20.0), trial=True)
    tracker.remove(2)  # turned down
    assert step(3)[1] == [1] and tracker.trials == set()


async def test_a_clip_deleted_while_its_find_is_at_the_vlm_gets_no_object(
    tmp_path: Path,
    model: Any,
    clip_path: Path,
) -> None:
    """The Find answered 200 with an object on the deleted clip and started a job on its removed
    file; it is refused as any request of a gone clip, and nothing is made."""
    from streamer.app import create_app
    from streamer.services import build_reasoner
    from streamer.settings import Settings
    from tests.conftest import CheckedFindScript
    from tests.fakes.openai_server import ScriptedVLMServer
    from tests.test_clip_api import CLICK_FRAME, H, W, _square_box
    from tests.test_image_api import served

    script = CheckedFindScript([_square_box()], ["yes"], (W, H))
    checking, answer = threading.Event(), threading.Event()

    async def vlm(body: dict[str, Any]) -> str:
        text = script(body)
        if script.checks and body is script.checks[-1]:  # the candidate's check
            checking.set()
            await asyncio.to_thread(answer.wait, 60)
        return text

    with ScriptedVLMServer(answer=vlm) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(data_dir=tmp_path / "data")
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served(app) as (server, c):
            files = {"file": ("m.mp4", clip_path.read_bytes(), "video/mp4")}
            cid = (await c.post("/api/clips", files=files)).json()["id"]
            clip = server.call(lambda: app.state.clips.items[cid])
            body = {"frame": CLICK_FRAME, "phrase": "the red square"}
            finding = asyncio.ensure_future(c.post(f"/api/clips/{cid}/find", json=body))
            assert await asyncio.to_thread(checking.wait, 60)
            assert (await c.delete(f"/api/clips/{cid}")).status_code == 200
            answer.set()
            r = await finding
            assert r.status_code == 404 and r.json()["code"] == "unknown_clip", r.text
            assert "deleted" in r.json()["detail"]
            assert server.call(lambda: (len(clip.objects), dict(clip.tracks))) == (0, {})


class HeldVLM:
    """A reasoner for a served app: grounds one box on the square; its checks and region
    classifications wait at the VLM (`at_vlm` set) until `go` (threading events: the server runs
    on a loop of its own)."""

    def __init__(self) -> None:
        self.at_vlm, self.go = threading.Event(), threading.Event()
        self.backend = SimpleNamespace(aclose=self._aclose)

    async def _aclose(self) -> None:
        return None

    async def _held(self) -> None:
        self.at_vlm.set()
        assert await asyncio.to_thread(self.go.wait, 60)

    async def ground(self, frame: Any, phrase: str) -> list[Any]:
        return [SimpleNamespace(box=(50.0, 40.0, 90.0, 80.0), label=phrase, score=0.9)]

    async def check_match(self, frame: Any, mask: Any, phrase: str) -> Any:
        await self._held()
        return SimpleNamespace(match=True, answer="Yes.")

    async def classify_regions(self, frame: Any, masks: list[Any], phrase: str) -> Any:
        await self._held()
        return SimpleNamespace(matches=[True] * len(masks))


async def an_item(c: Any, kind: str, tmp_path: Path, clip: Path) -> tuple[str, dict[str, Any]]:
    """A clip or an image uploaded: its URL, and a Find body for it (the square, on a frame)."""
    from tests.browser import square_png

    if kind == "clip":
        files = {"file": ("m.mp4", clip.read_bytes(), "video/mp4")}
        body: dict[str, Any] = {"frame": 5, "phrase": "squares"}
    else:
        files = {"file": ("s.png", square_png(tmp_path).read_bytes(), "image/png")}
        body = {"phrase": "squares"}
    return f"/api/{kind}s/{(await c.post(f'/api/{kind}s', files=files)).json()['id']}", body


@pytest.mark.parametrize("then", ["delete", "reset"])
@pytest.mark.parametrize(
    "kind,action",
    [("clip", "find"), ("clip", "find_all"), ("image", "find_all"), ("image", "find")],
)
async def test_an_item_deleted_or_reset_while_the_vlm_answers_its_find_gets_no_object(
    tmp_path: Path,
    model: Any,
    clip_path: Path,
    kind: str,
    action: str,
    then: str,
) -> None:
    """The clip or image is deleted, or its objects reset, while its Find (or find-all) waits
    for the VLM; either way the item ends with no object.
    - Deleted: the answer is the gone item's own error, as the clip's checked Find above (a
      find-all's stream ended cut off, with no line, or listed an object on the deleted image;
      an image's Find answered 200 with one).
    - Reset: the objects it found came back after the reset. Now its answer lists none and
      says why."""
    import json

    async with held_at_the_vlm(tmp_path, model, clip_path, kind, action) as (c, base, vlm, at):
        assert (await c.delete(base if then == "delete" else f"{base}/objects")).status_code == 200
        vlm.go.set()
        r = await at.finding
        *_, last = [json.loads(x) for x in r.text.splitlines()]
        if then == "reset":
            assert r.status_code == 200 and last["type"] == "find_result", r.text
            assert last["objects"] == [] and "cleared while it ran" in last["message"], last
            assert last["cleared"] is True
        elif action == "find":
            assert r.status_code == 404, r.text
            assert last["code"] == f"unknown_{kind}" and "deleted" in last["detail"]
        else:
            assert r.status_code == 200  # sent before the delete: the refusal is the last line
            assert last["type"] == "error" and last["code"] == f"unknown_{kind}", last
            assert last["request"] == "find_all" and "deleted" in last["message"]
        assert at.objects() == 0


@contextlib.asynccontextmanager
async def held_at_the_vlm(
    tmp_path: Path, sam2_model: Any, clip: Path, kind: str, action: str
) -> AsyncIterator[tuple[Any, str, HeldVLM, Any]]:
    """A served app whose clip or image has a Find (or find-all) waiting at the VLM: the
    client, the item's URL, the VLM (`go` lets it answer) and `finding` (the request) with
    `objects()` (how many the item has, read on the server's loop)."""
    from streamer.app import create_app
    from streamer.settings import Settings
    from tests.test_find_all import PROPOSE_ANYTHING
    from tests.test_image_api import served

    vlm = HeldVLM()
    settings = Settings(data_dir=tmp_path / "data", **PROPOSE_ANYTHING)
    app = create_app(settings, vision_model=sam2_model, reasoner=vlm, load_vision=False)
    async with served(app) as (server, c):
        base, body = await an_item(c, kind, tmp_path, clip)
        item = server.call(lambda: getattr(app.state, f"{kind}s").items[base.rsplit("/", 1)[1]])
        finding = asyncio.ensure_future(c.post(f"{base}/{action}", json=body))
        assert await asyncio.to_thread(vlm.at_vlm.wait, 60)
        yield (
            c,
            base,
            vlm,
            SimpleNamespace(
                finding=finding, objects=lambda: server.call(lambda: len(item.objects))
            ),
        )


async def test_an_image_deleted_while_find_all_segments_a_region_gets_no_object(
    tmp_path: Path,
    model: Any,
    clip_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The VLM has picked the regions; the image is deleted while SAM2 segments one of them: the
    stream ends with the image's own error, and nothing is made (it listed an object on the
    deleted image)."""
    import json

    from streamer.app import create_app
    from streamer.image import agent
    from streamer.settings import Settings
    from tests.test_find_all import PROPOSE_ANYTHING
    from tests.test_image_api import served

    vlm = HeldVLM()
    vlm.go.set()  # its answers come at once
    entered, release = threading.Event(), threading.Event()
    segment_now = agent.segment_now

    def held_up(*args: Any) -> Any:
        entered.set()
        release.wait(60)
        return segment_now(*args)

    settings = Settings(data_dir=tmp_path / "data", **PROPOSE_ANYTHING)
    app = create_app(settings, vision_model=model, reasoner=vlm, load_vision=False)
    async with served(app) as (server, c):
        base, body = await an_item(c, "image", tmp_path, clip_path)
        item = server.call(lambda: app.state.images.items[base.rsplit("/", 1)[1]])
        monkeypatch.setattr(agent, "segment_now", held_up)
        finding = asyncio.ensure_future(c.post(f"{base}/find_all", json=body))
        assert await asyncio.to_thread(entered.wait, 60)
        assert (await c.delete(base)).status_code == 200
        release.set()
        r = await finding
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert "find_result" not in [e["type"] for e in lines], lines
        assert lines[-1]["type"] == "error" and lines[-1]["code"] == "unknown_image", lines[-1]
        assert server.call(lambda: len(item.objects)) == 0


@pytest.mark.parametrize("kind", ["clip", "image"])
async def test_checked_finds_under_way_on_an_item_are_bounded_as_in_live(
    kind: str,
    tmp_path: Path,
    model: Any,
    clip_path: Path,
) -> None:
    """With a VLM share of 1, a second Find while the first waits for the VLM is refused busy at
    once (each waiting Find holds its frame; Live refuses the same), and the first is answered;
    once it has, the next Find is taken."""
    from streamer.app import create_app
    from streamer.settings import Settings
    from tests.test_image_api import served

    vlm = HeldVLM()
    settings = Settings(data_dir=tmp_path / "data", vlm_max_in_flight_per_session=1)
    app = create_app(settings, vision_model=model, reasoner=vlm, load_vision=False)
    async with served(app) as (_, c):
        base, body = await an_item(c, kind, tmp_path, clip_path)
        find = f"{base}/find"
        first = asyncio.ensure_future(c.post(find, json=body))
        assert await asyncio.to_thread(vlm.at_vlm.wait, 60)
        second = await c.post(find, json={**body, "phrase": "circles"})
        assert second.status_code == 409 and second.json()["code"] == "busy", second.text
        assert f"too many Finds under way in this {kind}" in second.json()["detail"]
        vlm.go.set()
        r = await first
        assert r.status_code == 200 and len(r.json()["objects"]) == 1, r.text
        again = await c.post(find, json=body)
        assert again.status_code == 200 and len(again.json()["objects"]) == 1, again.text
