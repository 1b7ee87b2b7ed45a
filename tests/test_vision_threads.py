"""ImageSegmenters made on several threads at once, as the service makes them (a Clip describe's
on the vision thread beside an auto-refine's on the event loop): each works. SAM2's image
predictor scripts its transforms with torch.jit when it is made, and two threads scripting at
once broke torch's scripting state for the rest of the process (every later segmenter failed:
Clip describe, auto-refine and Image's clicks answered "a bug in the server" until a restart).

In a fresh interpreter: torch.jit's state is the process's, and the race is at its first
scripting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import threading
import numpy as np
from workers.vision import ImageSegmenter, load_sam2

model = load_sam2("tiny", weights="random", device="cpu", image_size=128)
failed = []

def make(start):
    start.wait()
    try:
        ImageSegmenter(model)
    except Exception as exc:
        failed.append(repr(exc))

for _ in range(3):
    start = threading.Barrier(8)
    threads = [threading.Thread(target=make, args=(start,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
seg = ImageSegmenter(model)  # and one made afterwards segments
seg.set_image(np.full((64, 64, 3), 90, np.uint8))
seg.segment(points=[(32, 32)], labels=[1])
print(len(failed), failed[:1])
"""


def test_segmenters_made_on_threads_at_once_all_work() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0 []", proc.stdout
