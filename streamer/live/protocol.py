"""The live websocket protocol: one pydantic model per message, one tagged union per direction.

The object events (results, descriptions, chat, find, errors) are the shared ones of
streamer/objects/events.py; this module adds Live's own. The page and the server read the same names; docs/protocol.md is the prose version.
Coordinates are frame pixels of the stream the server receives (x right, y down, boxes
(x0, y0, x1, y1) with x1/y1 exclusive). Frame timestamps are the RTP presentation timestamps of the
frame the message belongs to (90 kHz clock), so a client can match overlays to what it sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from streamer.objects.events import OBJECT_EVENTS, ObjectResult, tagged_union, union_tags
from streamer.objects.requests import (
    AUTO_REFINE_MAX_STEPS,
    Body,
    Phrase,
    Question,
    check_box,
    field_error,
)

ObjectId = Annotated[int, Field(ge=0, le=2**31 - 1)]
Coord = Annotated[float, Field(ge=-1e6, le=1e6)]


# --- client -> server ---------------------------------------------------------------------------
# Each is a Body: read as strictly as every HTTP body (no unknown field, no "1" for a number).


class ClickMessage(Body):
    """A point prompt: a new object (object_id null) or a refinement of an existing one."""

    type: Literal["click"]
    x: Coord
    y: Coord
    positive: bool = True
    object_id: ObjectId | None = None


class BoxMessage(Body):
    """A box prompt: a new object (object_id null) or a new box for an existing one."""

    type: Literal["box"]
    box: tuple[Coord, Coord, Coord, Coord]
    object_id: ObjectId | None = None

    @model_validator(mode="after")
    def _ordered(self) -> BoxMessage:
        check_box(self.box)
        return self


class FindMessage(Body):
    """Ground a phrase in the newest frame, check each candidate with the VLM, track the kept."""

    type: Literal["find"]
    phrase: Phrase
    all_candidates: bool = False  # keep rejected candidates too, flagged


class FindAllMessage(Body):
    """Find all of a phrase and count them ("cups", "how many cups?"): SAM2 proposes regions on
    the newest frame, the VLM classifies them, the accepted ones are tracked (find_progress
    messages while it runs, then find_result with count)."""

    type: Literal["find_all"]
    phrase: Phrase


class StopFindMessage(Body):
    """Stop the running find-all; nothing is tracked unless it had finished classifying."""

    type: Literal["stop_find"]


class DescribeMessage(Body):
    """(Re)describe an object on the newest frame."""

    type: Literal["describe"]
    object_id: ObjectId


class ChatMessage(Body):
    """A follow-up question about an object; the answer streams back as chat_token messages."""

    type: Literal["chat"]
    object_id: ObjectId
    question: Question


class AutoRefineMessage(Body):
    """Let the VLM refine the object by clicks on the newest frame (refine_click each, then
    refine_done), at most max_steps; every click is an ordinary refinement."""

    type: Literal["auto_refine"]
    object_id: ObjectId
    max_steps: Annotated[int, Field(ge=1, le=AUTO_REFINE_MAX_STEPS)] = 4


class StopRefineMessage(Body):
    """Stop the object's auto-refine; the clicks applied so far stay."""

    type: Literal["stop_refine"]
    object_id: ObjectId


class RemoveMessage(Body):
    type: Literal["remove"]
    object_id: ObjectId


class ResetMessage(Body):
    """Forget every object (and cancel their descriptions); the stream keeps going."""

    type: Literal["reset"]


class FrameIdsMessage(Body):
    """The page switched synced overlay mode on the same connection: from now on its frames do
    (`on`) or do not carry the frame-id band (as `frame_ids` in the offer)."""

    type: Literal["frame_ids"]
    on: bool


class PingMessage(Body):
    """Keeps an otherwise quiet session from its idle timeout; answered with pong."""

    type: Literal["ping"]


CLIENT_MESSAGES = (
    ClickMessage,
    BoxMessage,
    FindMessage,
    FindAllMessage,
    StopFindMessage,
    DescribeMessage,
    ChatMessage,
    AutoRefineMessage,
    StopRefineMessage,
    RemoveMessage,
    ResetMessage,
    FrameIdsMessage,
    PingMessage,
)
ClientMessage = tagged_union(*CLIENT_MESSAGES)
_client_adapter: TypeAdapter[Any] = TypeAdapter(ClientMessage)


