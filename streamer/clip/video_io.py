"""Video file I/O for clip mode (PyAV): probe and validate a clip into its frame table (clip/frame_table.py), forward and bounded-memory backward decoding.

Frames are identified by their presentation timestamps. Probing demuxes every packet (no decoding)
to get the pts of every frame and where the keyframes are; decoded frames are mapped back to their
index through that table, so the page's `currentTime` maps to exactly one frame. Rotation from the
display matrix is applied to every decoded frame, so all coordinates are in display orientation
(what the browser shows).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.clip.frame_table import VideoInfo
from streamer.clip.limits import (
    ClipLimits,
    VideoError,
    VideoLimitError,
    check_size,
    too_long,
    too_many_frames,
)

# The video files clip mode takes, by the name a person knows them under: an upload on the page
# and `fmu-live track` alike (which picks these suffixes out of a folder it is given).
VIDEO_FORMATS = (
    ("MP4", ".mp4"),
    ("M4V", ".m4v"),
    ("MOV", ".mov"),
    ("WebM", ".webm"),
    ("MKV", ".mkv"),
    ("AVI", ".avi"),
)
VIDEO_SUFFIXES = tuple(suffix for _, suffix in VIDEO_FORMATS)


# FFmpeg's demuxers of still pictures: a file they open is an image, not a video.
STILL_FORMATS = frozenset(
    {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "gif", "bmp_pipe", "tiff_pipe"}
)


def is_video(path: Path) -> bool:
    """Whether FFmpeg finds moving pictures in the file (Image mode's hint for a clip): a video
    stream of more than one frame or with a length, in no demuxer of single pictures (`*_pipe`:
    an SVG; one frame in a .heic's `mov` box: a still)."""
    try:
        with av.open(str(path), mode="r") as container:
            fmt = (container.format.name or "").split(",")[0]
            if fmt in STILL_FORMATS or fmt.endswith("_pipe") or not container.streams.video:
                return False
            stream = container.streams.video[0]
            return stream.frames > 1 or bool(stream.duration or container.duration)
    except (av.FFmpegError, OSError, ValueError):
        return False


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        *most, last = (name for name, _ in VIDEO_FORMATS)
        raise VideoError(
            "this file is not a video we can read (the container could not be opened: "
            f"{_short(exc)}). Use a whole {', '.join(most)} or {last} file: one cut short (an "
            "upload or a copy that stopped early) cannot be opened"
        ) from None


def _short(exc: BaseException) -> str:
    return str(exc).split(": '", 1)[0][:200]


def _pixel_aspect(sar: Fraction | None) -> tuple[int, int]:
    """A stream's sample aspect ratio as VideoInfo keeps it; square where none is said (0:1)."""
    if sar is None or sar <= 0:
        return (1, 1)
    return (sar.numerator, sar.denominator)


def probe(path: Path, limits: ClipLimits) -> VideoInfo:
    """Read a video's frame table and check it against the limits; raises VideoError saying why not."""
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError(
                "the file has no video in it (no video stream with frames: is it audio, or empty?); "
                "use a video file"
            )
        stream = container.streams.video[0]
        cc = stream.codec_context
        codec = cc.name or "unknown"
        fmt = (container.format.name or "").split(",")[0]
        if fmt in STILL_FORMATS:
            raise VideoError(
                f"this is a still image ({codec}), not a video; use a video file (pictures go in the "
                "page's Image mode)"
            )
        if cc.width <= 0 or cc.height <= 0:
            raise VideoError("the video stream has no picture size; the file is damaged")
        # Resolution first: it is known before reading the whole file.
        check_size(cc.width, cc.height, limits, rotation=None)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        time_base = stream.time_base or Fraction(1, 90000)
        pts: list[int] = []
        key_pts: set[int] = set()
        max_ticks = (limits.max_seconds + 1.0) / float(time_base)
        lo, hi, last_dur, discarded = math.inf, -math.inf, 0, 0  # pts range; last frame's ticks
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                # Discarded packets (an edit list's lead-in, as `ffmpeg -ss -c copy` writes) are
                # decoded but never output: they are not frames of the clip.
                discarded += bool(packet.is_discard)
                if ts is None or packet.size == 0 or packet.is_discard:
                    continue
                pts.append(ts := int(ts))
                if packet.is_keyframe:
                    key_pts.add(ts)
                if ts >= hi:
                    hi, last_dur = ts, packet.duration or 0
                lo = min(lo, ts)
                if hi - lo > max_ticks:  # too long: stop before demuxing hours of it
                    raise VideoLimitError(too_long(limits, None))
                if len(pts) > limits.max_frames:
                    raise VideoLimitError(too_many_frames(limits))
        except av.FFmpegError as exc:
            if not pts:
                raise VideoError(
                    f"the video could not be read ({_short(exc)}); the file is damaged"
                ) from None
            raise VideoError(_truncated(len(pts))) from None
        if not pts:
            raise VideoError("the video has no frames; use a clip with at least one frame")
        pts = sorted(set(pts))
        keyframes = sorted({i for i, p in enumerate(pts) if p in key_pts}) or [0]
        # An AVI's header counts slots of its time base (frames == duration), and a variable
        # frame rate leaves slots empty (gaps in the pts): its "rate" is the slot rate, and the
        # declared duration, not the slot count, says whether the file is whole.
        empty_slots = stream.frames == stream.duration and pts[-1] - pts[0] >= len(pts)
        if (fps <= 0 or empty_slots) and len(pts) > 1:
            fps = (len(pts) - 1) / float((pts[-1] - pts[0]) * time_base)
        info = VideoInfo(
            width=cc.width,
            height=cc.height,
            coded_width=cc.width,
            coded_height=cc.height,
            rotation=0,
            codec=codec,
            container=fmt,
            time_base=time_base,
            pts=pts,
            keyframes=keyframes,
            fps=fps,
            pixel_aspect=_pixel_aspect(stream.sample_aspect_ratio),
        )
        if info.duration_s > limits.max_seconds:
            raise VideoLimitError(too_long(limits, info.duration_s))
        # A file cut at a clean boundary (a WebM cluster) demuxes without error but ends early:
        # compare with what its header declares, where that is only this stream's duration.
        if stream.frames and not empty_slots and stream.frames > len(pts) + discarded:
            raise VideoError(_truncated(len(pts)))
        declared = None
        if stream.duration:
            declared = float(stream.duration * time_base)
        elif container.duration and len(container.streams) == 1:
            declared = container.duration / 1_000_000
        if declared is not None:
            # A screen recording holds its last frame as long as its packet says, not 1 / fps.
            held = float(last_dur * time_base) - (1.0 / fps if fps > 0 else 0.0)
            shown = info.duration_s + max(0.0, held)
            slack = max(2.0 / fps if fps > 0 else 0.1, 0.05 * declared)
            if shown + slack < declared:
                raise VideoError(_truncated(len(pts)))
    finally:
        container.close()
    # Decode the first frame (proves the codec works, gives the rotation) and the last GOP (a file
    # truncated mid-frame fails here rather than halfway through a tracking job).
    reader = VideoReader(path, info)
    try:
        first = reader.first_frame_raw()
        rotation = _norm_rotation(first.rotation)
        info.rotation = rotation
        if rotation in (90, 270):
            info.width, info.height = info.coded_height, info.coded_width
            info.pixel_aspect = info.pixel_aspect[::-1]  # a pixel turned on its side
        check_size(info.width, info.height, limits, rotation)
        last_good = reader.last_decodable_index()
        if last_good is None:
            raise VideoError("no frame of the video could be decoded; the file is damaged")
        if last_good < info.frame_count - 1:
            # Tracking would fail partway through; say so now rather than after minutes of work.
            raise VideoError(_truncated(last_good + 1))
    finally:
        reader.close()
    return info


def _truncated(good: int) -> str:
    return (
        f"the file is incomplete: it stops in the middle of the video (after about {good} frames). "
        "It may have been cut off while copying or uploading; use the whole file"
    )


def _norm_rotation(degrees: float) -> int:
    return int(round(degrees / 90.0)) * 90 % 360


def orient(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a counter-clockwise display rotation to a decoded H x W x 3 frame."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb


class VideoReader:
    """Decodes frames of one clip by index; one per job (PyAV containers are not shared across threads)."""

    def __init__(self, path: Path, info: VideoInfo) -> None:
        self.path = Path(path)
        self.info = info
        self._container = _open(self.path)
        self._stream = self._container.streams.video[0]
        # Slice threading, not frame threading: a cancelled job's crash was first blamed on frame
        # threads (the cause was a close racing a decode, fixed in clip/job.py); decoding is cheap
        # next to the SAM2 step it feeds, so the simpler mode stays.
        self._stream.thread_type = "SLICE"
        self._landed: int | None = None  # see _decoded

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def first_frame_raw(self) -> av.VideoFrame:
        try:
            for frame in self._container.decode(self._stream):
                return frame
        except av.FFmpegError as exc:
            raise VideoError(
                f"the video could not be decoded ({_short(exc)}); the file is damaged"
            ) from None
        raise VideoError("the video has no decodable frames; the file is empty or damaged")

    def last_decodable_index(self) -> int | None:
        """Decode the last GOP; the index of the last frame that decodes, or None if none does."""
        last: int | None = None
        # A damaged last keyframe walks back by itself (_decode_from); an error that stops the
        # demuxer before any frame falls back to a full decode, which gets up to the error.
        for start, seek in ((self.info.keyframes[-1], True), (0, False)):
            try:
                for idx, _ in self._decode_from(
                    start, self.info.frame_count, seek=seek, convert=False
                ):
                    last = idx
            except av.FFmpegError:
                pass
            if last is not None or start == 0:
                break
        return last

    def _seek_to(self, index: int) -> None:
        self._container.seek(self.info.pts[index], stream=self._stream, backward=True)

    def _decoded(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Frames decoded from where the last seek landed, with their index; `_landed` becomes
        the index of the first packet demuxed (the keyframe the demuxer landed on)."""
        self._landed = None
        for packet in self._container.demux(self._stream):
            ts = packet.pts if packet.pts is not None else packet.dts
            if self._landed is None and ts is not None:
                self._landed = self.info.index_of_pts(int(ts))
            # A damaged packet loses its frame (as in ffmpeg), not the clip.
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                continue
            for frame in frames:
                ts = frame.pts if frame.pts is not None else frame.dts
                idx = None if ts is None else self.info.index_of_pts(int(ts))
                if idx is not None:
                    yield idx, frame

    def _decode_from(
        self, start: int, stop: int, *, convert: bool = True, seek: bool = True
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """Frames with index in [start, stop), in order, decoded from the keyframe before `start`
        (from frame 0 with seek=False), or from an earlier one where that keyframe is damaged."""
        if start >= stop:
            return
        at, landed = (start if seek else 0), None
        while True:
            self._seek_to(at)
            started, prev = False, -1
            for idx, frame in self._decoded():
                if not started and idx > start:
                    break
                started = True
                # After a damaged packet a decoder may hand frames out of order: never go back.
                if idx < start or idx <= prev:
                    continue
                if idx >= stop:
                    return
                prev = idx
                rgb = frame.to_ndarray(format="rgb24") if convert else None
                yield idx, (None if rgb is None else orient(rgb, self.info.rotation))
            if started:
                return
            # Nothing at or before `start` came out: the keyframe the demuxer landed on is damaged
            # (its flag intact, its picture lost, and the frames that need it with it). Start
            # again at the keyframe before that one, where the demuxer landed: the frame table's
            # keyframes can miss one the container's index still seeks to. A seek that lands no
            # earlier than the last one decodes from the start of the clip.
            here = self._landed
            if at == 0 or here == 0:
                return
            back = 0
            if here is not None and (landed is None or here < landed):
                back = self.info.keyframe_at_or_before(here - 1)
            at, landed = back, here

    def frames(self, start: int, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode frames start..stop-1 in time order, one at a time."""
        stop = self.info.frame_count if stop is None else stop
        for idx, rgb in self._decode_from(start, stop):
            assert rgb is not None
            yield idx, rgb

    def frames_reverse(
        self, start: int, stop: int = -1, budget_bytes: int = 256 << 20
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Frames start, start-1, ..., stop+1 (reverse time order) holding at most `budget_bytes` of frames.

        Decoding only runs forward, so this works chunk by chunk from the end: a chunk is a run of
        frames that fits the budget; it is decoded by seeking to the keyframe before it (re-decoding
        the GOP prefix when a GOP is longer than a chunk), then handed out newest first.
        """
        frame_bytes = self.info.width * self.info.height * 3
        chunk = max(1, budget_bytes // max(1, frame_bytes))
        hi = start  # inclusive end of the next chunk
        while hi > stop:
            lo = max(stop + 1, hi - chunk + 1)
            # Prefer chunk starts at keyframes: no prefix to re-decode.
            kf = self.info.keyframe_at_or_before(hi)
            if kf > lo:
                lo = kf
            frames = list(self.frames(lo, hi + 1))
            yield from reversed(frames)
            del frames
            hi = lo - 1

    def frame(self, index: int) -> np.ndarray:
        """One frame by index (seeks to its keyframe and decodes up to it)."""
        self.info._check_index(index)
        for idx, rgb in self.frames(index, index + 1):
            if idx == index:
                return rgb
        raise VideoError(f"frame {index} could not be decoded; the file may be damaged there")
