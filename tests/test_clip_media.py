"""Synthetic clips for clip-mode tests and benchmarks (a moving square written with PyAV), and tests of streamer.clip.video_io on them."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.clip.limits import ClipLimits, VideoError, VideoLimitError
from streamer.clip.video_io import VideoReader, probe


def square_at(i: int, width: int = 160, height: int = 120) -> tuple[int, int, int]:
    """Where the synthetic clip's square is on frame i: its left, top and side."""
    side = max(8, min(width, height) // 4)
    x0 = int((width - side) * (i % 200) / 199) if width > side else 0
    return x0, (height - side) // 2, side


def square_center(i: int, width: int = 160, height: int = 120) -> tuple[float, float]:
    """The middle of the square on frame i (where a test clicks)."""
    x0, y0, side = square_at(i, width, height)
    return x0 + side / 2, y0 + side / 2


def square_frame(i: int, width: int, height: int) -> np.ndarray:
    """Frame i of the synthetic clip: a red square sliding right over a textured background."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = 96
    x0, y0, side = square_at(i, width, height)
    img[y0 : y0 + side, x0 : x0 + side] = (230, 20, 20)
    return img


def write_clip(
    path: Path,
    frames: int = 40,
    width: int = 160,
    height: int = 120,
    *,
    codec: str = "libx264",
    fps: int = 25,
    rotation: int = 0,
    gop: int | None = 12,
    bframes: bool = True,
    pixel_aspect: Fraction | None = None,
) -> Path:
    """Write the synthetic clip; the container follows the suffix (.mp4, .webm, .mkv, .mov, .avi).
    `pixel_aspect`: the sample aspect ratio of an anamorphic clip (2: shown twice as wide)."""
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = width, height
        if pixel_aspect is not None:
            s.codec_context.sample_aspect_ratio = pixel_aspect
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        if codec == "libx264":
            s.options = (
                {"preset": "ultrafast", "tune": "zerolatency"}
                if not bframes
                else {"preset": "fast", "bf": "2"}
            )
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(square_frame(i, width, height), format="rgb24")
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


LIMITS = ClipLimits(max_seconds=600, max_width=3840, max_height=2160)


# One row per container/codec the page may receive.
@pytest.mark.parametrize(
    "suffix,codec",
    [
        (".mp4", "libx264"),  # MP4 / H.264 with B-frames
        (".webm", "libvpx"),  # WebM / VP8
        (".webm", "libvpx-vp9"),  # WebM / VP9
        (".mkv", "libx264"),  # Matroska / H.264
        (".mov", "libx264"),  # QuickTime / H.264
        (".avi", "mjpeg"),  # MJPEG (every frame a keyframe)
    ],
)
def test_probe_and_decode_every_frame_in_order(tmp_path: Path, suffix: str, codec: str) -> None:
    path = write_clip(tmp_path / f"c{suffix}", frames=30, codec=codec)
    info = probe(path, LIMITS)
    assert info.frame_count == 30
    assert (info.width, info.height) == (160, 120)
    with VideoReader(path, info) as r:
        got = [i for i, _ in r.frames(0)]
        assert got == list(range(30))
        back = [i for i, _ in r.frames_reverse(29, budget_bytes=160 * 120 * 3 * 7)]
        assert back == list(range(29, -1, -1))
        # Random access returns the same pixels as sequential decoding.
        seq = dict(r.frames(10, 14))
        assert np.array_equal(r.frame(12), seq[12])


def test_time_index_mapping_is_exact(tmp_path: Path) -> None:
    info = probe(write_clip(tmp_path / "c.mp4", frames=40, fps=25), LIMITS)
    for i in (0, 1, 17, 39):
        t = info.time_of(i)
        assert info.index_at(t) == i
        assert info.index_at(t + 0.5 / 25) == i  # mid-frame still shows frame i
    assert info.time_of(17) == pytest.approx(17 / 25)
    assert info.index_at(1e9) == 39


def test_rotation_is_applied_to_frames(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "r.mp4", frames=5, width=64, height=32, rotation=90)
    info = probe(path, LIMITS)
    assert info.rotation == 90 and (info.width, info.height) == (32, 64)
    with VideoReader(path, info) as r:
        f = r.frame(0)
    assert f.shape == (64, 32, 3)
    expected = np.rot90(square_frame(0, 64, 32))
    assert np.abs(f.astype(int) - expected.astype(int)).mean() < 12


def test_odd_size_clip(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "odd.webm", frames=6, width=97, height=55, codec="libvpx")
    info = probe(path, LIMITS)
    with VideoReader(path, info) as r:
        assert r.frame(5).shape == (55, 97, 3)


@pytest.mark.parametrize(
    ("rotation", "shown"), [(0, (2, 1)), (90, (1, 2))]
)  # a pixel turned on its side is tall
def test_an_anamorphic_clip_keeps_its_pixel_shape_in_what_is_made_from_it(
    tmp_path: Path, rotation: int, shown: tuple[int, int]
) -> None:
    from streamer.clip.exports import render_overlay_video
    from streamer.storage.clips import info_from_json, info_json

    path = write_clip(
        tmp_path / "wide.mp4", frames=4, width=64, height=32, rotation=rotation,
        pixel_aspect=Fraction(2, 1),
    )  # fmt: skip
    info = probe(path, LIMITS)
    assert info.pixel_aspect == shown and info.public()["pixel_aspect"] == list(shown)
    assert info_from_json(info_json(info, playable=True, mime="video/mp4"))[0] == info
    # The overlay export (and the browser copy, the same render) is shown as the clip is: it
    # was square, the picture squeezed to half its width.
    made = render_overlay_video(path, info, {}, tmp_path / "overlay.mp4")
    with av.open(str(made)) as c:
        assert c.streams.video[0].sample_aspect_ratio == Fraction(*shown)
    square = write_clip(tmp_path / "square.mp4", frames=2)
    assert probe(square, LIMITS).pixel_aspect == (1, 1)


def test_limits_name_the_numbers(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "c.mp4", frames=30, fps=10)
    with pytest.raises(VideoError, match="too long: at most 2 s"):
        probe(path, ClipLimits(max_seconds=2, max_width=3840, max_height=2160))
    # a limit under a second is said as given (it read "at most 0 s")
    with pytest.raises(VideoError, match=r"too long: at most 0\.5 s is accepted"):
        probe(path, ClipLimits(max_seconds=0.5, max_width=3840, max_height=2160))
    with pytest.raises(VideoError, match="at most 100x100 is accepted, got 160x120"):
        probe(path, ClipLimits(max_seconds=600, max_width=100, max_height=100))


def test_a_clip_of_more_frames_than_its_length_allows_is_refused(tmp_path: Path) -> None:
    """30 frames in 30 ms: within a 0.1 s limit, but 1000 a second; at most 24 (240 a second)."""
    path = write_clip(tmp_path / "c.mp4", frames=30, fps=1000)
    with pytest.raises(
        VideoLimitError,
        match=r"at most 24 are accepted \(240 a second over --max-clip-seconds 0\.1\)",
    ):
        probe(path, ClipLimits(max_seconds=0.1, max_width=3840, max_height=2160))
    assert len(probe(path, ClipLimits(max_seconds=1, max_width=3840, max_height=2160)).pts) == 30


def test_time_base_fraction(tmp_path: Path) -> None:
    info = probe(write_clip(tmp_path / "c.mp4", frames=3), LIMITS)
    assert isinstance(info.time_base, Fraction)
