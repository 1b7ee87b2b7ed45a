"""`fmu-live dataset`: the Spotlight Data Engine on the tiny COCO set with a scripted teacher."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest

from tests.coco_tiny import write_coco_tiny
from tests.fakes.openai_server import ScriptedVLMServer
from workers.reasoning.images import decode_data_url

ROOT = Path(__file__).resolve().parents[1]


def run_dataset(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "dataset", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def load_sharegpt(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every dataset dataset_info.json names, checked as LLaMA-Factory reads ShareGPT data."""
    info = json.loads((out / "dataset_info.json").read_text())
    data = {}
    for name, entry in info.items():
        assert entry["formatting"] == "sharegpt"
        cols, tags = entry["columns"], entry["tags"]
        rows = [json.loads(line) for line in (out / entry["file_name"]).read_text().splitlines()]
        for row in rows:
            turns = row[cols["messages"]]
            roles = [t[tags["role_tag"]] for t in turns]
            assert roles == [tags["user_tag"], tags["assistant_tag"]] * (len(roles) // 2)
            images = row[cols["images"]]
            assert turns[0][tags["content_tag"]].count("<image>") == len(images) >= 1
            for rel in images:
                assert cv2.imread(str(out / rel)) is not None, f"{rel} is missing or unreadable"
        data[name] = rows
    return data


def test_dataset_is_sharegpt_with_every_image_and_resumes(tmp_path: Path) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"

    teacher_fails_small_objects = [True]

    def teacher(body: dict[str, Any]) -> str:
        urls = [
            p["image_url"]["url"]
            for p in body["messages"][0]["content"]
            if p["type"] == "image_url"
        ]
        if len(urls) == 2 and teacher_fails_small_objects[0]:
            return ""  # the small object's request (Spotlight + zoom): the teacher fails it
        h, w = decode_data_url(urls[0]).shape[:2]
        return f"an object in a {w}x{h} picture"

    with ScriptedVLMServer(teacher) as srv:
        first = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--vlm-api-key", "sk-test", "--max-per-image", "2",
        )  # fmt: skip
    assert first.returncode == 0, first.stderr
    # 2 per image: person, helmet, cup, spoon, cat, nose; the nose fails
    assert "5 described" in first.stdout and "1 failed" in first.stdout
    assert "annotation 8" in first.stderr  # the teacher's failure is logged
    data = load_sharegpt(out)
    described = data["fmu_spotlight"]
    assert len(described) == 5
    assert all(r["messages"][1]["content"].startswith("an object in a ") for r in described)
    assert all(
        "Describe only the highlighted object" in r["messages"][0]["content"] for r in described
    )
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["describe:8"]
    # Resumed: only the failed object is asked again (and now answered); nothing is written twice.
    teacher_fails_small_objects[0] = False
    with ScriptedVLMServer(teacher) as srv:
        again = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--max-per-image", "2",
        )  # fmt: skip
        requests_again = len(srv.requests)
    assert again.returncode == 0, again.stderr
    assert requests_again == 1
    assert "1 described" in again.stdout and "13 already done" in again.stdout  # 5 + 8 grounding
    assert (out / "failures.jsonl").read_text() == ""
    described = load_sharegpt(out)["fmu_spotlight"]
    assert len(described) == 6
    (nose,) = [r for r in described if r["id"] == "describe:8"]
    # the small object: its Spotlight and the zoom crop, the service's zoom prompt
    assert nose["images"] == ["images/3_8_spotlight.jpg", "images/3_8_zoom.jpg"]
    assert nose["messages"][0]["content"].startswith("<image><image>")
    assert "zoomed-in view" in nose["messages"][0]["content"]
    spot, zoom = (cv2.imread(str(out / p)) for p in nose["images"])
    assert max(zoom.shape[:2]) > 100 and spot.shape != zoom.shape
    # Resumed for a student of another family: refused, nothing asked or written (it said "0
    # described, ... already done" and left Qwen2.5's pixel boxes for a Qwen3 student).
    kept = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    with ScriptedVLMServer(teacher) as srv:
        other = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--student-model", "Qwen/Qwen3-VL-8B-Instruct",
        )  # fmt: skip
        assert srv.requests == []
    assert other.returncode == 2, other.stderr
    assert "its records were made for a qwen2.5-vl student" in other.stderr
    assert "this run's is qwen3-vl" in other.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == kept


