"""`fmu-live` alone (`fmu-live serve`, `python main.py`): settings from the command line, SAM2
loaded, optionally a vLLM child, and the app served."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from streamer.cli import COMMANDS
from streamer.cli.logs import quiet_noisy_logs, setup_logging
from streamer.cli.options import (
    Parser,
    add_setting_options,
    flag,
    sam2_options_or_exit,
    settings_or_exit,
)
from streamer.settings import Settings

log = logging.getLogger("fmu")


def build_parser() -> argparse.ArgumentParser:
    """One option per Settings field; the defaults shown are the fields' own."""
    parser = Parser(
        prog="fmu-live",
        description="FMU Live: click any object in live video, a clip or an image; SAM2 tracks it "
        "and a VLM describes and verifies it. Every option can also be set as FMU_<OPTION> "
        "(e.g. FMU_PORT=9000, FMU_VLM_URL=http://localhost:8000/v1).",
        epilog="Other commands (each with its own --help): "
        + ", ".join(f"`fmu-live {name}`" for name in COMMANDS)
        + ". `fmu-live` alone (or `fmu-live serve`) runs this server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_setting_options(parser, Settings.model_fields)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from argv over FMU_* variables; exits with a one-line reason if invalid."""
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        # The server takes no word before its options: this one is a command mistyped (even
        # before --help, which would otherwise show the server's options as if it were one).
        parser.error(
            f"no command {args[0]!r}: the commands are "
            + ", ".join(COMMANDS)
            + " (none, or serve, runs the server)"
        )
    settings = settings_or_exit(parser, vars(parser.parse_args(args)))
    sam2_options_or_exit(parser, settings)  # before the port is taken and vLLM started
    if unused := ignored_without_serve_vlm(settings):
        log.warning(
            "%s set, but --serve-vlm is not: ignored (pass --serve-vlm for FMU Live to start "
            "vLLM itself, or --vlm-url for a server already running)",
            ", ".join(unused),
        )
    return settings


def ignored_without_serve_vlm(settings: Settings) -> list[str]:
    """The --serve-vlm-* options set to other than their defaults while --serve-vlm is off."""
    if settings.serve_vlm:
        return []
    return [
        flag(name)
        for name, field in Settings.model_fields.items()
        if name.startswith("serve_vlm_") and getattr(settings, name) != field.default
    ]


def vllm_command(settings: Settings) -> list[str]:
    """The vLLM server command for --serve-vlm, with the settings that let it share a GPU."""
    from workers.reasoning.families import DEFAULT_VLM_MODEL, UnknownFamily, choose_family

    model = settings.vlm_model or DEFAULT_VLM_MODEL
    python = settings.serve_vlm_python or sys.executable
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
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
        thinks = choose_family(settings.vlm_family, [model]).family.thinks
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


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound now (uvicorn serves on it later), or OSError saying
    what to do when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            free = _free_port_after(host, family, port)
            e_g = f" (e.g. --port {free}, free now, or FMU_PORT={free})" if free else ""
            raise OSError(
                f"port {port} on {host} is already in use (another FMU Live, or another "
                f"program): pass another one with --port{e_g}, or stop the program using it"
            ) from None
        why = f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port"
        raise OSError(why) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _free_port_after(host: str, family: int, port: int) -> int | None:
    """The first port above `port` that can be bound on `host` now (of the next 20), or None."""
    for candidate in range(port + 1, min(port + 21, 65536)):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                probe.bind((host, candidate))
                return candidate
    return None


def lan_address() -> str | None:
    """This machine's address on its LAN (the one its default route uses), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def url_scheme(settings: Settings) -> str:
    """What the server speaks: HTTPS with a certificate, else HTTP."""
    return "https" if settings.ssl_certfile else "http"


def page_urls(settings: Settings) -> list[str]:
    """The start-up lines that say where to open the page: addresses that work in a browser."""
    scheme = url_scheme(settings)
    token = f"/?token={settings.auth_token}" if settings.auth_token else ""  # opens it once
    lines = [f"open the page at {scheme}://localhost:{settings.port}{token}"]
    if settings.host in ("0.0.0.0", "::", ""):
        lan = lan_address()
        if lan:
            lines.append(f"on the LAN: {scheme}://{lan}:{settings.port}{token}")
            if scheme == "http":
                lines.append(
                    "a phone's browser gives a page its camera only on localhost or HTTPS: "
                    "pass --ssl-certfile and --ssl-keyfile (README: 'A phone on the LAN')"
                )
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        lines = [f"open the page at {scheme}://{settings.host}:{settings.port}{token}"]
    return lines


def network_access(settings: Settings) -> Settings:
    """Jupyter's rule: a loopback bind needs no token; any other gets --auth-token or a generated
    one, printed in the URL to open (the page sets its cookie from it once)."""
    from streamer.http.access import is_loopback, new_token

    if settings.auth_token is None and is_loopback(settings.host):
        return settings
    token = settings.auth_token or new_token()
    settings = settings.model_copy(update={"auth_token": token})
    shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"{url_scheme(settings)}://{shown}:{settings.port}/?token={token}"
    print(f"open {url}", file=sys.stderr, flush=True)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging("INFO")
    settings = parse_settings(argv)
    quiet_noisy_logs()
    if settings.log_json:
        from streamer.logs import use_json_logs

        use_json_logs()

    import uvicorn

    from streamer.app import create_app
    from streamer.services import build_reasoner
    from workers.vision import SAM2LoadError

    # The port first: a port in use is said at once, naming --port, not after the model loads.
    try:
        listener = bind_listener(settings.host, settings.port)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

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
        settings = network_access(settings)  # before the app: its middleware checks the token
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
        for line in page_urls(settings):
            log.info("%s", line)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            # Above the app's own limit, so the app's check answers first with a message (1009).
            ws_max_size=max(4 * settings.max_ws_message_bytes, 1 << 20),
            log_level="info",
            ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            # JSON logs: uvicorn's loggers go through the root logger's JSON handler
            **({"log_config": None} if settings.log_json else {}),
        )
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
        if vllm_proc is not None:
            vllm_proc.terminate()
            try:
                vllm_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                vllm_proc.kill()
    return 0
