"""What the commands share: their parser, the server's settings as options, and the models those
settings build (or an exit that says why not)."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from streamer.settings import SERVE_VLM_HINT, Settings, folder_problem

# Settings fields each command takes, as the server does (same flags, FMU_* variables, bounds).
# (A page's share of the VLM is the server's alone: a command is one client and takes none.)
VLM_FIELDS = [
    n
    for n in Settings.model_fields
    if n.startswith("vlm_") and n != "vlm_max_in_flight_per_session"
]
# What a verified description's retries need: taken where descriptions are verified (eval).
VERIFY_FIELDS = [n for n in Settings.model_fields if n.startswith("verify_")]
SAM2_FIELDS = [
    "sam2_size",
    "weights",
    "sam2_image_size",
    "device",
    "precision",
    "compile",
    "torch_threads",
    "seed",
]
CLIP_LIMIT_FIELDS = ["max_clip_seconds", "max_clip_width", "max_clip_height"]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_unused(
    parser: argparse.ArgumentParser, args: argparse.Namespace, fields: Iterable[str], why: str
) -> None:
    """Exit naming the setting options given on the command line that this run would take and do
    nothing with (a FMU_* variable, set for the server too, is not refused)."""
    if given := [f for f in fields if f in vars(args)]:
        parser.error(f"{', '.join(flag(f) for f in given)}: {why}")


# A value that starts with a minus and a digit and goes on past a number ("-5,-5", "-3,0,10,9"):
# argparse takes it for an option unless it is one plain number.
_MINUS_LIST = re.compile(r"-\d[\d.]*,")


class Parser(argparse.ArgumentParser):
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # `--point -5,-5` read as `--point=-5,-5`: the value is then refused for what it is
        # (outside the frame), not as argparse's "expected one argument".
        glued: list[str] = []
        for arg in sys.argv[1:] if args is None else args:
            last = glued[-1] if glued and "--" not in glued else ""  # none after a "--"
            if last.startswith("--") and "=" not in last and _MINUS_LIST.match(arg):
                glued[-1] += "=" + arg
            else:
                glued.append(arg)
        return super().parse_known_args(glued, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        # The reason, not the usage wall: the option is named in the message.
        self.exit(2, f"{self.prog}: error: {message}\n(run `{self.prog} --help` for all options)\n")


def add_setting_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """One option per named Settings field, help and choices from the field itself."""
    for name in names:
        field = Settings.model_fields[name]
        help_text = (field.description or "").replace("%", "%%")
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
        if field.annotation is bool:
            parser.add_argument(
                flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {field.default})",
            )
            continue
        # Values stay strings here: pydantic does the typing and the bounds, and names the option.
        parser.add_argument(
            flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices or None,
            metavar=None if choices else name.upper(),
            help=f"{help_text} (default: {field.default})",
        )


class GivenSettings(Settings):
    """Settings from the values given to it alone: it reads no FMU_* variable itself
    (settings_or_exit reads the ones a command takes and passes them in), and checks no default
    it was not given (settings_or_exit gives the defaults of the fields a command takes)."""

    model_config = Settings.model_config | {"validate_default": False}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_: PydanticBaseSettingsSource,  # FMU_* variables, .env, secrets: not read
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_or_exit(parser: argparse.ArgumentParser, given: dict[str, Any]) -> Settings:
    """Settings from the given Settings fields over FMU_* variables, or exit naming the option.

    Only the fields `parser` has an option for are read from FMU_* variables (the server's parser
    has one for every field); the others keep their defaults, unchecked. A variable set for the
    server alone (FMU_PORT, FMU_AUTH_TOKEN, FMU_SSL_CERTFILE, ...) thus neither stops nor changes
    a command that takes no such option (eval, dataset, track), whatever its value; nor does a
    file named `data` where it runs (data_dir's default). The variables are read as
    pydantic-settings reads them (its EnvSettingsSource: the FMU_ prefix, any case), then
    validated with the options by Settings' own fields and validators (GivenSettings)."""
    taken = {a.dest for a in parser._actions} & Settings.model_fields.keys()
    defaults = {k: Settings.model_fields[k].get_default(call_default_factory=True) for k in taken}
    env = {k: v for k, v in EnvSettingsSource(Settings)().items() if k in taken}
    try:
        return GivenSettings(**defaults | env | {k: v for k, v in given.items() if k in taken})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if p]
            where = ", ".join(flag(p) for p in loc) if loc else "settings"
            env = f" / FMU_{loc[0].upper()}" if loc else ""
            msg = str(err["msg"]).removeprefix("Value error, ")
            if "--serve-vlm" not in parser._option_string_actions:  # eval, dataset: not theirs
                msg = msg.replace(SERVE_VLM_HINT, "")
            got = f" (got {err['input']!r})" if loc and "got" not in msg else ""
            lines.append(f"{where}{env}: {msg}{got}")
        parser.error("invalid settings:\n  " + "\n  ".join(lines))
        raise  # unreachable: parser.error exits


