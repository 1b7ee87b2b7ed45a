"""Clip exports: the JSON document of every object's per-frame masks (docs/export-schema.md) and an MP4 with the overlays drawn.

The MP4 keeps the source's frame timestamps, so frame i of the export is frame i of the clip.
H.264 (libx264, which PyAV 18's wheels ship) is preferred; mpeg4 is the fallback where a build
lacks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from streamer.clip.video_io import VideoInfo, VideoReader
from streamer.objects.results import MaskResult
from workers.masks import rle_decode

SCHEMA = "fmu-live/clip-export"
SCHEMA_VERSION = 2  # 2: frames[].score became presence_probability


# The page's palette (web/overlay.js colorFor), so an exported video matches what was on screen.
PALETTE = [
    (255, 64, 64),
    (64, 160, 255),
    (64, 220, 96),
    (255, 200, 0),
    (200, 80, 255),
    (0, 220, 220),
    (255, 128, 0),
    (255, 96, 200),
    (160, 255, 64),
    (128, 128, 255),
]


def color_for(obj_id: int) -> tuple[int, int, int]:
    """The object's RGB colour, the same one the page draws it in."""
    return PALETTE[abs(int(obj_id)) % len(PALETTE)]


def export_document(
    clip: dict[str, Any], info: VideoInfo, objects: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The export JSON. `objects` items: id, label, prompts, description (dict or None), results {frame: MaskResult}."""
    out_objects = []
    for obj in objects:
        results: dict[int, MaskResult] = obj["results"]
        frames = [
            {"frame": i, "time": round(info.time_of(i), 6), **results[i].public()}
            for i in sorted(results)
        ]
        desc = obj.get("description") or {}
        out_objects.append(
            {
                "id": obj["id"],
                "label": obj.get("label"),
                "prompts": obj.get("prompts", []),
                "description": desc.get("description"),
                "verdict": desc.get("verdict"),
                "iou": desc.get("iou"),
                "attempts": desc.get("attempts"),
                "note": desc.get("note"),
                "frames": frames,
            }
        )
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "clip": {
            "id": clip["id"],
            "filename": clip.get("filename"),
            "width": info.width,
            "height": info.height,
            "frame_count": info.frame_count,
            "fps": round(info.fps, 6),
            "duration_s": round(info.duration_s, 6),
            "rotation": info.rotation,
            "pixel_aspect": list(info.pixel_aspect),
            "frame_times": [round(info.time_of(i), 6) for i in range(info.frame_count)],
        },
        "objects": out_objects,
    }


def draw_overlays(rgb: np.ndarray, objects: Sequence[tuple[int, MaskResult]]) -> np.ndarray:
    """Tint each present object's mask in its color, outline its box, and label it with its id."""
    out = rgb.copy()
    for obj_id, res in objects:
        if not res.present:
            continue
        color = np.array(color_for(obj_id), dtype=np.float32)
        mask = rle_decode(res.rle)
        if mask.shape != out.shape[:2]:
            continue
        sel = out[mask].astype(np.float32)
        out[mask] = (0.55 * sel + 0.45 * color).astype(np.uint8)
        if res.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in res.box)
            c = tuple(int(v) for v in color)
            cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), c, 1)
            cv2.putText(
                out, f"#{obj_id}", (x0 + 2, max(10, y0 + 11)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, c, 1
            )
    return out


def pick_encoder() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not in this build; try the next
            continue
    raise RuntimeError(
        "this PyAV build has neither libx264 nor mpeg4 encoders; cannot export video"
    )


class RenderStopped(Exception):
    """The render's `stop` was set (its clip deleted, or the server stopping): it ended at its
    next frame, and its part file is gone."""


def render_overlay_video(
    src: Path,
    info: VideoInfo,
    tracks: dict[int, dict[int, MaskResult]],
    dest: Path,
    *,
    on_frame: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """Write `dest` (MP4): every frame of the clip with every object's overlay, same timestamps.
    Once `stop` is set it ends at the next frame (RenderStopped)."""
    codec = pick_encoder()
    # yuv420p needs even sides: pad odd ones by one edge pixel rather than scaling (keeps masks aligned).
    w, h = info.width + info.width % 2, info.height + info.height % 2
    tmp = dest.with_suffix(".part.mp4")
    try:
        with av.open(str(tmp), mode="w") as out, VideoReader(src, info) as reader:
            rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
            stream = out.add_stream(codec, rate=rate)
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            if info.pixel_aspect != (1, 1):  # shown as the clip is, not squeezed
                stream.codec_context.sample_aspect_ratio = Fraction(*info.pixel_aspect)
            # The encoder counts in the clip's own time base: in one derived from the average
            # rate, a variable-rate clip's timestamps would round onto each other.
            stream.time_base = info.time_base
            stream.codec_context.time_base = info.time_base
            if codec == "libx264":
                stream.options = {"preset": "veryfast", "crf": "20"}
            last_pts = -1
            for idx, rgb in reader.frames(0):
                drawn = draw_overlays(
                    rgb, [(oid, t[idx]) for oid, t in sorted(tracks.items()) if idx in t]
                )
                if (w, h) != (info.width, info.height):
                    drawn = np.pad(
                        drawn, ((0, h - info.height), (0, w - info.width), (0, 0)), mode="edge"
                    )
                frame = av.VideoFrame.from_ndarray(drawn, format="rgb24")
                pts = info.pts[idx] - info.pts[0]
                frame.pts = max(pts, last_pts + 1)
                frame.time_base = info.time_base
                last_pts = frame.pts
                for packet in stream.encode(frame):
                    out.mux(packet)
                if on_frame is not None:
                    on_frame(idx)
                if stop is not None and stop.is_set():
                    raise RenderStopped
            for packet in stream.encode():
                out.mux(packet)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
