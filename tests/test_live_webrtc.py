"""Live mode end to end with real peers: an aiortc client streams a moving shape to the real app.

The app runs under uvicorn in a thread with SAM2 tiny (random weights, 256 px) and a scripted
OpenAI-compatible VLM, so tracking, RLE overlays, streamed descriptions, verification, chat and
teardown all go through the production code paths.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from streamer.app import create_app
from streamer.live.protocol import parse_server_message
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import (
    CheckedFindScript,
    LiveClient,
    ServerThread,
    connected,
    live_clients,
    request_text,
    sessions_closed,
    spotlight_answerer,
    square_center,
    wait_until,
)
from tests.fakes.openai_server import ScriptedVLMServer
from workers.masks import rle_decode

pytestmark = pytest.mark.timeout(240)
W, H = 160, 120


def live_settings(**kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        weights="random",
        sam2_image_size=256,
        device="cpu",
        max_sessions=2,
        session_idle_timeout_s=60,
    )
    base.update(kw)
    return Settings(**base)


async def find_the_square(client: LiveClient, timeout: float) -> tuple[int, dict[str, Any]]:
    """Once frames are tracked, ask to find the red square: the message count before the request
    and its find_result."""
    await client.wait_message("overlay", timeout=60)
    mark = len(client.messages)
    await client.send({"type": "find", "phrase": "the red square"})
    return mark, await client.wait_message("find_result", after=mark, timeout=timeout)


def vlm_app(model: Any, vlm_url: str) -> Any:
    """A live app whose VLM is the (scripted) server at vlm_url."""
    settings = live_settings(vlm_url=vlm_url)
    return create_app(settings, vision_model=model, reasoner=build_reasoner(settings)[0])


async def test_click_tracks_describes_and_chats(sam2_tiny_random: Any, moving_shape: Any) -> None:
    with ScriptedVLMServer(answer=spotlight_answerer()) as vlm:
        app = vlm_app(sam2_tiny_random, vlm.url)
        with ServerThread(app) as server:
            track = moving_shape(W, H, fps=15)
            async with connected(server, track) as client:
                hello = await client.wait_message("hello", timeout=10)
                assert hello["descriptions"] is True
                first = await client.wait_message("overlay", timeout=60)
                assert first["frame_size"] == {"width": W, "height": H}

                x, y = square_center(track.index, W, H)
                oid = await client.click_new_object(x, y, timeout=60)

                # Overlays for later frames carry the object's mask at the frame's size.
                def with_object() -> list[dict[str, Any]]:
                    return [
                        m
                        for m in client.of_type("overlay")
                        if any(o["id"] == oid for o in m["objects"])
                    ]

                overlays = await client.wait_for(
                    lambda: len(with_object()) >= 3 and with_object(),
                    timeout=90,
                    what="3 overlays with the object",
                )
                pts = [m["pts"] for m in overlays]
                assert pts == sorted(pts) and len(set(pts)) == len(pts), pts
                for m in overlays:
                    parse_server_message(json.dumps(m))  # the documented shape
                    obj = next(o for o in m["objects"] if o["id"] == oid)
                    assert rle_decode(obj["rle"]).shape == (H, W)

                # The click started a description: tokens stream, then a verified verdict.
                await client.wait_message(
                    "description_token", lambda m: m["object_id"] == oid, timeout=60
                )
                verdict = await client.wait_message(
                    "verdict", lambda m: m["object_id"] == oid, timeout=60
                )
                assert verdict["verdict"] == "verified", verdict
                assert verdict["iou"] >= live_settings().verify_iou_threshold
                tokens = "".join(m["text"] for m in client.of_type("description_token"))
                assert "red square" in tokens

                # Chat is multi-turn per object.
                mark = len(client.messages)
                await client.send({"type": "chat", "object_id": oid, "question": "What colour?"})
                done = await client.wait_message("chat_done", after=mark, timeout=60)
                assert done["answer"] == "It is red."
                mark = len(client.messages)
                await client.send({"type": "chat", "object_id": oid, "question": "Sure?"})
                await client.wait_message("chat_done", after=mark, timeout=60)
                chat_requests = [r for r in vlm.requests if r["messages"][0]["role"] == "system"]
                assert len(chat_requests[-1]["messages"]) > len(chat_requests[0]["messages"])

                # Describe again: a refresh on a later frame.
                mark = len(client.messages)
                start0 = client.of_type("description_start")[0]
                await client.send({"type": "describe", "object_id": oid})
                start1 = await client.wait_message("description_start", after=mark, timeout=60)
                assert start1["frame_index"] > start0["frame_index"]
                await client.wait_message("verdict", after=mark, timeout=60)

                status = await client.wait_message("status", after=mark, timeout=10)
                assert status["objects"] == 1 and status["frames_processed"] > 0
            await sessions_closed(server, app, "the session to close after the page left")


async def test_find_tracks_boxes_and_remove_cancels_a_description(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    slow = "a red square " + " ".join(f"word{i}" for i in range(200))
    with ScriptedVLMServer(answer=spotlight_answerer(description=slow), token_delay_s=0.05) as vlm:
        app = vlm_app(sam2_tiny_random, vlm.url)
        with ServerThread(app) as server:
            async with connected(server, moving_shape(W, H, fps=15)) as client:
                mark, found = await find_the_square(client, timeout=60)
                assert len(found["objects"]) == 1, found
                fid = found["objects"][0]["object_id"]
                x0, y0, x1, y1 = found["objects"][0]["box"]
                assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
                await client.wait_message(
                    "overlay", lambda m: any(o["id"] == fid for o in m["objects"]), after=mark
                )

                # A clicked object starts describing; removing it cancels the VLM stream.
                finished_before = vlm.completed
                mark = len(client.messages)
                await client.send({"type": "click", "x": W / 2, "y": H / 2})
                added = await client.wait_message(
                    "objects", lambda m: m["added"] is not None, after=mark
                )
                oid = added["added"]
                await client.wait_message(
                    "description_token", lambda m: m["object_id"] == oid, after=mark
                )
                await client.send({"type": "remove", "object_id": oid})
                after = await client.wait_message(
                    "objects", lambda m: all(o["id"] != oid for o in m["objects"]), after=mark
                )
                assert [o["id"] for o in after["objects"]] == [fid]
                await wait_until(lambda: vlm.cancelled >= 1, 20, "the VLM stream to be cancelled")
                # The description never finished at the VLM, and the session holds no task that
                # could still send its verdict later.
                assert vlm.completed == finished_before
                object_tasks = server.call(
                    lambda: [
                        len(o.tasks()) for s in app.state.live.sessions.values() for o in s.objects
                    ]
                )
                assert object_tasks == [0]  # the found object is left, with nothing running
                assert not [m for m in client.of_type("verdict") if m["object_id"] == oid]

                # Reset clears the rest; tracking goes on with no objects.
                mark = len(client.messages)
                await client.send({"type": "reset"})
                cleared = await client.wait_message("objects", after=mark)
                assert cleared["objects"] == []
                await client.wait_message("overlay", lambda m: m["objects"] == [], after=mark)


async def test_two_sessions_share_the_model_but_not_their_objects(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    app = create_app(live_settings(), vision_model=sam2_tiny_random, reasoner=None)
    with ServerThread(app) as server:
        async with live_clients(server, 2) as (a, b):
            await a.connect(moving_shape(W, H))
            await b.connect(moving_shape(W, H))
            await a.wait_message("overlay", timeout=60)
            await b.wait_message("overlay", timeout=60)
            mark_a = len(a.messages)
            await a.send({"type": "click", "x": W / 2, "y": H / 2})
            added = await a.wait_message("objects", lambda m: m["added"] is not None, after=mark_a)
            oid = added["added"]
            await a.wait_message(
                "overlay", lambda m: [o["id"] for o in m["objects"]] == [oid], after=mark_a
            )
            # Both keep getting frames processed; B never sees A's object.
            for _ in range(3):
                await b.wait_message("overlay", after=len(b.messages))
            assert len(b.of_type("overlay")) > 3
            assert all(m["objects"] == [] for m in b.of_type("overlay"))


async def test_a_microphone_or_second_camera_offered_is_refused_and_the_first_camera_tracks(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    """Only the first camera is read; the answer tells the page to send nothing else (what was
    sent and never read would queue on the server without bound)."""
    from aiortc.mediastreams import AudioStreamTrack

    microphone = AudioStreamTrack()
    app = create_app(live_settings(), vision_model=sam2_tiny_random, reasoner=None)
    with ServerThread(app) as server:
        async with live_clients(server, 1) as (client,):
            body = await client.connect(
                moving_shape(W, H), extra=[microphone, moving_shape(W // 2, H // 2)]
            )
            sections = body["sdp"].split("\r\nm=")[1:]
            assert [s.split(" ")[0] for s in sections] == ["video", "audio", "video"]
            directions = [
                next(d for d in ("recvonly", "sendrecv", "inactive") if f"a={d}" in s)
                for s in sections
            ]
            assert directions == ["recvonly", "inactive", "inactive"]
            # The camera offered first is the one tracked: a click at its centre lies outside the
            # second camera's frames.
            await client.wait_message("overlay", timeout=60)
            mark = len(client.messages)
            await client.send({"type": "click", "x": W / 2, "y": H / 2})
            added = await client.wait_message(
                "objects", lambda m: m["added"] is not None, after=mark
            )
            await client.wait_message(
                "overlay", lambda m: [o["id"] for o in m["objects"]] == [added["added"]], after=mark
            )
    microphone.stop()


async def test_checked_find_tracks_only_what_the_vlm_accepts(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    boxes = [(40.0, 30.0, 120.0, 90.0), (2.0, 2.0, 30.0, 30.0)]
    script = CheckedFindScript(boxes, ["Yes.", "No."], (W, H))
    with ScriptedVLMServer(answer=script) as vlm:
        app = vlm_app(sam2_tiny_random, vlm.url)
        with ServerThread(app) as server:
            async with connected(server, moving_shape(W, H, fps=15)) as client:
                mark, found = await find_the_square(client, timeout=90)
                # Each candidate's Spotlight went to the VLM with the phrase.
                assert len(script.checks) == 2 and all(n >= 1 for n in script.check_images())
                assert all('"the red square"' in request_text(b) for b in script.checks)
                (kept,) = found["objects"]
                assert kept["check"] == "match" and kept["box"] == pytest.approx(boxes[0], abs=2)
                (rejected,) = found["rejected"]
                assert rejected["check"] == "no_match" and rejected["box"] == pytest.approx(
                    boxes[1], abs=2
                )
                listed = client.of_type("objects")[-1]["objects"]
                assert [(o["id"], o["find_check"]) for o in listed] == [
                    (kept["object_id"], "match")
                ]
                # The rejected candidate left the tracker: later overlays carry the kept one only.
                after = len(client.messages)
                for _ in range(3):
                    overlay = await client.wait_message("overlay", after=len(client.messages))
                assert [o["id"] for o in overlay["objects"]] == [kept["object_id"]]
                assert len(client.messages) > after


async def test_auto_refine_clicks_in_order_then_done_and_stop_ends_it(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    from workers.reasoning.images import fitted_size

    sw, sh = fitted_size(W, H, 768)

    def click(kind: str, x: float, y: float) -> str:
        return json.dumps({"action": kind, "point_2d": [round(x * sw / W), round(y * sh / H)]})

    answers = [click("negative", 5, 5), click("positive", 84, 63), '{"action": "done"}']
    asked: list[int] = []

    def answer(body: dict[str, Any]) -> str:
        if "next click" not in request_text(body):
            return "a red square"
        asked.append(1)
        # The first run: two clicks then done. After that: never done (the stop ends it).
        return answers[len(asked) - 1] if len(asked) <= 3 else click("positive", 80, 60)

    with ScriptedVLMServer(answer=answer) as vlm:
        app = vlm_app(sam2_tiny_random, vlm.url)
        with ServerThread(app) as server:
            async with connected(server, moving_shape(W, H, fps=15)) as client:
                await client.wait_message("overlay", timeout=60)
                await client.send({"type": "click", "x": W / 2, "y": H / 2})
                added = await client.wait_message("objects", lambda m: m["added"] is not None)
                oid = added["added"]
                await client.wait_message(
                    "overlay", lambda m: any(o["id"] == oid and o["present"] for o in m["objects"])
                )
                mark = len(client.messages)
                await client.send({"type": "auto_refine", "object_id": oid})
                done = await client.wait_message("refine_done", after=mark, timeout=90)
                clicks = [m for m in client.messages[mark:] if m["type"] == "refine_click"]
                assert [(c["step"], c["positive"]) for c in clicks] == [(1, False), (2, True)]
                assert (clicks[0]["x"], clicks[0]["y"]) == pytest.approx((5, 5), abs=1)
                assert (clicks[1]["x"], clicks[1]["y"]) == pytest.approx((84, 63), abs=1)
                assert done["reason"] == "done" and done["steps"] == 2 and len(asked) == 3

                # A VLM that never says done: the person stops it; its clicks stay, none follow.
                mark = len(client.messages)
                await client.send({"type": "auto_refine", "object_id": oid, "max_steps": 8})
                await client.wait_message("refine_click", after=mark, timeout=90)
                await client.send({"type": "stop_refine", "object_id": oid})
                stopped = await client.wait_message("refine_done", after=mark, timeout=30)
                assert stopped["reason"] == "stopped" and 1 <= stopped["steps"] < 8
                n = len(asked)
                # The session goes on: the object is tracked and a ping is answered.
                mark = len(client.messages)
                await client.send({"type": "ping"})
                await client.wait_message("pong", after=mark)
                await client.wait_message(
                    "overlay", lambda m: any(o["id"] == oid for o in m["objects"]), after=mark
                )
                # The question in flight when the stop came may still reach the scripted server
                # (it counts on its own thread); no further question is asked.
                assert len(asked) <= n + 1
                assert not [m for m in client.messages[mark:] if m["type"] == "refine_click"]

                # Removed while the VLM refines it: the auto-refine ends and says so, so the
                # page's Stop goes.
                mark = len(client.messages)
                await client.send({"type": "auto_refine", "object_id": oid, "max_steps": 8})
                await client.wait_message("refine_click", after=mark, timeout=90)
                await client.send({"type": "remove", "object_id": oid})
                removed = await client.wait_message("refine_done", after=mark, timeout=30)
                assert removed["reason"] == "stopped" and "removed" in removed["message"]


async def test_objects_clicked_at_once_past_the_share_are_each_described(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    """The second object clicked while the first's description holds the session's one VLM
    request waits its turn and is described (it was refused as busy, and stayed undescribed)."""
    from tests.test_vlm_share_claim import HeldAnswer

    vlm = HeldAnswer("A red square.")
    with ScriptedVLMServer(answer=vlm) as srv:
        settings = live_settings(vlm_url=srv.url, vlm_max_in_flight_per_session=1)
        app = create_app(
            settings, vision_model=sam2_tiny_random, reasoner=build_reasoner(settings)[0]
        )
        with ServerThread(app) as server:
            track = moving_shape(W, H, fps=15)
            async with connected(server, track) as client:
                await client.wait_message("overlay", timeout=60)
                first = await client.click_new_object(*square_center(track.index, W, H))
                assert await asyncio.to_thread(vlm.asked.wait, 60)  # held at the VLM
                second = await client.click_new_object(4, 4)
                # The page is told the second's description has started: it waits its turn.
                (told,) = [m for m in client.of_type("objects") if m["added"] == second]
                assert told["describe"] is True
                vlm.released.set()
                for oid in (first, second):
                    await client.wait_message(
                        "verdict", lambda m, oid=oid: m["object_id"] == oid, timeout=90
                    )
                assert not client.of_type("error"), client.of_type("error")
