"""bf16 against fp32 on the same weights and frames: how far apart are the masks and the logits?

Two StreamTrackers on one model (SAM2.1 tiny, seeded random weights), one --precision fp32 and
one bf16, get the same frames and the same clicks on frame 0: the synthetic clip of moving
shapes (3 objects: two clicks and a box), and a camera pan over each of three scikit-image
photographs (2 clicked objects). Per frame and object: mask IoU and the largest low-res logit
difference. Image mode: ImageSegmenter fp32 and bf16 on the three photographs, three prompts
each. Each bf16 call is also timed against its fp32 twin (interleaved).

Random weights make large masks, so each row also gives the share of the frame the fp32 mask
covers: an IoU of two nearly full masks says less than one of two half masks.

Prints a table and writes JSON (benchmarks/out/precision.json). Not part of the test run.

    .venv/bin/python benchmarks/precision.py [--image-size 128] [--frames 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tracking import finished  # noqa: E402
from tests.sam2_reference import Click, photo_clip, synthetic_clip, tracker_agreement  # noqa: E402
from workers.masks import mask_iou  # noqa: E402
from workers.vision import ImageSegmenter, StreamTracker, load_sam2  # noqa: E402
from workers.vision.precision import cpu_bf16_feature  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
PHOTOS = ("astronaut", "coffee", "chelsea")
# On the 128 x 96 clips (the size the tests use); the same clicks as tests/test_vision_precision.py.
SHAPES = [
    Click(1, points=[(38.0, 34.0)], labels=[1]),
    Click(2, points=[(85.0, 60.0)], labels=[1]),
    Click(3, box=(20.0, 74.0, 70.0, 90.0)),
]
PHOTO_CLICKS = [
    Click(1, points=[(64.0, 40.0)], labels=[1]),
    Click(2, points=[(30.0, 70.0)], labels=[1]),
]


class _Timed:
    """A tracker whose step() time is recorded."""

    def __init__(self, tracker: StreamTracker) -> None:
        self.tracker, self.ms = tracker, []

    def step(self, frame: np.ndarray) -> Any:
        start = time.perf_counter()
        out = self.tracker.step(frame)
        finished(self.tracker.model)
        self.ms.append((time.perf_counter() - start) * 1000)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tracker, name)


def clip_rows(model: Any, frames: int) -> list[dict[str, Any]]:
    import skimage.data

    clips = {"synthetic shapes": (synthetic_clip(frames), SHAPES)}
    for name in PHOTOS:
        clips[f"pan over {name}"] = (
            photo_clip(getattr(skimage.data, name)(), frames),
            PHOTO_CLICKS,
        )
    rows = []
    for name, (clip, clicks) in clips.items():
        fp32 = _Timed(StreamTracker(model, precision="fp32"))
        bf16 = _Timed(StreamTracker(model, precision="bf16"))
        a = tracker_agreement(fp32, bf16, clip, clicks)
        rows.append(
            {
                "clip": name,
                "objects": len(clicks),
                "frames": frames,
                "iou_min": min(a.ious),
                "iou_mean": float(np.mean(a.ious)),
                "logit_diff_max": max(a.logit_errors),
                "logit_diff_median": float(np.median(a.logit_errors)),
                "mask_share": [min(a.frame_fractions), max(a.frame_fractions)],
                "step_ms_fp32": float(np.median(fp32.ms[1:])),
                "step_ms_bf16": float(np.median(bf16.ms[1:])),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def image_rows(model: Any) -> list[dict[str, Any]]:
    import skimage.data

    rows = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        h, w = image.shape[:2]
        prompts = {
            "click (0.5, 0.4)": {"points": [(w * 0.5, h * 0.4)], "labels": [1]},
            "click (0.3, 0.7)": {"points": [(w * 0.3, h * 0.7)], "labels": [1]},
            "box": {"box": (w * 0.2, h * 0.2, w * 0.6, h * 0.7)},
        }
        out: dict[str, Any] = {}
        encode_ms = {}
        for precision in ("fp32", "bf16"):
            seg = ImageSegmenter(model, precision=precision)
            seg.set_image(image)  # warm: the first encode at a size pays kernel selection
            finished(model)
            start = time.perf_counter()
            seg.set_image(image)
            finished(model)
            encode_ms[precision] = (time.perf_counter() - start) * 1000
            out[precision] = []
            for prompt in prompts.values():
                mask, _ = seg.segment(**prompt)
                out[precision].append((mask, seg.last_low_res_logits))
        for (label, _), (m32, l32), (m16, l16) in zip(
            prompts.items(), out["fp32"], out["bf16"], strict=True
        ):
            rows.append(
                {
                    "photo": name,
                    "prompt": label,
                    "iou": mask_iou(m32, m16),
                    "logit_diff_max": float(np.abs(l32 - l16).max()),
                    "mask_share": float(m32.mean()),
                    "encode_ms_fp32": encode_ms["fp32"],
                    "encode_ms_bf16": encode_ms["bf16"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT / "precision.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_sam2(
        "tiny", weights="random", device=args.device, image_size=args.image_size, seed=0,
        precision="fp32",
    )  # fmt: skip
    results = {
        "args": vars(args),
        "native_bf16": cpu_bf16_feature(),
        "clips": clip_rows(model, args.frames),
        "images": image_rows(model),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(
        f"SAM2.1 tiny @ {args.image_size} px, bf16 vs fp32, native bf16: {results['native_bf16']}"
    )
    print(
        "\n| clip | objects x frames | IoU min | IoU mean | logit diff max | median | mask share | step fp32 / bf16 ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in results["clips"]:
        print(
            f"| {r['clip']} | {r['objects']} x {r['frames']} | {r['iou_min']:.4f} | "
            f"{r['iou_mean']:.4f} | {r['logit_diff_max']:.4f} | {r['logit_diff_median']:.4f} | "
            f"{r['mask_share'][0]:.2f}-{r['mask_share'][1]:.2f} | "
            f"{r['step_ms_fp32']:.0f} / {r['step_ms_bf16']:.0f} |"
        )
    print("\n| photo | prompt | IoU | logit diff max | mask share | encode fp32 / bf16 ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results["images"]:
        print(
            f"| {r['photo']} | {r['prompt']} | {r['iou']:.4f} | {r['logit_diff_max']:.4f} | "
            f"{r['mask_share']:.2f} | {r['encode_ms_fp32']:.0f} / {r['encode_ms_bf16']:.0f} |"
        )
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()
