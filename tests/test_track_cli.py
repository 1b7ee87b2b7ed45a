"""`fmu-live track`: generated H.264 and VP9 clips and a broken one, SAM2 with random weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import pytest

from tests.conftest import random_sam2_args
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_clip_media import write_clip
from workers.masks import rle_decode
from workers.reasoning.errors import VLMUnavailable

ROOT = Path(__file__).resolve().parents[1]
SAM2 = random_sam2_args(256, threads=1)


def run_track(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "track", "--no-progress", *SAM2, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def frame_count(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.slow
def test_track_folder_exports_each_clip_skips_the_broken_one_and_resumes(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "a_h264.mp4", frames=8, width=96, height=64, codec="libx264")
    write_clip(clips / "b_vp9.webm", frames=8, width=96, height=64, codec="libvpx-vp9")
    whole = write_clip(tmp_path / "whole.mp4", frames=30, width=96, height=64, codec="libx264")
    (clips / "c_broken.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"

    # Find answers with the square's box on the first frame (the scripted model's pixels). No
    # --vlm-model: the model its server serves grounds the phrase, and run.json names it.
    find_answer = json.dumps([{"bbox_2d": [0, 20, 24, 44], "label": "red square"}])
    served = "Qwen/Qwen2.5-VL-7B-Instruct"
    with ScriptedVLMServer(find_answer, model=served) as srv:
        proc = run_track(
            str(clips), "--out", str(out), "--point", "12,32", "--find", "the red square@2",
            "--vlm-url", srv.url,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one clip failed
    (failed,) = [line for line in proc.stdout.splitlines() if line.startswith("failed: ")]
    assert "c_broken.mp4" in failed and "not a video we can read" in failed  # probe's own words
    assert "2 of 3 clips done or already done, 1 failed" in proc.stdout
    assert not (out / "c_broken.mp4").exists()

    for name in ("a_h264.mp4", "b_vp9.webm"):
        doc = json.loads((out / name / "export.json").read_text())
        assert doc["schema"] == "fmu-live/clip-export" and doc["clip"]["filename"] == name
        assert doc["clip"]["frame_count"] == 8
        clicked, found = doc["objects"]
        assert clicked["prompts"] == [
            {"frame": 0, "points": [[12.0, 32.0]], "labels": [1], "box": None}
        ]
        assert found["label"] == "red square" and found["prompts"][0]["frame"] == 2
        for obj in (clicked, found):
            assert [f["frame"] for f in obj["frames"]] == list(range(8))  # backward pass too
            assert rle_decode(obj["frames"][0]["rle"]).shape == (64, 96)
        assert frame_count(out / name / "overlay.mp4") == 8
        run = json.loads((out / name / "run.json").read_text())
        assert run["options"]["--vlm-model"] == served

    # Resumed with the same prompts: finished clips are skipped (their export untouched), the
    # broken one is tried again.
    before = (out / "a_h264.mp4" / "export.json").stat().st_mtime_ns
    with ScriptedVLMServer(find_answer, model=served) as srv:
        again = run_track(
            str(clips), "--out", str(out), "--point", "12,32", "--find", "the red square@2",
            "--vlm-url", srv.url,
        )  # fmt: skip
    assert again.returncode == 1
    assert again.stdout.count("skipped: ") == 2
    assert (out / "a_h264.mp4" / "export.json").stat().st_mtime_ns == before

    # Another click: refused, the results kept, --redo named; with --redo, the new object.
    other = run_track(str(clips), "--out", str(out), "--point", "40,20")
    assert other.returncode == 1 and other.stdout.count("pass --redo to track it again") == 2
    assert (out / "a_h264.mp4" / "export.json").stat().st_mtime_ns == before
    redo = run_track(str(clips), "--out", str(out), "--point", "40,20", "--redo")
    assert redo.returncode == 1  # the broken clip
    assert redo.stdout.count("(replaced the results of other prompts or options: prompts ") == 2
    for name in ("a_h264.mp4", "b_vp9.webm"):
        (obj,) = json.loads((out / name / "export.json").read_text())["objects"]
        assert obj["prompts"][0]["points"] == [[40.0, 20.0]]
        assert frame_count(out / name / "overlay.mp4") == 8  # the new object's video


def test_each_clips_line_is_printed_as_the_clip_ends(tmp_path: Path) -> None:
    # The second clip's Find is answered only once the first clip's line is out (each line was
    # printed after the last clip, so a long run said nothing until its end).
    import asyncio
    import threading

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_clip(clips / name, frames=4, width=96, height=64)
    first_line, released, asked = threading.Event(), [], []

    async def answer(request: dict[str, Any]) -> str:
        asked.append(request)
        if len(asked) == 2:  # b's Find
            released.append(await asyncio.to_thread(first_line.wait, 60))
        return json.dumps([{"bbox_2d": [0, 20, 24, 44], "label": "red square"}])

    with ScriptedVLMServer(answer) as srv:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "track", "--no-progress", *SAM2, str(clips),
             "--out", str(tmp_path / "out"), "--find", "the red square", "--vlm-url", srv.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        first_line.set()
        rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert line == f"done: {clips / 'a.mp4'}, 1 object: {tmp_path / 'out' / 'a.mp4'}\n", err
    assert released == [True]  # b's Find waited for a's line, not the minute
    assert rest.splitlines()[0].startswith("done: ") and "b.mp4" in rest


def test_a_clip_damaged_mid_file_is_done_and_says_which_frames_have_no_masks(
    tmp_path: Path,
) -> None:
    from tests.test_clip_damaged_frame import BAD, FRAMES, W, write_damaged_clip

    clip = write_damaged_clip(tmp_path / "damaged.mkv")
    out = tmp_path / "out"
    proc = run_track(str(clip), "--out", str(out), "--point", f"{W // 2},20", "--no-video")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == (
        f"done: {clip}, 1 object: {out / clip.name} (1 frame of {FRAMES} could not be decoded, "
        f"the file may be damaged there, and has no masks: {BAD})"
    )
    (obj,) = json.loads((out / clip.name / "export.json").read_text())["objects"]
    assert [f["frame"] for f in obj["frames"]] == [i for i in range(FRAMES) if i != BAD]


@pytest.mark.parametrize(
    "prompt,says",
    [
        (["--point", "12"], "a point is X,Y or X,Y@FRAME"),
        # a reversed or empty box was refused by SAM2's own check, once SAM2 had loaded
        (["--box", "30,40,10,20"], "box (30, 40, 10, 20) must have x0 < x1, y0 < y1"),
        (["--box", "10,10,10,30@2"], "box (10, 10, 10, 30) must have x0 < x1, y0 < y1"),
    ],
)
def test_track_explains_bad_prompts(tmp_path: Path, prompt: list[str], says: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "track", str(tmp_path), "--out", str(tmp_path),
         *prompt],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"argument {prompt[0]}: {says}" in proc.stderr


def test_a_negative_coordinate_after_its_option_is_the_value_and_refused_for_what_it_is(
    tmp_path: Path,
) -> None:
    # argparse took "-5,-5" for an option and said "--point: expected one argument".
    write_clip(tmp_path / "a.mp4", frames=2, width=96, height=64, codec="libx264")
    proc = run_track(str(tmp_path), "--out", str(tmp_path / "out"), "--point", "-5,-5")
    assert proc.returncode == 1, proc.stderr
    assert "click (-5, -5) is outside the 96x64 frame" in proc.stdout


def test_two_clips_of_one_name_are_refused_before_anything_runs(tmp_path: Path) -> None:
    for camera in ("cam1", "cam2"):
        (tmp_path / camera).mkdir()
        (tmp_path / camera / "0001.mp4").write_bytes(b"not read: refused before")
    out = tmp_path / "out"
    proc = run_track(
        str(tmp_path / "cam1"), str(tmp_path / "cam2"), "--out", str(out), "--point", "12,32"
    )
    assert proc.returncode == 2
    assert "two clips are named '0001.mp4'" in proc.stderr
    assert str(tmp_path / "cam1" / "0001.mp4") in proc.stderr
    assert str(tmp_path / "cam2" / "0001.mp4") in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "prompt,says",
    [
        ({"bbox": [1, 2, 30, 40]}, "unknown key ['bbox']"),  # a typo for "box"
        ({"point": [12, 32]}, "unknown key ['point']"),  # a typo for "points"
        ({"frame": 0}, 'nothing to track: give "points", "box" or "find"'),
        ({"points": [320, 240]}, '"points" is a list of [x, y] pairs'),  # not nested
        ({"points": [[1, 2]], "labels": [1, 0]}, '1 "points" but 2 "labels"'),
        ({"box": [1, 2, 3]}, "a box is [x0, y0, x1, y1], got 3 numbers"),
        ({"box": [5, 2, 3, 8]}, "box (5, 2, 3, 8) must have x0 < x1, y0 < y1"),
        ({"box": ["a", 2, 3, 4]}, "could not convert string to float"),
        ({"find": "cup", "frame": -1}, '"frame" is a frame number'),
        # negative clicks only: every mode refuses to start an object from them (check_new)
        ({"points": [[1, 2]], "labels": [0]}, "a negative click removes a region from an object"),
        ({"points": [[1, 2]], "labels": [7]}, '"labels" are 1 (a positive click) or 0'),
        # labels other than the JSON integers 0 and 1 were read as int(): 1.9, true and "1" as 1
        ({"points": [[1, 2]], "labels": [1.9]}, '"labels" are 1 (a positive click) or 0'),
        ({"points": [[1, 2]], "labels": [True]}, '"labels" are 1 (a positive click) or 0'),
        ({"points": [[1, 2]], "labels": ["1"]}, '"labels" are 1 (a positive click) or 0'),
        ({"points": [[1, 2], [5, 6]], "labels": [0, 0]}, "here: a click labelled 1 or a box"),
    ],
)
def test_a_prompts_file_entry_that_is_not_a_prompt_is_refused_by_name(
    tmp_path: Path, prompt: dict[str, object], says: str
) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a.mp4": [{"points": [[12, 32]]}, prompt]}))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "track", str(tmp_path), "--out",
         str(tmp_path / "out"), "--prompts", str(prompts)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{prompts}: prompt 1 of 'a.mp4'" in proc.stderr and says in proc.stderr
    assert "Traceback" not in proc.stderr


def test_negative_clicks_with_a_positive_one_or_a_box_start_an_object(tmp_path: Path) -> None:
    from streamer.clip.track_prompts import load_prompts_file

    prompts = tmp_path / "prompts.json"
    entries = [
        {"points": [[1, 2], [5, 6]], "labels": [0, 1]},  # the positive click starts it
        {"box": [0, 0, 9, 9], "points": [[1, 2]], "labels": [0]},  # the box starts it
    ]
    prompts.write_text(json.dumps({"*": entries}))
    loaded = load_prompts_file(prompts)["*"]
    assert [p.labels for p in loaded] == [[0, 1], [0]]
    assert loaded[1].box == (0.0, 0.0, 9.0, 9.0)


@pytest.mark.slow
async def test_the_clip_progress_counts_every_object_from_the_start(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    from streamer.clip.batch import BatchTracker
    from streamer.clip.limits import ClipLimits
    from streamer.clip.track_prompts import parse_box, parse_point
    from streamer.services import Services
    from streamer.settings import Settings

    clip = write_clip(tmp_path / "a.mp4", frames=6, width=96, height=64)
    settings = Settings(weights="random", device="cpu")
    services = Services(settings, vision_model=sam2_tiny_random)
    seen: list[tuple[int, int]] = []
    tracker = BatchTracker(
        services,
        out=tmp_path / "out",
        limits=ClipLimits.from_settings(settings),
        # a click on frame 0 (6 frames forward), a box on frame 3 (3 forward, 3 backward)
        prompts=[parse_point("12,32"), parse_box("50,10,90,50@3")],
        video=False,
        progress=False,
        on_frames=lambda _clip, done, total: seen.append((done, total)),
    )
    try:
        (outcome,) = await tracker.run([clip])
    finally:
        await services.aclose()
    assert outcome.state == "done", outcome
    assert {total for _, total in seen} == {12}  # from the first report on, never 100% early
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 12


@pytest.mark.slow
async def test_an_object_that_fails_stops_its_clips_other_objects_at_once(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    from streamer.clip.batch import BatchTracker
    from streamer.clip.limits import ClipLimits
    from streamer.clip.track_prompts import parse_point
    from streamer.services import Services
    from streamer.settings import Settings
    from tests.test_clip_damaged_frame import write_damaged_clip

    frames, bad = 200, 2
    clip = write_damaged_clip(tmp_path / "a.mkv", frames=frames, bad=bad)
    settings = Settings(weights="random", device="cpu")  # two objects tracked at once
    services = Services(settings, vision_model=sam2_tiny_random)
    seen: list[int] = []
    tracker = BatchTracker(
        services,
        out=tmp_path / "out",
        limits=ClipLimits.from_settings(settings),
        # a click on frame 0 tracks 200 frames; one on the damaged frame fails at its start
        prompts=[parse_point("40,60"), parse_point(f"40,60@{bad}")],
        video=False,
        progress=False,
        on_frames=lambda _clip, done, _total: seen.append(done),
    )
    try:
        (outcome,) = await tracker.run([clip])
    finally:
        await services.aclose()
    assert outcome.state == "failed"
    # The failed object's own words, not "object 1: cancelled" of the one stopped for it.
    assert outcome.detail.startswith(
        f"object 2: tracking failed: frame {bad}, where the object was prompted, could not be "
        "decoded"
    ), outcome.detail
    # The clip fails whatever the first object does, so its 200 frames were not tracked first.
    assert max(seen) < frames // 2, max(seen)
    assert not (tmp_path / "out" / "a.mkv").exists()  # nothing half-written for a failed clip


class _FailingGrounder:
    """A reasoner whose grounding fails with `error` (no VLM is asked)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def ground(self, *_: Any, **__: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "prompt,reasoner,says",
    [
        # a user error: read as it is, no exception type in front
        ("12,32@50", None, "prompt frame 50 is outside the clip (0..11)"),
        (
            "the cup",
            None,
            "--find 'the cup' needs a VLM to ground its phrase: start one with `vllm serve "
            "Qwen/Qwen2.5-VL-3B-Instruct` and pass its URL as --vlm-url",
        ),
        (
            "the cup",
            _FailingGrounder(VLMUnavailable("http://127.0.0.1:9/v1")),
            "no VLM server at http://127.0.0.1:9/v1: start one with",
        ),
        # a bug: its type stays, so a bug report says what it was
        ("the cup", _FailingGrounder(KeyError("bbox_2d")), "KeyError: 'bbox_2d'"),
    ],
)
async def test_a_failed_clip_reads_as_the_person_can_act_on_it(
    tmp_path: Path, prompt: str, reasoner: Any, says: str
) -> None:
    from streamer.clip.batch import BatchTracker
    from streamer.clip.limits import ClipLimits
    from streamer.clip.track_prompts import parse_find, parse_point
    from streamer.services import Services
    from streamer.settings import Settings

    clip = write_clip(tmp_path / "a.mp4", frames=12, width=96, height=64)
    settings = Settings(weights="random", device="cpu")
    services = Services(settings, reasoner=reasoner)  # no SAM2: every case fails before it
    tracker = BatchTracker(
        services,
        out=tmp_path / "out",
        limits=ClipLimits.from_settings(settings),
        prompts=[parse_point(prompt) if "@" in prompt else parse_find(prompt)],
        video=False,
        progress=False,
    )
    try:
        (outcome,) = await tracker.run([clip])
    finally:
        await services.aclose()
    assert outcome.state == "failed"
    assert outcome.detail.startswith(says), outcome.detail
    assert "descriptions are off" not in outcome.detail  # the server's words, not track's


