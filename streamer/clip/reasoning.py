"""Clip mode's describe, chat and auto-refine: the shared object events, on frames read from the clip.

Describe samples keyframes over the object's track and checks the description on the last one;
chat asks about the nearest frame where the object is visible. Frames are read and masks decoded
on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from streamer.clip import protocol as cp
from streamer.clip.job import FramePrompt, start_frames
from streamer.clip.limits import VideoError
from streamer.clip.store import Clip, ClipStore, Store, Track
from streamer.clip.video_io import VideoReader
from streamer.http.claim import Claim
from streamer.http.errors import Refusal, require_vision
from streamer.objects import vlm
from streamer.objects.events import RefineDoneMessage
from streamer.objects.table import ObjectRefused, listed
from workers.masks import rle_decode

router = APIRouter()

DESCRIBE_KEYFRAMES = 6  # frames sampled over an object's track for describe_track


@router.post("/api/clips/{clip_id}/objects/{oid}/auto_refine")
async def auto_refine(
    clip_id: str, oid: int, body: cp.AutoRefineBody, store: Store, request: Request
) -> StreamingResponse:
    """The VLM refines the object by clicks on one of its frames with a positive click or a box
    (the given one, else the first): each click joins that frame's prompts, as a person's click
    does, and re-tracks the clip; the VLM sees SAM2's mask for the frame's prompts (one encode of
    the frame)."""
    model = require_vision(store.services)
    # Refused now (409) if one is under way, before this one reads and encodes its frame; past
    # the clip's VLM share it waits its turn first.
    async with Claim.answering(store, clip_id, oid, "refine", request) as (clip, reasoner, claim):
        track = clip.tracks[oid]
        asked = body.t is not None or body.frame is not None
        starts = start_frames(track.prompts)
        index = clip.frame_index(body) if asked else (starts or [0])[0]
        if index not in starts:
            raise ObjectRefused(
                "bad_prompt",
                f"auto-refine works on a frame where object {oid} has a positive click or a "
                f"box (frames: {listed(starts)}); pick one of those, or leave the frame out",
                oid,
            )
        (frame,) = await asyncio.to_thread(read_frames, clip, [index])
        from workers.vision import ImageSegmenter

        made: list[
            Any
        ] = []  # the segmenter, made and encoded on the vision thread (its first call)

        def segment(first: bool) -> Any:
            if first:
                made.append(ImageSegmenter(model))
                made[0].set_image(frame)
            p = track.prompts[index]
            return made[0].segment(points=p.points or None, labels=p.labels or None, box=p.box)[0]

        mask = await store.services.run_vision(segment, True)
        if not mask.any():  # refused first, as Live and Image refuse an object not visible
            raise ObjectRefused(
                "not_visible",
                f"object {oid}'s mask on frame {index} is empty: click on it there",
                oid,
            )

        async def apply(positive: bool, point: tuple[float, float]) -> Any:
            clip.objects.get(oid)  # still there
            prompt = track.prompts.setdefault(index, FramePrompt())
            prompt.points.append(point)
            prompt.labels.append(1 if positive else 0)
            store.start_job(clip, oid)
            return frame, await store.services.run_vision(segment, False), None, index

        events = vlm.auto_refine(
            clip.objects, oid, reasoner, frame, mask, apply, max_steps=body.max_steps
        )
        return claim.respond(events, "auto_refine")


@router.post("/api/clips/{clip_id}/objects/{oid}/stop_refine")
async def stop_refine(clip_id: str, oid: int, store: Store) -> RefineDoneMessage:
    """Stop the object's auto-refine: its answer ends with this same refine_done, `stopped`; the
    clicks applied stay."""
    return (await vlm.stop_refine(store.get(clip_id).objects.get(oid)))[0]


def _sample(frames: list[int], n: int) -> list[int]:
    """n frames spread evenly over `frames`, first and last included."""
    if len(frames) <= n:
        return frames
    picks = {round(k * (len(frames) - 1) / (n - 1)) for k in range(n)}
    return [frames[i] for i in sorted(picks)]


def read_frames(clip: Clip, indices: list[int]) -> list[Any]:
    """The frames at `indices`; a frame the file cannot decode (damaged where the upload's probe
    did not look) is refused, 422 bad_video, as a request about that frame."""
    try:
        with VideoReader(clip.path, clip.info) as r:
            return [r.frame(i) for i in indices]
    except VideoError as exc:
        raise Refusal(422, "bad_video", f"{exc}: pick another frame") from None


async def _read_views(clip: Clip, track: Track, indices: list[int]) -> tuple[list[Any], list[Any]]:
    """The frames and the object's masks on them, decoded in a worker thread. The masks' RLEs are
    taken here, on the loop: a refinement click meanwhile empties the track's results."""
    rles = [track.results[i].rle for i in indices]

    def read() -> tuple[list[Any], list[Any]]:
        return read_frames(clip, indices), [rle_decode(rle) for rle in rles]

    return await asyncio.to_thread(read)


