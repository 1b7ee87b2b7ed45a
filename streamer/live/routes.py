"""Live mode's routes: WebRTC offer/answer and the session websocket (the sessions: registry.py).

Pairing: the page POSTs its offer to /api/live/offer; the answer carries a session id and the
websocket path (/api/live/sessions/{session_id}/ws) the page opens next. The offer is where admission is
decided (malformed SDP -> 400, too many sessions -> 503), so a refused page never holds a socket.
A session ends when its websocket closes, its peer connection fails or closes, it idles past
settings.session_idle_timeout_s, or the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

import psutil
from aiortc import RTCPeerConnection, RTCSessionDescription
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from streamer.http.errors import error_response
from streamer.live import protocol as p
from streamer.live.ice import parse_ice_servers, rtc_configuration
from streamer.live.registry import Registry
from streamer.live.session import LiveSession
from streamer.objects.events import ErrorMessage, binary_frame_refused
from streamer.objects.requests import field_error
from workers.words import plural

log = logging.getLogger("fmu.live")
router = APIRouter()

WS_CLOSE_TOO_BIG = 1009
WS_CLOSE_UNKNOWN_SESSION = 4404
WS_CLOSE_ALREADY_ATTACHED = 4409
SESSION_HEADER = "X-FMU-Session"


@router.post("/api/live/offer")
async def live_offer(request: Request, reg: Registry) -> JSONResponse:
    """Answer the page's WebRTC offer and open a session for it."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        # A cross-site form or text/plain POST needs no CORS preflight; JSON does.
        return error_response(
            415,
            "bad_offer",
            f"the offer must be sent as application/json, not {kind[:60] or 'no content type'!r}",
        )
    raw = await request.body()
    try:
        offer = p.OfferRequest.model_validate_json(raw)
    except ValidationError as exc:
        return error_response(
            400,
            "bad_offer",
            'the offer must be JSON {"sdp": "v=0...", "type": "offer"}: '
            + field_error(exc.errors()[0]),
        )
    problem = _sdp_problem(offer.sdp)
    if problem is not None:
        return error_response(400, "bad_offer", problem)
    services = request.app.state.services
    if services.vision_unavailable is not None:
        return error_response(503, "not_ready", services.vision_unavailable)
    # This browser's, not closed yet. The page resumes from it, so it has left it: its network
    # dropped before the server noticed, or its close is under way. Ended as dropped (or once its
    # close is done), its objects are parked for this offer.
    previous = reg.find(offer.resume, closing=True) if offer.resume else None
    if previous is not None:
        await previous.close("the page went away")
    session = await reg.admit()
    if session is None:
        limit = services.settings.max_sessions
        return error_response(
            503,
            "busy",
            f"busy: {limit} live sessions are running (the maximum); close one or try again later",
        )
    try:
        pc = RTCPeerConnection(rtc_configuration(parse_ice_servers(services.settings.ice_servers)))
        reg.peer_connections.add(pc)
        session.pc = pc
        _wire_peer_connection(pc, session)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            video = _receive_one_video(pc)
            if video:  # answered before anything is started or resumed: it may fail too
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc raises many types for bad SDP; all mean "bad offer"
            await session.close("malformed offer")
            log.info("session %s: offer refused by aiortc: %r", session.id[:8], exc)
            return error_response(
                400,
                "bad_offer",
                "malformed SDP offer: WebRTC could not use it; send the "
                "offer exactly as RTCPeerConnection.createOffer made it",
            )
        if not video:
            await session.close("offer without video")
            return error_response(400, "bad_offer", NO_VIDEO)
        session.frame_ids = offer.frame_ids
        await session.start()
        parked = reg.take_parked(offer.resume) if offer.resume else None
        if parked is not None:
            session.resume(parked)
    except BaseException:
        await session.close("offer failed")
        raise
    log.info(
        "session %s started%s (%s running)",
        session.id[:8],
        f", resuming {plural(len(parked.objects), 'object')}" if parked is not None else "",
        len(reg.sessions),
    )
    body = p.OfferAnswer(
        sdp=pc.localDescription.sdp,
        session_id=session.id,
        websocket=f"/api/live/sessions/{session.id}/ws",
        resumed=parked is not None,
    )
    # Names the session for a load balancer, which routes /api/live/sessions/{id}/... to the
    # replica that answered (docker/haproxy.cfg learns it with `stick store-response`).
    return JSONResponse(body.model_dump(), headers={SESSION_HEADER: session.id})


