"""What probe says of a clip it refuses is read by two people: one uploading on the page and one
running `fmu-live track` on a folder. Its remedy must fit both: no "upload again" to a person who
never uploaded, and a limit names the option that sets it (both commands take it)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from streamer.clip.limits import ClipLimits, VideoError
from streamer.clip.video_io import probe
from tests.test_clip_media import write_clip
from tests.test_clip_uploads import _audio_only, _png, _truncated_webm, _zero_frames

LIMITS = ClipLimits(max_seconds=600, max_width=3840, max_height=2160)


def _file(maker: Callable[[Path], bytes], name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(maker(tmp))
        return path

    return make


# (case, the file, the limits, words the remedy must hold)
REFUSED = [
    # 30 frames at 10 fps is 3 s: over a 2 s limit
    (
        "too long",
        lambda t: write_clip(t / "long.mp4", frames=30, fps=10),
        ClipLimits(max_seconds=2, max_width=3840, max_height=2160),
        "Trim it, or raise the limit (--max-clip-seconds)",
    ),
    # 160x120 over a 100x100 limit
    (
        "too wide",
        lambda t: write_clip(t / "wide.mp4", frames=3),
        ClipLimits(max_seconds=600, max_width=100, max_height=100),
        "Downscale it, or raise the limit (--max-clip-width, --max-clip-height)",
    ),
    # a WebM cut off in the middle of its stream
    ("cut off", _file(_truncated_webm, "cut.webm"), LIMITS, "use the whole file"),
    # sound only
    ("audio only", _file(_audio_only, "sound.wav"), LIMITS, "use a video file"),
    # a container with a video stream and no frames
    ("no frames", _file(_zero_frames, "empty.mp4"), LIMITS, "use a video file"),
    # a picture with a video's name
    ("still image", _file(_png, "photo.mp4"), LIMITS, "use a video file"),
]


@pytest.mark.parametrize(
    ("make", "limits", "remedy"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_a_refused_clip_is_told_a_remedy_the_page_and_track_share(
    tmp_path: Path, make: Callable[[Path], Path], limits: ClipLimits, remedy: str
) -> None:
    with pytest.raises(VideoError) as err:
        probe(make(tmp_path), limits)
    said = str(err.value)
    assert remedy in said
    # "uploading" may be how a file got cut short; "upload" is never what to do about it.
    assert not re.search(r"\bupload\b", said, re.IGNORECASE), said