@router.post("/api/clips/{clip_id}/objects/{oid}/describe")
async def describe(
    clip_id: str,
    oid: int,
    store: Store,
    request: Request,
    body: cp.DescribeBody | None = None,
) -> StreamingResponse:
    """Describe the object over keyframes of its track, or on one frame when the body names one
    (the page names the clicked frame, so a new object is described at once). An object that
    tracking has not reached a frame of yet is described on its clicked frame."""
    # Refused now (409) if one is under way, before this one reads and encodes its frames; past
    # the clip's VLM share it waits its turn first.
    async with Claim.answering(store, clip_id, oid, "describe", request) as (clip, reasoner, claim):
        track = clip.tracks[oid]
        present = track.present_frames()
        if body is not None and (body.t is not None or body.frame is not None):
            index = clip.frame_index(body)
        elif not present:
            index = _clicked_frame(track)
        else:
            index = None
        if index is None:
            picks = _sample(present, DESCRIBE_KEYFRAMES)
            keyframes, masks = await _read_views(clip, track, picks)
            stream = reasoner.describe_track_verified(keyframes, masks)
        else:
            picks = [index]
            frame, mask = await _view_on(store, clip, oid, track, index)
            stream = reasoner.describe_verified(frame, mask)
        events = vlm.describe(clip.objects, oid, stream, frame_index=picks[-1], frames=picks)
        return claim.respond(_published(store, clip, oid, events), "describe")


def _clicked_frame(track: Track) -> int:
    """The frame an object is seen on before tracking reaches one: its first frame with a
    positive click or a box (describe, chat)."""
    return (start_frames(track.prompts) or [0])[0]


async def _view_on(
    store: ClipStore, clip: Clip, oid: int, track: Track, index: int
) -> tuple[Any, Any]:
    """The frame and the object's mask on it: its tracked mask there, else (a clicked frame that
    tracking has not reached yet) SAM2's mask for the clicks there, one encode and a decoder pass."""
    result = track.results.get(index)
    if result is not None and result.present:
        (frame,), (mask,) = await _read_views(clip, track, [index])
        return frame, mask
    starts = start_frames(track.prompts)  # negative clicks alone give SAM2 no object to segment
    p = track.prompts.get(index) if index in starts else None
    if result is None and p is None:  # tracking has not got there (yet)
        clicked = ", ".join(str(i) for i in starts)
        raise ObjectRefused(
            "not_visible",
            f"tracking has not reached frame {index} for object {oid} yet; wait for it, or "
            f"describe it on a frame you clicked it on ({clicked})",
            oid,
        )
    if p is None or result is not None:
        elsewhere = (
            "pick a frame where it shows, or describe it over its track"
            if track.present_frames()
            else "it has no frame where it is visible; click on it again"
        )
        raise ObjectRefused(
            "not_visible", f"object {oid} is not visible on frame {index}; {elsewhere}", oid
        )
    model = require_vision(store.services)
    prompt = FramePrompt(list(p.points), list(p.labels), p.box)  # a later click may add to it
    (frame,) = await asyncio.to_thread(read_frames, clip, [index])
    mask = await store.services.run_vision(_segment_prompt, model, frame, prompt)
    if mask is None:
        raise ObjectRefused(
            "not_visible", f"object {oid}'s mask on frame {index} is empty; click on it again", oid
        )
    return frame, mask


def _segment_prompt(model: Any, frame: Any, prompt: FramePrompt) -> Any:
    """Vision thread: the mask SAM2's image predictor gives the frame's prompt (None if empty)."""
    from workers.vision import ImageSegmenter

    seg = ImageSegmenter(model)
    seg.set_image(frame)
    points = prompt.points or None
    mask = seg.segment(points=points, labels=prompt.labels or None, box=prompt.box)[0]
    return mask if mask.any() else None


async def _published(
    store: ClipStore, clip: Clip, oid: int, events: AsyncIterator[BaseModel]
) -> AsyncIterator[BaseModel]:
    """Relay the events; the object list (a new label) also goes to the clip's websocket. What the
    object now holds (description, verdict, chat) is saved when the stream ends, however it ends."""
    try:
        async for event in events:
            if getattr(event, "type", None) == "objects":
                clip.publish(event)
            yield event
    finally:
        store.save_object(clip, oid)


@router.post("/api/clips/{clip_id}/objects/{oid}/chat")
async def chat(
    clip_id: str, oid: int, body: cp.ChatBody, store: Store, request: Request
) -> StreamingResponse:
    """An answer about the object on the tracked frame nearest the one asked (else its track's
    middle); an object that tracking has not reached a frame of yet is asked about on its clicked
    frame, as describe does, so a question right after the click is answered as in Live."""
    async with Claim.answering(store, clip_id, oid, "chat", request) as (clip, reasoner, claim):
        track = clip.tracks[oid]
        present = track.present_frames()
        # the frame asked is checked whatever tracking has reached: a frame past the clip's end
        # is refused the same before the track is there as after
        asked = clip.frame_index(body) if body.t is not None or body.frame is not None else None
        if present:
            want = present[len(present) // 2] if asked is None else asked
            index = min(present, key=lambda i: abs(i - want))  # the nearest where it is visible
            (frame,), (mask,) = await _read_views(clip, track, [index])
        else:
            index = _clicked_frame(track)
            frame, mask = await _view_on(store, clip, oid, track, index)
        events = vlm.chat(
            clip.objects, oid, reasoner, frame, mask, body.question, frame_index=index
        )
        return claim.respond(_published(store, clip, oid, events), "chat")
