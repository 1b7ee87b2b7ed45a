"""Deleting a clip or an image stops its objects' describe, chat and auto-refine streams, as
removing one object does: they kept asking the VLM for an item that was gone (and a Clip
auto-refine went on starting tracking jobs on a deleted clip's files)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamer.app import create_app
from streamer.services import build_reasoner
from streamer.settings import Settings
from tests.conftest import spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_api import CLICK_FRAME
from tests.test_clip_media import square_center
from tests.test_image_api import encoded, served

pytestmark = pytest.mark.timeout(180)


async def new_object(c: httpx.AsyncClient, kind: str, clip: Path) -> tuple[str, int]:
    """An uploaded clip or image with one clicked object: (item id, object id)."""
    if kind == "clip":
        files = {"file": (clip.name, clip.read_bytes(), "video/mp4")}
        r = await c.post("/api/clips", files=files)
        assert r.status_code == 201, r.text
        x, y = square_center(CLICK_FRAME)
        click = {"frame": CLICK_FRAME, "x": x, "y": y}
    else:
        r = await c.post("/api/images", files={"file": ("a.png", encoded("PNG"), "image/png")})
        assert r.status_code == 201, r.text
        click = {"x": 70, "y": 60}
    item = r.json()["id"]
    r = await c.post(f"/api/{kind}s/{item}/clicks", json=click)
    assert r.status_code == 200, r.text
    answer = r.json()
    return item, answer["object_id"] if kind == "clip" else answer["object"]["id"]


@pytest.mark.parametrize("kind", ["clip", "image"])
async def test_deleting_the_item_stops_its_describe(
    kind: str,
    model: Any,
    clip_path: Path,
    tmp_path: Path,
) -> None:
    with ScriptedVLMServer(answer=spotlight_answerer(), token_delay_s=0.3) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(data_dir=tmp_path / "data")
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served(app) as (_, c):
            item, oid = await new_object(c, kind, clip_path)
            seen: list[str] = []
            streaming = asyncio.Event()

            async def describe() -> None:
                body = {"frame": CLICK_FRAME} if kind == "clip" else None
                url = f"/api/{kind}s/{item}/objects/{oid}/describe"
                async with c.stream("POST", url, json=body) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line:
                            seen.append(json.loads(line)["type"])
                            if seen[-1] == "description_token":
                                streaming.set()

            stream = asyncio.ensure_future(describe())
            await asyncio.wait_for(streaming.wait(), 60)
            assert (await c.delete(f"/api/{kind}s/{item}")).status_code == 200
            await asyncio.wait_for(stream, 60)
            # The description stopped with its item: no verdict for what is gone.
            assert "verdict" not in seen, seen
