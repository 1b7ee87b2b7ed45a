"""`fmu-live eval` against a scripted OpenAI-compatible server whose right answers are known.

The data is the tiny hand-annotated COCO set (tests/coco_tiny.py). The scripted model sees what a
real one would (Spotlight images, grounding prompts), and the test decides which of its answers
are right, so every metric has a value worked out by hand.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.coco_tiny import instance_box, write_coco_tiny
from tests.conftest import spotlight_answerer
from tests.fakes.openai_server import ScriptedVLMServer
from workers.reasoning.images import decode_data_url

ROOT = Path(__file__).resolve().parents[1]


def _text_and_images(body: dict[str, Any]) -> tuple[str, list[str]]:
    texts, urls = [], []
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content:
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                urls.append(part["image_url"]["url"])
    return "\n".join(texts), urls


def run_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "eval", "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def eval_on_coco(
    coco: tuple[Path, Path], tmp_path: Path, *args: str, answer: Any = None
) -> tuple[subprocess.CompletedProcess[str], list[Any], Path]:
    """`fmu-live eval` on the tiny COCO set against a scripted VLM (`answer`; by default one that
    verifies what its Spotlight shows): the run, the requests the VLM got, the report folder."""
    annotations, images = coco
    out = tmp_path / "out"
    with ScriptedVLMServer(answer or spotlight_answerer()) as srv:
        proc = run_eval(
            "--images", str(images), "--coco", str(annotations), *args,
            "--vlm-url", srv.url, "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
        return proc, list(srv.requests), out


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_coco_tiny(tmp_path_factory.mktemp("coco"))


def test_hallucination_and_correction_rates_are_counted_from_the_service_verdicts(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, images = coco
    # Per instance (first five: person, helmet, space shuttle, cup, spoon), whether the model's
    # grounding of each attempt's description lands on the object.
    script = {
        1: [True],  # right at once
        2: [False, True],  # hallucinated, corrected by the retry
        3: [True],
        4: [False, False, False],  # hallucinated, never corrected
        5: [True],
    }
    inner = spotlight_answerer(description="an object")
    state = {"instance": 0, "attempt": 0}

    def answer(body: dict[str, Any]) -> str:
        text, _ = _text_and_images(body)
        if "Describe only the highlighted object" in text:
            if "A previous description" in text:
                state["attempt"] += 1
            else:
                state["instance"] += 1
                state["attempt"] = 1
            return inner(body)
        right = inner(body)  # the box of the object the Spotlight showed
        return right if script[state["instance"]][state["attempt"] - 1] else "[]"

    out = tmp_path / "out"
    with ScriptedVLMServer(answer) as srv:
        proc = run_eval(
            "--images", str(images), "--coco", str(annotations), "--samples", "5",
            "--concurrency", "1", "--ttft-samples", "0", "--vlm-url", srv.url,
            "--verify-max-attempts", "3", "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    hall = report["hallucination"]
    assert hall["counts"] == {"samples": 5, "first_attempt": 2, "after_retries": 1, "corrected": 1}
    assert hall["metrics"]["baseline"]["value"] == pytest.approx(0.4)
    assert hall["metrics"]["verified"]["value"] == pytest.approx(0.2)
    assert hall["metrics"]["correction"]["value"] == pytest.approx(0.5)
    by_category = {r["category"]: r for r in hall["records"]}
    assert by_category["helmet"]["corrected"] and by_category["helmet"]["attempts"] == 2
    assert by_category["cup"]["verdict"] == "unverified"
    assert len(by_category["cup"]["attempt_texts"]) == 3
    table = (out / "report.md").read_text()
    assert "| Hallucination | rate, one attempt | 40.0% | 5 |" in table
    assert "| Hallucination | rate, with cycle verification | 20.0% | 5 |" in table
    assert "| Hallucination | errors corrected | 50.0% | 5 |" in table
    assert table in proc.stdout
    assert "not run: no --captions given" in table
    # --coco was given: TTFT was skipped by the flag, not for want of data.
    assert "| all | not run: skipped by --ttft-samples 0 | | |" in table


def test_a_retry_that_failed_is_a_failed_sample_not_an_uncorrected_one(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    inner = spotlight_answerer(description="an object")
    state = {"instance": 0}

    def answer(body: dict[str, Any]) -> str:
        text, _ = _text_and_images(body)
        if "Describe only the highlighted object" in text:
            if "A previous description" in text:  # the person's retry: the server fails it
                raise RuntimeError("scripted engine crash")
            state["instance"] += 1
            return inner(body)
        # the first instance's description misses (a hallucination); the second's lands
        return inner(body) if state["instance"] == 2 else "[]"

    proc, _, out = eval_on_coco(
        coco, tmp_path, "--samples", "2", "--concurrency", "1", "--ttft-samples", "0",
        "--verify-max-attempts", "2", answer=answer,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    hall = json.loads((out / "report.json").read_text())["hallucination"]
    # The retry never ran to a verdict: whether it would have corrected the description is
    # unknown, so the sample is failed, not counted as a hallucination left uncorrected.
    assert hall["counts"] == {"samples": 1, "first_attempt": 0, "after_retries": 0, "corrected": 0}
    first, second = hall["records"]
    assert "attempt 2 failed" in first["error"] and "error" not in second
    assert hall["failed"] == 1


def test_captioning_scores_and_models_not_available(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    _, images = coco
    captions = tmp_path / "captions.jsonl"
    rows = [
        {"image": "astronaut.png", "bbox": [30, 15, 330, 497], "captions": ["a woman in an orange space suit"]},
        {"image": "coffee.png", "bbox": [175, 30, 230, 270], "captions": ["a red cup of coffee"]},
    ]  # fmt: skip
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def answer(body: dict[str, Any]) -> str:
        _, urls = _text_and_images(body)
        h, w = decode_data_url(urls[0]).shape[:2]
        # the astronaut photograph is square, the coffee one is not
        return "a woman in an orange space suit" if h == w else "zzz qqq"

    out = tmp_path / "out"
    with ScriptedVLMServer(answer) as srv:
        proc = run_eval(
            "--images", str(images), "--captions", str(captions), "--vlm-url", srv.url,
            "--ttft-samples", "0", "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cap = json.loads((out / "report.json").read_text())["captioning"]
    # ROUGE-L: one perfect answer, one sharing no word.
    assert cap["metrics"]["rouge_l"]["value"] == pytest.approx(0.5)
    # BLEU-4 by hand: 9 words out against 12 in the references; n-gram precisions 7/9, 6/7, 5/5,
    # 4/4 (the second answer is two words with no match), brevity penalty exp(1 - 12/9).
    expected = math.exp(1 - 12 / 9) * (7 / 9 * 6 / 7 * 1 * 1) ** 0.25
    assert cap["metrics"]["bleu4"]["value"] == pytest.approx(expected, abs=1e-4)
    assert cap["metrics"]["bert_score"] == {
        "value": None,
        "reason": "not computed: no local model given (--bertscore-model PATH)",
    }
    assert cap["metrics"]["clip_score"]["value"] is None
    assert [r["prediction"] for r in cap["records"]] == [
        "a woman in an orange space suit",
        "zzz qqq",
    ]
    table = (out / "report.md").read_text()
    assert "| Captioning | ROUGE-L | 0.5000 | 2 |" in table
    assert "| Captioning | BERT-Score (F1) | not computed: no local model given" in table

    # A second model beside the first, as the seed's table compares base and fine-tuned.
    tuned = tmp_path / "tuned"

    def tuned_answer(body: dict[str, Any]) -> str:
        return "a red cup of coffee" if answer(body) == "zzz qqq" else answer(body)

    with ScriptedVLMServer(tuned_answer) as srv:
        proc = run_eval(
            "--images", str(images), "--captions", str(captions), "--vlm-url", srv.url,
            "--vlm-model", "tuned", "--vlm-family", "qwen2.5-vl", "--ttft-samples", "0", "--baseline", str(out / "report.json"),
            "--out", str(tuned), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = (tuned / "report.md").read_text()
    assert (
        "| dimension | metric | baseline: Qwen/Qwen2.5-VL-3B-Instruct | this run: tuned | samples |"
        in table
    )
    assert "| Captioning | ROUGE-L | 0.5000 | 1.0000 | 2 |" in table


def test_samples_takes_the_first_rows_of_the_captions_and_the_referring_files(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    _, images = coco
    rows = [
        {"image": "coffee.png", "bbox": [175, 30, 230, 270], "expression": "the cup", "captions": ["a cup"]},
        {"image": "astronaut.png", "bbox": [30, 15, 330, 497], "expression": "the woman", "captions": ["a woman"]},
    ]  # fmt: skip
    for name in ("captions.jsonl", "referring.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with ScriptedVLMServer(lambda body: "a red cup") as srv:
        proc = run_eval(
            "--images", str(images), "--captions", str(tmp_path / "captions.jsonl"),
            "--referring", str(tmp_path / "referring.jsonl"), "--samples", "1",
            "--ttft-samples", "0", "--vlm-url", srv.url, "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    # The files are read whole (a bad line anywhere is refused before any work), once; each
    # dimension evaluates the first --samples rows.
    assert [r["image"] for r in report["captioning"]["records"]] == ["coffee.png"]
    assert [r["image"] for r in report["grounding"]["records"]] == ["coffee.png"]


def test_grounding_miou_and_accuracy(coco: tuple[Path, Path], tmp_path: Path) -> None:
    annotations, images = coco
    rows = [
        ("astronaut.png", "the astronaut", instance_box(annotations, "person")),
        ("coffee.png", "the cup", instance_box(annotations, "cup")),
        ("coffee.png", "the spoon", instance_box(annotations, "spoon")),
        ("chelsea.png", "the dog", [10, 10, 50, 50]),
    ]
    referring = tmp_path / "refs.jsonl"
    referring.write_text(
        "".join(json.dumps({"image": i, "expression": e, "bbox": b}) + "\n" for i, e, b in rows)
    )
    boxes = {e: b for _, e, b in rows}
    sizes = {"the astronaut": (512, 512), "the cup": (600, 400), "the spoon": (600, 400)}

    def answer(body: dict[str, Any]) -> str:
        text, urls = _text_and_images(body)
        h, w = decode_data_url(urls[0]).shape[:2]
        phrase = text.split('"')[1]
        if phrase == "the spoon":  # a box on the other side of the picture: IoU 0
            return json.dumps([{"bbox_2d": [0, 0, 20, 20], "label": "spoon"}])
        if phrase not in sizes:
            return "[]"  # no such thing: IoU 0
        x, y, bw, bh = boxes[phrase]
        fw, fh = sizes[phrase]
        sx, sy = w / fw, h / fh  # the model answers in the pixels of the image it was sent
        return json.dumps([{"bbox_2d": [x * sx, y * sy, (x + bw) * sx, (y + bh) * sy]}])

    out = tmp_path / "out"
    with ScriptedVLMServer(answer) as srv:
        proc = run_eval(
            "--images", str(images), "--referring", str(referring), "--vlm-url", srv.url,
            "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    g = json.loads((out / "report.json").read_text())["grounding"]
    assert g["metrics"]["acc"]["value"] == pytest.approx(0.5)
    assert g["metrics"]["miou"]["value"] == pytest.approx(0.5, abs=1e-3)
    assert [r["iou"] for r in g["records"]][2:] == [0.0, 0.0]


def test_ttft_sends_each_step_stateless_once_and_cached_twice(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    proc, requests, out = eval_on_coco(
        coco, tmp_path, "--samples", "1", "--ttft-samples", "1", "--verify-max-attempts", "1"
    )
    assert proc.returncode == 0, proc.stderr
    ttft = json.loads((out / "report.json").read_text())["ttft"]
    assert ttft["samples"] == 1 and ttft["failed"] == 0
    for step in ("describe", "verify", "chat"):
        assert ttft["steps"][step]["stateless_ms"] > 0
        assert ttft["steps"][step]["cached_ms"] > 0
    # After the hallucination run's describe + ground: per step, one stateless request (its own
    # nonce first, before the images) and the same request twice unchanged.
    timed = [json.dumps(r["messages"]) for r in requests[2:]]
    assert len(timed) == 9
    for i in range(3):
        stateless, warm, cached = timed[3 * i : 3 * i + 3]
        assert warm == cached
        assert stateless != cached and "[request " in stateless and "[request " not in cached
    table = (out / "report.md").read_text()
    assert "| describe |" in table and "| chat |" in table


@pytest.mark.parametrize(
    "args,says",
    [
        ([], "no VLM configured"),  # and what to pass: --vlm-url
        (["--vlm-url", "http://127.0.0.1:9/v1", "--concurrency", "5"], "between 1 and 4"),
        (
            ["--vlm-url", "http://127.0.0.1:9/v1", "--verify-max-attempts", "0"],
            "--verify-max-attempts",
        ),
    ],
)
def test_eval_says_what_is_wrong(args: list[str], says: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "eval", "--images", "x", "--coco", "y.json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert says in proc.stderr and "--vlm-url" in proc.stderr + " ".join(args)


@pytest.mark.slow
def test_eval_describes_sam2_masks_from_the_annotation_boxes(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    proc, _, out = eval_on_coco(
        coco, tmp_path, "--samples", "2", "--ttft-samples", "0", "--masks", "sam2",
        "--weights", "random", "--sam2-image-size", "256", "--device", "cpu",
        "--torch-threads", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["masks"] == "sam2"
    records = report["hallucination"]["records"]
    assert len(records) == 2 and all("error" not in r for r in records)
    # Random weights: the masks are SAM2's own (meaningless) ones, compared with the annotation's.
    assert all(0.0 <= r["sam2_mask_iou"] <= 1.0 for r in records)


@pytest.mark.parametrize(
    "segmentation",
    [
        [[10, 10]],  # one point
        [[]],  # no point
        [[10, 10, 50, 10, 50]],  # odd length
        [[10, 10, 50, 50]],  # two points: pycocotools would read them as a box
    ],
)
def test_a_degenerate_polygon_is_a_data_error_not_a_mask(segmentation: list[Any]) -> None:
    from workers.evaluation.data import DataError, segmentation_mask

    with pytest.raises(DataError, match="no polygon of three points or more"):
        segmentation_mask(segmentation, (64, 64), (0.0, 0.0, 10.0, 10.0))
    # The usable polygons of a list are kept, the degenerate ones left out.
    square = [10, 10, 30, 10, 30, 30, 10, 30]
    mask = segmentation_mask([*segmentation, square], (64, 64), (0.0, 0.0, 10.0, 10.0))
    assert mask[20, 20] and not mask[5, 5] and not mask[40, 40]


@pytest.mark.parametrize(
    "segmentation, why",
    [
        # Runs that stop short of the size: pycocotools filled the rest with whatever memory
        # held (a different mask each run), and the sample was scored against it.
        ({"size": [64, 64], "counts": "1"}, "RLE runs cover 1 pixels, size 64x64 needs 4096"),
        ({"size": [64, 64], "counts": [5, 10]}, "RLE runs cover 15 pixels"),
        # A valid RLE of another picture: its mask was not the image's size.
        ({"size": [8, 8], "counts": "0P2"}, "the segmentation's RLE is 8x8, its image 64x64"),
        ({"size": [64, 64], "counts": "é"}, "a character outside COCO's range"),
        ("1234", "neither polygons nor an RLE"),
    ],
)
def test_an_rle_that_is_not_a_region_of_its_image_is_a_data_error(
    segmentation: Any, why: str
) -> None:
    from pycocotools import mask as mask_utils

    from workers.evaluation.data import DataError, segmentation_mask

    with pytest.raises(DataError, match=re.escape(why)):
        segmentation_mask(segmentation, (64, 64), (0.0, 0.0, 10.0, 10.0))
    # A good one, as pycocotools writes it (bytes in memory, a str in JSON), is its mask.
    square = np.zeros((64, 64), dtype=np.uint8)
    square[10:30, 20:40] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    for counts in (rle["counts"], rle["counts"].decode()):
        mask = segmentation_mask({"size": rle["size"], "counts": counts}, (64, 64), (0, 0, 1, 1))
        assert np.array_equal(mask, square.astype(bool))


def test_an_instance_with_a_degenerate_polygon_is_skipped_with_its_reason(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, images = coco
    doc = json.loads(annotations.read_text())
    doc["annotations"][0]["segmentation"] = [[10, 10]]
    broken = tmp_path / "instances.json"
    broken.write_text(json.dumps(doc))
    proc, _, out = eval_on_coco((broken, images), tmp_path, "--samples", "3", "--ttft-samples", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    first, *rest = report["hallucination"]["records"]
    assert "no polygon of three points or more" in first["error"]
    assert [r.get("error") for r in rest] == [None, None]
    assert report["hallucination"]["samples"] == 2 and report["hallucination"]["failed"] == 1
    assert "no polygon of three points" in report["ttft"]["records"][0]["error"]


def test_a_run_where_every_sample_failed_exits_1_and_keeps_the_earlier_report(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, images = coco
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"an": "earlier report"}\n')
    (out / "report.md").write_text("earlier table\n")
    # A server that answers every request with an error, as one serving another model does.
    with ScriptedVLMServer("a thing", status_code=404) as srv:
        proc = run_eval(
            "--images", str(images), "--coco", str(annotations), "--samples", "2",
            "--ttft-samples", "1", "--vlm-url", srv.url, "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "nothing was measured, no report written" in proc.stderr
    assert "all 3 samples failed" in proc.stderr and "404" in proc.stderr
    assert (out / "report.json").read_text() == '{"an": "earlier report"}\n'
    assert (out / "report.md").read_text() == "earlier table\n"


def test_a_baseline_of_the_same_model_name_has_its_own_column_heading() -> None:
    from workers.evaluation.runner import markdown_report

    # A fine-tune served under the base model's name, compared with the base model's run.
    not_run = {k: {"not_run": "not run"} for k in ("captioning", "grounding", "hallucination")}
    report = {"config": {"model": "qwen"}, **not_run, "ttft": {"not_run": "not run"}}
    header = markdown_report(report, baseline=report).splitlines()[0]
    assert header == "| dimension | metric | baseline: qwen | this run: qwen | samples |"


@pytest.mark.parametrize("baseline", ["{}", "[1, 2]", '{"captioning": {"metrics": "high"}}'])
def test_a_baseline_that_is_no_report_is_refused_before_any_work(
    coco: tuple[Path, Path], tmp_path: Path, baseline: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    annotations, images = coco
    given = tmp_path / "baseline.json"
    given.write_text(baseline)
    out = tmp_path / "out"
    argv = ["eval", "--images", str(images), "--coco", str(annotations), "--baseline", str(given),
            "--vlm-url", "http://127.0.0.1:9/v1", "--out", str(out), "--no-progress"]  # fmt: skip
    # JSON of another shape was taken: the whole run, report.json written, then a traceback
    # writing report.md.
    with pytest.raises(SystemExit) as exit_:
        main.cli(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--baseline {given}: not a report.json that `fmu-live eval` wrote" in err
    assert not out.exists()


def test_a_model_that_thinks_unannounced_is_scored_on_its_answers_only(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    # A thinking model run as a plain family (no reasoning parser): each answer is reasoning, a
    # </think> nothing opened, then the answer. The captions scored, the descriptions verified
    # and the timed chat step keep the answer alone (the chat step used to crash on the retraction).
    annotations, images = coco
    captions = tmp_path / "captions.jsonl"
    row = {"image": "coffee.png", "bbox": [175, 30, 230, 270], "captions": ["a red cup"]}
    captions.write_text(json.dumps(row) + "\n")
    inner = spotlight_answerer(description="a red cup", chat_answer="It is red.")

    def answer(body: dict[str, Any]) -> list[str]:
        return ["The user wants", " the outlined thing.", "</think>\n\n", inner(body)]

    out = tmp_path / "out"
    with ScriptedVLMServer(answer) as srv:
        proc = run_eval(
            "--images", str(images), "--coco", str(annotations), "--captions", str(captions),
            "--samples", "1", "--ttft-samples", "1", "--verify-max-attempts", "1",
            "--vlm-url", srv.url, "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["prediction"] for r in report["captioning"]["records"]] == ["a red cup"]
    assert report["captioning"]["metrics"]["rouge_l"]["value"] == pytest.approx(1.0)
    (record,) = report["hallucination"]["records"]
    assert record["attempt_texts"] == ["a red cup"]
    assert report["ttft"]["failed"] == 0 and report["ttft"]["steps"]["chat"]["stateless_ms"] > 0


@pytest.mark.parametrize("option", ["--referring", "--captions"])
def test_a_bad_referring_or_captions_line_is_refused_before_any_vlm_request(
    coco: tuple[Path, Path], tmp_path: Path, option: str
) -> None:
    _, images = coco
    good = {
        "--referring": {"image": "coffee.png", "expression": "the cup", "bbox": [175, 30, 55, 240]},
        "--captions": {"image": "coffee.png", "bbox": [175, 30, 55, 240], "captions": ["a cup"]},
    }
    bad = tmp_path / "bad.jsonl"  # its second line lacks what each needs
    bad.write_text(json.dumps(good[option]) + "\n" + json.dumps({"image": "coffee.png"}) + "\n")
    # The old code read --referring only after captioning had asked the VLM, and --captions'
    # second line only for TTFT, after the first sample had been described.
    other = ["--captions", str(tmp_path / "good.jsonl")] if option == "--referring" else []
    (tmp_path / "good.jsonl").write_text(json.dumps(good["--captions"]) + "\n")
    out = tmp_path / "out"
    with ScriptedVLMServer("a cup") as srv:
        proc = run_eval(
            "--images", str(images), option, str(bad), *other, "--samples", "1",
            "--vlm-url", srv.url, "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
        assert srv.requests == []
    assert proc.returncode == 2, proc.stderr
    assert f"{option}: " in proc.stderr and f"{bad}, line 2: needs 'image'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_ctrl_c_ends_eval_with_a_line_not_a_traceback(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    """Interrupted while the VLM answers: exit status 130 and one line (it was a traceback of
    asyncio's cancellation, 40-odd lines)."""
    import signal
    import threading

    annotations, images = coco
    asked = threading.Event()

    async def slow(body: dict[str, Any]) -> str:
        asked.set()
        await asyncio.sleep(60)
        return "a cup"

    with ScriptedVLMServer(slow) as srv:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "eval", "--no-progress", "--coco",
             str(annotations), "--images", str(images), "--samples", "1", "--ttft-samples", "0",
             "--vlm-url", srv.url, "--out", str(tmp_path / "out")],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # A terminal's Ctrl-C: an xdist worker ignores SIGINT, and its children inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        try:
            assert asked.wait(120), "the VLM was never asked"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, err
    assert "fmu-live eval: interrupted" in err and "Traceback" not in err, err


