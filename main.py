"""FMU Live command line: parse settings, load SAM2, optionally start vLLM, and serve the app."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import ValidationError

from streamer.settings import Settings

log = logging.getLogger("fmu")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # The reason, not the usage wall: the option is named in the message.
        self.exit(2, f"{self.prog}: error: {message}\n(run `{self.prog} --help` for all options)\n")


def build_parser() -> argparse.ArgumentParser:
    """One option per Settings field; the defaults shown are the fields' own."""
    parser = _Parser(
        prog="main.py",
        description="FMU Live: click any object in live video, a clip or an image; SAM2 tracks it "
        "and a VLM describes and verifies it. Every option can also be set as FMU_<OPTION> "
        "(e.g. FMU_PORT=9000, FMU_VLM_URL=http://localhost:8000/v1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        help_text = (field.description or "").replace("%", "%%")
        choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {field.default})",
            )
            continue
        # Values stay strings here: pydantic does the typing and the bounds, and names the option.
        parser.add_argument(
            _flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices or None,
            metavar=None if choices else name.upper(),
            help=f"{help_text} (default: {field.default})",
        )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from argv over FMU_* variables; exits with a one-line reason if invalid."""
    parser = build_parser()
    given: dict[str, Any] = vars(parser.parse_args(argv))
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if p]
            where = ", ".join(_flag(p) for p in loc) if loc else "settings"
            env = f" / FMU_{loc[0].upper()}" if loc else ""
            msg = str(err["msg"]).removeprefix("Value error, ")
            got = f" (got {err['input']!r})" if loc and "got" not in msg else ""
            lines.append(f"{where}{env}: {msg}{got}")
        parser.error("invalid settings:\n  " + "\n  ".join(lines))
        raise  # unreachable: parser.error exits


def start_vllm(settings: Settings) -> subprocess.Popen[bytes]:
    """Start `vllm serve <model>` as a child process; the app polls its readiness via /readyz."""
    exe = shutil.which("vllm")
    if exe is None:
        sys.exit(
            "error: --serve-vlm needs vLLM, which is not installed in this environment.\n"
            "  Install it with `.venv/bin/pip install -e '.[vllm]'` (on a GPU machine), or run\n"
            "  the compose file in docker/ and pass --vlm-url http://localhost:8000/v1 instead."
        )
    cmd = [
        exe,
        "serve",
        settings.vlm_model,
        "--port",
        str(settings.serve_vlm_port),
        "--limit-mm-per-prompt",
        '{"image": 8}',
    ]
    log.info("starting %s", " ".join(cmd))
    return subprocess.Popen(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("FMU_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = parse_settings(argv)

    import uvicorn

    from streamer.app import create_app
    from streamer.services import build_reasoner, load_vision_model
    from workers.vision import SAM2LoadError

    vllm_proc = None
    vlm_url = settings.vlm_url
    if settings.serve_vlm:
        vllm_proc = start_vllm(settings)
        vlm_url = vlm_url or f"http://127.0.0.1:{settings.serve_vlm_port}/v1"
    try:
        log.info(
            "loading SAM2.1 %s (weights=%s, image size %d, device %s)",
            settings.sam2_size,
            settings.weights,
            settings.sam2_image_size,
            settings.device,
        )
        try:
            model = load_vision_model(settings)
        except SAM2LoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        reasoner, off_reason = build_reasoner(settings, vlm_url=vlm_url)
        if off_reason:
            log.warning(off_reason)
        app = create_app(settings, vision_model=model, reasoner=reasoner)
        log.info("serving on http://%s:%d", settings.host, settings.port)
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            ws_max_size=settings.max_ws_message_bytes,
            log_level="info",
        )
    finally:
        if vllm_proc is not None:
            vllm_proc.terminate()
            try:
                vllm_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                vllm_proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
