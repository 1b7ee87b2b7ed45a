"""Settings and command line: every option settable, bad values fail at start naming the option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from main import parse_settings
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
