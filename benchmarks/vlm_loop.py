"""The VLM in the segmentation loop at 720p: checked Find, a 3-step auto-refine and find-all, end
to end through the Image API (upload encoded once, then every step decoder-only), with SAM2 on
random weights. The VLM is a zero-latency scripted OpenAI-compatible server (the figures are then
our own cost: SAM2 decoder passes, Spotlights, JPEG, HTTP), or, with --real-vllm, the tiny
random-weight Qwen2.5-VL served by a real vLLM (tests/vllm_server.py; FMU_VLLM_PYTHON names its
Python). Also find-all's region proposals alone: sam2's automatic mask generator on the image's
cached embedding (no encode).

    .venv/bin/python benchmarks/vlm_loop.py [--image-size 512] [--runs 3] [--real-vllm]

Prints a table and writes benchmarks/out/vlm_loop.json. Not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

W, H = 1280, 720


def frame() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1).astype(np.uint8)
    img[200:500, 400:800] = (230, 20, 20)
    img[100:250, 900:1100] = (20, 20, 230)
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=512, help="SAM2 input resolution")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--points-per-side", type=int, default=4)
    ap.add_argument("--real-vllm", action="store_true", help="the tiny Qwen2.5-VL on real vLLM")
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from streamer.app import create_app
    from streamer.services import build_reasoner
    from streamer.settings import Settings
    from tests.conftest import CheckedFindScript, request_text
    from tests.fakes.openai_server import ScriptedVLMServer
    from workers.reasoning.images import fitted_size
    from workers.vision import load_sam2

    model = load_sam2("tiny", weights="random", device="cpu", image_size=args.image_size, seed=0)
    sw, sh = fitted_size(W, H, 768)

    def click(kind: str, x: float, y: float) -> str:
        return json.dumps({"action": kind, "point_2d": [round(x * sw / W), round(y * sh / H)]})

    refine = [
        click("positive", 450, 250),
        click("negative", 1000, 150),
        click("positive", 700, 450),
    ]
    find = CheckedFindScript(
        [(400, 200, 800, 500), (900, 100, 1100, 250)], ["yes", "no"] * 100, (W, H)
    )
    counts = {"refine": 0}

    def answer(body: dict[str, Any]) -> str:
        if "next click" in request_text(body):
            counts["refine"] += 1
            return refine[(counts["refine"] - 1) % 3]
        if "Classify each region" in request_text(body):
            return '{"answers": ["yes", "no", "yes", "no"]}'
        return find(body)

    buf = io.BytesIO()
    Image.fromarray(frame()).save(buf, format="PNG")
    rows: dict[str, list[float]] = {
        "checked_find": [],
        "auto_refine_3": [],
        "proposals": [],
        "find_all": [],
        "find_all_proposing": [],
    }
    requests: dict[str, int] = {}
    notes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if args.real_vllm:
            from tests.vllm_server import VLLMServers

            servers = VLLMServers(ROOT / "benchmarks" / "out")
            stack.callback(servers.stop_all)
            server = servers.use("qwen2.5-vl")
            reasoner, _ = build_reasoner(Settings(vlm_url=server.base_url, vlm_model=server.model))
        else:
            srv = stack.enter_context(ScriptedVLMServer.zero_latency(answer=answer))
            reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(
            data_dir=ROOT / "benchmarks" / "out" / "vlm_loop_data",
            find_all_points_per_side=args.points_per_side,
            # random weights: SAM2's quality filters off, so the grid proposes regions
            find_all_min_iou=0.0,
            find_all_min_stability=0.0,
        )
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        client = stack.enter_context(TestClient(app))
        for _ in range(args.runs):
            img = client.post(
                "/api/images", files={"file": ("f.png", buf.getvalue(), "image/png")}
            ).json()
            base = f"/api/images/{img['id']}"
            t0 = time.perf_counter()
            r = client.post(f"{base}/find", json={"phrase": "the red block"})
            rows["checked_find"].append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
            found = r.json()
            requests["checked_find"] = 1 + len(found["objects"]) + len(found["rejected"])
            # auto-refine on a clicked object (a real random-weight VLM grounds nothing)
            r = client.post(f"{base}/clicks", json={"x": 600, "y": 350})
            oid = r.json()["object"]["id"]
            t0 = time.perf_counter()
            r = client.post(f"{base}/objects/{oid}/auto_refine", json={"max_steps": 3})
            rows["auto_refine_3"].append((time.perf_counter() - t0) * 1000)
            last = json.loads(r.text.splitlines()[-1])
            requests["auto_refine_3"] = last["steps"] + (last["reason"] != "limit")
            notes["auto_refine_end"] = last["reason"]
            t0 = time.perf_counter()
            lines = []
            body = {"phrase": "how many blocks?"}
            with client.stream("POST", f"{base}/find_all", json=body) as r:
                for line in r.iter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 2:  # "classifying": SAM2's proposals are made
                        rows["find_all_proposing"].append((time.perf_counter() - t0) * 1000)
            rows["find_all"].append((time.perf_counter() - t0) * 1000)
            result = lines[-1]
            assert result["type"] == "find_result", result
            requests["find_all"] = result["requests"]
            notes["find_all"] = {k: result[k] for k in ("count", "proposals", "message")}

    from workers.vision import ImageSegmenter
    from workers.vision.proposals import ProposalGrid

    seg = ImageSegmenter(model)
    seg.set_image(frame())
    n_props = 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        n_props = len(
            seg.propose(frame(), ProposalGrid(args.points_per_side, min_iou=0.0, min_stability=0.0))
        )
        rows["proposals"].append((time.perf_counter() - t0) * 1000)

    out = {
        "frame": f"{W}x{H}",
        "sam2_image_size": args.image_size,
        "runs": args.runs,
        "median_ms": {k: round(statistics.median(v), 1) for k, v in rows.items()},
        "vlm_requests": requests,
        "proposals": {"points_per_side": args.points_per_side, "masks_kept": n_props},
        "vlm": "tiny Qwen2.5-VL on real vLLM" if args.real_vllm else "scripted, zero latency",
        "notes": notes,
    }
    print(f"| query at {W}x{H}, SAM2 {args.image_size} px | median ms | VLM requests |")
    print("| --- | ---: | ---: |")
    print(
        f"| checked Find, 2 candidates | {out['median_ms']['checked_find']} | "
        f"{requests['checked_find']} |"
    )
    print(
        f"| auto-refine, 3 steps | {out['median_ms']['auto_refine_3']} | "
        f"{requests['auto_refine_3']} |"
    )
    print(
        f"| proposals alone ({args.points_per_side}x{args.points_per_side} points, cached "
        "features, main thread) | "
        f"{out['median_ms']['proposals']} | 0 |"
    )
    print(f"| find-all: proposals, in the service | {out['median_ms']['find_all_proposing']} | 0 |")
    print(f"| find-all, end to end | {out['median_ms']['find_all']} | {requests['find_all']} |")
    print(json.dumps(notes))
    dest = ROOT / "benchmarks" / "out" / "vlm_loop.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
