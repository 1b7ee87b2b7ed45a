"""Settings and command line: every option settable, bad values fail at start naming the option."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.cli.serve import parse_settings
from streamer.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"FMU_{name.upper()}", raising=False)
    s = Settings()
    assert (s.port, s.sam2_size, s.weights, s.sam2_image_size, s.device) == (
        8080,
        "tiny",
        "hf",
        1024,
        "auto",
    )
    assert s.effective_vlm_backend == "none"


def test_command_line_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMU_PORT", "9001")
    monkeypatch.setenv("FMU_SAM2_SIZE", "small")
    s = parse_settings(["--port", "9002", "--weights", "random", "--compile"])
    assert s.port == 9002  # the flag wins over the environment
    assert s.sam2_size == "small"  # the environment fills what the flags leave out
    assert s.weights == "random" and s.compile is True


def test_vlm_url_selects_the_openai_backend() -> None:
    s = parse_settings(["--vlm-url", "http://localhost:8000/v1/"])
    assert s.vlm_url == "http://localhost:8000/v1"
    assert s.effective_vlm_backend == "openai"


@pytest.mark.parametrize(
    ("field", "value", "expected_in_message"),
    [
        ("port", 0, "greater than or equal to 1"),  # port below range
        ("port", 70000, "less than or equal to 65535"),  # port above range
        ("sam2_size", "huge", "tiny"),  # unknown model size lists the allowed ones
        ("sam2_image_size", 300, "multiple of 32"),  # SAM2 needs a multiple of 32
        ("device", "gpu", "auto, cpu, cuda or cuda:N"),  # device spelling
        ("vlm_url", "localhost:8000", "http(s) URL"),  # URL without a scheme
        ("weights", " ", "'hf', 'random' or a path"),  # blank weights
        ("verify_iou_threshold", 1.5, "less than or equal to 1"),  # IoU out of range
    ],
)
def test_bad_values_name_what_is_allowed(
    field: str, value: object, expected_in_message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(**{field: value})
    assert expected_in_message in str(exc.value)
    assert field in str(exc.value)


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Settings(not_a_setting=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "99999"], {}, "--port / FMU_PORT: Input should be less than or equal to 65535"),
        ([], {"FMU_DEVICE": "gpu"}, "--device / FMU_DEVICE: must be auto, cpu, cuda or cuda:N"),
        (["--sam2-size", "huge"], {}, "argument --sam2-size: invalid choice: 'huge'"),
        (["--vlm-backend", "openai"], {}, "--vlm-backend openai needs --vlm-url"),
    ],
)
def test_main_refuses_bad_values_at_start_without_a_traceback(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_vlm_without_vllm_installed_says_how_to_get_it() -> None:
    proc = subprocess.run(
        [sys.executable, "main.py", "--serve-vlm", "--weights", "random"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    assert proc.returncode != 0
    assert "--serve-vlm needs vLLM" in proc.stderr
    assert "pip install -e '.[vllm]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_vlm_options_without_serve_vlm_are_said_to_be_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # They were dropped in silence: the one warning said "no VLM configured", as with none given.
    with caplog.at_level(logging.WARNING, logger="fmu"):
        parse_settings(["--serve-vlm-port", "9000", "--serve-vlm-max-model-len", "4096"])
    said = caplog.text
    assert "--serve-vlm-port, --serve-vlm-max-model-len set, but --serve-vlm is not" in said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fmu"):
        parse_settings(["--serve-vlm", "--serve-vlm-port", "9000"])
        parse_settings(["--vlm-url", "http://localhost:8000/v1"])
    assert "ignored" not in caplog.text


def test_serve_vlm_passes_on_what_lets_vllm_share_a_gpu() -> None:
    from streamer.cli.serve import vllm_command

    s = parse_settings(
        [
            "--serve-vlm",
            "--vlm-model",
            "Qwen/Qwen2.5-VL-7B-Instruct",
            "--serve-vlm-gpu-memory-utilization",
            "0.6",
            "--serve-vlm-max-model-len",
            "16384",
            "--serve-vlm-args",
            "--tensor-parallel-size 2",
        ]
    )
    cmd = vllm_command(s)
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=False))
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert flags["--model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert flags["--gpu-memory-utilization"] == "0.6" and flags["--max-model-len"] == "16384"
    assert cmd[-2:] == ["--tensor-parallel-size", "2"]
    assert "--reasoning-parser" not in cmd
    thinking = parse_settings(["--serve-vlm", "--vlm-model", "Qwen/Qwen3-VL-8B-Thinking"])
    assert vllm_command(thinking)[-2:] == ["--reasoning-parser", "qwen3"]
    # No --vlm-model: it starts the default one (the app then asks it which it serves).
    unnamed = vllm_command(parse_settings(["--serve-vlm"]))
    assert unnamed[unnamed.index("--model") + 1] == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_bad_vlm_family_is_refused_at_start() -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--vlm-family", "llava"])


FAKE_VLLM = '''
"""A stand-in vLLM server for the start-up order test: answers /health after a short while."""
import http.server, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
print("fake vllm starting", flush=True)
time.sleep(1.0)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a):
        pass
print("fake vllm ready", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.mark.parametrize("weights", ["broken", "missing"])
def test_serve_vlm_is_ready_before_sam2_loads(tmp_path: Path, weights: str) -> None:
    # A stand-in vLLM module on the path of the Python --serve-vlm-python names: what is checked
    # is our start-up order, not vLLM.
    pkg = tmp_path / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (tmp_path / "vllm", tmp_path / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text(FAKE_VLLM)
    broken = tmp_path / "sam2.pt"
    broken.write_bytes(b"not a checkpoint")
    from tests.conftest import free_port

    proc = subprocess.Popen(
        [
            sys.executable,
            "main.py",
            "--serve-vlm",
            "--serve-vlm-port",
            str(free_port()),
            "--port",
            str(free_port()),
            "--weights",
            # not a checkpoint: SAM2 fails to load, and the server stops right after
            str(broken if weights == "broken" else tmp_path / "missing.pt"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"},
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    lines = out.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    if weights == "missing":  # known without loading anything: refused before vLLM starts
        assert "--weights: no SAM2 checkpoint at" in out and "fake vllm" not in out, out
        return
    assert first("fake vllm ready") < first("vLLM is ready") < first("loading SAM2"), out


def tls_pair(folder: Path, name: str = "lan", *, password: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made as README's 'A phone on the LAN' does."""
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=fmu-live"]
        + (["-passout", f"pass:{password}"] if password else ["-nodes"])
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize(
    ("pair", "says"),
    [
        ("text", "{cert} and {key} are not a PEM certificate and its key"),
        ("swapped", "{cert} and {key} are not a PEM certificate and its key"),
        ("mismatched", "{key} is not the private key of {cert}"),
        ("encrypted", "{key} is encrypted; give a key without a password"),
    ],
)
def test_a_tls_pair_that_cannot_serve_https_is_refused_naming_both_options(
    pair: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if pair == "text":
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.write_text("not a certificate\n")
        key.write_text("not a key\n")
    elif pair == "swapped":
        key, cert = tls_pair(tmp_path)
    elif pair == "mismatched":
        cert, _ = tls_pair(tmp_path, "one")
        _, key = tls_pair(tmp_path, "other")
    else:
        cert, key = tls_pair(tmp_path, password="s3cret-pass")
    # The old check saw only that both files were there: the server loaded SAM2, then uvicorn
    # died on ssl.SSLError with a traceback.
    with pytest.raises(SystemExit) as exit_:
        parse_settings(["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--ssl-certfile and --ssl-keyfile: " + says.format(cert=cert, key=key) in err


def test_a_tls_pair_made_together_is_taken(tmp_path: Path) -> None:
    cert, key = tls_pair(tmp_path)
    settings = parse_settings(["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    assert settings.ssl_certfile == cert and settings.ssl_keyfile == key


@pytest.mark.parametrize("where", ["itself", "above"])
def test_a_data_dir_where_a_file_stands_is_refused_at_start(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("a file the person has\n")
    data_dir = file if where == "itself" else file / "data"
    # The server loaded SAM2, then the database's mkdir raised FileExistsError at start.
    with pytest.raises(SystemExit) as exit_:
        parse_settings(["--data-dir", str(data_dir)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    shown = "that" if where == "itself" else str(file)
    assert f"--data-dir / FMU_DATA_DIR: {shown} is a file; give a folder" in err
    assert file.read_text() == "a file the person has\n"
