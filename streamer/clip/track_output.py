"""A clip's folder of `fmu-live track` results, OUT/<clip>/: export.json (written last: it marks
the clip done), overlay.mp4 and run.json (what made them), and whether a rerun keeps them: a clip
is skipped only when it would be tracked as it was.

The record holds the clip file (its size and a hash of its first MiB: a clip of the same name
from another folder, or re-encoded in place, is another clip), its prompts (as a --prompts file
entry) and the options its masks depend on: SAM2's model, weights, resolution and precision (the
seed only with random weights), the VLM's model when a Find phrase is grounded, and whether an
overlay video was made. Not the device, threads or limits: they change how fast, not what. The
precision is the one SAM2 computed in (`--precision auto` resolved on the machine that tracked):
auto's fp32 here is --precision fp32, and a GPU's bf16 is not a CPU's fp32. A rerun with another
file, other prompts or options is refused for that clip (its results kept) unless --redo asks to
replace them: a rerun is also how an interrupted archive resumes, and one option forgotten there
must not retrack every clip done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.clip import exports

if TYPE_CHECKING:
    from streamer.clip.track_prompts import ObjectPrompt

RECORD = "run.json"
EXPORT = "export.json"  # written last: its presence means the clip is done
OVERLAY = "overlay.mp4"
OUTPUTS = (RECORD, OVERLAY, EXPORT)  # what a run leaves in the clip's folder


def prompt_entry(p: ObjectPrompt) -> dict[str, Any]:
    """The prompt as a --prompts file entry, without the keys it does not use."""
    entry: dict[str, Any] = {"frame": p.frame}
    if p.points:
        entry["points"] = [[x, y] for x, y in p.points]
        entry["labels"] = list(p.labels)
    if p.box is not None:
        entry["box"] = list(p.box)
    if p.find:
        entry["find"] = p.find
    return entry


def _checkpoint(weights: str) -> str:
    """--weights as recorded: a checkpoint by its absolute path (`ft.pt` and `./ft.pt` are one)."""
    if weights in ("hf", "random"):
        return weights
    return str(Path(weights).expanduser().resolve())


def clip_identity(clip: Path) -> dict[str, Any] | None:
    """The clip file as run.json records it; None where this machine cannot read it (a Ray
    driver without the files: the tracker that reads it compares it)."""
    try:
        with clip.open("rb") as f:
            head = f.read(1 << 20)
        return {"bytes": clip.stat().st_size, "head_sha256": hashlib.sha256(head).hexdigest()}
    except OSError:
        return None


def run_record(
    prompts: Sequence[ObjectPrompt],
    settings: Any,
    *,
    video: bool,
    precision: str | None = None,
    clip: Path | None = None,
) -> dict[str, Any]:
    """What a run on one clip does, as run.json holds it (JSON types, so it compares with one read).
    `precision`: the one SAM2 computes in; None where no model is loaded (a Ray driver): then an
    `auto` is left out, not compared (the tracker that loads one compares it). `clip`: the file
    (clip_identity), left out where it cannot be read."""
    options: dict[str, Any] = {
        "--sam2-size": settings.sam2_size,
        "--weights": _checkpoint(settings.weights),
        "--sam2-image-size": settings.sam2_image_size,
        "--precision": precision or settings.precision,
    }
    if options["--precision"] == "auto":
        del options["--precision"]
    if settings.weights == "random":
        options["--seed"] = settings.seed
    if any(p.find for p in prompts):
        options["--vlm-model"] = settings.vlm_model
    record = {"prompts": [prompt_entry(p) for p in prompts], "options": options, "video": video}
    if clip is not None and (identity := clip_identity(clip)) is not None:
        record["clip"] = identity
    return json.loads(json.dumps(record))  # type: ignore[no-any-return]


async def write_results(
    dest: Path,
    clip: Path,
    info: Any,
    objects: Sequence[Any],
    record: dict[str, Any],
    *,
    video: bool,
) -> None:
    """The clip's export (and overlay video) of its tracked objects (batch._BatchObject), with
    `record`: earlier results there are replaced, the clip not counted done until the last write."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / EXPORT).unlink(missing_ok=True)  # before any file of earlier results changes
    if video:
        tracks = {o.id: o.track.results for o in objects}
        await asyncio.to_thread(exports.render_overlay_video, clip, info, tracks, dest / OVERLAY)
    else:
        (dest / OVERLAY).unlink(missing_ok=True)  # an earlier run's, not these masks'
    (dest / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    public = [
        {
            "id": o.id,
            "label": o.label,
            "prompts": o.track.prompts_public(),
            "description": None,
            "results": o.track.results,
        }
        for o in objects
    ]
    doc = exports.export_document({"id": clip.stem, "filename": clip.name}, info, public)
    tmp = dest / f"{EXPORT}.part"
    tmp.write_text(json.dumps(doc))
    tmp.replace(dest / EXPORT)  # last: its presence means the clip is done


def describe_prompt(entry: dict[str, Any]) -> str:
    """A prompt as it would be typed: `--point 12,32@3`, `--box ...`, `--find '...'`, else JSON."""
    frame = entry.get("frame", 0)
    at = f"@{frame}" if frame else ""
    keys = set(entry) - {"frame"}
    if keys == {"find"}:
        return f"--find {entry['find'] + at!r}"
    if keys == {"points", "labels"} and len(entry["points"]) == 1 and entry["labels"] == [1]:
        return "--point " + ",".join(f"{v:g}" for v in entry["points"][0]) + at
    if keys == {"box"}:
        return "--box " + ",".join(f"{v:g}" for v in entry["box"]) + at
    return json.dumps(entry)


def _prompts_text(entries: Any, limit: int = 120) -> str:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return "unreadable"
    text = " ".join(describe_prompt(e) for e in entries) or "none"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def differences(then: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs from the record of the earlier run, then against now; '' when nothing does."""
    changes = []
    # A record from before the file was kept in it (or one a Ray driver made without the file)
    # says nothing of it: not compared.
    was, now_clip = then.get("clip"), now.get("clip")
    if isinstance(was, dict) and now_clip is not None and was != now_clip:
        changes.append(
            f"another file of that name then ({was.get('bytes')} bytes), "
            f"this one now ({now_clip['bytes']} bytes)"
        )
    if then.get("prompts") != now["prompts"]:
        changes.append(
            f"prompts {_prompts_text(then.get('prompts'))} then, {_prompts_text(now['prompts'])} now"
        )
    before = then.get("options") if isinstance(then.get("options"), dict) else {}
    # An option in one record only (the VLM's model, the seed) follows the prompts or --weights.
    for flag in sorted(set(before) & set(now["options"])):
        was, is_now = before[flag], now["options"][flag]
        # Unknown, not a change: a precision recorded unresolved (before it was), a VLM model its
        # server could not name (down then or now: vlm_model_named).
        if was == "auto" or was is None or is_now is None:
            continue
        if was != is_now:
            changes.append(f"{flag} {was} then, {is_now} now")
    if now["video"] and not then.get("video"):
        changes.append("no overlay video then (--no-video), one now")
    return "; ".join(changes)


@dataclass
class EarlierRun:
    """What OUT/<clip>/ holds before a run: nothing done ("none"), results of this very run
    ("same"), of another ("other", `changes` says how), or of a run that left no readable record
    ("unknown", `changes` says which: an fmu-live from before run.json, or a damaged one)."""

    kind: str
    changes: str = ""


def earlier_run(folder: Path, now: dict[str, Any]) -> EarlierRun:
    """What `folder` (OUT/<clip>/ on this machine) holds, against the record of this run."""
    if not (folder / EXPORT).is_file():
        return EarlierRun("none")
    try:
        text: str | None = (folder / RECORD).read_text()
    except OSError:
        text = None
    return done_earlier(text, now)


def done_earlier(record_text: str | None, now: dict[str, Any]) -> EarlierRun:
    """A done clip's earlier run, from its run.json's text (None: there is none), against now's."""
    if record_text is None:
        return EarlierRun("unknown", "kept no run.json")
    try:
        then = json.loads(record_text)
    except ValueError:
        then = None
    if not isinstance(then, dict):
        return EarlierRun("unknown", "left a run.json that cannot be read")
    changes = differences(then, now)
    return EarlierRun("other", changes) if changes else EarlierRun("same")


def keep_earlier(earlier: EarlierRun, *, has_prompts: bool, redo: bool) -> tuple[str, str] | None:
    """The clip's outcome (state, detail) when its earlier results stand; None: track it."""
    if earlier.kind == "none" or (redo and has_prompts and earlier.kind != "same"):
        return None
    if earlier.kind == "other" and has_prompts:
        return (
            "failed",
            f"tracked before with other prompts or options ({earlier.changes}); its results are "
            "kept: pass --redo to track it again and replace them, or give another --out",
        )
    if earlier.kind == "unknown" and has_prompts:
        return "skipped", f"already done (by a run that {earlier.changes}: --redo tracks it again)"
    return "skipped", "already done"


def replaced_note(earlier: EarlierRun) -> str:
    """What a done clip's line adds when its tracking replaced earlier results ('' if none)."""
    if earlier.kind == "other":
        return f" (replaced the results of other prompts or options: {earlier.changes})"
    if earlier.kind == "unknown":
        return f" (replaced the results of a run that {earlier.changes})"
    return ""


# -- OUT at a path or an fsspec URL (`track --ray` publishes there) ------------------------------


def is_url(out: str | Path) -> bool:
    """An fsspec URL (file:// included), staged locally then copied; else a plain path."""
    return "://" in str(out)


def _fs(out: str) -> Any:
    import fsspec

    return fsspec.core.url_to_fs(out)


def export_exists(out: str | Path, clip_name: str) -> bool:
    """Whether OUT/<clip>/export.json is there: the clip is done."""
    if not is_url(out):
        return (Path(out) / clip_name / EXPORT).is_file()
    fs, root = _fs(str(out))
    return bool(fs.exists(f"{root.rstrip('/')}/{clip_name}/{EXPORT}"))


def earlier_at(out: str | Path, clip_name: str, now: dict[str, Any]) -> EarlierRun:
    """What OUT/<clip>/ holds (at a path or an fsspec URL), against the record of this run."""
    if not is_url(out):
        return earlier_run(Path(out) / clip_name, now)
    if not export_exists(out, clip_name):
        return EarlierRun("none")
    fs, root = _fs(str(out))
    try:
        text = fs.cat_file(f"{root.rstrip('/')}/{clip_name}/{RECORD}").decode()
    except (OSError, ValueError):
        text = None
    return done_earlier(text, now)


def publish(staged: Path, out: str, clip_name: str) -> None:
    """Copy a clip's staged results to the fsspec URL, export.json last (it marks the clip done);
    an earlier run's outputs go first, export.json first: replaced results never count as done,
    and none stays beside the new ones (an overlay where a --no-video redo made none)."""
    fs, root = _fs(out)
    dest = f"{root.rstrip('/')}/{clip_name}"
    fs.makedirs(dest, exist_ok=True)
    for name in sorted(OUTPUTS, key=lambda n: n != EXPORT):
        if fs.exists(f"{dest}/{name}"):
            fs.rm_file(f"{dest}/{name}")
    for f in sorted(staged.iterdir(), key=lambda f: f.name == EXPORT):
        fs.put_file(str(f), f"{dest}/{f.name}")
