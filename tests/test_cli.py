"""The `fmu-live` program: commands dispatch to their own parsers; no command serves as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["track", "eval", "dataset", "merge-lora"])
def test_each_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main.cli([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fmu-live {command}")


@pytest.mark.parametrize(
    "argv,served_with",
    [
        ([], []),  # `fmu-live` / `python main.py` alone: the server, as before
        (["--port", "9000"], ["--port", "9000"]),
        (["serve", "--port", "9000"], ["--port", "9000"]),
    ],
)
def test_no_command_serves(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], served_with: list[str]
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(main, "main", lambda args: calls.append(args) or 0)
    assert main.cli(argv) == 0
    assert calls == [served_with]


def test_server_help_lists_the_commands() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    # One program name, whichever way it is started: `main.py` is no command a person can run.
    assert proc.stdout.startswith("usage: fmu-live [-h]")
    assert "--vlm-url" in proc.stdout
    for command in ("fmu-live track", "fmu-live eval", "fmu-live dataset", "fmu-live merge-lora"):
        assert command in proc.stdout


def test_console_script_points_at_cli() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["fmu-live"] == "main:cli"
    assert "main" in project["tool"]["setuptools"]["py-modules"]


def test_readme_has_a_section_per_command_and_its_examples_use_real_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    for command in main.COMMANDS:
        assert f"### `fmu-live {command}`" in readme, f"no README section for {command}"
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    examples = [b.replace("\\\n", " ") for b in blocks if b.startswith("fmu-live ")]
    assert {e.split()[1] for e in examples} == set(main.COMMANDS)
    for example in examples:
        command = example.split()[1]
        with pytest.raises(SystemExit):
            main.cli([command, "--help"])
        known = set(re.findall(r"--[a-z0-9-]+", capsys.readouterr().out))
        used = set(re.findall(r"(?<![\w-])--[a-z0-9-]+", example.split("\n")[0]))
        assert used <= known, f"{command}: {sorted(used - known)} are not options"


def _exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exit_:
        main.cli(argv)
    return exit_.value.code


def test_track_refuses_a_mistyped_clip_path_before_loading_sam2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_clip_media import write_clip

    clip = write_clip(tmp_path / "a.mp4", frames=2, width=32, height=32)
    out = tmp_path / "out"
    # A checkpoint that is not there: the old code got as far as loading it, and said only that.
    argv = ["track", str(clip), str(tmp_path / "typo.mp4"), "--out", str(out), "--point", "1,2"]
    assert _exit_code([*argv, "--weights", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert f"clips: no such file or folder: {tmp_path / 'typo.mp4'}" in err
    assert "checkpoint" not in err and not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--weights", "{tmp}/none.pt", "--weights: no SAM2 checkpoint at '{tmp}/none.pt': pass"),
        ("--device", "cuda", "--device: device 'cuda' asked for, but torch sees no CUDA GPU"),
    ],
)
@pytest.mark.parametrize("command", ["track", "eval"])
def test_a_sam2_option_that_cannot_work_is_named_before_the_work(
    command: str,
    option: str,
    value: str,
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It was found when SAM2 loaded (eval: after every answer of the VLM), exit 1, no option.
    import torch

    from tests.coco_tiny import write_coco_tiny
    from tests.test_clip_media import write_clip

    if option == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "out"
    if command == "track":
        clip = write_clip(tmp_path / "a.mp4", frames=2, width=32, height=32)
        argv = ["track", str(clip), "--point", "1,2"]
    else:
        annotations, images = write_coco_tiny(tmp_path / "coco")
        argv = ["eval", "--coco", str(annotations), "--images", str(images), "--masks", "sam2",
                "--vlm-url", "http://127.0.0.1:9/v1"]  # fmt: skip
    given = value.format(tmp=tmp_path)
    assert _exit_code([*argv, "--out", str(out), option, given]) == 2
    err = capsys.readouterr().err
    assert f"error: {says.format(tmp=tmp_path)}" in err, err
    assert not out.exists()


def test_track_warns_of_a_prompts_entry_that_names_no_clip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.test_clip_media import write_clip

    clip = write_clip(tmp_path / "a.mp4", frames=2, width=32, height=32)
    prompts = tmp_path / "prompts.json"
    # "a" for "a.mp4": a key that matches nothing would track nothing for that clip, silently.
    prompts.write_text(json.dumps({"a": [{"box": [1, 2, 9, 9]}], "*": [{"points": [[4, 4]]}]}))
    argv = ["track", str(clip), "--out", str(tmp_path / "out"), "--prompts", str(prompts)]
    _exit_code([*argv, "--weights", str(tmp_path / "none.pt")])  # stops at the checkpoint
    err = capsys.readouterr().err
    assert "--prompts entries that name no clip of this run" in err and "'a'" in err
    assert "'a.mp4'" in err  # what a key looks like


@pytest.mark.parametrize("command", ["eval", "dataset"])
def test_a_missing_images_folder_is_refused_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.coco_tiny import write_coco_tiny

    annotations, _ = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "out"
    argv = [command, "--coco", str(annotations), "--images", str(tmp_path / "imgs"),
            "--out", str(out), "--vlm-url", "http://127.0.0.1:9/v1", "--no-progress"]  # fmt: skip
    # The old code asked the VLM about every record, failed each on its image, and said so last.
    assert _exit_code(argv) == 2
    assert f"--images: no such folder: {tmp_path / 'imgs'}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("where", ["a file", "no folder can be made", "empty"])
@pytest.mark.parametrize("command", ["track", "eval", "dataset", "merge-lora"])
def test_an_out_that_is_a_file_is_refused_before_any_work(
    command: str,
    where: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """track loaded SAM2 and tracked every frame, then failed writing into the file; dataset
    and merge-lora ended in a traceback. An --out where no folder can be made (/proc here; a
    read-only disk, another user's folder) failed only once the work was done, as a traceback.
    An empty --out ("$OUT" unset) was the current folder: the results went in there."""
    from tests.coco_tiny import write_coco_tiny
    from tests.test_clip_media import write_clip

    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "results.png"
    out.write_bytes(b"a picture the person has")
    inputs = {
        "track": [str(write_clip(tmp_path / "c.mp4", frames=4)), "--point", "5,5"],
        "eval": ["--coco", str(annotations), "--images", str(images)],
        "dataset": ["--coco", str(annotations), "--images", str(images)],
        "merge-lora": ["--base", str(images), "--adapter", str(images)],  # stops before reading
    }[command]
    vlm = [] if command in ("merge-lora", "track") else ["--vlm-url", "http://127.0.0.1:9/v1"]
    if where == "no folder can be made":
        out = Path("/proc/fmu-live-test-out")
    here = tmp_path / "coco"
    monkeypatch.chdir(here)  # where an empty --out wrote
    before = sorted(here.iterdir())
    argv = [command, *inputs, "--out", "" if where == "empty" else str(out), *vlm]
    assert _exit_code(argv) == 2
    said = {
        "a file": f"--out {out}: that is a file",
        "no folder can be made": f"--out {out}: no folder can be made or written there",
        "empty": "argument --out: it is empty",
    }[where]
    assert said in capsys.readouterr().err
    assert sorted(here.iterdir()) == before
    if where == "a file":
        assert out.read_bytes() == b"a picture the person has"


@pytest.mark.parametrize(
    ("command", "argv", "says"),
    [
        # eval said "does not exist" seconds later, as a plain error with exit status 1
        (
            "eval",
            ["--coco", "/nope.json", "--images", "."],
            "--coco: no such file: /nope.json",
        ),
        # dataset made its output folder first
        (
            "dataset",
            ["--coco", "/nope.json", "--images", "."],
            "--coco: no such file: /nope.json",
        ),
        # merge-lora answered with the hub's "Repo id must use alphanumeric chars"
        ("merge-lora", ["--base", "/nope", "--adapter", "."], "--base: no such folder: /nope"),
    ],
)
def test_an_input_path_that_is_not_there_is_named_at_once(
    command: str, argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _exit_code([command, *argv, "--out", str(out), "--vlm-url", "http://127.0.0.1:9/v1"]
                      if command != "merge-lora" else [command, *argv, "--out", str(out)]) == 2  # fmt: skip
    assert says in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "option"),
    [("eval", "--coco"), ("eval", "--captions"), ("eval", "--referring"), ("dataset", "--coco")],
)
def test_a_folder_given_for_an_input_file_is_named_at_once(
    command: str, option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.coco_tiny import write_coco_tiny

    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "out"
    given = {"--coco": str(annotations), option: str(images)}  # the images folder by mistake
    argv = [command, *(a for pair in given.items() for a in pair), "--images", str(images),
            "--out", str(out), "--vlm-url", "http://127.0.0.1:9/v1", "--no-progress"]  # fmt: skip
    # The old code passed a folder (it exists) and failed reading it: IsADirectoryError.
    assert _exit_code(argv) == 2
    assert f"{option}: no such file: {images} (that is a folder)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "dataset"])
@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({}, "it has no 'images' or 'annotations' or 'categories' list"),
        ([1], "is a JSON object with lists 'images', 'annotations', 'categories' (e.g. instances_val2017.json), not a list"),
        # COCO's captions file: JSON of the same family, without categories
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 1, "caption": "a cat"}]},
            "it has no 'categories' list",
        ),
        # instances whose annotations lack what a region needs
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 1}], "categories": [{"id": 1, "name": "cat"}]},
            "annotations[0] is not a COCO instances entry: it needs 'id', 'image_id', 'category_id', 'bbox' (missing 'category_id', 'bbox')",
        ),
        # fields of other types than read as: tracebacks (float('a'), PosixPath / int)
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": "abcd"}], "categories": [{"id": 1, "name": "cat"}]},
            "annotations[0]: 'bbox' must be [x, y, w, h], four finite numbers, got 'abcd'",
        ),
        (
            {"images": [{"id": 1, "file_name": 5}], "annotations": [], "categories": [{"id": 1, "name": "cat"}]},
            "images[0]: 'file_name' must be an image file name, got 5",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": "big"}], "categories": [{"id": 1, "name": "cat"}]},
            "annotations[0]: 'area' must be a number, got 'big'",
        ),
        # an annotation of no image in the file: left out of every run, unsaid
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4]}], "categories": [{"id": 1, "name": "cat"}]},
            "annotations[0] (id 5): 'image_id' 2 is no image of this file (no 'images' entry has that 'id')",
        ),
    ],
)  # fmt: skip
def test_json_that_is_no_coco_instances_file_is_refused_before_any_work(
    command: str, doc: object, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.coco_tiny import write_coco_tiny

    _, images = write_coco_tiny(tmp_path / "coco")
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps(doc))
    out = tmp_path / "out"
    argv = [command, "--coco", str(coco), "--images", str(images), "--out", str(out),
            "--vlm-url", "http://127.0.0.1:9/v1", "--no-progress", "--ttft-samples", "0"]  # fmt: skip
    # pycocotools failed on it with a KeyError or TypeError traceback; dataset had written
    # dataset_info.json into --out first, eval had run its other dimensions.
    assert _exit_code(argv if command == "eval" else argv[:-2]) == 2
    err = capsys.readouterr().err
    assert f"--coco: {coco}" in err and says in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "option", "value", "says"),
    [
        ("eval", "--samples", "0", "--samples must be 1 or more, got 0"),
        ("eval", "--ttft-samples", "-1", "--ttft-samples must be 0 or more, got -1"),
        ("dataset", "--max-per-image", "0", "--max-per-image must be 1 or more, got 0"),
        ("dataset", "--min-area", "-5", "--min-area must be 0 or more, got -5.0"),
    ],
)
def test_a_count_below_its_floor_is_refused_naming_the_option(
    command: str, option: str, value: str, says: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from tests.coco_tiny import write_coco_tiny

    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "out"
    argv = [command, "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", "http://127.0.0.1:9/v1", "--no-progress", option, value]  # fmt: skip
    # The old code ran: --samples 0 measured nothing and reported an empty run, a negative
    # --ttft-samples read as "skipped", --max-per-image 0 kept no object.
    assert _exit_code(argv) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "hint"), [("eval", False), ("dataset", False), ("serve", True)]
)
def test_an_openai_backend_without_a_url_names_only_options_the_command_takes(
    command: str, hint: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.coco_tiny import write_coco_tiny

    annotations, images = write_coco_tiny(tmp_path / "coco")
    data = ["--coco", str(annotations), "--images", str(images), "--out", str(tmp_path / "o")]
    argv = [command, "--vlm-backend", "openai", *(data if command != "serve" else [])]
    # eval and dataset said "(or --serve-vlm)", an option they refuse.
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "--vlm-backend openai needs --vlm-url" in err
    assert ("--serve-vlm" in err) == hint


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_merge_lora_refuses_a_device_torch_cannot_use_before_loading(
    device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    import peft
    import transformers

    from tests.test_merge_lora import _tiny_base

    _tiny_base(tmp_path / "base")
    lora = peft.LoraConfig(r=2, target_modules=["q_proj"])
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    peft.get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "merged"
    argv = ["merge-lora", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
            "--out", str(out), "--device", device]  # fmt: skip
    # The old code loaded the base, then torch's RuntimeError came out as a traceback.
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "--device:" in err and repr(device) in err and "use" in err
    assert not out.exists()


@pytest.mark.slow
def test_track_output_is_its_report_without_sam2s_per_mask_warning(tmp_path: Path) -> None:
    from tests.conftest import random_sam2_args
    from tests.test_clip_media import write_clip

    clip = write_clip(tmp_path / "a.mp4", frames=2, width=32, height=32)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "track", str(clip), "--out", str(tmp_path / "out"),
         "--point", "16,16", "--no-progress", "--no-video", *random_sam2_args(256, threads=1)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 of 1 clips done" in proc.stdout
    # sam2 warned (4 lines) on every mask when its optional CUDA extension is not built; the
    # server silenced it, the commands did not.
    assert "post-processing" not in proc.stderr, proc.stderr


def test_the_server_log_has_no_sam2_progress_lines_at_each_picture_it_encodes(
    sam2_tiny_random: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import numpy as np

    from streamer.cli.logs import quiet_noisy_logs
    from workers.vision import ImageSegmenter

    quiet_noisy_logs()
    with caplog.at_level(logging.INFO):
        ImageSegmenter(sam2_tiny_random).set_image(np.zeros((48, 64, 3), dtype=np.uint8))
        logging.info("a line of ours on the root logger")
    # sam2 logged three INFO lines on the root logger for each upload and each Find's frame
    # ("For numpy array image, we assume (HxWxC) format", "Computing image embeddings...").
    assert caplog.messages == ["a line of ours on the root logger"]


@pytest.mark.parametrize("command", ["track", "eval"])
def test_commands_that_run_sam2_take_every_sam2_option_the_server_takes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --precision decides fp32 or bf16 for "the live tracker, clip jobs and image mode alike"
    # (README); a command without it ran bf16 wherever auto picked it, with no flag to say fp32.
    assert _exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--precision {auto,fp32,bf16}", "--compile", "--weights", "--sam2-image-size"):
        assert flag in out, flag


@pytest.mark.parametrize("command", ["track", "eval", "dataset"])
def test_commands_take_no_vlm_option_that_would_do_nothing(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each was listed and taken, and did nothing: a page's share of the VLM
    # (--vlm-max-in-flight-per-session; a command is one client, bounded by --vlm-max-in-flight),
    # and the verify options where no description is verified (track's Find, dataset's teacher).
    unused = ["--vlm-max-in-flight-per-session"]
    if command != "eval":  # eval's hallucination dimension is the verified describe
        unused += ["--verify-iou-threshold", "--verify-max-attempts"]
    assert _exit_code([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--vlm-max-in-flight " in out and not [f for f in unused if f in out]
    assert ("--verify-max-attempts" in out) == (command == "eval")
    required = {
        "track": ["a.mp4", "--out", "o"],
        "eval": ["--images", "i"],
        "dataset": ["--images", "i", "--coco", "c.json", "--out", "o"],
    }[command]
    for flag in unused:
        assert _exit_code([command, *required, flag, "1"]) == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_eval_refuses_sam2_options_without_masks_sam2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # They were taken and did nothing: the annotations' masks were described, SAM2 never loaded.
    argv = ["eval", "--images", str(tmp_path), "--coco", str(tmp_path / "none.json"),
            "--vlm-url", "http://127.0.0.1:9/v1"]  # fmt: skip
    assert _exit_code([*argv, "--weights", "random", "--no-compile"]) == 2
    err = capsys.readouterr().err
    assert "--weights, --compile: SAM2's options apply with --masks sam2 alone" in err
    # With --masks sam2 they are taken, and the run goes on to its next check.
    assert _exit_code([*argv, "--weights", "random", "--masks", "sam2"]) == 2
    assert "--coco: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["trak", "clips", "--out", "o"], ["evaluate", "--help"]])
def test_a_mistyped_command_is_named_not_taken_for_the_server(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The old code said "unrecognized arguments" for the one, and printed the server's --help
    # (as though it were the command's) for the other.
    assert _exit_code(argv) == 2
    captured = capsys.readouterr()
    assert f"no command {argv[0]!r}: the commands are track, eval, dataset, merge-lora" in (
        captured.err
    )
    assert "--vlm-url" not in captured.out


def test_command_help_shows_only_defaults_that_say_something(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a help text

    def help_of(command: str, option: str) -> str:
        assert _exit_code([command, "--help"]) == 0
        lines = capsys.readouterr().out.split("options:", 1)[1].splitlines()
        (line,) = [x for x in lines if x.startswith(f"  {option} ")]
        return line

    # Required --out read "(default: None)", as if it could be left out; --samples said its
    # default twice ("(default: all). (default: None)"); repeatable --point "(default: [])".
    assert "default" not in help_of("track", "--out")
    assert help_of("eval", "--samples").count("default") == 1
    assert "default" not in help_of("track", "--point")
    assert help_of("eval", "--out").endswith("(default: eval-out)")


def test_a_port_in_use_is_told_with_one_that_is_free() -> None:
    """The suggestion is a port that can be bound now, not just the next number (taken too)."""
    import contextlib
    import socket

    from streamer.cli.serve import bind_listener

    held: list[socket.socket] = []
    try:
        for _ in range(50):  # a port whose next one can be taken too: both held, the third free
            first = socket.socket()
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            second, third = socket.socket(), socket.socket()
            with contextlib.suppress(OSError):
                third.bind(("127.0.0.1", port + 2))  # free: to be suggested
                third.close()
                second.bind(("127.0.0.1", port + 1))
                first.listen()
                second.listen()
                held += [first, second]
                break
            for s in (first, second, third):
                s.close()
        assert held, "no three neighbouring free ports"
        with pytest.raises(OSError) as refused:
            bind_listener("127.0.0.1", port)
        said = str(refused.value)
        assert f"port {port} on 127.0.0.1 is already in use" in said
        assert f"--port {port + 2}, free now" in said, said  # not --port {port + 1}: taken
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("command", ["track", "eval", "dataset", "merge-lora"])
def test_server_only_variables_do_not_stop_an_offline_command(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from tests.coco_tiny import write_coco_tiny
    from tests.test_clip_media import write_clip

    # Each invalid, each the server's alone: the old code refused eval, dataset and track with
    # "invalid settings: --port / FMU_PORT ..." (options they do not even take).
    for name, value in {"PORT": "http", "AUTH_TOKEN": "short", "SSL_KEYFILE": "/no.pem",
                        "MAX_SESSIONS": "0", "DATA_DIR": str(tmp_path / "f" / "x")}.items():  # fmt: skip
        monkeypatch.setenv(f"FMU_{name}", value)
    (tmp_path / "f").write_text("a file where a folder would be")
    # Nor does the server's default left invalid: a file named `data` where the command runs.
    (tmp_path / "data").write_text("not the server's data folder")
    monkeypatch.chdir(tmp_path)
    # A variable of an option the command takes is still read, and checked.
    monkeypatch.setenv("FMU_VLM_URL", "http://127.0.0.1:9/v1")
    _, images = write_coco_tiny(tmp_path / "coco")
    missing = tmp_path / "none.json"
    argv, reached = {
        # each goes on to its next check, which names a file that is not there
        "track": ([str(write_clip(tmp_path / "a.mp4", frames=2, width=32, height=32)),
                   "--point", "4,4", "--weights", str(tmp_path / "none.pt")], "none.pt"),
        "eval": (["--images", str(images), "--coco", str(missing)], "--coco: no such file"),
        "dataset": (["--images", str(images), "--coco", str(missing)], "--coco: no such file"),
        "merge-lora": (["--base", str(tmp_path / "b"), "--adapter", "."], "--base: no such folder"),
    }[command]  # fmt: skip
    out = tmp_path / "out"
    code = _exit_code([command, *argv, "--out", str(out)])
    assert code not in (0, None)
    err = capsys.readouterr().err + str(code)  # sys.exit("error: ...") says it in its code
    assert reached in err and "FMU_" not in err and "invalid settings" not in err
    assert not out.exists()
    if command != "merge-lora":
        monkeypatch.setenv("FMU_VLM_URL", "localhost:8000")
        assert _exit_code([command, *argv, "--out", str(out)]) == 2
        assert "--vlm-url / FMU_VLM_URL: must be an http(s) URL" in capsys.readouterr().err
