"""The FastAPI app factory: the page, health and readiness, and the live, clip and image routers."""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel

from streamer.clip import find as clip_find
from streamer.clip import reasoning as clip_reasoning
from streamer.clip import routes as clip_routes
from streamer.clip import tracking as clip_tracking
from streamer.clip.store import ClipStore
from streamer.clip.video_io import VIDEO_SUFFIXES
from streamer.http.access import AccessControl, access_settings
from streamer.http.bodies import BodyLimit
from streamer.http.claim import RefineStopped, stopped_answer
from streamer.http.errors import add_error_handlers
from streamer.http.kept import KeptItems, share_retention
from streamer.http.uploads import UploadsInFlight
from streamer.image import agent as image_agent
from streamer.image import routes as image_routes
from streamer.image.store import ImageStore
from streamer.live import routes as live_routes
from streamer.live.ice import follow_host, page_ice_servers, parse_ice_servers
from streamer.live.registry import LiveRegistry
from streamer.metrics import AppCollector, exposition
from streamer.objects.find_all import ASKS_COUNT
from streamer.objects.requests import PHRASE_MAX_CHARS, QUESTION_MAX_CHARS
from streamer.services import Services, build_reasoner, load_vision_model
from streamer.settings import Settings
from streamer.storage.db import DB_NAME, Database
from workers.reasoning.errors import start_hint

log = logging.getLogger("fmu.app")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_FROM_SETTINGS: Any = object()


