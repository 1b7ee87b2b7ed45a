"""Service settings: one pydantic model, filled from the command line and FMU_* variables.

Every field has bounds, so a bad value fails at start with the option named and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamer.clip.limits import MAX_FPS
from streamer.http.tls import tls_pair_problem
from workers.reasoning.families import DEFAULT_VLM_MODEL, FamilySetting

SAM2_SIZES = ("tiny", "small", "base-plus", "large")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


# Said where --serve-vlm would also do; a command without that option leaves it out.
SERVE_VLM_HINT = " (or --serve-vlm)"


def folder_problem(path: Path) -> str | None:
    """Why no folder can be made (or used) at `path`: a file there or above it (--data-dir, every
    command's --out); None when one can."""
    place = next((p for p in (path, *path.parents) if p.exists()), None)
    if place is None or place.is_dir():
        return None
    return f"{'that' if place == path else place} is a file; give a folder (it is made if missing)"


class Settings(BaseSettings):
    """Everything the service can be told at start; `FMU_<NAME>` sets `<name>` from the env."""

    model_config = SettingsConfigDict(env_prefix="FMU_", extra="forbid", validate_default=True)

    # --- server -----------------------------------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on. The default is this machine only (no token needed); "
        "0.0.0.0 serves the network, with an access token (see --auth-token).",
    )
    port: int = Field(
        8080, ge=1, le=65535, description="HTTP port for the page, API and websockets."
    )
    ssl_certfile: Path | None = Field(
        None,
        description="TLS certificate (PEM): serve HTTPS, which a phone's browser needs before it "
        "gives the page its camera (README: 'A phone on the LAN').",
    )
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM) for --ssl-certfile.")
    auth_token: str | None = Field(
        None,
        min_length=8,
        description="Access token every request must carry (in the start-up URL's ?token=, a "
        "cookie set from it, or 'Authorization: Bearer'). Unset: none on a loopback --host, and "
        "one generated and printed on any other.",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated host names the Host header may carry ('*': any). Unset: "
        "localhost names without a token, any name with one.",
    )
    allowed_origins: str = Field(
        "",
        description="Comma-separated page origins (https://example.org) allowed to open "
        "websockets and change state, besides this server's own page.",
    )
    ice_servers: str = Field(
        "",
        description="STUN/TURN servers for WebRTC behind NAT, as a JSON list like the browser's "
        'iceServers: [{"urls": "turn:turn.example:3478", "username": "u", "credential": "p"}]. '
        "The server and the page both use them (at most one STUN and one TURN URL). Unset: host "
        "candidates only, on the addresses --host allows.",
    )
    api_docs: bool = Field(
        False, description="Serve the API's /docs and /openapi.json (off: they map the API)."
    )

    # --- SAM2 -------------------------------------------------------------------------------
    sam2_size: Literal["tiny", "small", "base-plus", "large"] = Field(
        "tiny", description="SAM2.1 model size."
    )
    weights: str = Field(
        "hf",
        description="'hf' (download facebook/sam2.1-hiera-<size> from the Hugging Face hub), "
        "'random' (seeded random weights: real compute, meaningless masks), or a local .pt path.",
    )
    sam2_image_size: int = Field(
        1024,
        ge=128,
        le=2048,
        description="SAM2 input resolution; smaller is faster (multiple of 32).",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="torch intra-op threads; 0 keeps torch's default (one per core). On a small "
        "shared CPU, 1 avoids OpenMP threads stalling on each other.",
    )
    compile: bool = Field(
        False, description="torch.compile the SAM2 modules (slow start, faster steps)."
    )
    seed: int = Field(0, ge=0, description="Seed for --weights random.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="What SAM2 computes in: auto = bf16 on a CUDA GPU with native bf16 and on a "
        "CPU with AMX-BF16 or AVX512-BF16, else fp32. bf16 masks differ slightly from fp32; it "
        "pays only where the hardware has native bf16 (elsewhere it is many times slower).",
    )

    # --- VLM --------------------------------------------------------------------------------
    vlm_url: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (vLLM)."
    )
    vlm_model: str | None = Field(
        None,
        description="Model name sent to the server (unset: the one its /models lists first); "
        f"unset, --vlm-backend transformers loads {DEFAULT_VLM_MODEL} (and serve's --serve-vlm "
        "starts it).",
    )
    vlm_api_key: str | None = Field(
        None, description="Bearer token for the VLM server, if it wants one."
    )
    vlm_backend: Literal["auto", "openai", "transformers", "none"] = Field(
        "auto",
        description="auto: the OpenAI-compatible server when --vlm-url is set, else none; "
        "transformers: load --vlm-model in this process (slow on CPU, works offline).",
    )
    vlm_family: FamilySetting = Field(
        "auto",
        description="Which VLM family the model is (box coordinates, image grid, thinking). auto: "
        "from the server's /v1/models (name and root path), else the local folder's config.",
    )
    serve_vlm: bool = Field(
        False,
        description="Start a vLLM server for --vlm-model as a child process (ready before SAM2 "
        "loads) and use it.",
    )
    serve_vlm_port: int = Field(8000, ge=1, le=65535, description="Port for --serve-vlm.")
    serve_vlm_gpu_memory_utilization: float = Field(
        0.75,
        gt=0.0,
        le=0.98,
        description="Share of the GPU's memory vLLM may take (--gpu-memory-utilization); the rest "
        "is SAM2's when both share one GPU. Use 0.9 when vLLM has a GPU of its own.",
    )
    serve_vlm_max_model_len: int = Field(
        8192,
        ge=1024,
        le=1_048_576,
        description="Context length vLLM sizes its KV cache for (--max-model-len); the model's "
        "own (128k for Qwen2.5-VL) does not fit beside SAM2 on one card.",
    )
    serve_vlm_python: str | None = Field(
        None,
        description="Python of the environment that has vLLM, when it is not this one (e.g. "
        ".venv-vllm/bin/python).",
    )
    serve_vlm_args: str = Field(
        "", description="More arguments for the vLLM server, as one shell-quoted string."
    )
    serve_vlm_start_timeout_s: float = Field(
        900.0, gt=0, description="Seconds to wait for the vLLM server to become ready."
    )
    vlm_connect_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Seconds to connect to the VLM server."
    )
    vlm_first_token_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for the first streamed token."
    )
    vlm_total_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Seconds for a whole VLM answer."
    )
    vlm_max_in_flight: int = Field(
        4, ge=1, le=256, description="Requests to the VLM at once; more get 'busy'."
    )
    vlm_max_in_flight_per_session: int = Field(
        2,
        ge=1,
        le=256,
        description="VLM requests (describe, chat, auto-refine, Find's) one live session, clip or "
        "image may have running at once; more wait their turn (at most --vlm-total-timeout-s, then "
        "'busy'), so one page cannot hold every VLM slot. Also the checked Finds under way at once in "
        "each (one more is 'busy').",
    )
    verify_iou_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Box IoU below which a description counts as hallucinated."
    )
    verify_max_attempts: int = Field(
        3, ge=1, le=10, description="Describe attempts before 'unverified'."
    )
    vlm_seed: int | None = Field(
        None,
        ge=0,
        description="Seed for regenerated descriptions (attempt n samples with seed + n); unset: "
        "a fresh random seed per attempt.",
    )
    find_all_points_per_side: int = Field(
        4,
        ge=1,
        le=32,
        description="Find-all proposes regions with SAM2's automatic mask generator on an N x N "
        "point grid (one decoder pass per point, on the frame's cached features).",
    )
    find_all_max_proposals: int = Field(
        12, ge=1, le=64, description="Find-all keeps the best N proposed regions of a frame."
    )
    find_all_regions_per_request: int = Field(
        4, ge=1, le=8, description="Find-all shows the VLM N region Spotlights per request."
    )
    find_all_max_requests: int = Field(
        3, ge=1, le=32, description="VLM requests one find-all may make (the rest go unchecked)."
    )
    find_all_concurrency: int = Field(
        2, ge=1, le=16, description="VLM requests one find-all runs at once."
    )
    find_all_min_iou: float = Field(
        0.7, ge=0.0, le=1.0, description="SAM2's predicted IoU a find-all proposal needs."
    )
    find_all_min_stability: float = Field(
        0.85, ge=0.0, le=1.0, description="The mask stability score a find-all proposal needs."
    )

    # --- sessions and limits -----------------------------------------------------------------
    max_sessions: int = Field(
        4, ge=1, le=256, description="Live sessions at once; more get 'busy'."
    )
    session_idle_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Close a live session after this long with no frames and no messages.",
    )
    session_first_frame_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Close a live session whose peer sends no video this long after the offer "
        "(a slot needs a live camera, not just a websocket).",
    )
    max_objects: int = Field(
        16, ge=1, le=128, description="Objects per live session, clip or image."
    )
    max_pending_messages: int = Field(
        16,
        ge=1,
        le=1000,
        description="Messages of one live session waiting to be handled (clicks wait for SAM2); "
        "past this each is refused with a slow_down error, so a flood builds no backlog.",
    )
    max_ws_message_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest websocket message accepted."
    )
    max_body_kb: int = Field(
        1024,
        ge=16,
        le=65536,
        description="Largest request body of any route but the uploads (offers, clicks, chat), "
        "in KB.",
    )
    data_dir: Path = Field(
        Path("data"),
        description="Where uploaded clips, images, exports and the database (fmu.sqlite3) are kept.",
    )
    max_upload_mb: int = Field(500, ge=1, description="Largest clip upload, in MB.")
    max_clip_seconds: float = Field(
        600.0,
        gt=0,
        description=f"Longest clip accepted, in seconds (at most {MAX_FPS} frames a second over it).",
    )
    max_clip_width: int = Field(3840, ge=16, description="Widest clip accepted, in pixels.")
    max_clip_height: int = Field(2160, ge=16, description="Tallest clip accepted, in pixels.")
    max_image_mb: int = Field(20, ge=1, description="Largest image upload, in MB.")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="Largest image, in pixels.")
    image_working_pixels: int = Field(
        4_000_000,
        ge=65_536,
        description="Pixels an image is decoded to for segmentation, the VLM and the page (a "
        "larger one is scaled down; its file stays on disk), so memory per image is bounded by "
        "this, not by the file. Clicks, boxes and masks stay in the image's own pixels.",
    )
    max_uploads_in_flight: int = Field(
        4,
        ge=1,
        le=64,
        description="Uploads received at once (half of them per browser); more get 429.",
    )
    upload_idle_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Drop an upload whose body sends nothing this long."
    )
    max_clip_jobs: int = Field(
        2, ge=1, le=64, description="Clip jobs running at once; more wait in line."
    )
    keep_days: float = Field(
        0.0,
        ge=0,
        description="Delete clips and images nobody has opened or changed for this many days; 0 "
        "keeps them.",
    )
    disk_budget_mb: int = Field(
        0,
        ge=0,
        description="Most MB the data dir may hold; past it the least recently used clips and "
        "images not in use are deleted. 0: no budget.",
    )
    log_json: bool = Field(
        False,
        description="Structured logs: one JSON object per line (time, level, logger, message).",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v in ("hf", "random"):
            return v
        if not v.strip():
            raise ValueError("must be 'hf', 'random' or a path to a SAM2 checkpoint (.pt)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @field_validator("sam2_image_size")
    @classmethod
    def _image_size(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32 (e.g. 256, 512, 1024), got {v}")
        return v

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, v: Path) -> Path:
        if problem := folder_problem(v):
            raise ValueError(problem)
        return v

    @field_validator("ice_servers")
    @classmethod
    def _ice_servers(cls, v: str) -> str:
        from streamer.live.ice import parse_ice_servers

        parse_ice_servers(v)
        return v

    @field_validator("vlm_url")
    @classmethod
    def _vlm_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s) URL such as http://localhost:8000/v1, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together: pass both or neither")
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"--{name.replace('_', '-')}: no file at {path}")
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            if problem := tls_pair_problem(self.ssl_certfile, self.ssl_keyfile):
                raise ValueError(f"--ssl-certfile and --ssl-keyfile: {problem}")
        return self

    @model_validator(mode="after")
    def _vlm_choice(self) -> Settings:
        if self.vlm_backend == "openai" and not (self.vlm_url or self.serve_vlm):
            raise ValueError(f"--vlm-backend openai needs --vlm-url{SERVE_VLM_HINT}")
        return self

    @property
    def effective_vlm_backend(self) -> str:
        """Which VLM backend the service will use, with 'auto' resolved."""
        if self.vlm_backend != "auto":
            return self.vlm_backend
        return "openai" if (self.vlm_url or self.serve_vlm) else "none"