@pytest.mark.parametrize("loader", ["referring", "captions"])
@pytest.mark.parametrize(
    ("change", "says"),
    [
        # scored as a miss (mIoU 0) and counted as a measured sample
        ({"bbox": [10, 10, 0, 0]}, "needs w and h above 0, got [10, 10, 0, 0]"),
        ({"bbox": [50, 50, -20, -20]}, "needs w and h above 0"),
        ({"bbox": [10, 10, float("nan"), 5]}, "four finite numbers"),
        ({"bbox": [True, 1, 2, 3]}, "four finite numbers"),
        # a traceback: PosixPath / int
        ({"image": 5}, "'image' must be an image file name, got 5"),
        ({"image": ["a.jpg"]}, "'image' must be an image file name"),
    ],
)
def test_a_referring_or_caption_line_with_a_box_or_image_of_no_use_is_refused(
    loader: str, change: dict[str, Any], says: str, tmp_path: Path
) -> None:
    from workers.evaluation.data import DataError, load_referring, load_region_captions

    row = {"image": "a.jpg", "bbox": [1, 2, 30, 40], "expression": "the cup", "captions": ["a cup"]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({**row, **change}) + "\n")
    load = load_referring if loader == "referring" else load_region_captions
    with pytest.raises(DataError) as refused:
        load(path, tmp_path)
    assert f"{path}, line 1: " in str(refused.value) and says in str(refused.value)