@pytest.mark.parametrize(
    "student,expected_max",
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", None),  # absolute: pixels of the image sent
        ("Qwen/Qwen3-VL-8B-Instruct", 1000),  # relative: 0..1000
    ],
)
def test_grounding_samples_follow_the_student_family(
    tmp_path: Path, student: str, expected_max: int | None
) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    with ScriptedVLMServer("a thing") as srv:
        proc = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--categories", "cat", "--student-model", student,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    grounding = load_sharegpt(out)["fmu_grounding"]
    assert len(grounding) == 1
    row = grounding[0]
    (box,) = json.loads(row["messages"][1]["content"])
    assert box["label"] == "cat"
    image = cv2.imread(str(out / row["images"][0]))
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box["bbox_2d"]
    # the cat's box is [0, 0, 431, 300] in the 451 x 300 photograph
    if expected_max is None:
        assert (x0, y0) == (0, 0) and abs(x1 - 431 * w / 451) <= 1 and abs(y1 - h) <= 1
        assert f"({w}x{h})" in row["messages"][0]["content"]
    else:
        assert (x0, y0) == (0, 0) and abs(x1 - 431 * 1000 / 451) <= 1 and y1 == 1000
        assert "from 0 to 1000" in row["messages"][0]["content"]


def test_llamafactory_recipe_names_the_datasets_the_engine_writes() -> None:
    import yaml

    from workers.dataset.engine import dataset_info

    recipe = yaml.safe_load((ROOT / "docs/llamafactory/qwen2_5vl_lora_sft.yaml").read_text())
    assert set(recipe["dataset"].split(",")) == set(dataset_info("fmu", grounding=True))
    assert recipe["finetuning_type"] == "lora" and recipe["template"] == "qwen2_vl"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_unreadable_image_fails_its_records_and_the_run_goes_on(tmp_path: Path) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    (images / "astronaut.png").unlink()  # listed in the COCO file, gone from the folder
    with ScriptedVLMServer("a thing") as srv:

        def run(*extra: str) -> subprocess.CompletedProcess[str]:
            return run_dataset(
                "--coco", str(annotations), "--images", str(images), "--out", str(out),
                "--vlm-url", srv.url, "--max-per-image", "1", *extra,
            )  # fmt: skip

        first = run()
        assert first.returncode == 0, first.stderr
        # person (astronaut.png) fails; cup and cat are described. Grounding covers only the
        # described images: coffee.png's cup, spoon, saucer and chelsea.png's cat and nose.
        assert "2 described, 5 grounding samples, 0 already done, 1 failed" in first.stdout
        (failure,) = _lines(out / "failures.jsonl")
        assert failure["id"] == "describe:1" and "cannot read image" in failure["error"]
        assert {r["id"].split(":")[1] for r in _lines(out / "grounding.jsonl")} == {"2", "3"}

        again = run()  # the missing image is tried again, the rest is done
        assert again.returncode == 0, again.stderr
        assert "0 described, 0 grounding samples, 7 already done, 1 failed" in again.stdout

        # An image that goes missing after its objects were described: its grounding records
        # fail, one by one, and the others are made.
        (images / "chelsea.png").unlink()
        (out / "grounding.jsonl").write_text("")  # the grounding records to be made again
        third = run()
    assert third.returncode == 0, third.stderr
    assert "3 grounding samples" in third.stdout and "3 failed" in third.stdout
    assert sorted(f["id"] for f in _lines(out / "failures.jsonl")) == [
        "describe:1",
        "ground:3:cat",
        "ground:3:nose",
    ]


