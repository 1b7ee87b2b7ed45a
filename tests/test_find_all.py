"""Find all and count: the object core's find_all against a scripted VLM (exact counts, junk,
bounds, stop), the phrase a person types, and the Image API with real SAM2 proposals."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from streamer.objects.events import FindProgressMessage, FindResultMessage, ObjectsMessage
from streamer.objects.find_all import FindAllLimits, count_phrase, find_all, limits_from
from streamer.objects.table import ObjectRefused, ObjectTable
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import request_text
from tests.fakes.openai_server import ScriptedVLMServer
from workers.vision.proposals import Proposal, ProposalGrid

W, H = 96, 64
# Random weights: SAM2's quality filters off so its grid proposes something.
PROPOSE_ANYTHING = {
    "find_all_points_per_side": 2,
    "find_all_max_proposals": 3,
    "find_all_min_iou": 0.0,
    "find_all_min_stability": 0.0,
}


def test_each_find_all_option_sets_its_limit() -> None:
    wanted = FindAllLimits(ProposalGrid(5, 7, 0.6, 0.9), 3, 2, 1)  # no value the default
    named = {**asdict(wanted.grid), **asdict(wanted)}
    del named["grid"]
    options = {f"find_all_{name}": value for name, value in named.items()}
    assert len(options) == 7
    assert all(Settings.model_fields[name].default != v for name, v in options.items())
    assert limits_from(Settings(**options)) == wanted


def test_more_regions_a_request_than_the_served_vlm_takes_is_refused_at_start() -> None:
    # vLLM is served with --limit-mm-per-prompt '{"image": 8}' (README, --serve-vlm): a 9th
    # Spotlight would fail every find-all request at the server, after SAM2 had done its work.
    assert limits_from(Settings(find_all_regions_per_request=8)).regions_per_request == 8
    with pytest.raises(ValidationError, match="find_all_regions_per_request"):
        Settings(find_all_regions_per_request=9)


def _proposal(i: int) -> Proposal:
    mask = np.zeros((H, W), bool)
    x0 = 2 + 9 * i
    mask[10:20, x0 : x0 + 6] = True
    return Proposal(mask, (float(x0), 10.0, float(x0 + 6), 20.0), 0.9 - i / 100, 0.95)


class FakeSite:
    """A mode's find adapter with proposals whose right answer is known (the VLM is real)."""

    frame_index = 7

    def __init__(self, n: int, cap: int = 16) -> None:
        self.table = ObjectTable(cap, "image")
        self.frame = np.full((H, W, 3), 120, np.uint8)
        self.proposals = [_proposal(i) for i in range(n)]
        self.tracked: list[tuple[str, tuple[float, ...]]] = []
        self.unsegmentable: set[tuple[float, ...]] = set()  # boxes SAM2 refuses

    async def propose(self, grid: ProposalGrid) -> list[Proposal]:
        return self.proposals[: grid.max_proposals]

    async def segment(self, box: Any) -> tuple[Any, Any, Any]:
        if tuple(box) in self.unsegmentable:
            raise ValueError(f"box {box} must lie inside the frame")
        return None, self.frame, box  # find-all's regions have their masks: none is shown

    async def track(self, label: str, box: Any, handle: Any, check: Any) -> tuple[int, None]:
        self.tracked.append((label, tuple(box)))
        obj = self.table.add("find", label)
        obj.find_check = check  # as the modes' sites keep it
        return obj.id, None


def _classify_requests(srv: ScriptedVLMServer) -> list[dict[str, Any]]:
    return [r for r in srv.requests if "Classify each region" in request_text(r)]


def _images(request: dict[str, Any]) -> int:
    return sum(
        1
        for p in request["messages"][0]["content"]
        if isinstance(p, dict) and p.get("type") == "image_url"
    )


async def _run(site: FakeSite, answer: Any, phrase: str, limits: FindAllLimits) -> Any:
    with ScriptedVLMServer(answer=answer) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        events = [e async for e in find_all(site, reasoner, phrase, limits)]
        return events, _classify_requests(srv)