@pytest.mark.parametrize("option", ["--bertscore-model", "--clip-model"])
def test_a_model_folder_without_weights_is_refused_before_any_work(
    coco: tuple[Path, Path], tmp_path: Path, option: str
) -> None:
    _, images = coco
    captions = tmp_path / "captions.jsonl"
    row = {"image": "coffee.png", "bbox": [175, 30, 55, 240], "captions": ["a red cup"]}
    captions.write_text(json.dumps(row) + "\n")
    folder = tmp_path / "model"  # its config downloaded, its weights not
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    out = tmp_path / "out"
    # The old code described every region, then failed loading the model: a traceback at the end.
    with ScriptedVLMServer("a red cup") as srv:
        proc = run_eval(
            "--images", str(images), "--captions", str(captions), option, str(folder),
            "--vlm-url", srv.url, "--out", str(out), cwd=tmp_path,
        )  # fmt: skip
        assert srv.requests == []
    assert proc.returncode == 2
    assert f"{option}: {folder} has a config.json but no weights" in proc.stderr
    assert "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_model_folder_that_cannot_be_loaded_is_a_score_not_computed(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("torchmetrics")
    import numpy as np

    from workers.evaluation import metrics

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"cut short by a failed download")
    # It raised from transformers at the end of the run, the report unwritten.
    score = metrics.bert_score_f1(["a cup"], [["a cup"]], folder)
    assert score.value is None
    assert score.reason.startswith(f"not computed: cannot load the model at {folder} (")
    clip = metrics.clip_score([np.zeros((8, 8, 3), np.uint8)], ["a cup"], folder)
    assert clip.value is None and clip.reason.startswith("not computed: cannot load the model")
