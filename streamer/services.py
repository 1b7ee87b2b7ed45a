"""What a running service shares: settings, the SAM2 model, the vision thread, the reasoner.

Model work never runs on the event loop: every SAM2 call goes through `run_vision`, which hands it
to one worker thread per device (the model and each tracker are used from that thread only), and
the reasoner's backends are async (HTTP) or run their own model thread (in-process transformers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamer.scheduler import BACKGROUND, VisionScheduler
from streamer.settings import Settings
from workers.reasoning.errors import start_hint
from workers.reasoning.families import DEFAULT_VLM_MODEL

log = logging.getLogger("fmu.services")
T = TypeVar("T")
# How long a health check that found the VLM down keeps a new object from being described at once.
VLM_DOWN_KNOWN_S = 30.0


@dataclass
class Services:
    """What the routers need, built once per app. Tests build it with the parts they need."""

    settings: Settings
    vision_model: Any = None  # sam2 SAM2VideoPredictor from workers.vision.load_sam2
    reasoner: Any = None  # workers.reasoning.Reasoner, or None when descriptions are off
    vision_error: str | None = None  # why the model could not be loaded, shown by /readyz
    vlm_off_reason: str | None = None  # why descriptions are off, shown to the person
    # Every open page polls the VLM's health (and /readyz may be scraped): one check at a time,
    # and its answer is reused for this long, so the VLM is asked at most this often.
    vlm_health_every_s: float = 3.0
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2")
    )
    _scheduler: VisionScheduler = field(init=False)
    _vlm_health: dict[str, Any] | None = field(default=None, init=False)
    _vlm_checked_at: float = field(default=0.0, init=False)
    _vlm_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        self._scheduler = VisionScheduler(self._executor)

    async def run_vision(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a SAM2 call on the vision thread and await its result.

        Loading included: torch's OpenMP keeps a thread team per thread that runs torch ops, and
        once it counts more of its threads than cores it stops spin-waiting between parallel
        regions. A second team (say, the model loaded on another thread) made every SAM2 step
        about 10% slower at 2 intra-op threads on 2 cores.
        """
        return await self._scheduler.run(BACKGROUND, fn, *args, **kwargs)

    async def run_vision_live(
        self, session_id: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """A live session's SAM2 call: ahead of clip jobs and images, round-robin with the other
        sessions (streamer/scheduler.py)."""
        return await self._scheduler.run(session_id, fn, *args, **kwargs)

    @property
    def vision_ready(self) -> bool:
        return self.vision_model is not None

    @property
    def vision_unavailable(self) -> str | None:
        """Why SAM2 cannot serve a request right now and what to do, or None when it can."""
        if self.vision_model is not None:
            return None
        why = self.vision_error or "the SAM2 model is still loading"
        return f"{why}; try again in a moment (GET /readyz says when it is ready)"

    @property
    def descriptions_off(self) -> str | None:
        """Why descriptions are off (no reasoner) and what to do, or None when they are on."""
        if self.reasoner is not None:
            return None
        return self.vlm_off_reason or no_vlm(self.settings.vlm_model)

    def load_vision_now(self) -> None:
        """Load SAM2 on the vision thread and wait for it (start-up, before serving)."""
        self.vision_model = self._executor.submit(load_vision_model, self.settings).result()

    async def vlm_health(self) -> dict[str, Any]:
        """The VLM server's reachability and the model's family (and why), for /readyz and the
        page's VLM banner; asked of the VLM at most every `vlm_health_every_s`."""
        if self.reasoner is None:
            return {"reachable": False, "detail": self.descriptions_off}
        async with self._vlm_lock:  # callers that arrive during a check get its answer
            fresh = time.monotonic() - self._vlm_checked_at < self.vlm_health_every_s
            if self._vlm_health is None or not fresh:
                before, self._vlm_health = self._vlm_health, await self._check_vlm()
                self._vlm_checked_at = time.monotonic()
                if before is not None and _usable(before) != _usable(self._vlm_health):
                    self._log_vlm_change(self._vlm_health)
            return dict(self._vlm_health)

    def _log_vlm_change(self, health: dict[str, Any]) -> None:
        """The server log's line when the VLM stops answering or comes back (seen by the checks
        an open page asks for every few seconds; a failed request says it too)."""
        where = self.settings.vlm_url
        if _usable(health):
            log.info("the VLM at %s answers again", where)
        else:
            log.warning("the VLM stopped answering: %s", health.get("detail") or where)

    @property
    def vlm_known_unusable(self) -> bool:
        """Whether the VLM's last health check, under VLM_DOWN_KNOWN_S old, found it not answering
        or answering but unable to serve the configured model: an open page asks every few
        seconds (GET /api/vlm). Nothing awaited, nothing asked."""
        health, age = self._vlm_health, time.monotonic() - self._vlm_checked_at
        if health is None or age >= VLM_DOWN_KNOWN_S:
            return False
        return not _usable(health)

    async def _check_vlm(self) -> dict[str, Any]:
        try:
            health = await asyncio.wait_for(self.reasoner.backend.health(), timeout=5.0)
        except Exception as exc:  # health is a report, never a crash
            return {"reachable": False, "detail": f"{type(exc).__name__}: {exc}"}
        if health.get("reachable"):
            health.update(await self.reasoner.family_status())
        return health

    async def aclose(self) -> None:
        if self.reasoner is not None:
            try:
                await self.reasoner.backend.aclose()
            except Exception:  # closing is best effort
                log.exception("closing the VLM backend failed")
        self._executor.shutdown(wait=False, cancel_futures=True)


def load_vision_model(settings: Settings) -> Any:
    """Load SAM2 as the settings say; raises workers.vision.SAM2LoadError with what to do."""
    from workers.vision import load_sam2

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    model = load_sam2(
        size=settings.sam2_size,
        weights=settings.weights,
        device=settings.device,
        image_size=settings.sam2_image_size,
        seed=settings.seed,
        compile=settings.compile,
        precision=settings.precision,
    )
    chosen = model.fmu_precision
    # The reason names what was asked ("auto: this CPU has ...", "fp32 asked for"), as the VLM
    # family's line does.
    log.info("SAM2 computes in %s (%s)", chosen.name, chosen.reason)
    return model


def no_vlm(model: str, *, serve_vlm: bool = True) -> str:
    """Why descriptions are off when no VLM is configured, and what to do for the configured
    --vlm-model: the page's banner, every refusal and the log say this. `serve_vlm`: the command
    takes --serve-vlm (the server does; eval and dataset do not)."""
    hint = start_hint(model, serve_vlm=serve_vlm)
    return f"descriptions are off: no VLM configured. {hint[0].upper()}{hint[1:]}"


# What no_vlm says under the default settings.
NO_VLM = no_vlm(Settings.model_fields["vlm_model"].default)


def build_reasoner(
    settings: Settings, vlm_url: str | None = None, *, serve_vlm: bool = True
) -> tuple[Any, str | None]:
    """The reasoner the settings ask for, or (None, why descriptions are off); `serve_vlm`: the
    command takes --serve-vlm, so the reason may offer it."""
    choice = settings.effective_vlm_backend
    if choice == "none":
        return None, no_vlm(settings.vlm_model, serve_vlm=serve_vlm)
    from workers.reasoning import OpenAICompatibleBackend, Reasoner, TransformersBackend

    if choice == "openai":
        backend: Any = OpenAICompatibleBackend(
            vlm_url or settings.vlm_url,
            settings.vlm_model,
            api_key=settings.vlm_api_key,
            connect_timeout_s=settings.vlm_connect_timeout_s,
            first_token_timeout_s=settings.vlm_first_token_timeout_s,
            total_timeout_s=settings.vlm_total_timeout_s,
            max_in_flight=settings.vlm_max_in_flight,
        )
    else:
        backend = TransformersBackend(
            settings.vlm_model or DEFAULT_VLM_MODEL, device=settings.device
        )
    reasoner = Reasoner(
        backend,
        verify_iou_threshold=settings.verify_iou_threshold,
        max_attempts=settings.verify_max_attempts,
        family=settings.vlm_family,
        seed=settings.vlm_seed,
    )
    return reasoner, None


def _usable(health: dict[str, Any]) -> bool:
    """Whether a VLM health check found it answering and serving the configured model."""
    return bool(health.get("reachable")) and health.get("model_served") is not False
