"""`fmu-live track` run again on the same --out: skipped only when it would be tracked as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamer.clip.track_output import (
    EarlierRun,
    describe_prompt,
    differences,
    done_earlier,
    keep_earlier,
    prompt_entry,
    run_record,
)
from streamer.clip.track_prompts import ObjectPrompt, parse_box, parse_find, parse_point
from streamer.settings import Settings
from tests.test_clip_media import write_clip
from workers.vision.precision import model_precision

SETTINGS = Settings(weights="random", device="cpu", sam2_image_size=256)


def record(
    *prompts: Any, video: bool = False, computed: str | None = None, **settings: Any
) -> dict[str, Any]:
    """run.json of a run; `computed`: the precision the tracker's SAM2 computes in (None: a Ray
    driver's, which loads no model)."""
    given = SETTINGS.model_copy(update=settings)
    return run_record(list(prompts), given, video=video, precision=computed)


@pytest.mark.parametrize(
    "prompt,typed",
    [
        (parse_point("12,32"), "--point 12,32"),  # frame 0 unsaid, as typed
        (parse_point("12.5,32@3"), "--point 12.5,32@3"),
        (parse_box("1,2,30,40@2"), "--box 1,2,30,40@2"),
        (parse_find("the red cup@4"), "--find 'the red cup@4'"),
        # clicks no flag can say: the --prompts entry
        (
            ObjectPrompt(0, [(1.0, 2.0), (5.0, 6.0)], [1, 0]),
            '{"frame": 0, "points": [[1.0, 2.0], [5.0, 6.0]], "labels": [1, 0]}',
        ),
    ],
)
def test_a_prompt_is_said_as_it_would_be_typed(prompt: Any, typed: str) -> None:
    assert describe_prompt(prompt_entry(prompt)) == typed


@pytest.mark.parametrize(
    "then,now,says",
    [
        # the same prompts and options: nothing differs
        (record(parse_point("12,32")), record(parse_point("12,32")), ""),
        # another click
        (
            record(parse_point("12,32")),
            record(parse_point("40,20")),
            "prompts --point 12,32 then, --point 40,20 now",
        ),
        # a bigger SAM2
        (
            record(parse_point("12,32")),
            record(parse_point("12,32"), sam2_size="large"),
            "--sam2-size tiny then, large now",
        ),
        # another seed matters for random weights only
        (record(parse_point("1,1")), record(parse_point("1,1"), seed=7), "--seed 0 then, 7 now"),
        # another VLM grounds the phrase (`track` names the one its server serves: vlm_model_named)
        (
            record(parse_find("the cup"), vlm_model="Qwen/Qwen2.5-VL-3B-Instruct"),
            record(parse_find("the cup"), vlm_model="other/VLM"),
            "--vlm-model Qwen/Qwen2.5-VL-3B-Instruct then, other/VLM now",
        ),
        # a server down now cannot name its model: unknown, not another one (done clips stand)
        (
            record(parse_find("the cup"), vlm_model="Qwen/Qwen2.5-VL-3B-Instruct"),
            record(parse_find("the cup"), vlm_model=None),
            "",
        ),
        # an overlay video now that there was none
        (
            record(parse_point("1,1")),
            record(parse_point("1,1"), video=True),
            "no overlay video then (--no-video), one now",
        ),
        # without one now, the earlier video does no harm
        (record(parse_point("1,1"), video=True), record(parse_point("1,1")), ""),
        # one checkpoint, named two ways
        (
            record(parse_point("1,1"), weights="ft.pt"),
            record(parse_point("1,1"), weights="./ft.pt"),
            "",
        ),
        # another checkpoint
        (
            record(parse_point("1,1"), weights="ft.pt"),
            record(parse_point("1,1"), weights="ft2.pt"),
            f"--weights {Path('ft.pt').resolve()} then, {Path('ft2.pt').resolve()} now",
        ),
        # the precision SAM2 computed in, however it was asked for: auto chose fp32 here
        (
            record(parse_point("1,1"), computed="fp32"),
            record(parse_point("1,1"), computed="fp32", precision="fp32"),
            "",
        ),
        # a GPU's bf16 is not a CPU's fp32, both asked for as auto
        (
            record(parse_point("1,1"), computed="fp32"),
            record(parse_point("1,1"), computed="bf16"),
            "--precision fp32 then, bf16 now",
        ),
        # a run.json from before the precision was resolved: unknown, not a difference
        (
            {**record(parse_point("1,1")), "options": {"--precision": "auto"}},
            record(parse_point("1,1"), computed="fp32"),
            "",
        ),
        # a Ray driver loads no model: it leaves auto out (each tracker compares its own)
        (record(parse_point("1,1"), computed="bf16"), record(parse_point("1,1")), ""),
        # how fast, not what: device and threads are not compared
        (record(parse_point("1,1")), record(parse_point("1,1"), torch_threads=3), ""),
    ],
)
def test_what_differs_from_the_earlier_run_is_said_then_and_now(
    then: dict[str, Any], now: dict[str, Any], says: str
) -> None:
    assert differences(json.loads(json.dumps(then)), now) == says