def test_an_instance_with_a_degenerate_polygon_is_a_failure_with_its_reason(
    tmp_path: Path,
) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    doc = json.loads(annotations.read_text())
    doc["annotations"][3]["segmentation"] = [[10, 10]]  # the cup: one point
    annotations.write_text(json.dumps(doc))
    out = tmp_path / "data"
    with ScriptedVLMServer("a thing") as srv:
        for _ in range(2):  # and again: a rerun is not stopped by it either
            proc = run_dataset(
                "--coco", str(annotations), "--images", str(images), "--out", str(out),
                "--vlm-url", srv.url, "--concurrency", "1",
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            (failure,) = _lines(out / "failures.jsonl")
            assert failure["id"] == "describe:4"
            assert "no polygon of three points or more" in failure["error"]
    assert "0 described, 0 grounding samples, 15 already done, 1 failed" in proc.stdout
    assert len(_lines(out / "spotlight.jsonl")) == 7


def test_a_run_where_the_teacher_fails_everything_exits_1(tmp_path: Path) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    (images / "astronaut.png").unlink()  # its record fails first, before any teacher answer
    with ScriptedVLMServer("a thing", status_code=404) as srv:  # say, a wrong --vlm-model
        proc = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--max-per-image", "1",
        )  # fmt: skip
    assert proc.returncode == 1
    assert "0 described, 0 grounding samples, 0 already done, 3 failed" in proc.stdout
    # The teacher's failure is quoted, not the missing image's that came first.
    (said,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert re.match(
        r"error: all 3 records this run tried failed \(first: annotation \d+: .*404", said
    )
    assert "is the teacher at --vlm-url serving --vlm-model?" in said


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    args = ["--coco", str(annotations), "--images", str(images), "--out", str(out)]
    with ScriptedVLMServer("a thing") as srv:
        first = run_dataset(*args, "--vlm-url", srv.url, "--max-per-image", "1", "--no-grounding")
        assert first.returncode == 0, first.stderr
        kept = (out / "spotlight.jsonl").read_text()
        # A run killed while writing the cat's record: a line cut short.
        cat = [line for line in kept.splitlines() if '"describe:7"' in line][0]
        torn = kept.replace(cat + "\n", "") + cat[: len(cat) // 2]
        (out / "spotlight.jsonl").write_text(torn)
        again = run_dataset(*args, "--vlm-url", srv.url, "--max-per-image", "1", "--no-grounding")
    assert again.returncode == 0, again.stderr
    assert "1 described, 0 grounding samples, 2 already done" in again.stdout
    rows = _lines(out / "spotlight.jsonl")  # every line whole
    assert sorted(r["id"] for r in rows) == ["describe:1", "describe:4", "describe:7"]
    assert (out / "spotlight.jsonl").read_text().startswith(torn[: torn.rindex("\n") + 1])
    assert not list(out.glob("*.part"))


def test_a_rerun_without_grounding_keeps_the_earlier_grounding_records_listed(
    tmp_path: Path,
) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    args = ["--coco", str(annotations), "--images", str(images), "--out", str(out)]
    with ScriptedVLMServer("a thing") as srv:
        first = run_dataset(*args, "--vlm-url", srv.url, "--max-per-image", "1")
        assert first.returncode == 0, first.stderr
        grounded = load_sharegpt(out)["fmu_grounding"]
        assert grounded
        # More objects per image, described only: the grounding records made before stay named.
        again = run_dataset(*args, "--vlm-url", srv.url, "--no-grounding")
    assert again.returncode == 0, again.stderr
    data = load_sharegpt(out)
    assert data["fmu_grounding"] == grounded
    assert len(data["fmu_spotlight"]) > 3


def test_a_teacher_that_thinks_unannounced_gives_its_answer_alone(tmp_path: Path) -> None:
    # A thinking teacher run as a plain family (no reasoning parser): its reasoning, closed by a
    # </think> nothing opened, is not the description the student learns from.
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    answer = ["The outline is", " round; say its colour.", "</think>\n\n", "A red cup."]
    with ScriptedVLMServer([answer]) as srv:  # every request gets these pieces
        proc = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--max-per-image", "1",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    described = load_sharegpt(out)["fmu_spotlight"]
    assert described and all(r["messages"][1]["content"] == "A red cup." for r in described)


def test_an_unknown_category_is_refused_before_the_folder_is_made(tmp_path: Path) -> None:
    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    # The old code made the dataset folder (dataset_info.json, images/), then exited 1.
    with ScriptedVLMServer("a thing") as srv:
        proc = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(out),
            "--vlm-url", srv.url, "--categories", "cup,persn",
        )  # fmt: skip
        assert srv.requests == []
    assert proc.returncode == 2
    assert "--categories: category 'persn' (did you mean 'person'?) is not in" in proc.stderr
    assert "its categories: cat, cup, helmet, nose, person, saucer, space shuttle" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_an_out_folder_whose_images_are_the_coco_images_is_refused(tmp_path: Path) -> None:
    # --out the COCO folder itself: the dataset's images/ would be COCO's, and the grounding
    # images (<image id>.jpg) written over photos of those names.
    annotations, images = write_coco_tiny(tmp_path / "coco")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    with ScriptedVLMServer("a thing") as srv:
        proc = run_dataset(
            "--coco", str(annotations), "--images", str(images), "--out", str(images.parent),
            "--vlm-url", srv.url,
        )  # fmt: skip
        assert srv.requests == []
    assert proc.returncode == 2, proc.stderr
    assert f"--out {images.parent}: its images/ folder is --images {images}" in proc.stderr
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    assert not (images.parent / "dataset_info.json").exists()


def test_server_only_variables_leave_a_dataset_run_alone(tmp_path: Path) -> None:
    import os

    annotations, images = write_coco_tiny(tmp_path / "coco")
    out = tmp_path / "data"
    # Set for the server, each invalid; dataset takes none of them. FMU_VLM_URL it does take.
    server_only = {"FMU_PORT": "http", "FMU_AUTH_TOKEN": "short", "FMU_SSL_CERTFILE": "/no.pem"}
    with ScriptedVLMServer("an object") as srv:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "dataset", "--no-progress", "--coco",
             str(annotations), "--images", str(images), "--out", str(out), "--max-per-image",
             "1", "--no-grounding"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, **server_only, "FMU_VLM_URL": srv.url},
        )  # fmt: skip
    # The old code refused the run: "invalid settings: --port / FMU_PORT ...".
    assert proc.returncode == 0, proc.stderr
    assert "3 described" in proc.stdout
    assert len(load_sharegpt(out)["fmu_spotlight"]) == 3
