"""`fmu-live merge-lora`: parsing and wiring; the work is workers/finetune/."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from streamer.cli import logs, options


def merge_lora_command(argv: Sequence[str]) -> int:
    """`fmu-live merge-lora`: a LoRA adapter merged into its base, saved for vLLM to serve."""
    from workers.finetune.merge import MergeError, check_merge, merge_lora

    parser = options.command_parser(
        "merge-lora",
        "Merge a LoRA adapter (e.g. from the LLaMA-Factory recipe in docs/llamafactory/) into "
        "its base model with peft and save full weights, config and processor to a folder that "
        "`vllm serve FOLDER` (or --vlm-model FOLDER) serves.",
    )
    parser.add_argument("--base", required=True, help="The base model: a hub id or a local folder.")
    parser.add_argument("--adapter", type=Path, required=True, help="The LoRA adapter folder.")
    options.add_out_option(parser, "A new folder for the merged model.")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="Weights' dtype; auto keeps the base's.",
    )
    parser.add_argument("--device", default="cpu", help="Where to merge (cpu, cuda, cuda:N).")
    args = parser.parse_args(argv)
    logs.quiet_noisy_logs()
    # A --base written as a path is a folder here; only then is it read as a hub id (whose error
    # for a path that is not there is about a repo id's characters).
    if args.base.startswith(("/", ".", "~")):
        options.paths_or_exit(parser, "--base", [Path(args.base).expanduser()], kind="folder")
    options.paths_or_exit(parser, "--adapter", [args.adapter], kind="folder")
    options.out_folder_or_exit(parser, args.out)
    # The device is checked as SAM2's is, before the base loads: torch's own error for a GPU
    # that is not there comes only after the whole model is read, as a traceback.
    from workers.vision.loading import SAM2LoadError, resolve_device

    try:
        device = str(resolve_device(args.device))
    except SAM2LoadError as exc:
        parser.error(f"--device: {exc}")
    # The adapter, the output folder and the base's config, before the base's weights are read:
    # what is wrong there is an argument (exit 2), as the paths and the device above.
    try:
        check_merge(args.base, args.adapter, args.out)
    except MergeError as exc:
        parser.error(f"{exc.option}: {exc}" if exc.option else str(exc))
    try:
        out = merge_lora(args.base, args.adapter, args.out, dtype=args.dtype, device=device)
    except MergeError as exc:
        sys.exit(f"error: {exc}")
    print(f"merged model saved to {out}; serve it with `vllm serve {out}`")
    return 0