@pytest.mark.parametrize(
    "earlier,has_prompts,redo,kept",
    [
        (EarlierRun("none"), True, False, None),  # not done: tracked
        (EarlierRun("same"), True, False, ("skipped", "already done")),
        (EarlierRun("same"), True, True, ("skipped", "already done")),  # --redo: only what differs
        (EarlierRun("other", "x"), True, True, None),
        (EarlierRun("unknown"), True, True, None),  # an older fmu-live's: --redo may replace it
        (EarlierRun("other", "x"), False, True, ("skipped", "already done")),  # no prompts now
    ],
)
def test_whether_earlier_results_stand(
    earlier: EarlierRun, has_prompts: bool, redo: bool, kept: Any
) -> None:
    assert keep_earlier(earlier, has_prompts=has_prompts, redo=redo) == kept


@pytest.mark.parametrize(
    "text,kind",
    [
        (None, "unknown"),  # no run.json: an fmu-live from before it
        ("{not json", "unknown"),  # cut short or edited by hand
        ("[]", "unknown"),
        (json.dumps(record(parse_point("12,32"))), "same"),
        (json.dumps(record(parse_point("40,20"))), "other"),
    ],
)
def test_a_done_clips_run_json_is_read_for_what_made_it(text: str | None, kind: str) -> None:
    assert done_earlier(text, record(parse_point("12,32"))).kind == kind


@pytest.mark.parametrize(
    "text,says",
    [
        (None, "already done (by a run that kept no run.json: --redo tracks it again)"),
        # it said "kept no run.json" of one it could not read
        ("{bad", "already done (by a run that left a run.json that cannot be read: --redo"),
    ],
)
def test_results_without_a_readable_run_json_are_kept_and_say_why_and_how_to_redo_them(
    text: str | None, says: str
) -> None:
    earlier = done_earlier(text, record(parse_point("12,32")))
    state, detail = keep_earlier(earlier, has_prompts=True, redo=False) or ("", "")
    assert state == "skipped" and detail.startswith(says)


def test_a_record_from_before_the_clip_file_was_kept_is_not_refused_for_it(
    tmp_path: Path,
) -> None:
    """Archives tracked by an fmu-live that kept no clip file in run.json resume as they were."""
    clip = write_clip(tmp_path / "a.mp4", frames=4, width=96, height=64)
    now = run_record([parse_point("12,32")], SETTINGS, video=False, clip=clip)
    assert now["clip"]["bytes"] == clip.stat().st_size
    then = {k: v for k, v in now.items() if k != "clip"}
    assert differences(then, now) == ""


@pytest.mark.slow
async def test_a_rerun_with_another_point_is_refused_then_redone_and_the_same_one_skipped(
    sam2_tiny_random: Any, tmp_path: Path
) -> None:
    from streamer.clip.batch import BatchTracker
    from streamer.clip.limits import ClipLimits
    from streamer.services import Services

    clip = write_clip(tmp_path / "a.mp4", frames=4, width=96, height=64)
    out = tmp_path / "out"
    services = Services(SETTINGS, vision_model=sam2_tiny_random)
    export = out / "a.mp4" / "export.json"

    async def run(point: str, *, redo: bool = False, video: bool = False, of: Path = clip) -> Any:
        tracker = BatchTracker(
            services,
            out=out,
            limits=ClipLimits.from_settings(SETTINGS),
            prompts=[parse_point(point)],
            video=video,
            progress=False,
            redo=redo,
        )
        (outcome,) = await tracker.run([of])
        return outcome

    def clicked() -> list[Any]:
        return [o["prompts"][0]["points"] for o in json.loads(export.read_text())["objects"]]

    try:
        assert (await run("12,32", video=True)).state == "done"
        assert (out / "a.mp4" / "overlay.mp4").is_file()
        first = export.stat().st_mtime_ns

        same = await run("12,32")  # the same click: resumed, nothing tracked again
        assert (same.state, same.detail) == ("skipped", "already done")

        # Another clip of the same name (another folder, or re-encoded in place): not done.
        (tmp_path / "elsewhere").mkdir()
        namesake = write_clip(tmp_path / "elsewhere" / "a.mp4", frames=6, width=96, height=64)
        moved = await run("12,32", of=namesake)
        assert moved.state == "failed", moved.detail
        assert "another file of that name then" in moved.detail
        assert export.stat().st_mtime_ns == first

        other = await run("60,20")  # another click: its results are kept, --redo named
        assert other.state == "failed"
        assert "prompts --point 12,32 then, --point 60,20 now" in other.detail
        assert "pass --redo to track it again" in other.detail
        assert export.stat().st_mtime_ns == first and clicked() == [[[12.0, 32.0]]]

        redone = await run("60,20", redo=True)
        assert redone.state == "done" and redone.objects == 1
        assert "(replaced the results of other prompts or options: prompts --point 12,32" in (
            redone.detail
        )
        assert clicked() == [[[60.0, 20.0]]]  # the new object, named by its click
        assert not (out / "a.mp4" / "overlay.mp4").exists()  # the old click's video is gone
        run_json = json.loads((out / "a.mp4" / "run.json").read_text())
        assert run_json["prompts"] == [{"frame": 0, "points": [[60.0, 20.0]], "labels": [1]}]
        # what --precision auto chose on this machine, not the word
        computed = model_precision(sam2_tiny_random).name
        assert run_json["options"]["--precision"] == computed in ("fp32", "bf16")

        again = await run("60,20", redo=True)  # --redo leaves what is done as asked
        assert again.state == "skipped"
    finally:
        await services.aclose()
