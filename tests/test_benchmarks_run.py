"""The long-running benchmarks still run, at their smallest: a change to a shared helper broke
soak.py and fairness.py once and nothing said so until the next soak. Figures are not judged here
(they belong in benchmarks/RESULTS.md); that each run ends and reports what it measured is."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=540
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_the_soak_runs_a_minute_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    _run(
        # a "minute" of 20 s: the script's whole path, for a third of the time
        "benchmarks/soak.py", "--minutes", "1", "--minute-s", "20", "--sessions", "1", "--fps", "5",
        "--describe-every-s", "5", "--clip-frames", "20", "--torch-threads", "1",
        "--out", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    (minute,) = report["minutes"]
    assert minute["overlays"] > 0  # the session's masks came back
    assert minute["describes_asked"] > 0 and minute["verdicts"] > 0
    assert report["clip_jobs_missing_frames"] == []


def test_the_fairness_benchmark_measures_every_case() -> None:
    stdout = _run("benchmarks/fairness.py", "--duration", "3", "--clicks", "50")
    found = re.search(r"^JSON: (.+)$", stdout, re.M)
    assert found, stdout
    report = json.loads(Path(found.group(1)).read_text())
    assert report["solo_fps"] > 0
    assert report["clip_jobs_started"] >= 1
    assert report["flood_clicks_sent"] == 50
    for case in ("beside_clip_fps", "beside_session_fps", "beside_flood_fps"):
        assert report[case] is not None


def test_the_mask_benchmark_times_every_mask_both_ways(tmp_path: Path) -> None:
    out = tmp_path / "masks.json"
    # It checks first that ours and pycocotools' make the same RLE and masks, up to 1080p.
    _run("benchmarks/masks.py", "--repeats", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {(r["mask"], r["step"]) for r in rows} == {
        (f"{size} {kind}", step)
        for size in ("256x256", "1280x720", "1920x1080")
        for kind in ("smooth", "speckled")
        for step in ("encode", "decode")
    }
    assert all(r["ours_ms"] > 0 and r["coco_ms"] > 0 for r in rows)