def parse_client_message(text: str | bytes) -> Any:
    """Parse one client message; raises ProtocolError with a person-readable reason."""
    try:
        return _client_adapter.validate_json(text)
    except ValidationError as exc:
        raise ProtocolError(_describe_validation_error(exc)) from None


class ProtocolError(ValueError):
    """A client message that is not valid JSON or not one of the client messages."""


def _describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return 'message is not valid JSON; send one JSON object such as {"type": "ping"}'
    if kind in ("dict_type", "model_type"):
        return 'message must be a JSON object with a "type" field, e.g. {"type": "ping"}'
    if kind in ("union_tag_not_found", "union_tag_invalid", "model_attributes_type"):
        tags = ", ".join(sorted(_CLIENT_TAGS))
        return f"unknown or missing message type; expected one of: {tags}"
    return field_error(first)


_CLIENT_TAGS = union_tags(ClientMessage)


# --- server -> client ---------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrameSize(BaseModel):
    width: int
    height: int


class HelloMessage(_Message):
    """First message on the websocket: the session is live and these are its limits."""

    type: Literal["hello"] = "hello"
    session_id: str
    max_objects: int
    descriptions: bool
    descriptions_off_reason: str | None = None


class OverlayMessage(_Message):
    """Every tracked object's mask on one processed frame."""

    type: Literal["overlay"] = "overlay"
    frame_index: int
    pts: int | None  # the frame's RTP timestamp (90 kHz); None when the frame carried none
    # The id the page painted on the frame (an offer with frame_ids; streamer/live/frame_ids.py);
    # None without it, or when the frame's band could not be read.
    frame_id: int | None = None
    time_s: float | None  # pts in seconds
    frame_size: FrameSize
    objects: list[ObjectResult]


class StatusMessage(_Message):
    """Once a second: how the stream is doing."""

    type: Literal["status"] = "status"
    connection: str  # the peer connection's state
    fps: float  # frames processed per second, over the last status interval
    frames_received: int
    frames_processed: int
    frames_dropped: int  # received but replaced by a newer frame before the tracker got to them
    step_ms: float | None
    objects: int
    descriptions: bool
    descriptions_off_reason: str | None = None


class PongMessage(_Message):
    type: Literal["pong"] = "pong"


ServerMessage = tagged_union(
    HelloMessage, OverlayMessage, StatusMessage, PongMessage, *OBJECT_EVENTS
)
server_adapter: TypeAdapter[Any] = TypeAdapter(ServerMessage)


def parse_server_message(text: str | bytes) -> Any:
    """Parse one server message (clients and tests use this)."""
    return server_adapter.validate_json(text)


# --- offer (HTTP) -------------------------------------------------------------------------------


class OfferRequest(Body):
    """POST /api/live/offer body: the page's WebRTC offer."""

    sdp: Annotated[str, Field(min_length=1, max_length=200_000)]
    type: Literal["offer"]
    # The session this page had before its connection dropped: its objects come back when the
    # server still keeps them (for the idle timeout after the drop).
    resume: Annotated[str | None, Field(max_length=64)] = None
    # Synced overlay mode: every frame carries its id in a band below the picture
    # (streamer/live/frame_ids.py); the server crops it off and echoes it in each overlay.
    frame_ids: bool = False


class OfferAnswer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    session_id: str
    websocket: str  # path of the session's websocket
    resumed: bool = False  # the dropped session's objects are coming back (an objects message)


class SessionsReport(BaseModel):
    """GET /api/live/sessions: server memory and open live state (operators, leak tests)."""

    rss_mb: float
    sessions: int
    max_sessions: int
    peer_connections: int
    session_tasks: int


class CapacityReport(BaseModel):
    """GET /api/live/capacity: room for new live sessions here (a load balancer's health check).

    200 with room, 404 when full, 503 while SAM2 is not loaded (see docker/haproxy.cfg).
    """

    sessions: int
    max_sessions: int
    room: int
    ready: bool
    detail: str | None = None  # why not ready, and what to do
