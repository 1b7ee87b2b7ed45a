"""FMU Live command line: serve the app (the default), or run one of the offline commands.

`python main.py [options]` (or `fmu-live [serve] [options]`) parses settings, loads SAM2,
optionally starts vLLM and serves the app. `fmu-live track|eval|dataset|merge-lora` run the
offline tools; each command's parsing and wiring is here, its work in workers/.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from streamer.settings import Settings
from workers.reasoning.families import FAMILY_CHOICES

log = logging.getLogger("fmu")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # The reason, not the usage wall: the option is named in the message.
        self.exit(2, f"{self.prog}: error: {message}\n(run `{self.prog} --help` for all options)\n")


def _add_setting_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """One option per named Settings field, help and choices from the field itself."""
    for name in names:
        field = Settings.model_fields[name]
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


def build_parser() -> argparse.ArgumentParser:
    """One option per Settings field; the defaults shown are the fields' own."""
    parser = _Parser(
        prog="main.py",
        description="FMU Live: click any object in live video, a clip or an image; SAM2 tracks it "
        "and a VLM describes and verifies it. Every option can also be set as FMU_<OPTION> "
        "(e.g. FMU_PORT=9000, FMU_VLM_URL=http://localhost:8000/v1).",
        epilog="Other commands (each with its own --help): "
        + ", ".join(f"`fmu-live {name}`" for name in COMMANDS)
        + ". `fmu-live` alone (or `fmu-live serve`) runs this server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_setting_options(parser, Settings.model_fields)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from argv over FMU_* variables; exits with a one-line reason if invalid."""
    parser = build_parser()
    return settings_or_exit(parser, vars(parser.parse_args(argv)))


def settings_or_exit(parser: argparse.ArgumentParser, given: dict[str, Any]) -> Settings:
    """Settings from the given Settings fields over FMU_* variables, or exit naming the option."""
    try:
        return Settings(**{k: v for k, v in given.items() if k in Settings.model_fields})
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


def quiet_noisy_logs() -> None:
    """Lines that say nothing a person can act on are silenced, or said once with their meaning."""
    # aioice logs every ICE candidate pair check at INFO.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    # huggingface_hub gives its logger a handler of its own and also lets records through to
    # ours, so each retry warning came out twice (once without a time). Its lines go through our
    # handler only (and so become JSON with --log-json).
    import huggingface_hub.utils.logging  # noqa: F401 - adds the handler at import

    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    # sam2 warns on every mask when its optional CUDA extension is not built (4 lines each time).
    warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step")
    try:
        import importlib.util

        built = importlib.util.find_spec("sam2._C") is not None
    except (ImportError, ValueError):
        built = False
    if not built:
        log.info(
            "sam2's optional CUDA extension (_C) is not built: small holes in masks are not "
            "filled; masks are otherwise the same"
        )


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
            raise OSError(
                f"port {port} on {host} is already in use (another FMU Live, or another "
                f"program): pass another one with --port (e.g. --port {port + 1}, or "
                f"FMU_PORT={port + 1}), or stop the program using it"
            ) from None
        why = f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port"
        raise OSError(why) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def lan_address() -> str | None:
    """This machine's address on its LAN (the one its default route uses), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def page_urls(settings: Settings) -> list[str]:
    """The start-up lines that say where to open the page: addresses that work in a browser."""
    scheme = "https" if settings.ssl_certfile else "http"
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
    print(f"open http://{shown}:{settings.port}/?token={token}", file=sys.stderr, flush=True)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("FMU_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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


# -- the offline commands: parsing and wiring here, the work in workers/ ----------------------------

# Settings fields each command takes, as the server does (same flags, FMU_* variables, bounds).
VLM_FIELDS = [n for n in Settings.model_fields if n.startswith(("vlm_", "verify_"))]
SAM2_FIELDS = ["sam2_size", "weights", "sam2_image_size", "device", "torch_threads", "seed"]
CLIP_LIMIT_FIELDS = ["max_clip_seconds", "max_clip_width", "max_clip_height"]


def _command_parser(name: str, description: str) -> _Parser:
    return _Parser(
        prog=f"fmu-live {name}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("FMU_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _reasoner_or_exit(parser: argparse.ArgumentParser, settings: Settings) -> Any:
    from streamer.services import build_reasoner

    reasoner, off_reason = build_reasoner(settings)
    if reasoner is None:
        parser.error(off_reason or "no VLM configured: pass --vlm-url")
    return reasoner


def _sam2_or_exit(settings: Settings) -> Any:
    from streamer.services import load_vision_model
    from workers.vision import SAM2LoadError

    try:
        return load_vision_model(settings)
    except SAM2LoadError as exc:
        sys.exit(f"error: {exc}")


def _concurrency(parser: argparse.ArgumentParser, asked: int | None, settings: Settings) -> int:
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


def eval_command(argv: Sequence[str]) -> int:
    """`fmu-live eval`: FMU-Agent's four dimensions against a VLM server (and SAM2 masks)."""
    from workers.evaluation.data import DataError, InstanceFilter
    from workers.evaluation.runner import (
        EvalPlan,
        evaluate,
        markdown_report,
        nothing_measured,
        write_report,
    )

    parser = _command_parser(
        "eval",
        "Evaluate a VLM (any OpenAI-compatible server) the way the service uses it: region "
        "captioning (BLEU-4, ROUGE-L, BERT-Score, CLIP-Score), grounding (mIoU, Acc@0.5), "
        "hallucination and correction rates with cycle verification, and time to first token per "
        "pipeline step, stateless vs cached. Writes report.json (every sample) and report.md.",
    )
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        help="Folder the image names in the input files are relative to.",
    )
    parser.add_argument("--coco", type=Path, help="COCO instances JSON: hallucination and TTFT.")
    parser.add_argument(
        "--referring",
        type=Path,
        help="Referring expressions JSONL {image, expression, bbox}: grounding.",
    )
    parser.add_argument(
        "--captions",
        type=Path,
        help="Region captions JSONL {image, bbox, captions[, segmentation]}: captioning.",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="At most this many samples per dimension (default: all).",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="Samples in flight at once (default: --vlm-max-in-flight; 1 in-process).",
    )
    parser.add_argument(
        "--masks",
        choices=["annotation", "sam2"],
        default="annotation",
        help="Describe the annotation's mask, or SAM2's mask from the annotation's box (loads SAM2 as the --weights options say).",
    )
    parser.add_argument(
        "--ttft-samples", type=int, default=3, help="Regions timed for TTFT (0: skip)."
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="Skip COCO instances smaller than this (pixels).",
    )
    parser.add_argument(
        "--bertscore-model",
        help="Local folder of a BERT-style model for BERT-Score (else not computed).",
    )
    parser.add_argument(
        "--clip-model", help="Local folder of a CLIP model for CLIP-Score (else not computed)."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("eval-out"), help="Where report.json and report.md go."
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="An earlier run's report.json (e.g. the base model): its values go in a column "
        "beside this run's, as in the seed's table.",
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    _add_setting_options(parser, VLM_FIELDS + SAM2_FIELDS)
    args = parser.parse_args(argv)
    if not (args.coco or args.referring or args.captions):
        parser.error("nothing to evaluate: give at least one of --coco, --referring, --captions")
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(args.baseline.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--baseline {args.baseline}: not a readable report.json ({exc})")
    settings = settings_or_exit(parser, vars(args))
    reasoner = _reasoner_or_exit(parser, settings)
    sam2_model = _sam2_or_exit(settings) if args.masks == "sam2" else None
    plan = EvalPlan(
        images=args.images,
        coco=args.coco,
        referring=args.referring,
        captions=args.captions,
        samples=args.samples,
        concurrency=_concurrency(parser, args.concurrency, settings),
        masks=args.masks,
        ttft_samples=args.ttft_samples,
        instance_filter=InstanceFilter(min_area=args.min_area),
        bertscore_model=args.bertscore_model,
        clip_model=args.clip_model,
    )
    try:
        report = asyncio.run(
            evaluate(plan, reasoner, sam2_model=sam2_model, progress=not args.no_progress)
        )
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if why := nothing_measured(report):
        earlier = args.out / "report.json"
        kept = f" ({earlier} is left as it was)" if earlier.exists() else ""
        sys.exit(f"error: nothing was measured, no report written{kept}: {why}")
    json_path, md_path = write_report(report, args.out, baseline)
    print(markdown_report(report, baseline))
    print(f"wrote {json_path} and {md_path}")
    return 0


def dataset_command(argv: Sequence[str]) -> int:
    """`fmu-live dataset`: the Spotlight Data Engine (COCO -> teacher descriptions -> ShareGPT)."""
    from workers.dataset.engine import DatasetPlan, make_dataset
    from workers.evaluation.data import DataError, InstanceFilter

    parser = _command_parser(
        "dataset",
        "The Spotlight Data Engine: COCO instances -> Spotlight images (and zoom crops for small "
        "objects) -> a teacher model on any OpenAI-compatible endpoint (--vlm-url, --vlm-model, "
        "--vlm-api-key: a local large Qwen or GPT-4o alike) describes each -> ShareGPT JSONL and "
        "the dataset_info.json LLaMA-Factory reads, plus grounding samples. Resumable: run it "
        "again to finish an interrupted run or retry the teacher's failures.",
    )
    parser.add_argument("--coco", type=Path, required=True, help="COCO instances JSON.")
    parser.add_argument("--images", type=Path, required=True, help="The COCO images folder.")
    parser.add_argument(
        "--out", type=Path, required=True, help="Dataset folder (LLaMA-Factory's dataset_dir)."
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="At most this many objects (default: all)."
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="Teacher requests at once (default: --vlm-max-in-flight; 1 in-process).",
    )
    parser.add_argument(
        "--min-area", type=float, default=0.0, help="Skip instances smaller than this (pixels)."
    )
    parser.add_argument(
        "--max-per-image", type=int, default=None, help="At most this many objects per image."
    )
    parser.add_argument(
        "--categories", default="", help="Comma-separated category names to keep (default: all)."
    )
    parser.add_argument("--no-grounding", action="store_true", help="Describe records only.")
    parser.add_argument(
        "--student-model",
        default=None,
        help="The model to be fine-tuned; its family picks the image grid and the grounding "
        "boxes' coordinates (e.g. a Qwen3-VL name: 0..1000). Default: a Qwen2.5-VL.",
    )
    parser.add_argument(
        "--student-family",
        choices=FAMILY_CHOICES,
        default="auto",
        help="The student's VLM family, when its name does not tell (auto reads --student-model).",
    )
    parser.add_argument(
        "--name", default="fmu", help="Prefix of the dataset names in dataset_info.json."
    )
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    _add_setting_options(parser, VLM_FIELDS)
    args = parser.parse_args(argv)
    settings = settings_or_exit(parser, vars(args))
    teacher = _reasoner_or_exit(parser, settings)
    categories = frozenset(c.strip() for c in args.categories.split(",") if c.strip())
    plan = DatasetPlan(
        coco=args.coco,
        images=args.images,
        out=args.out,
        instance_filter=InstanceFilter(args.min_area, args.max_per_image, categories),
        samples=args.samples,
        concurrency=_concurrency(parser, args.concurrency, settings),
        grounding=not args.no_grounding,
        student=_student_family(parser, args.student_family, args.student_model),
        name=args.name,
    )
    try:
        summary = asyncio.run(make_dataset(plan, teacher, progress=not args.no_progress))
    except DataError as exc:
        sys.exit(f"error: {exc}")
    print(
        f"{summary.described} described, {summary.grounded} grounding samples, "
        f"{summary.skipped_done} already done, {summary.failed} failed (in failures.jsonl) "
        f"-> {args.out}"
    )
    if summary.made_nothing:
        hint = (
            "do --coco and --images belong together?"
            if summary.bad_inputs == summary.failed
            else "is the teacher at --vlm-url serving --vlm-model?"
        )
        sys.exit(
            f"error: all {summary.failed} records this run tried failed (first: "
            f"{summary.failures[0]}); see {args.out / 'failures.jsonl'}, fix the cause ({hint}) "
            "and run again"
        )
    return 0


def _student_family(parser: argparse.ArgumentParser, setting: str, model: str | None) -> Any:
    from workers.reasoning.families import FAMILIES, UnknownFamily, choose_family

    if setting == "auto" and model is None:
        return FAMILIES["qwen2.5-vl"]
    try:
        return choose_family(setting, [model] if model else []).family
    except UnknownFamily as exc:
        parser.error(str(exc).replace("--vlm-family", "--student-family"))


def merge_lora_command(argv: Sequence[str]) -> int:
    """`fmu-live merge-lora`: a LoRA adapter merged into its base, saved for vLLM to serve."""
    from workers.finetune.merge import MergeError, merge_lora

    parser = _command_parser(
        "merge-lora",
        "Merge a LoRA adapter (e.g. from the LLaMA-Factory recipe in docs/llamafactory/) into "
        "its base model with peft and save full weights, config and processor to a folder that "
        "`vllm serve FOLDER` (or --vlm-model FOLDER) serves.",
    )
    parser.add_argument("--base", required=True, help="The base model: a hub id or a local folder.")
    parser.add_argument("--adapter", type=Path, required=True, help="The LoRA adapter folder.")
    parser.add_argument(
        "--out", type=Path, required=True, help="A new folder for the merged model."
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="Weights' dtype; auto keeps the base's.",
    )
    parser.add_argument("--device", default="cpu", help="Where to merge (cpu, cuda, cuda:N).")
    args = parser.parse_args(argv)
    try:
        out = merge_lora(args.base, args.adapter, args.out, dtype=args.dtype, device=args.device)
    except MergeError as exc:
        sys.exit(f"error: {exc}")
    print(f"merged model saved to {out}; serve it with `vllm serve {out}`")
    return 0


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that shows the parser's own reason instead of 'invalid value'."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def track_command(argv: Sequence[str]) -> int:
    """`fmu-live track`: clips + prompts -> the web export (COCO RLE JSON, overlay MP4)."""
    from streamer.clip.batch import (
        BatchTracker,
        check_clip_names,
        find_clips,
        load_prompts_file,
        parse_box,
        parse_find,
        parse_point,
    )
    from streamer.clip.video_io import ClipLimits
    from streamer.services import Services

    parser = _command_parser(
        "track",
        "Track objects through clips without the server: the same COCO RLE JSON and overlay MP4 "
        "the page's Clip export gives, in OUT/<clip>/. Finished clips are skipped (rerun to "
        "resume); unreadable clips are reported and skipped. Exit status 1 if any clip failed.",
    )
    parser.add_argument("clips", nargs="+", type=Path, help="Clip files and/or folders of clips.")
    parser.add_argument(
        "--out", required=True, help="Output folder (with --ray, also any fsspec URL: s3://...)."
    )
    prompt_options = (  # repeatable; each use is one prompt, its value checked by its parser
        ("--point", parse_point, "X,Y[@FRAME]", "Track the object under this click (one object each; frame 0 unless @FRAME)."),
        ("--box", parse_box, "X0,Y0,X1,Y1[@FRAME]", "Track the object in this box (one object each)."),
        ("--find", parse_find, "PHRASE[@FRAME]", "Ground the phrase with the VLM on that frame and track every box it finds (needs --vlm-url)."),
    )  # fmt: skip
    for flag, parse, metavar, help_text in prompt_options:
        parser.add_argument(
            flag,
            action="append",
            default=[],
            type=_arg_type(parse),
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
        type=_arg_type(_ray_address),
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
    _add_setting_options(parser, SAM2_FIELDS + CLIP_LIMIT_FIELDS + VLM_FIELDS)
    args = parser.parse_args(argv)
    if args.ray is None and any(a.startswith("--ray-") for a in argv if isinstance(a, str)):
        parser.error("--ray-actors, --ray-cpus-per-actor and --ray-retries need --ray")
    for name in ("ray_actors", "ray_cpus_per_actor"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be more than 0, got {value}")
    if args.ray_retries < 0:
        parser.error(f"--ray-retries must be 0 or more, got {args.ray_retries}")
    if args.ray is None and "://" in args.out:
        parser.error("--out as a URL needs --ray (the local run writes to a folder)")
    per_clip = None
    if args.prompts:
        try:
            per_clip = load_prompts_file(args.prompts)
        except ValueError as exc:
            parser.error(str(exc))
    if not (args.point or args.box or args.find or per_clip):
        parser.error("no prompts: give --point, --box, --find or --prompts")
    clips = find_clips(args.clips)
    if not clips:
        parser.error("no clips found in " + ", ".join(str(c) for c in args.clips))
    try:
        check_clip_names(clips)
    except ValueError as exc:
        parser.error(str(exc))
    settings = settings_or_exit(parser, vars(args))
    reasoner = None
    if any(p.find for p in args.find) or settings.vlm_url:
        reasoner = _reasoner_or_exit(parser, settings)
    if args.ray is not None:
        outcomes = _track_on_ray(args, settings, clips, per_clip, needs_vlm=reasoner is not None)
        return _track_report(outcomes)
    services = Services(settings, reasoner=reasoner)
    tracker = BatchTracker(
        services,
        out=Path(args.out),
        limits=ClipLimits.from_settings(settings),
        prompts=[*args.point, *args.box, *args.find],
        per_clip=per_clip,
        video=not args.no_video,
        progress=not args.no_progress,
    )

    async def run() -> list[Any]:
        try:
            # Loaded on the vision thread that will step it, as the service does (one OpenMP
            # thread team: see Services.run_vision).
            services.vision_model = await services.run_vision(_sam2_or_exit, settings)
            return await tracker.run(clips)
        finally:
            await services.aclose()

    return _track_report(asyncio.run(run()))


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
    cluster.connect(args.ray)
    try:
        return cluster.track_on_ray(
            settings,
            [c.resolve() for c in clips],
            out=args.out if "://" in args.out else Path(args.out).resolve(),
            prompts=[*args.point, *args.box, *args.find],
            per_clip=per_clip,
            video=not args.no_video,
            progress=not args.no_progress,
            plan=cluster.RayPlan(args.ray_actors, args.ray_cpus_per_actor, None, args.ray_retries),
            needs_vlm=needs_vlm,
        )
    except cluster.ActorStartError as exc:
        sys.exit(f"error: {exc}")


def _track_report(outcomes: list[Any]) -> int:
    for o in outcomes:
        extra = f", {o.objects} object(s)" if o.state == "done" else ""
        again = f" (after {o.attempts} attempts: a worker died)" if o.attempts > 1 else ""
        print(f"{o.state}: {o.clip}{extra}: {o.detail}{again}")
    failed = sum(o.state == "failed" for o in outcomes)
    print(
        f"{len(outcomes) - failed} of {len(outcomes)} clips done or already done, {failed} failed"
    )
    return 1 if failed else 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "track": track_command,
    "eval": eval_command,
    "dataset": dataset_command,
    "merge-lora": merge_lora_command,
}


def cli(argv: Sequence[str] | None = None) -> int:
    """The `fmu-live` program: a command name first, or none to serve (as `python main.py`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        _setup_logging()
        return COMMANDS[args[0]](args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