async def test_a_count_of_three_of_five_proposals_tracks_those_three() -> None:
    site = FakeSite(5)
    answer = '```json\n{"answers": ["yes", "no", "yes", "no", "yes"]}\n```'
    limits = FindAllLimits(regions_per_request=5, max_requests=3)
    events, requests = await _run(site, answer, "How many cups?", limits)
    # One request showed the five Spotlights, asked about "cups".
    assert len(requests) == 1 and _images(requests[0]) == 5
    assert '"cups"' in request_text(requests[0])
    progress = [e for e in events if isinstance(e, FindProgressMessage)]
    assert [p.stage for p in progress] == ["proposing", "classifying", "classifying"]
    assert (progress[-1].done, progress[-1].total, progress[-1].accepted) == (5, 5, 3)
    objects, result = events[-2:]
    assert isinstance(objects, ObjectsMessage) and isinstance(result, FindResultMessage)
    assert (result.count, result.proposals, result.requests) == (3, 5, 1)
    assert [o.box for o in result.objects] == [site.proposals[i].box for i in (0, 2, 4)]
    assert [(o.label, o.check) for o in result.objects] == [("cups", "match")] * 3
    assert [o.find_check for o in objects.objects] == ["match"] * 3
    assert "3 of 5 proposed regions" in (result.message or "")


async def test_a_counted_region_sam2_cannot_segment_is_said_not_blamed_on_the_cap() -> None:
    """It was skipped without a word, and the note said "at most 16 objects" (before, Live and
    Image refused the whole count)."""
    site = FakeSite(3)
    site.unsegmentable.add(site.proposals[1].box)
    answer = '{"answers": ["yes", "yes", "yes"]}'
    events, _ = await _run(site, answer, "cups", FindAllLimits(regions_per_request=3))
    result = events[-1]
    assert (result.count, len(result.objects)) == (3, 2)
    assert "tracked 2: SAM2 could not segment 1" in result.message, result.message
    assert "at most" not in result.message


async def test_a_clip_find_all_stopped_while_it_tracks_tells_the_clip_socket_its_objects() -> None:
    """Stop pressed while the accepted regions are tracked: the ones made so far are the clip's,
    but its websocket never heard of them (the list comes at the stream's end)."""
    from types import SimpleNamespace

    from streamer.clip.find import _published

    clip = SimpleNamespace(objects=ObjectTable(8, "clip"), published=[])
    clip.publish = clip.published.append

    async def tracking() -> Any:
        yield FindProgressMessage(phrase="cups", stage="classifying", done=1, total=1)
        clip.objects.add("find", "cups")
        yield FindProgressMessage(phrase="cups", stage="classifying", done=1, total=1)

    relay = _published(clip, tracking())  # type: ignore[arg-type]
    async with contextlib.aclosing(relay):
        async for _ in relay:
            if len(clip.objects):
                break  # the page closed the stream
    (told,) = clip.published
    assert told.type == "objects" and [o.id for o in told.objects] == [1]


async def test_junk_answers_say_so_and_track_nothing() -> None:
    site = FakeSite(3)
    events, _ = await _run(site, "I like turtles.", "cups", FindAllLimits())
    result = events[-1]
    assert result.count == 0 and result.objects == [] and site.tracked == []
    assert "neither yes nor no" in (result.message or "")
    assert "nothing was tracked" in (result.message or "")


async def test_a_vlm_that_always_says_yes_stays_within_the_bounds() -> None:
    site = FakeSite(12, cap=4)
    limits = FindAllLimits(ProposalGrid(max_proposals=10), regions_per_request=2, max_requests=3)
    events, requests = await _run(site, '{"answers": ["yes", "yes"]}', "cups", limits)
    result = events[-1]
    # 10 proposals kept, 3 requests of 2 regions asked: 6 accepted, 4 tracked (the object cap).
    assert len(requests) == 3 and all(_images(r) == 2 for r in requests)
    assert (result.proposals, result.requests, result.count) == (10, 3, 6)
    assert len(result.objects) == 4 == len(site.table)
    assert "4 more proposals not checked" in result.message
    assert "at most 4 objects" in result.message


async def test_a_vlm_failure_refuses_the_query_with_nothing_tracked() -> None:
    site = FakeSite(3)
    with ScriptedVLMServer(answer="yes", status_code=500) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with pytest.raises(ObjectRefused) as refused:
            async for _ in find_all(site, reasoner, "cups", FindAllLimits()):
                pass
    assert refused.value.code == "vlm_error" and "classify" in str(refused.value)
    assert site.tracked == []


