"""FMU Live command line: parse settings, load SAM2, optionally start vLLM, and serve the app."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def vllm_command(settings: Settings) -> list[str]:
    """The vLLM server command for --serve-vlm, with the settings that let it share a GPU."""
    from workers.reasoning.families import UnknownFamily, choose_family

    python = settings.serve_vlm_python or sys.executable
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        settings.vlm_model,
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.serve_vlm_port),
        "--gpu-memory-utilization",
        str(settings.serve_vlm_gpu_memory_utilization),
        "--max-model-len",
        str(settings.serve_vlm_max_model_len),
        "--limit-mm-per-prompt",
        '{"image": 8}',
    ]
    extra = shlex.split(settings.serve_vlm_args)
    try:
        thinks = choose_family(settings.vlm_family, [settings.vlm_model]).family.thinks
    except UnknownFamily:
        thinks = False  # the app says what to pass once the server is up
    if thinks and "--reasoning-parser" not in extra:
        # Reasoning then streams in its own field instead of inside the answer.
        cmd += ["--reasoning-parser", "qwen3"]
    return cmd + extra


def start_vllm(settings: Settings) -> subprocess.Popen[bytes]:
    """Start the vLLM server as a child process and wait until it answers (or say why not)."""
    python = settings.serve_vlm_python or sys.executable
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    if subprocess.run([python, "-c", probe], check=False).returncode != 0:
        sys.exit(
            f"error: --serve-vlm needs vLLM, which {python} cannot import.\n"
            "  Install it with `.venv/bin/pip install -e '.[vllm]'` (on a GPU machine), point\n"
            "  --serve-vlm-python at an environment that has it, or run the compose file in\n"
            "  docker/ and pass --vlm-url http://localhost:8000/v1 instead."
        )
    cmd = vllm_command(settings)
    log.info("starting vLLM: %s", shlex.join(cmd))
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{settings.serve_vlm_port}/health"
    deadline = time.monotonic() + settings.serve_vlm_start_timeout_s
    while True:
        if proc.poll() is not None:
            sys.exit(
                f"error: the vLLM server exited with code {proc.returncode} before it was ready; "
                "its log is above"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    log.info("vLLM is ready on port %d", settings.serve_vlm_port)
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            sys.exit(
                f"error: the vLLM server was not ready after {settings.serve_vlm_start_timeout_s:g}"
                " s; raise --serve-vlm-start-timeout-s or look at its log above"
            )
        time.sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("FMU_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = parse_settings(argv)

    import uvicorn

    from streamer.app import create_app
    from streamer.services import build_reasoner
    from workers.vision import SAM2LoadError

    vllm_proc = None
    vlm_url = settings.vlm_url
    if settings.serve_vlm:
        # First: vLLM sizes its KV cache from the GPU memory free when it starts.
        vllm_proc = start_vllm(settings)
        vlm_url = vlm_url or f"http://127.0.0.1:{settings.serve_vlm_port}/v1"
    try:
        reasoner, off_reason = build_reasoner(settings, vlm_url=vlm_url)
        if off_reason:
            log.warning(off_reason)
        app = create_app(settings, reasoner=reasoner, load_vision=False)
        log.info(
            "loading SAM2.1 %s (weights=%s, image size %d, device %s)",
            settings.sam2_size,
            settings.weights,
            settings.sam2_image_size,
            settings.device,
        )
        try:
            app.state.services.load_vision_now()  # on the vision thread: see Services.run_vision
        except SAM2LoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
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
