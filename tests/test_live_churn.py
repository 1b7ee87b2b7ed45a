"""Churn: 30 pages come and go (websocket, peer connection or both closed), nothing stays.

After the cycles the server holds no sessions, no open RTCPeerConnections, no session tasks, no
StreamTracker, and no more asyncio tasks than before the first page came.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from streamer.app import create_app
from streamer.settings import Settings
from tests.conftest import LiveClient, ServerThread, wait_until

pytestmark = pytest.mark.timeout(300)
CYCLES = 30
W, H = 96, 64


def live_trackers() -> int:
    from workers.vision import StreamTracker

    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is StreamTracker)


async def test_connect_disconnect_cycles_leave_nothing_behind(
    sam2_tiny_random: Any, moving_shape: Any
) -> None:
    settings = Settings(weights="random", sam2_image_size=256, device="cpu", max_sessions=2)
    app = create_app(settings, vision_model=sam2_tiny_random, reasoner=None)
    with ServerThread(app) as server:
        baseline_tasks = server.call(lambda: len(asyncio.all_tasks()))
        baseline_trackers = live_trackers()
        for i in range(CYCLES):
            client = LiveClient(server.base_url)
            track = moving_shape(W, H, fps=30)
            await client.connect(track)
            await client.wait_message("overlay", timeout=60)
            if i % 5 == 0:  # an object too, so tracker state exists to be freed
                await client.send({"type": "click", "x": W / 2, "y": H / 2})
                await client.wait_message("objects", lambda m: m["added"] is not None)
            how = i % 3
            if how == 0:  # the websocket goes (tab closed before WebRTC noticed)
                await client.ws.close()
            elif how == 1:  # the peer connection goes (camera stopped, network lost)
                await client.pc.close()
            else:  # both, as a closing page does
                await client.close()
            reg = app.state.live
            await wait_until(
                lambda: server.call(lambda: len(app.state.live.sessions)) == 0,
                30,
                f"cycle {i}: the session to close ({'ws pc both'.split()[how]})",
            )
            await client.close()
            track.stop()

        reg = app.state.live
        assert server.call(lambda: len(reg.sessions)) == 0

        def settled() -> bool:
            gc.collect()
            return (
                server.call(reg.open_peer_connections) == 0
                and server.call(lambda: len(asyncio.all_tasks())) <= baseline_tasks
            )

        await wait_until(settled, 30, "peer connections and tasks to wind down")
        assert live_trackers() == baseline_trackers
        state = server.call(lambda: {"pcs": len(list(reg.peer_connections))})
        assert state["pcs"] == 0, state
