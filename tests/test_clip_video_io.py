"""Clips that real cameras, screen recorders and editors write and that the plain synthetic clip lacks: variable frame rate, a dropped frame, an edit-list trim, a held last frame, a damaged packet."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.clip import exports
from streamer.clip.frame_table import VideoInfo
from streamer.clip.limits import VideoError
from streamer.clip.video_io import VideoReader, probe
from tests.test_clip_media import LIMITS, square_at, square_frame, write_clip

MS = Fraction(1, 1000)


def write_timed(
    path: Path,
    times_ms: list[int],
    last_ms: int | None = None,
    codec: str = "libx264",
    stride: int = 1,
) -> Path:
    """A clip (H.264 MP4, or `codec` in the suffix's container) whose frame i starts at
    times_ms[i] and shows the synthetic clip's frame i * stride; `last_ms` is how long the last
    one is shown."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height = 160, 120
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        s.time_base = s.codec_context.time_base = MS
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "bf": "0"}
        packets = []
        for i, t in enumerate(times_ms):
            vf = av.VideoFrame.from_ndarray(square_frame(i * stride, 160, 120), format="rgb24")
            vf.pts, vf.time_base = t, MS
            packets += s.encode(vf)
        packets += s.encode()
        for i, p in enumerate(packets):
            if last_ms is not None:
                p.duration = 33 if i < len(packets) - 1 else last_ms
            c.mux(p)
    return path


def write_trimmed(src: Path, dest: Path, lead_frames: int) -> Path:
    """Remux `src` with its first frames before time 0: an edit list marks them discard, as `ffmpeg -ss -c copy` does."""
    with av.open(str(src)) as i, av.open(str(dest), "w") as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        shift = lead_frames * int(1 / (s.time_base * 25))
        for p in i.demux(s):
            if p.dts is None:
                continue
            p.pts -= shift
            p.dts -= shift
            p.stream = out
            o.mux(p)
    return dest


def square_left(rgb: np.ndarray) -> int:
    """Left edge of the red square in a decoded frame."""
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    return int(np.where(red.any(0))[0].min())