_PATH_TESTS: dict[str, Callable[[Path], bool]] = {
    "file": Path.is_file,
    "folder": Path.is_dir,
    "file or folder": Path.exists,
}


def paths_or_exit(
    parser: argparse.ArgumentParser,
    what: str,
    paths: Iterable[Path],
    *,
    kind: Literal["file", "folder", "file or folder"] = "file or folder",
) -> None:
    """Exit naming the option when a path it was given is not there, or is a folder where a file
    is wanted (or the other way round), before any model loads or anything is written."""
    wrong = [p for p in paths if not _PATH_TESTS[kind](p)]
    if wrong:
        there = {p: "folder" if p.is_dir() else "file" for p in wrong if p.exists()}
        shown = [f"{p} (that is a {there[p]})" if p in there else str(p) for p in wrong]
        parser.error(f"{what}: no such {kind}: {', '.join(shown)}")


def coco_or_exit(parser: argparse.ArgumentParser, coco: Path) -> Any:
    """The --coco file, read once (a CocoInstances), or exit naming --coco when it is not a COCO
    instances file, before anything is written (it was found only when the instances were
    loaded: after the other dimensions ran, or after the dataset folder was made)."""
    from workers.evaluation.data import CocoInstances, DataError

    paths_or_exit(parser, "--coco", [coco], kind="file")
    try:
        return CocoInstances(coco)
    except DataError as exc:
        parser.error(f"--coco: {exc}")


def add_sample_options(parser: argparse.ArgumentParser, samples: str, requests: str) -> None:
    """The options of a command that walks COCO-style samples through a VLM (eval, dataset):
    how many `samples`, how many `requests` at once (vlm_concurrency's rule), the smallest
    instance, progress bars. SAMPLE_FLOORS are their lower limits."""
    parser.add_argument(
        "--samples", type=int, default=None, help=f"At most this many {samples} (default: all)."
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=f"{requests} at once (default: --vlm-max-in-flight; 1 in-process).",
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="Skip COCO instances smaller than this (pixels).",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


SAMPLE_FLOORS = {"samples": (1, True), "min_area": (0, True)}


def out_given(text: str) -> str:
    """--out as typed (its argparse type, through arg_type). An empty one is refused: Path("")
    is the current folder, where the results went unasked (an unset "$OUT")."""
    if not text:
        raise ValueError("it is empty: name the folder the results go in (. for this one)")
    return text


def out_folder(text: str) -> Path:
    """--out of a command that writes to a folder only (track's may be a URL), as out_given."""
    return Path(out_given(text))


def add_out_option(
    parser: argparse.ArgumentParser, help_text: str, default: Path | None = None, url: bool = False
) -> None:
    """Every command's --out: a folder (or, with `url`, an fsspec URL: track's), required unless
    it has a default; an empty one is refused (out_given)."""
    parse = out_given if url else out_folder
    parser.add_argument(
        "--out", type=arg_type(parse), required=default is None, default=default, help=help_text
    )


def out_folder_or_exit(parser: argparse.ArgumentParser, out: Path) -> None:
    """Exit naming the option when its folder cannot be made or written in, before any work (a
    file in the way, a read-only or special place: it was found only when the first result was
    written, after every model loaded or every VLM answer came). Tried by making it and a file in
    it, then left as it was: a refused run makes nothing."""
    if problem := folder_problem(out):
        parser.error(f"--out {out}: {problem}")
    missing = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        parser.error(f"--out {out}: no folder can be made or written there ({exc.strerror or exc})")
    finally:
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it tells something: not for a required option, an
    unset one (None, [], an off flag), nor where the help text already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            action.required
            or any(action.default is unset for unset in (None, False))
            or action.default == []
            or "default" in (action.help or "")
        ):
            return action.help
        return super()._get_help_string(action)


