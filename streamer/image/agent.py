"""The VLM in the segmentation loop on an image: checked Find, find-all / count and auto-refine.

Routes:
  POST   /api/images/{id}/find                       {phrase}: ground, then a mask per box (find_result)
  POST   /api/images/{id}/find_all                   {phrase}: NDJSON find_progress, objects, find_result+count
  POST   /api/images/{id}/objects/{oid}/auto_refine  {max_steps}: NDJSON refine_click..., refine_done
  POST   /api/images/{id}/objects/{oid}/stop_refine  stop it: refine_done (its answer ends with it too)

The VLM and the proposals see the image's working copy; what these answer is in the image's own
pixels, like every other coordinate of the API (in_image_pixels).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from streamer.http.claim import Claim, Held
from streamer.http.errors import require_reasoner
from streamer.image import protocol as ip
from streamer.image.routes import (
    Store,
    click_object,
    in_image_pixels,
    object_view,
    segment_now,
)
from streamer.image.store import ImageEntry, ImageStore, Segment
from streamer.objects import find as objects_find
from streamer.objects import find_all as objects_find_all
from streamer.objects import vlm
from streamer.objects.events import FindCheck, FindResultMessage, RefineDoneMessage
from workers.vision.proposals import ProposalGrid

router = APIRouter()


@router.post("/api/images/{image_id}/objects/{oid}/auto_refine")
async def auto_refine(
    image_id: str, oid: int, body: ip.AutoRefineBody, store: Store, request: Request
) -> StreamingResponse:
    """The VLM proposes clicks on the object's mask until it says done (or the limit); each is
    applied as an ordinary click. NDJSON: refine_click per click (with the new mask), refine_done."""
    async with Claim.answering(store, image_id, oid, "refine", request) as (entry, reasoner, claim):
        image, mask = await object_view(store, entry, oid)

        async def apply(positive: bool, point: tuple[float, float]) -> Any:
            x, y = entry.to_image(point)  # the VLM saw the working copy
            await click_object(store, entry, oid, x, y, not positive)
            segment = entry.segments[oid]
            return image, segment.mask, segment.result.event(oid), 0  # type: ignore[union-attr]

        events = vlm.auto_refine(
            entry.objects, oid, reasoner, image, mask, apply, max_steps=body.max_steps
        )
        return claim.respond(in_image_pixels(entry, events), "auto_refine")


@router.post("/api/images/{image_id}/objects/{oid}/stop_refine")
async def stop_refine(image_id: str, oid: int, store: Store) -> RefineDoneMessage:
    """Stop the object's auto-refine: its answer ends with this same refine_done, `stopped`; the
    clicks applied stay."""
    return (await vlm.stop_refine(store.get(image_id).objects.get(oid)))[0]


class _ImageFindSite:
    """Find on the image: a box is segmented on its cached embedding (decoder only); find-all
    proposes on that embedding too. The VLM and the proposals see the working copy, so the boxes
    that come here are in its pixels (in_image_pixels turns the events' boxes back)."""

    frame_index = 0

    def __init__(self, store: ImageStore, entry: ImageEntry, pixels: Any) -> None:
        self.store, self.entry = store, entry
        self.table = entry.objects
        self.frame = pixels  # the working copy (ImageStore.pixels)

    async def segment(self, box: Any) -> tuple[Any, Any, Segment]:
        segment = Segment(box=self.entry.to_image(box))
        await _segment_candidate(self.store, self.entry, segment)
        return segment.mask, self.frame, segment

    async def discard(self, segment: Segment) -> None:
        return None  # nothing was kept yet

    async def track(
        self, label: str, box: Any, segment: Segment, check: FindCheck
    ) -> tuple[int, Any]:
        # Deleted while the VLM checked, or while SAM2 segmented: refused as any gone image.
        self.store.peek(self.entry.id)
        obj = self.table.add("find", label)
        obj.find_check = check  # before it is saved
        self.entry.segments[obj.id] = segment
        self.store.save_object(self.entry, obj.id)
        return obj.id, segment.result.event(obj.id)  # type: ignore[union-attr]

    async def propose(self, grid: ProposalGrid) -> list[Any]:
        entry = self.entry
        seg = await self.store.encoded(entry)

        def propose() -> list[Any]:
            return seg.propose(self.frame, grid)

        return await self.store.services.run_vision(propose)


async def _segment_candidate(store: ImageStore, entry: ImageEntry, segment: Segment) -> None:
    """A find candidate's mask: a box that cannot be segmented is a ValueError (Find goes on)."""
    seg = await store.encoded(entry)
    await store.services.run_vision(segment_now, seg, entry, segment)


@router.post("/api/images/{image_id}/find")
async def find(image_id: str, body: ip.FindBody, store: Store) -> FindResultMessage:
    """Ground the phrase, segment each box, show each mask's Spotlight to the VLM with the
    phrase; the ones it rejects are dropped (or kept, flagged, with all_candidates). At most the
    image's VLM share of Finds at once (ObjectTable.finding), as in every mode."""
    entry = store.get(image_id)
    with entry.objects.finding():
        reasoner = require_reasoner(store.services)
        site = _ImageFindSite(store, entry, await store.pixels(entry))
        events = objects_find.find(site, reasoner, body.phrase, all_candidates=body.all_candidates)
        return await objects_find.last_result(in_image_pixels(entry, events))


@router.post("/api/images/{image_id}/find_all")
async def find_all(image_id: str, body: ip.FindAllBody, store: Store) -> StreamingResponse:
    """Find all of the phrase and count them: NDJSON find_progress events, the object list, then
    find_result with count and each accepted object's mask. Closing the stream stops it; one
    runs at a time per image (a second is refused as busy)."""
    entry = store.get(image_id)
    reasoner = require_reasoner(store.services)
    with Held(entry.objects.finding_all()).held() as slot:
        site = _ImageFindSite(store, entry, await store.pixels(entry))
        limits = objects_find_all.limits_from(store.settings)
        events = objects_find_all.find_all(site, reasoner, body.phrase, limits)
        return slot.stream(in_image_pixels(entry, events), "find_all", body.phrase)
