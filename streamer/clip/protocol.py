"""Clip mode's messages: request bodies, and the clip websocket's tagged unions (both directions).

Describe, chat and find answer with the shared object events (streamer/objects/events.py) as
NDJSON lines; the websocket pushes job progress, proxy and export state, and object changes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, model_validator

from streamer.http.kept import RemovedItem
from streamer.objects import requests
from streamer.objects.events import (
    OBJECT_EVENTS,
    Box,
    KeptObjectInfo,
    RLEMask,
    tagged_union,
)


class AtFrame(requests.Body):
    t: float | None = Field(None, ge=0, description="The page's currentTime, seconds.")
    frame: int | None = Field(None, ge=0, description="A frame index, instead of t.")

    @model_validator(mode="after")
    def _one_way(self) -> AtFrame:
        # Both would name a frame twice, perhaps two frames: which one was meant is not ours to pick.
        if self.t is not None and self.frame is not None:
            raise ValueError("send t or frame, not both")
        return self


class ClickBody(AtFrame, requests.ClickBody):
    pass


class FindBody(AtFrame, requests.FindBody):
    pass


class FindAllBody(AtFrame, requests.FindAllBody):
    pass


class DescribeBody(AtFrame):
    """Describe on this frame alone (the page sends the clicked frame); without one, over
    keyframes of the object's track."""


class ChatBody(AtFrame, requests.ChatBody):
    pass


class AutoRefineBody(AtFrame, requests.AutoRefineBody):
    pass


class ObjectResultBody(BaseModel):
    """An object result without its id (the frames table is keyed by id)."""

    rle: RLEMask
    box: Box | None
    presence_probability: float
    present: bool


# --- HTTP answers ------------------------------------------------------------------------------


class JobInfo(BaseModel):
    """One object's tracking job: where it is and how fast it goes."""

    job_id: str
    object_id: int
    state: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    phase: str  # queued | forward | backward
    done: int
    total: int
    percent: float
    fps: float
    eta_s: float | None
    anchor_frame: int
    error: str | None = None
    position: int | None = None  # the frame this phase has reached (where a resume goes on)
    # Another object's job this one stands still for while it catches up (the two then share each
    # frame's encoding: streamer/clip/encodings.py); said after half a second of waiting.
    waiting_for: int | None = None


class ClipObjectInfo(KeptObjectInfo):
    frames: int  # frames with a result so far
    job: JobInfo | None


class ClipInfo(BaseModel):
    """A clip as GET /api/clips/{id} answers it (and the clip websocket's hello carries)."""

    id: str
    filename: str
    width: int
    height: int
    rotation: int
    # a pixel's shape as shown, width:height ([2, 1]: an anamorphic clip shown twice as wide);
    # width, height, clicks and masks are in the decoded frame's pixels
    pixel_aspect: tuple[int, int]
    codec: str
    container: str
    frame_count: int
    fps: float
    duration_s: float
    frame_times: list[float]  # seconds from the first frame, as the page's currentTime
    video_url: str
    playable: bool
    proxy: Literal["none", "running", "ready", "failed"]
    descriptions: bool  # whether a VLM is on (a new object is then described at once)
    objects: list[ClipObjectInfo]


class ClickAnswer(BaseModel):
    object_id: int
    label: str  # the object's, as the object list says it (a new one's default until named)
    frame: int
    time: float
    job: JobInfo
    # A new object with a VLM on: the page streams its description now (objects/{id}/describe),
    # from the clicked frame's mask when tracking has not reached a frame yet.
    describe: bool = False


class ClipSummary(BaseModel):
    """One clip of GET /api/clips (the library), newest first."""

    id: str
    filename: str
    created: float  # seconds since the epoch, when it was uploaded
    duration_s: float
    frame_count: int
    width: int
    height: int
    objects: int
    state: Literal["new", "tracking", "interrupted", "failed", "done"]


RemovedClip = RemovedItem  # a clip retention deleted: when and why


class ClipList(BaseModel):
    clips: list[ClipSummary]
    removed: list[RemovedClip] = []  # by retention since the server started, newest first


class CancelAnswer(BaseModel):
    object_id: int
    job: JobInfo | None


class FrameAnswer(BaseModel):
    frame: int
    time: float


class ResultsAnswer(BaseModel):
    """Per-frame object results for frames start..stop-1 (only frames with any), and job states."""

    start: int
    stop: int
    frames: dict[str, dict[str, ObjectResultBody]]
    jobs: dict[str, str]


class PresenceAnswer(BaseModel):
    """Where each object is tracked, one character per frame: '1' present, '0' tracked but lost
    (not visible), '.' not tracked (yet). The page draws it as a strip along the scrubber."""

    frame_count: int
    objects: dict[str, str]


# --- websocket: server -> page -----------------------------------------------------------------


class HelloMessage(BaseModel):
    type: Literal["hello"] = "hello"
    clip: ClipInfo


class ProgressMessage(JobInfo):
    """A running job's progress (at most ~8 a second; a slow page gets the newest)."""

    type: Literal["progress"] = "progress"


class JobMessage(JobInfo):
    """A job ended (done, failed or cancelled)."""

    type: Literal["job"] = "job"


class ProxyMessage(BaseModel):
    type: Literal["proxy"] = "proxy"
    state: Literal["ready", "failed"]
    video_url: str | None = None
    message: str | None = None


class ExportMessage(BaseModel):
    type: Literal["export"] = "export"
    done: int
    total: int
    percent: float
    waiting: bool = False  # for other renders to finish (store.RENDERS_AT_ONCE), before frame 0


class RemovedMessage(BaseModel):
    type: Literal["removed"] = "removed"
    object_id: int


class ClosedMessage(BaseModel):
    """The clip was removed from the server; the socket closes after this."""

    type: Literal["closed"] = "closed"
    message: str


class PongMessage(BaseModel):
    type: Literal["pong"] = "pong"


ClipServerMessage = tagged_union(
    HelloMessage,
    ProgressMessage,
    JobMessage,
    ProxyMessage,
    ExportMessage,
    RemovedMessage,
    ClosedMessage,
    PongMessage,
    *OBJECT_EVENTS,
)
clip_server_adapter: TypeAdapter[Any] = TypeAdapter(ClipServerMessage)


# --- websocket: page -> server -----------------------------------------------------------------


class CancelMessage(requests.Body):
    """Cancel one object's job, or every job of the clip (object_id null)."""

    type: Literal["cancel"]
    object_id: int | None = None


class PingMessage(requests.Body):
    type: Literal["ping"]


ClipClientMessage = tagged_union(CancelMessage, PingMessage)
clip_client_adapter: TypeAdapter[Any] = TypeAdapter(ClipClientMessage)