async def test_stopping_while_classifying_tracks_nothing() -> None:
    site = FakeSite(8)
    limits = FindAllLimits(regions_per_request=2, max_requests=4, concurrency=1)
    with ScriptedVLMServer(answer='{"answers": ["yes", "yes"]}', token_delay_s=0.5) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        events = find_all(site, reasoner, "cups", limits)
        async with contextlib.aclosing(events):
            async for e in events:
                if isinstance(e, FindProgressMessage) and e.requests == 1:
                    break  # the person pressed Stop after the first answer
        requests = len(_classify_requests(srv))
    assert site.tracked == [] and len(site.table) == 0
    assert requests < 4  # the requests still queued were never sent


@pytest.mark.parametrize(
    "typed, phrase",
    [
        ("How many cups?", "cups"),  # a question
        ("Find all: red cars", "red cars"),  # the command form
        ("how many people are there?", "people"),
        ("cups", "cups"),  # the thing itself
        ("count the mugs", "mugs"),
        ("counter tops", "counter tops"),  # a word that starts like one, left whole
    ],
)
def test_the_phrase_counted_is_the_thing_asked_about(typed: str, phrase: str) -> None:
    assert count_phrase(typed) == phrase


@pytest.mark.timeout(300)
def test_image_find_all_streams_progress_and_the_count_with_masks(tmp_path: Path) -> None:
    from tests.test_image_api import encoded, make_client, upload
    from workers.vision import load_sam2

    model = load_sam2("tiny", weights="random", device="cpu", image_size=128, seed=0)
    with ScriptedVLMServer(answer='{"answers": ["yes", "yes", "yes", "yes"]}') as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner=reasoner, **PROPOSE_ANYTHING) as client:
            img = upload(client, encoded("PNG")).json()
            r = client.post(f"/api/images/{img['id']}/find_all", json={"phrase": "how many cups?"})
            assert r.status_code == 200, r.text
            events = [json.loads(line) for line in r.text.splitlines()]
            assert [e["type"] for e in events[:2]] == ["find_progress", "find_progress"]
            result = events[-1]
            assert result["type"] == "find_result" and result["phrase"] == "cups"
            assert result["count"] == result["proposals"] == len(result["objects"]) >= 1
            assert all(o["result"]["rle"]["counts"] for o in result["objects"])
            listed = client.get(f"/api/images/{img['id']}").json()["objects"]
            assert [o["find_check"] for o in listed] == ["match"] * result["count"]
            r = client.post(f"/api/images/{img['id']}/find_all", json={"phrase": ""})
            assert r.status_code == 422
            # A VLM that fails: the stream's last line says so, naming the phrase asked, as
            # Live's error does (it named none).
            assert client.delete(f"/api/images/{img['id']}/objects").status_code == 200
            srv.status_code = 500
            r = client.post(f"/api/images/{img['id']}/find_all", json={"phrase": "how many cups?"})
            last = json.loads(r.text.splitlines()[-1])
            assert (last["type"], last["code"], last["request"], last["phrase"]) == (
                "error",
                "vlm_error",
                "find_all",
                "how many cups?",
            )


