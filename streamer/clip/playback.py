"""What the browser plays for a clip: the upload as it is, or an H.264 MP4 proxy rendered for it.

A clip whose (container, codec) Chromium plays (MP4/MOV/MKV with H.264, WebM/MKV with
VP8/VP9/AV1) is served as uploaded, with HTTP Range so <video> can seek. Anything else (MJPEG,
MPEG-4 part 2, AVI, ...) gets an H.264 MP4 proxy rendered in the background with the source's frame
timestamps and rotation applied; until it is ready /video answers 409 and the clip websocket
announces {"type": "proxy", "state": "ready"}. Either way frame i has the same time in the page as
here. If it fails, /video answers 415, the websocket announces it with the reason, and the clip's
info (`proxy`: "failed") tells a page that opens the clip later; the server still reads the frames
for tracking, describing and the exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from streamer.clip import exports
from streamer.clip import protocol as cp
from streamer.clip.state import Clip
from streamer.clip.video_io import VideoInfo
from streamer.http.access import short_id

log = logging.getLogger("fmu.clips")
# Why a clip has no picture in the page: /video's refusal and the `proxy` message's opening words.
PROXY_FAILED = "the browser cannot play this clip's codec and converting it failed"

# (container, codec) pairs a Chromium-family browser plays in <video>; anything else (MJPEG, MPEG-4
# part 2, AVI, ...) gets an H.264 MP4 proxy with the same frame timestamps (make_proxy).
# FFmpeg names MP4 and MOV both "mov", and WebM and MKV both "matroska".
BROWSER_PLAYABLE = {
    ("mov", "h264"),
    ("mov", "vp9"),
    ("mov", "av1"),
    ("matroska", "vp8"),
    ("matroska", "vp9"),
    ("matroska", "av1"),
    ("matroska", "h264"),
}


def is_browser_playable(info: VideoInfo) -> bool:
    return (info.container, info.codec) in BROWSER_PLAYABLE


def media_type(info: VideoInfo) -> tuple[str, str]:
    """(MIME type, file suffix) to store and serve a browser-playable clip under."""
    if info.container == "matroska":
        return (
            ("video/webm", ".webm")
            if info.codec in ("vp8", "vp9", "av1")
            else ("video/x-matroska", ".mkv")
        )
    if info.container == "mov":
        return "video/mp4", ".mp4"
    return "application/octet-stream", ".bin"


async def make_proxy(clip: Clip, slots: asyncio.Semaphore) -> None:
    """An H.264 MP4 copy the browser can play, same frame timestamps, already rotated, rendered
    once one of the `slots` is free (the store's render_slots). Cancelled (the clip deleted, a
    shutdown), it returns once the render thread has stopped and removed its part file: the
    clip's folder is deleted after it (a render left running went on for minutes into a deleted
    folder)."""
    dest = clip.dir / "proxy.mp4"
    async with slots:  # cancelled while it waits: nothing was started
        render = asyncio.ensure_future(
            asyncio.to_thread(
                exports.render_overlay_video, clip.path, clip.info, {}, dest, stop=clip.stopping
            )
        )
        try:
            await asyncio.shield(render)
        except asyncio.CancelledError:
            clip.stopping.set()  # (the store set it before it cancelled this: its only cancel)
            with contextlib.suppress(BaseException):
                await render
            raise
        except Exception as exc:  # the clip can still be tracked and exported; only playback lacks
            clip.proxy_state = "failed"
            log.warning("clip %s: no browser copy: %s", short_id(clip.id), exc)
            clip.publish(cp.ProxyMessage(state="failed", message=f"{PROXY_FAILED}: {exc}"))
            return
    clip.proxy_path, clip.proxy_state = dest, "ready"
    clip.publish(cp.ProxyMessage(state="ready", video_url=f"/api/clips/{clip.id}/video"))
