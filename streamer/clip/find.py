"""Clip mode's Find and find-all: the object core's coroutines on a frame read from the clip.

The frame is encoded once (an image segmenter on the vision thread) for every box's mask and for
find-all's proposals; each kept candidate becomes an object tracked through the clip from its box
on that frame, as a person's box would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from streamer.clip import protocol as cp
from streamer.clip.job import FramePrompt
from streamer.clip.reasoning import read_frames
from streamer.clip.store import Clip, ClipStore, Store, Track
from streamer.http.claim import Held
from streamer.http.errors import require_reasoner, require_vision
from streamer.objects import find as objects_find
from streamer.objects import find_all as objects_find_all
from streamer.objects.events import Box, FindCheck, FindResultMessage
from workers.vision.proposals import ProposalGrid

router = APIRouter()


class _ClipFindSite:
    def __init__(self, store: ClipStore, clip: Clip, model: Any, frame: Any, index: int) -> None:
        self.store, self.clip, self.model = store, clip, model
        self.table = clip.objects
        self.frame, self.frame_index = frame, index
        self._segmenter: Any = None  # made and encoded on the vision thread, on first use

    def _encoded(self) -> Any:
        if self._segmenter is None:
            from workers.vision import ImageSegmenter

            seg = ImageSegmenter(self.model)
            seg.set_image(self.frame)
            self._segmenter = seg
        return self._segmenter

    async def segment(self, box: Box) -> tuple[Any, Any, None]:
        mask = await self.store.services.run_vision(lambda: self._encoded().segment(box=box)[0])
        return mask, self.frame, None

    async def discard(self, handle: None) -> None:
        return None  # nothing was kept yet

    async def track(self, label: str, box: Box, handle: None, check: FindCheck) -> tuple[int, None]:
        self.store.peek(self.clip.id)  # deleted while the VLM checked: refused as any gone clip
        obj = self.clip.objects.add("find", label)
        obj.find_check = check  # before the job saves it
        self.clip.tracks[obj.id] = Track(prompts={self.frame_index: FramePrompt(box=box)})
        self.store.start_job(self.clip, obj.id)
        return obj.id, None

    async def propose(self, grid: ProposalGrid) -> list[Any]:
        return await self.store.services.run_vision(
            lambda: self._encoded().propose(self.frame, grid)
        )


async def _site(clip_id: str, body: cp.FindBody | cp.FindAllBody, store: ClipStore) -> Any:
    clip = store.get(clip_id)
    reasoner = require_reasoner(store.services)
    model = require_vision(store.services)
    index = clip.frame_index(body)
    (frame,) = await asyncio.to_thread(read_frames, clip, [index])
    return reasoner, _ClipFindSite(store, clip, model, frame, index)


async def _published(clip: Clip, events: AsyncIterator[BaseModel]) -> AsyncIterator[BaseModel]:
    """Relay the events; the object list also goes to the clip's websocket, and so it does when
    the stream stops before its list (the page's Stop while find-all tracks the accepted
    regions: the objects it made so far stay, and the page is told)."""
    listed = False
    try:
        async for event in events:
            if getattr(event, "type", None) == "objects":
                clip.publish(event)
                listed = True
            yield event
    finally:
        if not listed:
            clip.publish(clip.objects.message())


@router.post("/api/clips/{clip_id}/find")
async def find(clip_id: str, body: cp.FindBody, store: Store) -> FindResultMessage:
    """Ground the phrase on the frame, segment each box there (one encode of that frame), show
    each mask's Spotlight to the VLM with the phrase; the kept ones are tracked through the clip.
    At most the clip's VLM share of Finds at once (ObjectTable.finding), as in every mode."""
    with store.get(clip_id).objects.finding():
        reasoner, site = await _site(clip_id, body, store)
        events = objects_find.find(site, reasoner, body.phrase, all_candidates=body.all_candidates)
        return await objects_find.last_result(_published(site.clip, events))


@router.post("/api/clips/{clip_id}/find_all")
async def find_all(clip_id: str, body: cp.FindAllBody, store: Store) -> StreamingResponse:
    """Find all of the phrase on the frame and count them: NDJSON find_progress events, the
    object list, find_result with count; every accepted region is tracked through the clip.
    Closing the stream stops it; one runs at a time per clip (a second is refused as busy)."""
    with Held(store.get(clip_id).objects.finding_all()).held() as slot:
        reasoner, site = await _site(clip_id, body, store)
        limits = objects_find_all.limits_from(store.settings)
        events = objects_find_all.find_all(site, reasoner, body.phrase, limits)
        return slot.stream(_published(site.clip, events), "find_all", body.phrase)