@pytest.mark.timeout(300)
async def test_live_find_all_tracks_the_count_and_stop_find_applies_nothing(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    from streamer.app import create_app
    from tests.conftest import LiveClient, ServerThread
    from tests.test_live_webrtc import H as LH
    from tests.test_live_webrtc import W as LW
    from tests.test_live_webrtc import live_settings

    slow = {"on": False}

    def answer(body: dict[str, Any]) -> Any:
        if slow["on"]:  # the second query: an answer that takes its time, pieces at a time
            return [" yes"] * 2 + [" no"] * 200
        return '{"answers": ["yes", "yes", "yes", "yes"]}'

    with ScriptedVLMServer(answer=answer, token_delay_s=0.05) as vlm:
        settings = live_settings(vlm_url=vlm.url, **PROPOSE_ANYTHING)
        reasoner, _ = build_reasoner(settings)
        app = create_app(settings, vision_model=sam2_tiny_random, reasoner=reasoner)
        with ServerThread(app) as server:
            client = LiveClient(server.base_url)
            await client.connect(moving_shape(LW, LH, fps=15))
            try:
                await client.wait_message("overlay", timeout=60)
                mark = len(client.messages)
                await client.send({"type": "find_all", "phrase": "How many squares?"})
                result = await client.wait_message("find_result", after=mark, timeout=120)
                stages = [
                    m["stage"] for m in client.messages[mark:] if m["type"] == "find_progress"
                ]
                assert stages[0] == "proposing" and "classifying" in stages
                assert result["phrase"] == "squares"
                assert result["count"] == result["proposals"] == len(result["objects"]) >= 1
                ids = sorted(o["object_id"] for o in result["objects"])
                listed = client.of_type("objects")[-1]["objects"]
                assert [(o["id"], o["find_check"]) for o in listed] == [(i, "match") for i in ids]
                overlay = await client.wait_message("overlay", after=len(client.messages))
                assert sorted(o["id"] for o in overlay["objects"]) == ids

                # A second query, stopped while the VLM is still answering: nothing more tracked.
                await client.send({"type": "reset"})
                slow["on"] = True
                mark = len(client.messages)
                await client.send({"type": "find_all", "phrase": "squares"})
                await client.wait_message(
                    "find_progress", lambda m: m["stage"] == "classifying", after=mark, timeout=60
                )
                # One at a time: a second is refused, the first goes on.
                await client.send({"type": "find_all", "phrase": "circles"})
                busy = await client.wait_message(
                    "error", lambda m: m["request"] == "find_all", after=mark
                )
                assert busy["code"] == "busy" and "already running" in busy["message"]
                await client.send({"type": "stop_find"})
                stopped = await client.wait_message(
                    "find_progress", lambda m: m["stage"] == "stopped", after=mark, timeout=30
                )
                assert stopped["phrase"] == "squares"
                assert client.of_type("objects")[-1]["objects"] == []
                assert not [m for m in client.messages[mark:] if m["type"] == "find_result"]
                # Nothing to stop now: a clear error, the session goes on.
                mark = len(client.messages)
                await client.send({"type": "stop_find"})
                err = await client.wait_message("error", after=mark)
                assert err["request"] == "stop_find" and "no find-all" in err["message"]
                # A stopped find-all leaves room for the next.
                mark = len(client.messages)
                await client.send({"type": "find_all", "phrase": "circles"})
                await client.wait_message(
                    "find_progress", lambda m: m["stage"] == "proposing", after=mark, timeout=60
                )
                assert not [m for m in client.messages[mark:] if m["type"] == "error"]
            finally:
                await client.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["images", "clips"])
async def test_one_find_all_at_a_time_per_image_or_clip_as_in_live(
    mode: str, sam2_tiny_128: Any, tmp_path: Path
) -> None:
    """A second find-all while one runs is refused as busy (409), as Live refuses it, instead of
    classifying the same regions again and tracking each twice; once the first has answered, the
    next is taken."""
    import threading

    from streamer.app import create_app
    from tests.test_clip_media import write_clip
    from tests.test_image_api import encoded, served

    gate = threading.Event()  # the VLM answers the first classify only once it is set

    def answer(body: dict[str, Any]) -> Any:
        gate.wait(20)
        return '{"answers": ["yes", "yes", "yes", "yes"]}'

    with ScriptedVLMServer(answer=answer) as srv:
        settings = Settings(data_dir=tmp_path / "data", vlm_url=srv.url, **PROPOSE_ANYTHING)
        reasoner, _ = build_reasoner(settings)
        app = create_app(settings, vision_model=sam2_tiny_128, reasoner=reasoner, load_vision=False)
        async with served(app) as (_, c):
            if mode == "images":
                up = await c.post("/api/images", files={"file": ("desk.png", encoded("PNG"))})
            else:
                data = write_clip(tmp_path / "desk.mp4", frames=6).read_bytes()
                up = await c.post("/api/clips", files={"file": ("desk.mp4", data, "video/mp4")})
            assert up.status_code == 201, up.text
            url, body = f"/api/{mode}/{up.json()['id']}/find_all", {"phrase": "squares", "frame": 0}
            if mode == "images":
                del body["frame"]

            async with c.stream("POST", url, json=body) as first:
                assert first.status_code == 200
                lines = first.aiter_lines()
                async for line in lines:
                    if json.loads(line).get("stage") == "classifying":
                        break  # the VLM is being asked
                second = await c.post(url, json=body)
                assert second.status_code == 409, second.text
                assert second.json()["code"] == "busy"
                assert "a find-all is already running" in second.json()["detail"]
                gate.set()
                events = [json.loads(line) async for line in lines]
            result = events[-1]
            assert result["type"] == "find_result" and result["count"] >= 1
            assert len(result["objects"]) == result["count"]  # each tracked once

            # The first has answered: the next find-all is taken.
            again = await c.post(url, json=body)
            assert again.status_code == 200, again.text
            assert json.loads(again.text.splitlines()[-1])["type"] == "find_result"