@pytest.mark.parametrize("where", ["--find", "--prompts"])
def test_find_without_a_vlm_says_what_track_needs(tmp_path: Path, where: str) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"not read: refused before")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a.mp4": [{"find": "the cup"}]}))
    find = ["--find", "the cup"] if where == "--find" else ["--prompts", str(prompts)]
    proc = run_track(str(clip), "--out", str(tmp_path / "out"), *find)
    assert proc.returncode == 2
    assert "--find needs a VLM to ground its phrase: start one with `vllm serve " in proc.stderr
    assert "pass its URL as --vlm-url (http://HOST:8000/v1)" in proc.stderr
    assert "descriptions are off" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_vlm_options_on_a_run_with_no_find_are_refused_before_sam2(tmp_path: Path) -> None:
    # They were taken and did nothing: no prompt asks the VLM. (The same URL as a FMU_* variable,
    # set for the server, does not stop such a run: test_cli's server-only variables test.)
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"not read: refused before")
    proc = run_track(
        str(clip), "--out", str(tmp_path / "out"), "--point", "5,5",
        "--vlm-url", "http://127.0.0.1:9/v1", "--vlm-model", "m",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--vlm-url, --vlm-model: the VLM's options apply to a Find" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given", ["the clip", "its folder"])
def test_an_out_where_results_would_go_over_the_clips_is_refused_before_sam2(
    tmp_path: Path, given: str
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    clip = write_clip(clips / "a.mp4", frames=4, width=64, height=48)
    before = clip.read_bytes()
    # OUT/a.mp4/ is the clip itself: the old code loaded SAM2, tracked every frame, then failed
    # each clip with FileExistsError.
    proc = run_track(
        str(clip if given == "the clip" else clips), "--out", str(clips), "--point", "8,8"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--out {clips}: that is the folder of {clip}" in proc.stderr
    assert "give another folder" in proc.stderr and "Traceback" not in proc.stderr
    assert clip.read_bytes() == before and sorted(clips.iterdir()) == [clip]


def test_an_out_whose_clip_folder_would_be_a_file_there_is_refused(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "a.mp4", frames=4, width=64, height=48)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"a copy the person keeps")
    proc = run_track(str(clip), "--out", str(out), "--point", "8,8")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--out {out}: {out / 'a.mp4'} is a file, where the results of {clip}" in proc.stderr
    assert (out / "a.mp4").read_bytes() == b"a copy the person keeps"


def test_an_empty_prompts_entry_is_refused_before_sam2(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"not read: refused before")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a.mp4": []}))
    out = tmp_path / "out"
    # The old code took it for prompts, loaded SAM2, then failed the clip: "no prompts for this clip".
    proc = run_track(str(clip), "--out", str(out), "--prompts", str(prompts))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--prompts {prompts}: the entry for 'a.mp4' has no prompts" in proc.stderr
    assert not out.exists()