def create_app(
    settings: Settings,
    *,
    vision_model: Any = None,
    reasoner: Any = _FROM_SETTINGS,
    load_vision: bool = True,
) -> FastAPI:
    """Build the app. Pass `vision_model` (from workers.vision.load_sam2) and `reasoner` to reuse
    loaded parts (tests, main.py); otherwise the model loads in the background at start-up
    (`/readyz` says when) and the reasoner is built from the settings. `reasoner=None` turns
    descriptions off."""
    services = Services(settings=settings, vision_model=vision_model)
    follow_host(settings.host)  # WebRTC offers candidates only where the HTTP server listens
    if reasoner is _FROM_SETTINGS:
        services.reasoner, services.vlm_off_reason = build_reasoner(settings)
    else:
        services.reasoner = reasoner  # None: Services.descriptions_off says NO_VLM

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = None
        if services.vision_model is None and load_vision:
            loader = asyncio.create_task(_load_vision(services))
        family = asyncio.create_task(_log_vlm_family(services)) if services.reasoner else None
        await app.state.clips.restore()
        await app.state.images.restore()
        retention = asyncio.create_task(_retention(app.state.clips))
        try:
            yield
        finally:
            for task in (loader, family, retention):
                if task is not None:
                    task.cancel()
            await app.state.live.close_all()
            await app.state.clips.aclose()
            await app.state.images.aclose()
            await services.aclose()
            await asyncio.to_thread(db.close)

    docs = settings.api_docs  # the API's map stays private unless asked for
    app = FastAPI(
        title="FMU Live",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    # Added last runs first: who may ask is decided before any body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_kb * 1024)
    app.add_middleware(AccessControl, **access_settings(settings))
    app.state.settings = settings
    app.state.services = services
    # Every store is built here and handed to the routes as a dependency (streamer/*/routes.py).
    app.state.live = LiveRegistry(services)
    db = Database(Path(settings.data_dir) / DB_NAME)
    app.state.db = db
    app.state.clips = ClipStore(services, db)
    app.state.images = ImageStore(services, db)
    share_retention(app.state.clips, app.state.images)
    app.state.uploads = UploadsInFlight(
        settings.max_uploads_in_flight,
        max_per_owner=max(1, settings.max_uploads_in_flight // 2),
        idle_timeout_s=settings.upload_idle_timeout_s,
    )
    add_error_handlers(app)
    # Not an error: an auto-refine stopped while its request waited its VLM turn answers so.
    app.add_exception_handler(RefineStopped, stopped_answer)  # type: ignore[arg-type]
    metrics = CollectorRegistry()
    metrics.register(AppCollector(app.state))  # type: ignore[arg-type]

    @app.get("/metrics")
    async def prometheus() -> Response:
        body = await asyncio.to_thread(exposition, metrics)  # sizes files: off the loop
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        vlm = await services.vlm_health()
        body = {
            "ready": services.vision_ready,
            "vision": {
                "loaded": services.vision_ready,
                "size": settings.sam2_size,
                "weights": settings.weights,
                "image_size": settings.sam2_image_size,
                "device": str(getattr(services.vision_model, "device", settings.device)),
                "error": services.vision_error,
            },
            "vlm": {
                "backend": settings.effective_vlm_backend if services.reasoner else "none",
                "model": settings.vlm_model,
                **vlm,
            },
        }
        return JSONResponse(body, status_code=200 if services.vision_ready else 503)

    @app.get("/api/capabilities")
    async def capabilities() -> Capabilities:
        return page_capabilities(services)

    @app.get("/api/vlm")
    async def vlm_status() -> VLMStatus:
        return page_vlm_status(services, await services.vlm_health())

    for module in (
        live_routes,
        clip_routes,
        clip_tracking,
        clip_reasoning,
        clip_find,
        image_routes,
        image_agent,
    ):
        app.include_router(module.router)
    # HEAD answers as GET does, without the body (Starlette's own routes do; FastAPI's do not, so
    # a HEAD fell through to the page's files: 404, while a 405 there said "Allow: GET, HEAD"):
    # health checks and `curl -I` use it. Not where the GET does real work for its body: a HEAD
    # of export.mp4 would render the video.
    for route in app.routes:
        if isinstance(route, APIRoute) and "GET" in route.methods and route.name not in GET_ONLY:
            route.methods.add("HEAD")
    app.openapi = functools.partial(_api_map, app)  # type: ignore[method-assign]
    app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


GET_ONLY = frozenset({"export_video"})  # route names HEAD is not added to (app: HEAD as GET)


def _api_map(app: FastAPI) -> dict[str, Any]:
    """The API's map (`--api-docs`) with each GET once: FastAPI gives all of a route's methods
    one operation id, so the HEAD added above repeated every GET's (a warning a route, and a map
    client generators refuse). HEAD is said once, in the map's description."""
    if app.openapi_schema is None:
        routes = []
        for route in app.routes:
            if isinstance(route, APIRoute):
                route = copy.copy(route)  # shallow: its dependencies and models are shared
                route.methods = route.methods - {"HEAD"}
            routes.append(route)
        app.openapi_schema = get_openapi(
            title=app.title,
            version=app.version,
            description="Every GET also answers HEAD (without its body), but export.mp4's.",
            routes=routes,
        )
    return app.openapi_schema


class Capabilities(BaseModel):
    """What this server can do, for the page to show before anything is tried (docs/protocol.md)."""

    descriptions: bool  # a VLM is configured: Describe, Ask and Find work
    descriptions_off_reason: str | None = None  # why not, and what to do
    weights: str  # hf, random, or a checkpoint path
    weights_note: str | None = None  # a warning the page shows as a banner (random weights)
    max_objects: int
    ice_servers: list[dict[str, Any]] = []  # --ice-servers, for the page's RTCPeerConnection
    video_suffixes: list[str] = []  # clip files taken by name (VIDEO_FORMATS), for Clip's picker
    # A Find box text asking for a count, which the page sends to Find all (a JS RegExp, /i).
    count_pattern: str = ASKS_COUNT
    # The most characters (code points, once trimmed) a phrase (find, find_all) and a question
    # (chat) may have: Live's page refuses a longer one in the server's words before sending it.
    text_limits: dict[str, int] = {"phrase": PHRASE_MAX_CHARS, "question": QUESTION_MAX_CHARS}


RANDOM_WEIGHTS_NOTE = (
    "SAM2 is running on random weights (--weights random): masks are meaningless blobs, not a bug. "
    "For real masks restart without --weights random (downloads the SAM2.1 checkpoint) "
    "or pass --weights /path/to/sam2.1_hiera_tiny.pt."
)


def page_capabilities(services: Services) -> Capabilities:
    settings = services.settings
    return Capabilities(
        descriptions=services.reasoner is not None,
        descriptions_off_reason=services.descriptions_off,
        weights=str(settings.weights),
        weights_note=RANDOM_WEIGHTS_NOTE if settings.weights == "random" else None,
        max_objects=settings.max_objects,
        ice_servers=page_ice_servers(parse_ice_servers(settings.ice_servers)),
        video_suffixes=list(VIDEO_SUFFIXES),
    )


class VLMStatus(BaseModel):
    """Whether the configured VLM answers now; the page polls it (docs/protocol.md)."""

    configured: bool  # a VLM is configured (capabilities.descriptions)
    reachable: bool
    note: str | None = None  # while it cannot answer: what is wrong and what to do (a banner)
    detail: str | None = None  # the last check's own words (the banner's tooltip)


def page_vlm_status(services: Services, health: dict[str, Any]) -> VLMStatus:
    if services.reasoner is None:  # descriptions off: capabilities already say why
        return VLMStatus(configured=False, reachable=False)
    url = getattr(services.reasoner.backend, "base_url", services.settings.vlm_url)
    detail = health.get("detail")
    note = None
    if not health.get("reachable"):
        note = (
            f"The VLM at {url} does not answer (still starting? a vLLM server takes minutes to "
            "load): descriptions, chat and Find will work once it does, no reload needed. "
            f"If none is running, {start_hint(services.settings.vlm_model)}."
        )
    elif health.get("model_served") is False:
        note = f"The VLM at {url} answers but cannot serve the configured model: {detail}"
    return VLMStatus(
        configured=True, reachable=bool(health.get("reachable")), note=note, detail=detail
    )


async def _retention(kept: KeptItems[Any]) -> None:
    while True:  # --keep-days and --disk-budget-mb also hold when nothing is uploaded
        try:
            await kept.enforce_retention()  # over Clip's and Image's: they share the data dir
        except Exception:  # retention is housekeeping: it never stops the service
            log.exception("retention failed")
        await asyncio.sleep(60)


async def _log_vlm_family(services: Services) -> None:
    # Which family the model is decides box coordinates and thinking: say which and why, once.
    status = await services.reasoner.family_status()
    if status["family"]:
        log.info("VLM family %s (%s)", status["family"], status["family_reason"])
    else:
        log.warning("VLM family not known yet: %s", status["family_reason"])


async def _load_vision(services: Services) -> None:
    try:
        # on the vision thread, like every later SAM2 call: see Services.run_vision
        services.vision_model = await services.run_vision(load_vision_model, services.settings)
        log.info("SAM2 loaded")
    except Exception as exc:  # reported by /readyz; the page says what to do
        services.vision_error = str(exc)
        log.error("SAM2 could not be loaded: %s", exc)
