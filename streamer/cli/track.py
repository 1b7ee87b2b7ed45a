"""`fmu-live track` (and `track --ray`): parsing and wiring; the work is streamer/clip/batch.py
(and streamer/clip/cluster.py on Ray)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamer.cli import logs, options
from workers.words import plural


def track_command(argv: Sequence[str]) -> int:
    """`fmu-live track`: clips + prompts -> the web export (COCO RLE JSON, overlay MP4)."""
    from streamer.clip.batch import (
        RAY_ROOM_WAIT_S,
        BatchTracker,
        check_clip_names,
        find_clips,
        find_needs_vlm,
    )
    from streamer.clip.limits import ClipLimits
    from streamer.clip.track_prompts import load_prompts_file, parse_box, parse_find, parse_point
    from streamer.services import Services

    parser = options.command_parser(
        "track",
        "Track objects through clips without the server: the same COCO RLE JSON and overlay MP4 "
        "the page's Clip export gives, in OUT/<clip>/, with run.json (its prompts and options). "
        "A clip done with the same prompts and options is skipped (rerun to resume); one done "
        "with others is refused and kept, unless --redo. Unreadable clips are reported and "
        "skipped. Exit status 1 if any clip failed or was refused.",
    )
    parser.add_argument("clips", nargs="+", type=Path, help="Clip files and/or folders of clips.")
    options.add_out_option(
        parser, "Output folder (with --ray, also any fsspec URL: s3://...).", url=True
    )
    prompt_options = (  # repeatable; each use is one prompt, its value checked by its parser
        ("--point", parse_point, "X,Y[@FRAME]", "Track the object under this click (one object each; frame 0 unless @FRAME)."),
        ("--box", parse_box, "X0,Y0,X1,Y1[@FRAME]", "Track the object in this box (one object each)."),
        ("--find", parse_find, "PHRASE[@FRAME]", "Ground the phrase with the VLM on that frame and track every box it finds (needs a VLM: --vlm-url, or --vlm-backend transformers)."),
    )  # fmt: skip
    for flag, parse, metavar, help_text in prompt_options:
        parser.add_argument(
            flag,
            action="append",
            default=[],
            type=options.arg_type(parse),
            metavar=metavar,
            help=help_text,
        )
    parser.add_argument(
        "--prompts",
        type=Path,
        help='JSON of per-clip prompts: {"clip.mp4": [{"frame": 0, "points": [[x, y]], "labels": [1]}, {"box": [...]}, {"find": "..."}], "*": [...]}.',
    )
    parser.add_argument(
        "--no-video", action="store_true", help="Write export.json only, no overlay MP4."
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--redo",
        action="store_true",
        help="Track again the clips already done with other prompts or options (or by a run "
        "that kept no run.json), replacing their results; clips done as asked are still skipped.",
    )
    cluster = parser.add_argument_group(
        "Ray cluster",
        "With --ray the clips are spread over a Ray cluster (pip install 'fmu-live[ray]'): one "
        "tracker actor per GPU (or per --ray-cpus-per-actor CPUs), SAM2 loaded once per actor, a "
        "dead worker's clip rerun on the next free actor. --out may then be any fsspec URL "
        "(s3://...); clips must be paths every node can read.",
    )
    cluster.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        type=options.arg_type(_ray_address),
        metavar="ADDRESS",
        help="Run on Ray: alone, a Ray of its own on this machine (or the cluster RAY_ADDRESS "
        "names); auto: the cluster `ray start` runs here; HOST:PORT or ray://HOST:10001: that one.",
    )
    cluster.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        help="Tracker actors (default: one per GPU in the cluster, else one per --ray-cpus-per-actor CPUs).",
    )
    cluster.add_argument(
        "--ray-cpus-per-actor", type=float, default=1.0, help="CPUs each tracker actor reserves."
    )
    cluster.add_argument(
        "--ray-retries",
        type=int,
        default=2,
        help="Times a clip is run again when the worker tracking it dies.",
    )
    cluster.add_argument(
        "--ray-room-wait",
        type=float,
        default=RAY_ROOM_WAIT_S,
        metavar="SECONDS",
        help="With no tracker actor running, how long those not yet up may wait for room on the "
        "cluster (an autoscaler adding a node, another job's actors; a worker's start counts) "
        "before the run gives them up.",
    )
    options.add_setting_options(
        parser,
        options.SAM2_FIELDS + options.CLIP_LIMIT_FIELDS + ["max_clip_jobs"] + options.VLM_FIELDS,
    )
    args = parser.parse_args(argv)
    logs.quiet_noisy_logs()
    if args.ray is None and any(a.startswith("--ray-") for a in argv if isinstance(a, str)):
        parser.error(
            "--ray-actors, --ray-cpus-per-actor, --ray-retries and --ray-room-wait need --ray"
        )
    options.numbers_or_exit(
        parser,
        args,
        {
            "ray_actors": (0, False),
            "ray_cpus_per_actor": (0, False),
            "ray_retries": (0, True),
            "ray_room_wait": (0, False),
        },
    )
    if args.ray is None and "://" in args.out:
        parser.error("--out as a URL needs --ray (the local run writes to a folder)")
    if "://" not in args.out:
        options.out_folder_or_exit(parser, Path(args.out))
    per_clip = None
    if args.prompts:
        try:
            per_clip = load_prompts_file(args.prompts)
        except ValueError as exc:
            parser.error(str(exc))
        # An empty entry tracks nothing for its clip: with no other prompts that was found only
        # when the clip came up, after SAM2 had loaded.
        if empty := [name for name, prompts in per_clip.items() if not prompts]:
            parser.error(
                f"--prompts {args.prompts}: the entry for {empty[0]!r} has no prompts: give it "
                "some, or leave it out"
            )
    if not (args.point or args.box or args.find or per_clip):
        parser.error("no prompts: give --point, --box, --find or --prompts")
    # A mistyped path is refused before SAM2 loads (or downloads), not reported after it. On Ray
    # the clips are the nodes' paths, which this machine need not see.
    if args.ray is None:
        options.paths_or_exit(parser, "clips", args.clips)
    clips = find_clips(args.clips)
    if not clips:
        parser.error("no clips found in " + ", ".join(str(c) for c in args.clips))
    try:
        check_clip_names(clips)
    except ValueError as exc:
        parser.error(str(exc))
    if "://" not in args.out:
        _out_apart_from_clips(parser, Path(args.out), clips)
    # An entry is matched by file name only; a typo (or a path) would silently track nothing.
    unmatched = sorted(set(per_clip or ()) - {"*"} - {c.name for c in clips})
    if unmatched:
        print(
            f"warning: --prompts entries that name no clip of this run (keys are clip file "
            f"names, e.g. {clips[0].name!r}): {', '.join(map(repr, unmatched))}",
            file=sys.stderr,
        )
    settings = options.settings_or_exit(parser, vars(args))
    if args.ray is None:  # on Ray, --weights and --device are the nodes' to check
        options.sam2_options_or_exit(parser, settings)
    names = {"*", *(c.name for c in clips)}
    finds = bool(args.find) or any(p.find for n in names for p in (per_clip or {}).get(n, ()))
    if not finds:
        options.refuse_unused(
            parser,
            args,
            options.VLM_FIELDS,
            "the VLM's options apply to a Find (--find, or a find in --prompts), and this run "
            "has none; the VLM is not asked",
        )
    elif settings.effective_vlm_backend == "none":
        parser.error(find_needs_vlm(settings.vlm_model))
    else:
        settings = options.vlm_model_named(parser, settings)
    reasoner = options.reasoner_or_exit(parser, settings) if finds else None
    if args.ray is not None:
        # Said at the end: whether a clip tracked on a node is where this machine reads
        # results is checked once every clip is in (cluster.track_on_ray).
        outcomes = _track_on_ray(args, settings, clips, per_clip, needs_vlm=reasoner is not None)
        for o in outcomes:
            _say_outcome(o)
        return _track_summary(outcomes)
    services = Services(settings, reasoner=reasoner)
    tracker = BatchTracker(
        services,
        out=Path(args.out),
        limits=ClipLimits.from_settings(settings),
        prompts=[*args.point, *args.box, *args.find],
        per_clip=per_clip,
        video=not args.no_video,
        progress=not args.no_progress,
        redo=args.redo,
    )

    async def run() -> list[Any]:
        try:
            # Loaded on the vision thread that will step it, as the service does (one OpenMP
            # thread team: see Services.run_vision).
            services.vision_model = await services.run_vision(options.sam2_or_exit, settings)
            return await tracker.run(clips, on_outcome=_say_outcome)  # each as it ends
        finally:
            await services.aclose()

    return _track_summary(asyncio.run(run()))


def _out_apart_from_clips(parser: argparse.ArgumentParser, out: Path, clips: list[Path]) -> None:
    """Exit naming --out when a clip's results, OUT/<clip file name>/ and the files in it, would
    be a file there (the clip itself, when --out is its folder) or an input clip: every clip was
    tracked, then each failed with FileExistsError, or its results were written over a clip."""
    from streamer.clip.track_output import OUTPUTS

    inputs = {c.resolve(): c for c in clips}
    for clip in clips:
        dest = out / clip.name
        if dest.resolve() in inputs:
            parser.error(
                f"--out {out}: that is the folder of {clip}, and each clip's results go in "
                f"OUT/<clip file name>/ ({dest}/ here, the clip itself); give another folder, "
                f"e.g. {out / 'tracked'}"
            )
        if dest.exists() and not dest.is_dir():
            parser.error(
                f"--out {out}: {dest} is a file, where the results of {clip} would go "
                "(OUT/<clip file name>/); give another folder"
            )
        for written in (dest / name for name in OUTPUTS):
            if written.resolve() in inputs:
                parser.error(
                    f"--out {out}: the results of {clip} would be written over the clip "
                    f"{inputs[written.resolve()]} ({written}); give another folder"
                )


def _ray_address(text: str) -> str:
    # Checked without importing Ray: nothing of it is imported unless --ray is given and valid.
    from streamer.clip.batch import check_ray_address

    return check_ray_address(text)


def _track_on_ray(
    args: argparse.Namespace, settings: Any, clips: list[Path], per_clip: Any, *, needs_vlm: bool
) -> list[Any]:
    try:
        from streamer.clip import cluster
    except ImportError as exc:
        sys.exit(
            f"error: --ray needs Ray ({exc}): pip install 'fmu-live[ray]' (or ray==2.60.0), "
            "the same version on every node of the cluster"
        )
    try:
        cluster.connect(args.ray)
        return cluster.track_on_ray(
            settings,
            [c.resolve() for c in clips],
            out=args.out if "://" in args.out else Path(args.out).resolve(),
            prompts=[*args.point, *args.box, *args.find],
            per_clip=per_clip,
            video=not args.no_video,
            progress=not args.no_progress,
            plan=cluster.RayPlan(
                args.ray_actors, args.ray_cpus_per_actor, None, args.ray_retries, args.ray_room_wait
            ),
            needs_vlm=needs_vlm,
            redo=args.redo,
        )
    except cluster.ActorStartError as exc:
        sys.exit(f"error: {exc}")


def _say_outcome(o: Any) -> None:
    """A clip's line on stdout: done, skipped or failed, and why."""
    extra = f", {plural(o.objects, 'object')}" if o.state == "done" else ""
    again = f" (after {o.attempts} attempts: a worker died)" if o.attempts > 1 else ""
    print(f"{o.state}: {o.clip}{extra}: {o.detail}{again}", flush=True)


def _track_summary(outcomes: list[Any]) -> int:
    failed = sum(o.state == "failed" for o in outcomes)
    print(
        f"{len(outcomes) - failed} of {len(outcomes)} clips done or already done, {failed} failed"
    )
    return 1 if failed else 0
