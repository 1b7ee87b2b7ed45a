"""The app factory and the run command: the page, /healthz, /readyz, and clear start-up errors."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from streamer.app import create_app
from streamer.clip.video_io import VIDEO_SUFFIXES
from streamer.objects.requests import ChatBody, FindBody
from streamer.services import NO_VLM
from streamer.settings import Settings
from tests.conftest import random_sam2_args

ROOT = Path(__file__).resolve().parent.parent
PAGE_TEST_IDS = [
    "mode-live",
    "mode-clip",
    "mode-image",
    "stage",
    "overlay",
    "objects",
    "find-input",
    "find-submit",
    "answer",
    "verdict",
    "chat-input",
    "chat-submit",
    "status",
    "error",
]


@pytest.fixture(scope="module")
def sam2_model():  # type: ignore[no-untyped-def]
    from workers.vision import load_sam2

    return load_sam2(size="tiny", weights="random", device="cpu", image_size=256, seed=0)


def test_page_and_health_are_served_while_the_model_is_not_loaded(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), load_vision=False)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        page = client.get("/")
        assert page.status_code == 200
        for test_id in PAGE_TEST_IDS:  # each acceptance hook exists exactly once
            assert page.text.count(f'data-testid="{test_id}"') == 1, test_id
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["vision"]["loaded"] is False


def test_capabilities_say_what_the_page_must_show_before_anything_is_tried(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(data_dir=tmp_path, weights="random"), load_vision=False)
    with TestClient(app) as client:
        caps = client.get("/api/capabilities").json()
        assert caps["descriptions"] is False
        assert caps["descriptions_off_reason"] == NO_VLM  # what to start, what to pass
        assert "meaningless" in caps["weights_note"] and "--weights" in caps["weights_note"]
        # Clip's file picker offers what the server takes (.mkv is no video/* type to a browser).
        assert caps["video_suffixes"] == list(VIDEO_SUFFIXES) and ".mkv" in caps["video_suffixes"]
        # Live's page refuses a phrase or a question past these, before sending: they are the
        # server's own, a text at the limit taken and one past it refused.
        limits = caps["text_limits"]
        for body, field in ((FindBody, "phrase"), (ChatBody, "question")):
            body.model_validate({field: "😀" * limits[field]})
            with pytest.raises(ValidationError, match=f"at most {limits[field]} characters"):
                body.model_validate({field: "😀" * (limits[field] + 1)})
    app = create_app(
        Settings(data_dir=tmp_path, vlm_url="http://127.0.0.1:9/v1"), load_vision=False
    )
    with TestClient(app) as client:
        caps = client.get("/api/capabilities").json()
        assert caps["descriptions"] is True and caps["descriptions_off_reason"] is None
        assert caps["weights_note"] is None  # real weights: no banner


def test_readyz_reports_a_loaded_model_and_why_descriptions_are_off(
    sam2_model: object, tmp_path: Path
) -> None:
    app = create_app(Settings(data_dir=tmp_path, sam2_image_size=256), vision_model=sam2_model)
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True and body["vision"]["loaded"] is True
        assert body["vision"]["device"] == "cpu"
        assert body["vlm"]["reachable"] is False
        assert "--vlm-url" in body["vlm"]["detail"]  # says what to do


def test_readyz_reports_a_reachable_vlm_server(sam2_model: object, tmp_path: Path) -> None:
    from tests.fakes.openai_server import ScriptedVLMServer

    with ScriptedVLMServer(answer=["unused"]) as server:
        app = create_app(Settings(data_dir=tmp_path, vlm_url=server.url), vision_model=sam2_model)
        with TestClient(app) as client:
            vlm = client.get("/readyz").json()["vlm"]
    assert vlm["backend"] == "openai"
    assert vlm["reachable"] is True


def test_readyz_says_when_the_vlm_server_is_down(sam2_model: object, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(data_dir=tmp_path, vlm_url=f"http://127.0.0.1:{port}/v1")
    with TestClient(create_app(settings, vision_model=sam2_model)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200  # tracking still works without the VLM
    assert ready.json()["vlm"]["reachable"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_run_command_serves_the_page_with_random_weights(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "main.py",
            *random_sam2_args(256),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert ready is not None and ready.status_code == 200, (
            proc.stdout.read() if proc.poll() else ""
        )
        assert ready.json()["vision"]["weights"] == "random"
        assert 'data-testid="stage"' in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        # a checkpoint path that does not exist: says how to get one or use random weights
        (["--weights", "/nonexistent/sam2.1_hiera_tiny.pt"], {}, "no SAM2 checkpoint at"),
        # no network for the hub: same advice, no traceback
        (["--weights", "hf"], {"HF_HUB_OFFLINE": "1"}, "--weights random"),
    ],
)
def test_model_that_cannot_be_loaded_stops_the_start_with_what_to_do(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "main.py", *args, "--device", "cpu", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_port_in_use_stops_the_start_before_the_model_loads_naming_port(
    tmp_path: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "main.py", "--weights", "random", "--host", "127.0.0.1"]
            + ["--port", str(port), "--data-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    assert f"port {port}" in proc.stderr and "--port" in proc.stderr, proc.stderr
    out = proc.stdout + proc.stderr
    assert "loading SAM2" not in out and "Traceback" not in out, out  # checked first


def test_tls_pair_is_checked_at_start(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ValueError, match="--ssl-keyfile go together"):
        Settings(ssl_certfile=cert)
    with pytest.raises(ValueError, match="no file at"):
        Settings(ssl_certfile=cert, ssl_keyfile=tmp_path / "missing.pem")


@pytest.mark.slow
def test_run_command_prints_a_url_that_works_and_serves_https(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--weights", "random", "--sam2-image-size", "256"]
        + ["--device", "cpu", "--port", str(port), "--data-dir", str(tmp_path / "data")]
        + ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        url = f"https://localhost:{port}"
        for line in proc.stdout:  # the URL is printed once the model is loaded
            lines.append(line)
            if url in line:
                break
        else:
            raise AssertionError("".join(lines))
        # Exactly what was printed: on a network bind it carries the access token, which
        # sets the page's cookie once and redirects to the page.
        printed = re.search(r"https://localhost:\d+\S*", line).group(0)  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        page = None
        while time.monotonic() < deadline:
            try:
                page = httpx.get(printed, verify=False, timeout=5, follow_redirects=True)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert page is not None and 'data-testid="stage"' in page.text
        with pytest.raises(httpx.TransportError):  # HTTPS only: plain HTTP gets no page
            httpx.get(f"http://localhost:{port}/", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_hub_retry_warning_is_printed_once(tmp_path: Path) -> None:
    # No hub to reach (a closed port stands in for no network): huggingface_hub retries, and each
    # retry used to be printed twice, once through its own handler and once through ours.
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--weights", "hf", "--device", "cpu"]
        + ["--port", str(_free_port()), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "HF_HUB_OFFLINE": "0",
        },
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "[Retry 2/" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = "".join(lines)
    assert sum("[Retry 1/" in line for line in lines) == 1, out
    assert sum("thrown while requesting" in line for line in lines) == 2, out  # try 1 and 2
    # Each line is our format (a time and the logger), not huggingface_hub's bare one.
    assert all(" WARNING huggingface_hub" in line for line in lines if "Retry" in line), out
