"""COCO RLE: `workers.masks` beside pycocotools, on the masks the service encodes every frame.

    encode   rle_encode (pycocotools' encode, its bytes made a str) against pycocotools' encode
    decode   rle_decode (ours, numpy: it checks that the runs cover the size exactly) against
             pycocotools' decode (which fills what a short RLE leaves with whatever memory held)

Masks: a smooth one (an ellipse and a disc, as SAM2 draws an object) and a speckled one (the same
with 2% of pixels flipped, as random weights or a textured object give: many more runs), at
256x256, 1280x720 and 1920x1080. Both sides are timed interleaved, in one run.

Run: .venv/bin/python benchmarks/masks.py [--repeats 200]
Prints a table and writes benchmarks/out/masks.json. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as coco_mask  # noqa: E402

from workers.masks import rle_decode, rle_encode  # noqa: E402

SIZES = [(256, 256), (1280, 720), (1920, 1080)]


def _mask(width: int, height: int, speckled: bool) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    cv2.ellipse(m, (width // 2, height // 2), (width // 5, height // 4), 20, 0, 360, 1, -1)
    cv2.circle(m, (width // 5, height // 3), height // 10, 1, -1)
    mask = m.astype(bool)
    if speckled:
        mask ^= np.random.default_rng(0).random(mask.shape) < 0.02
    return mask


def _median_ms(pairs: list[tuple[Callable[[], Any], Callable[[], Any]]], repeats: int) -> list:
    """Each pair's two functions timed one after the other, `repeats` times: median ms each."""
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in pairs]
    for _ in range(repeats):
        for (ours, theirs), (t_ours, t_theirs) in zip(pairs, times, strict=True):
            for fn, out in ((ours, t_ours), (theirs, t_theirs)):
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000)
    return [(statistics.median(a), statistics.median(b)) for a, b in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "masks.json")
    args = parser.parse_args()

    cases, pairs = [], []
    for width, height in SIZES:
        for speckled in (False, True):
            mask = _mask(width, height, speckled)
            rle = rle_encode(mask)
            theirs = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
            assert theirs["counts"].decode() == rle["counts"]  # the same bytes
            assert np.array_equal(rle_decode(rle), mask)
            assert np.array_equal(coco_mask.decode(theirs).astype(bool), mask)
            name = f"{width}x{height} {'speckled' if speckled else 'smooth'}"
            runs = len(rle["counts"])
            cases += [(name, "encode", runs), (name, "decode", runs)]
            pairs += [
                (
                    lambda m=mask: rle_encode(m),
                    lambda m=mask: coco_mask.encode(np.asfortranarray(m, dtype=np.uint8)),
                ),
                (
                    lambda r=rle: rle_decode(r),
                    lambda r=theirs: coco_mask.decode(r).astype(bool, order="C"),
                ),
            ]
    rows = []
    print("| mask | step | counts chars | ours ms | pycocotools ms | ours / pycocotools |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (name, step, chars), (ours, theirs) in zip(
        cases, _median_ms(pairs, args.repeats), strict=True
    ):
        rows.append(
            {"mask": name, "step": step, "chars": chars, "ours_ms": ours, "coco_ms": theirs}
        )
        print(f"| {name} | {step} | {chars} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "repeats": args.repeats}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