NO_VIDEO = "the offer has no video track; add the camera track before creating the offer"


def _sdp_problem(sdp: str) -> str | None:
    """Why this is not a usable offer; checked first, as aiortc's parser accepts nearly anything."""
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        return (
            "malformed SDP offer: it must start with the line v=0; send the offer exactly as "
            "RTCPeerConnection.createOffer made it"
        )
    if not _sends_video(lines):
        return NO_VIDEO
    if not any(line.startswith("a=fingerprint:") for line in lines):
        # aiortc would accept it and fail later, holding the slot: DTLS needs the fingerprint.
        return (
            "the offer has no DTLS fingerprint (a=fingerprint:...); send the offer exactly as "
            "RTCPeerConnection.createOffer made it"
        )
    return None


def _sends_video(lines: list[str]) -> bool:
    """Whether a video section of the offer sends: not refused (port 0), recvonly or inactive. An
    offer that sends no video would hold a live slot until the first-frame timeout."""
    sending = []
    for line in lines:
        if line.startswith("m="):
            kind, _, rest = line[2:].partition(" ")
            sending.append(kind == "video" and not rest.startswith("0 "))
        elif sending and line in ("a=recvonly", "a=inactive"):
            sending[-1] = False
    return any(sending)


def _receive_one_video(pc: RTCPeerConnection) -> bool:
    """Answer the offer's first video section only; whether it has one. Audio and further video
    sections are answered inactive, so the page sends none of them: only the first video track is
    read (LiveSession.add_track), and aiortc queues what nothing reads without bound."""
    video = False
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video" and not video:
            video = True
        else:
            transceiver.direction = "inactive"
    return video


def _wire_peer_connection(pc: RTCPeerConnection, session: LiveSession) -> None:
    # Handlers hold the session weakly: a closed session must not be kept alive by its pc.
    ref = weakref.ref(session)

    @pc.on("track")
    def on_track(track: Any) -> None:
        s = ref()
        if s is not None:
            s.add_track(track)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        s = ref()
        if s is not None and pc.connectionState in ("failed", "closed"):
            asyncio.get_running_loop().create_task(s.close(f"peer connection {pc.connectionState}"))


@router.get("/api/live/sessions")
async def live_sessions(reg: Registry) -> p.SessionsReport:
    """How many sessions, tasks and peer connections are open (for operators and leak tests)."""
    return p.SessionsReport(
        rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1),
        sessions=len(reg.sessions),
        max_sessions=reg.services.settings.max_sessions,
        peer_connections=reg.open_peer_connections(),
        session_tasks=sum(s.task_count for s in reg.sessions.values()),
    )


@router.get("/api/live/capacity")
async def live_capacity(request: Request, reg: Registry) -> JSONResponse:
    """Whether this replica takes a new live session, for a load balancer's health check.

    200 while it has room, 404 when it is full (HAProxy's `http-check disable-on-404` then sends it
    no new sessions while its own still reach it), 503 while SAM2 is not loaded.
    """
    settings = reg.services.settings
    unavailable = request.app.state.services.vision_unavailable
    report = p.CapacityReport(
        sessions=len(reg.sessions),
        max_sessions=settings.max_sessions,
        room=max(0, settings.max_sessions - len(reg.sessions)),
        ready=unavailable is None,
        detail=unavailable,
    )
    status = 503 if unavailable else (200 if report.room else 404)
    return JSONResponse(report.model_dump(), status_code=status)