def command_parser(name: str, description: str) -> Parser:
    return Parser(prog=f"fmu-live {name}", description=description, formatter_class=DefaultsHelp)


def reasoner_or_exit(parser: argparse.ArgumentParser, settings: Settings) -> Any:
    from streamer.services import build_reasoner

    # The offline commands take no --serve-vlm: the reason names only what they accept.
    reasoner, off_reason = build_reasoner(settings, serve_vlm=False)
    if reasoner is None:
        parser.error(off_reason or "no VLM configured: pass --vlm-url")
    return reasoner


def vlm_model_named(parser: argparse.ArgumentParser, settings: Settings) -> Settings:
    """The settings with --vlm-model naming the model the VLM server serves, where it was left to
    the server (its GET /models): `track` records it in run.json, so a rerun against another model
    is another run. Unchanged where the server cannot say now: each clip's Find then says why."""
    if settings.vlm_model is not None or settings.effective_vlm_backend != "openai":
        return settings
    import asyncio

    from workers.reasoning.errors import VLMError

    backend = reasoner_or_exit(parser, settings).backend

    async def ask() -> str | None:
        try:
            return await backend.resolve_model()  # type: ignore[no-any-return]
        except VLMError:
            return None
        finally:
            await backend.aclose()

    name = asyncio.run(ask())
    return settings if name is None else settings.model_copy(update={"vlm_model": name})


def sam2_options_or_exit(parser: argparse.ArgumentParser, settings: Settings) -> None:
    """Exit naming the option (2) when SAM2 cannot load as the settings say for a reason known
    without its weights (a checkpoint that is not there, a GPU torch does not see): found when
    the model loaded, after the clips were read, it exited 1 with no option named."""
    from workers.vision.loading import SAM2LoadError, check_sam2

    try:
        check_sam2(
            settings.sam2_size,
            settings.weights,
            settings.device,
            settings.sam2_image_size,
            settings.precision,
        )
    except SAM2LoadError as exc:
        parser.error(f"{exc.option}: {exc}" if exc.option else str(exc))


def sam2_or_exit(settings: Settings) -> Any:
    """SAM2 as the settings say, or exit 1 saying why (what only loading finds: a file that is
    not a SAM2 checkpoint, a download that failed)."""
    from streamer.services import load_vision_model
    from workers.vision import SAM2LoadError

    try:
        return load_vision_model(settings)
    except SAM2LoadError as exc:
        sys.exit(f"error: {exc}")


def vlm_concurrency(parser: argparse.ArgumentParser, asked: int | None, settings: Settings) -> int:
    """Requests in flight: what was asked, within what the VLM backend accepts at once."""
    if settings.effective_vlm_backend == "transformers":
        limit, where = 1, "the in-process backend answers one request at a time"
    else:
        limit, where = settings.vlm_max_in_flight, "--vlm-max-in-flight"
    if asked is None:
        return limit
    if not 1 <= asked <= limit:
        parser.error(f"--concurrency must be between 1 and {limit} ({where}), got {asked}")
    return asked


def numbers_or_exit(
    parser: argparse.ArgumentParser, args: argparse.Namespace, floors: dict[str, tuple[float, bool]]
) -> None:
    """Exit naming the option when a number given is below its floor: {dest: (floor, whether the
    floor itself is allowed)}. An option not given (None) passes."""
    for name, (floor, allowed) in floors.items():
        value = getattr(args, name)
        if value is None or value > floor or (allowed and value == floor):
            continue
        need = f"{floor:g} or more" if allowed else f"more than {floor:g}"
        parser.error(f"{flag(name)} must be {need}, got {value}")


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that shows the parser's own reason instead of 'invalid value'."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert
