"""Live's reconnect with real peers: a page that comes back (an offer with `resume`) gets its
objects back, same ids, whether the server had noticed the old connection drop or not, and even
when its first try at coming back dropped too before the picture arrived."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from streamer.app import create_app
from tests.conftest import LiveClient, ServerThread, live_clients, square_center, wait_until
from tests.test_live_webrtc import H, W, live_settings

pytestmark = pytest.mark.timeout(240)


async def an_object_on_a_frame(client: LiveClient, track: Any) -> int:
    """Click the square once frames come back; its id, once it shows on a tracked frame (what a
    resume re-adds it from)."""
    await client.wait_message("overlay", timeout=60)
    oid = await client.click_new_object(*square_center(track.index, W, H))
    await client.wait_message(
        "overlay", lambda m: any(o["id"] == oid and o["box"] for o in m["objects"])
    )
    return oid


async def test_a_page_that_resumes_a_session_the_server_still_holds_gets_its_objects(
    sam2_tiny_random: Any, moving_shape: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The page's network dropped and it offers again at once; the server has not noticed yet
    (the old websocket and peer are still open). The old session ends as dropped, and its
    object comes back on the new one, same id."""
    caplog.set_level(logging.INFO, logger="fmu")
    app = create_app(live_settings(), vision_model=sam2_tiny_random)
    with ServerThread(app) as server:
        reg = server.app.state.live
        async with live_clients(server, 2) as (old, new):
            track = moving_shape(W, H, fps=10)
            await old.connect(track)
            oid = await an_object_on_a_frame(old, track)
            answer = await new.connect(moving_shape(W, H, fps=10), resume=old.session_id)
            assert answer["resumed"] is True
            await old.wait_for(lambda: old.close_code is not None, 30, "the old socket to close")
            assert server.call(lambda: list(reg.sessions)) == [new.session_id]
            back = await new.wait_message("objects", lambda m: m["objects"], timeout=60)
            assert [o["id"] for o in back["objects"]] == [oid]
            await wait_until(
                lambda: server.call(lambda: oid in reg.sessions[new.session_id].tracker.last_boxes),
                60,
                "the object to be tracked on the new session",
            )
            # A new object after the resume takes the next id, never the one given back.
            assert await new.click_new_object(*square_center(0, W, H)) == oid + 1
    # The server log says each session's start, and what a resume took back.
    started = [m for m in caplog.messages if " started" in m]
    assert started[0] == f"session {old.session_id[:8]} started (1 running)", started
    assert started[1].startswith(f"session {new.session_id[:8]} started, resuming 1 object ("), (
        started
    )


async def test_a_resume_that_drops_before_its_first_frame_hands_the_objects_on(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    """First session drops; the page comes back, but that connection never carries a frame and
    drops too; the page's next try, resuming from the second, still gets the object."""
    app = create_app(live_settings(max_sessions=3), vision_model=sam2_tiny_random)
    with ServerThread(app) as server:
        reg = server.app.state.live
        async with live_clients(server, 3) as (first, stalled, last):
            track = moving_shape(W, H, fps=10)
            await first.connect(track)
            oid = await an_object_on_a_frame(first, track)
            a = first.session_id
            server.call(lambda: reg.sessions[a].close("websocket closed", ws_code=1012), timeout=30)

            # The answer is never set, so no media flows: the objects wait for a first frame.
            r = await stalled.offer(moving_shape(W, H, fps=10), resume=a)
            assert r.status_code == 200 and r.json()["resumed"] is True
            b = r.json()["session_id"]
            server.call(lambda: reg.sessions[b].close("peer connection failed"), timeout=30)

            answer = await last.connect(moving_shape(W, H, fps=10), resume=b)
            assert answer["resumed"] is True
            back = await last.wait_message("objects", lambda m: m["objects"], timeout=60)
            assert [o["id"] for o in back["objects"]] == [oid]


def test_an_object_clicked_just_before_a_drop_is_parked(sam2_tiny_random: Any) -> None:
    """Clicked, then the connection drops before the tracker steps again (the picture stopped
    first): the object is still kept for the page's return, from its mask on the clicked frame."""
    from types import SimpleNamespace

    import av

    from streamer.live import resume
    from streamer.live.tracking import LiveTracker
    from streamer.objects.table import ObjectTable
    from tests.conftest import moving_shape_frame

    tracker = LiveTracker(sam2_tiny_random)
    snap, _ = tracker.step(av.VideoFrame.from_ndarray(moving_shape_frame(0, W, H), format="rgb24"))
    assert tracker.add_object(1, points=[(20.0, 60.0)], labels=[1]) is not None  # a mask
    objects = ObjectTable(8, "session")
    objects.add("click", oid=1)
    session = SimpleNamespace(resuming=None, snapshot=snap, tracker=tracker, objects=objects)
    parked = resume.park(session)  # type: ignore[arg-type]
    assert parked is not None and [o.id for o in parked.objects] == [1]