@router.websocket("/api/live/sessions/{session_id}/ws")
async def live_ws(ws: WebSocket, session_id: str, reg: Registry) -> None:
    """The session's message channel: client prompts in, overlays and answers out."""
    settings = reg.services.settings
    await ws.accept()
    session = reg.find(session_id)
    if session is None:
        await _refuse(
            ws,
            WS_CLOSE_UNKNOWN_SESSION,
            f"no live session {session_id[:40]!r} here: it has ended (sessions end when the "
            "page goes away) or the server that held it stopped; post an offer to "
            "/api/live/offer to start a new session",
        )
        return
    try:
        session.attach_websocket(ws)
    except RuntimeError as exc:
        await _refuse(ws, WS_CLOSE_ALREADY_ATTACHED, str(exc))
        return
    reasoner = reg.services.reasoner
    session.send(
        p.HelloMessage(
            session_id=session.id,
            max_objects=settings.max_objects,
            descriptions=reasoner is not None,
            descriptions_off_reason=reg.services.descriptions_off,
        )
    )
    if reasoner is None:
        session.send(
            ErrorMessage(
                code="vlm_off",
                message=reg.services.descriptions_off,
            )
        )
    closed = asyncio.ensure_future(session.closed.wait())
    # Messages are read as they come and handled one at a time, in order, by `handling`: reading
    # never waits for SAM2, so the websocket's keepalive pongs go out under a flood, and what does
    # not fit is refused.
    pending: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_pending_messages)
    handling = asyncio.create_task(_handle_in_order(session, pending))
    try:
        while True:
            receive = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({receive, closed}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                with contextlib.suppress(BaseException):
                    await receive
                return
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                if message.get("code", 1000) == 1000:
                    # The page ended the session on purpose (left Live): nothing to keep.
                    await session.close("the page closed the session")
                return
            data = message.get("text")
            size = len(data.encode()) if data is not None else len(message.get("bytes") or b"")
            if size > settings.max_ws_message_bytes:
                session.send(
                    ErrorMessage(
                        code="bad_message",
                        fatal=True,
                        message=(
                            f"message of {size} bytes is over the {settings.max_ws_message_bytes}-byte "
                            "limit; this connection closes, and the page reconnects with its objects"
                        ),
                    )
                )
                await session.close("message too big", ws_code=WS_CLOSE_TOO_BIG)
                return
            if data is None:  # even one that holds JSON: as Clip's socket, and docs/protocol.md
                session.send(binary_frame_refused())
                session.touch()
                continue
            try:
                msg = p.parse_client_message(data)
            except p.ProtocolError as exc:
                session.send(ErrorMessage(code="bad_message", message=str(exc)))
                session.touch()
                continue
            if isinstance(msg, p.FrameIdsMessage):
                await session.handle(msg)  # a flag on the frames: never queued, never dropped
                continue
            try:
                pending.put_nowait(msg)
            except asyncio.QueueFull:
                session.touch()
                session.send(_slow_down(msg, pending.maxsize))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the page went away mid-send
    finally:
        closed.cancel()
        handling.cancel()
        await session.close("websocket closed")


def _slow_down(msg: Any, bound: int) -> ErrorMessage:
    return ErrorMessage(
        code="slow_down",
        request=msg.type,
        # the page says which question, click or Find went unanswered
        object_id=getattr(msg, "object_id", None),
        phrase=getattr(msg, "phrase", None),
        message=f"{bound} messages of this session are already waiting: this {msg.type} was "
        "dropped. Wait for their answers before sending more",
    )


async def _handle_in_order(session: LiveSession, pending: asyncio.Queue[Any]) -> None:
    """The session's messages, one after another in the order they came."""
    while True:
        msg = await pending.get()
        try:
            await session.handle(msg)
        except Exception:  # a bug must not take the page's session down
            if session.closed.is_set() or session.tracker is None:
                return
            log.exception("session %s: handling %s failed", session.id[:8], msg.type)
            session.send(
                ErrorMessage(
                    code="internal",
                    request=msg.type,
                    message=f"internal error handling {msg.type}; the session goes on "
                    "(the details are in the server log)",
                )
            )


async def _refuse(ws: WebSocket, code: int, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(
            ErrorMessage(code="session_closed", message=message, fatal=True).model_dump_json()
        )
        await ws.close(code=code, reason=message[:120])