# (name, frame start times in ms)
VARIABLE_RATE = [
    # screen-recording bursts: ten frames at 60 fps, then ten at 10 fps, repeated
    ("bursts", [sum(16 if (k // 10) % 2 == 0 else 100 for k in range(i)) for i in range(60)]),
    # a 30 fps phone clip that dropped frame 40
    ("one_dropped", [round(i * 1000 / 30) for i in range(90) if i != 40]),
]


@pytest.mark.parametrize("name,times", VARIABLE_RATE, ids=[n for n, _ in VARIABLE_RATE])
def test_overlay_export_keeps_variable_frame_times(
    tmp_path: Path, name: str, times: list[int]
) -> None:
    src = write_timed(tmp_path / f"{name}.mp4", times)
    info = probe(src, LIMITS)
    assert info.frame_count == len(times)
    out = exports.render_overlay_video(src, info, {}, tmp_path / "overlay.mp4")
    got = probe(out, LIMITS)
    assert got.frame_count == info.frame_count
    want = info.public()["frame_times"]
    assert got.public()["frame_times"] == pytest.approx(want, abs=1e-3)


def test_trimmed_mp4_frame_table_matches_what_decodes(tmp_path: Path) -> None:
    src = write_clip(tmp_path / "src.mp4", frames=40, bframes=False, gop=12)
    clip = write_trimmed(src, tmp_path / "trimmed.mp4", lead_frames=3)
    with av.open(str(clip)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == 37
    info = probe(clip, LIMITS)
    assert info.frame_count == decoded
    assert info.time_of(0) == 0.0
    with VideoReader(clip, info) as reader:
        assert [i for i, _ in reader.frames(0)] == list(range(decoded))
        first = reader.frame(0)  # the thumbnail and a click at t=0 need it
        assert abs(square_left(first) - square_at(3)[0]) <= 2
        assert abs(square_left(reader.frame(20)) - square_at(23)[0]) <= 2


@pytest.mark.parametrize("last_ms", [500, 1500])  # a screen recording's last frame held on
def test_held_last_frame_is_not_called_incomplete(tmp_path: Path, last_ms: int) -> None:
    times = [round(i * 1000 / 30) for i in range(60)]
    clip = write_timed(tmp_path / "held.mp4", times, last_ms=last_ms)
    info = probe(clip, LIMITS)
    assert info.frame_count == 60


def test_clip_cut_at_a_cluster_is_still_refused(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "full.webm", frames=30, codec="libvpx").read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoError, match="incomplete"):
        probe(cut, LIMITS)


def test_damaged_packet_loses_frames_not_the_clip(tmp_path: Path) -> None:
    data = bytearray(write_clip(tmp_path / "full.mp4", frames=30).read_bytes())
    third = len(data) // 3
    for k in range(third, third + 300):
        data[k] = (data[k] * 7 + 13) & 255
    clip = tmp_path / "damaged.mp4"
    clip.write_bytes(bytes(data))
    info = probe(clip, LIMITS)
    assert info.frame_count == 30
    with VideoReader(clip, info) as reader:
        forward = list(reader.frames(0))
        backward = [i for i, _ in reader.frames_reverse(info.frame_count - 1)]
    got = [i for i, _ in forward]
    assert got == sorted(set(got)) and got[-1] == 29  # past the damage, in order
    assert backward == got[::-1]
    # frames from the next keyframe on are whole again and sit at their own index
    clean = [(i, rgb) for i, rgb in forward if i >= info.keyframes[-1]]
    assert clean
    for i, rgb in clean:
        assert abs(square_left(rgb) - square_at(i)[0]) <= 2


# A screen recording's fast burst inside a slow clip: ten frames 4 ms apart between frames 200 ms
# apart (an average frame of ~100 ms, twenty-five times the burst's gap).
BURST_MS = [k * 200 for k in range(10)] + [1800 + 4 * k for k in range(1, 11)]
BURST_MS += [BURST_MS[-1] + 200 * k for k in range(1, 11)]


def test_every_frame_of_a_burst_maps_back_to_itself(tmp_path: Path) -> None:
    info = probe(write_timed(tmp_path / "burst.mp4", BURST_MS), LIMITS)
    assert info.frame_count == len(BURST_MS)
    for i in range(info.frame_count):
        t = info.time_of(i)
        gap = (info.time_of(i + 1) if i + 1 < info.frame_count else t + 0.2) - t
        # what the page seeks to for frame i, what a click there sends, and the same time a
        # hair early (the browser's float rounding): all frame i
        assert info.index_at(t + gap / 4) == i
        assert info.index_at(t) == i
        assert info.index_at(max(0.0, t - 1e-6)) == i
    with VideoReader(tmp_path / "burst.mp4", info) as reader:
        for i in (10, 11, 15):  # in the burst: the frame decoded there is that frame
            rgb = reader.frame(info.index_at(info.time_of(i)))
            assert abs(square_left(rgb) - square_at(i)[0]) <= 2


def damage_keyframe(src: Path, dest: Path, number: int, *, keep_header: bool) -> Path:
    """`src` with the sample of its `number`-th keyframe zeroed in the file: whole (the parser no
    longer sees a keyframe, though the container's index still seeks to it) or, with
    `keep_header`, its middle half only (header and keyframe flag survive, the picture does not)."""
    with av.open(str(src)) as c:
        keys = [p for p in c.demux(video=0) if p.size and p.is_keyframe]
    pos, size = keys[number].pos, keys[number].size
    lo, hi = (pos + size // 4, pos + 3 * size // 4) if keep_header else (pos, pos + size)
    data = bytearray(src.read_bytes())
    data[lo:hi] = bytes(hi - lo)
    dest.write_bytes(bytes(data))
    return dest


def decode_whole(path: Path, info: VideoInfo) -> dict[int, np.ndarray]:
    """Every frame a plain decode from the start gives (as a player shows the file), by index."""
    got = {}
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                continue
            for frame in frames:
                got[info.index_of_pts(frame.pts)] = frame.to_ndarray(format="rgb24")
    return got


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every frame a VideoReader's decoder hands out, by index: the decode work a request costs."""
    seen: list[int] = []
    real_decoded = VideoReader._decoded

    def counting(self: VideoReader) -> Iterator[tuple[int, av.VideoFrame]]:
        for idx, frame in real_decoded(self):
            seen.append(idx)
            yield idx, frame

    monkeypatch.setattr(VideoReader, "_decoded", counting)
    return seen


# (name, keep_header, the keyframes the frame table keeps) for frame 24's keyframe damaged
DAMAGED_KEYFRAME = [
    # its sample zeroed whole: the parser no longer calls it a keyframe, but the container's
    # index still seeks to it
    ("whole", False, [0, 12, 36, 48]),
    # its middle zeroed: the header and the flag survive, the decoder refuses the picture
    ("past_header", True, [0, 12, 24, 36, 48]),
]


@pytest.mark.parametrize(
    "name,keep_header,keyframes", DAMAGED_KEYFRAME, ids=[n for n, _, _ in DAMAGED_KEYFRAME]
)
def test_a_damaged_keyframe_restarts_decoding_at_the_keyframe_before_it(
    tmp_path: Path, decoded: list[int], name: str, keep_header: bool, keyframes: list[int]
) -> None:
    src = write_clip(tmp_path / "full.mp4", frames=60, bframes=False, gop=12)
    clip = damage_keyframe(src, tmp_path / f"{name}.mp4", 2, keep_header=keep_header)
    info = probe(clip, LIMITS)
    assert info.frame_count == 60 and info.keyframes == keyframes
    whole = decode_whole(clip, info)
    assert 24 not in whole and 30 not in whole  # the decoder refuses it and frames that need it
    decoded.clear()
    with VideoReader(clip, info) as reader:
        got = dict(reader.frames(26, 48))
        # A seek near frame 24 lands on it and gives nothing before frame 36: decoding went back
        # one keyframe (to frame 12, the good one before the damage), not to frame 0.
        assert min(decoded) == 12
        # Exactly the frames, and the pictures, a player shows from the start of the file.
        assert sorted(got) == [i for i in sorted(whole) if 26 <= i < 48]
        assert set(range(36, 48)) <= set(got)
        for i, rgb in got.items():
            np.testing.assert_array_equal(rgb, whole[i])
            if i >= 36:
                assert abs(square_left(rgb) - square_at(i)[0]) <= 2
        # A frame lost with the keyframe: a clear error, after the same bounded work.
        decoded.clear()
        with pytest.raises(VideoError, match="frame 30 could not be decoded"):
            reader.frame(30)
        assert min(decoded) == 12


def test_a_damaged_last_keyframe_is_checked_from_the_keyframe_before_it(
    tmp_path: Path, decoded: list[int]
) -> None:
    src = write_clip(tmp_path / "full.mp4", frames=60, bframes=False, gop=12)
    clip = damage_keyframe(src, tmp_path / "damaged.mp4", 4, keep_header=True)  # frame 48's
    info = probe(clip, LIMITS)  # the upload's check decodes the clip's end
    assert 48 in info.keyframes and info.frame_count == 60
    # It went back one keyframe (to frame 36) to find the last frame that decodes, not to frame 0.
    assert min(decoded) == 36
    whole = decode_whole(clip, info)
    assert 48 not in whole
    last = max(whole)
    with VideoReader(clip, info) as reader:
        decoded.clear()
        assert reader.last_decodable_index() == last
        assert min(decoded) == 36
        # The frame the check found is served too (a seek to the damaged keyframe gives nothing).
        np.testing.assert_array_equal(reader.frame(last), whole[last])


def test_variable_frame_rate_mjpeg_avi_is_whole_and_a_cut_one_is_not(tmp_path: Path) -> None:
    # An AVI's header counts 1 ms slots here (3873), most of them empty: not 3873 frames.
    clip = write_timed(tmp_path / "burst.avi", BURST_MS, codec="mjpeg")
    with av.open(str(clip)) as c:
        assert c.streams.video[0].frames > 100 * len(BURST_MS)
    info = probe(clip, LIMITS)
    assert info.frame_count == len(BURST_MS)
    assert info.public()["frame_times"] == pytest.approx([t / 1000 for t in BURST_MS])
    assert info.fps == pytest.approx((len(BURST_MS) - 1) / (BURST_MS[-1] / 1000))  # not 1000
    with VideoReader(clip, info) as reader:
        assert abs(square_left(reader.frame(15)) - square_at(15)[0]) <= 2
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.9)])
    with pytest.raises(VideoError, match="incomplete"):
        probe(cut, LIMITS)


def test_an_unreadable_file_is_told_what_clip_mode_and_track_take(tmp_path: Path) -> None:
    junk = tmp_path / "garbage.mp4"
    junk.write_bytes(bytes(range(256)) * 16)  # no container's signature
    with pytest.raises(VideoError) as err:
        probe(junk, LIMITS)
    said = str(err.value)
    assert said.startswith("this file is not a video we can read")
    # Every suffix `fmu-live track` picks out of a folder, named; no "Upload" a CLI user can't do.
    assert "Use a whole MP4, M4V, MOV, WebM, MKV or AVI file" in said
    assert "Upload" not in said
