"""`fmu-live eval` against the real CPU vLLM serving the tiny random-weight Qwen2.5-VL
(tests/vllm_server.py): the wire, not the numbers (tests/test_eval.py has those, scripted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.coco_tiny import write_coco_tiny
from tests.test_eval import run_eval
from tests.vllm_server import VLLMServer


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    return write_coco_tiny(tmp_path / "coco")


def test_eval_against_the_real_vllm_server(
    real_vllm: VLLMServer, coco: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every request of every dimension is answered by real vLLM."""
    annotations, images = coco
    captions = tmp_path / "captions.jsonl"
    captions.write_text(
        json.dumps({"image": "coffee.png", "bbox": [175, 30, 230, 270], "captions": ["a cup"]})
        + "\n"
    )
    referring = tmp_path / "refs.jsonl"
    referring.write_text(
        json.dumps({"image": "coffee.png", "expression": "the cup", "bbox": [175, 30, 230, 270]})
        + "\n"
    )
    out = tmp_path / "out"
    proc = run_eval(
        "--images", str(images), "--coco", str(annotations), "--captions", str(captions),
        "--referring", str(referring), "--samples", "1", "--ttft-samples", "1",
        # one describe attempt: a random model's words never ground back, and each retry is
        # the same wire again (the slowest test of the suite, for nothing more)
        "--verify-max-attempts", "1",
        "--vlm-url", real_vllm.base_url, "--vlm-model", real_vllm.model, "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    for section in ("captioning", "grounding", "hallucination"):
        errors = [r.get("error") for r in report[section]["records"] if "error" in r]
        assert not errors and report[section]["samples"] >= 1, (section, errors)
    assert report["ttft"]["failed"] == 0
    assert all(report["ttft"]["steps"][s]["stateless_ms"] for s in ("describe", "verify", "chat"))
