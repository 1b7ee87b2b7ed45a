"""Write a tiny random-weight Qwen2.5-VL (built from a config, nothing downloaded) to a folder.

For smoke runs of the offline commands where no real model can be had: `fmu-live eval
--vlm-backend transformers --vlm-model FOLDER` loads it in-process. Its answers are gibberish
(random weights, a 300-token vocabulary trained here on two sentences), so a run shows the shape
of the tables and real per-request timings of a tiny model, never model quality. It is the model
tests/test_reasoning_transformers.py builds (`tests.tiny_vlm.IN_PROCESS`), with the seed given.

Run:  .venv/bin/python benchmarks/tiny_vlm.py --out /tmp/tiny-qwen2.5-vl
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tiny_vlm import IN_PROCESS, build, save  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder to write the model to.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save(*build(dataclasses.replace(IN_PROCESS, seed=args.seed)), args.out))


if __name__ == "__main__":
    main()
