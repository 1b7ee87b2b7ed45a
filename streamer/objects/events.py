"""The events every mode sends about objects: results, the object list, descriptions, chat, find, errors.

Live wraps them in its websocket protocol (streamer/live/protocol.py); Clip and Image send the
same models as NDJSON lines (streamer/http/ndjson.py) or over the clip websocket. One model per
event, tagged by `type`, so the page reads one set of names in every mode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels, x1/y1 exclusive
ObjectSource = Literal["click", "box", "find"]
# Checked Find: what the VLM said when shown a candidate's Spotlight with the phrase.
FindCheck = Literal["match", "no_match", "unclear"]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RLEMask(BaseModel):
    """COCO run-length encoding (column-major, compressed counts string), see workers/masks.py."""

    size: list[int]  # [height, width]
    counts: str


class ObjectResult(BaseModel):
    """One object on one frame (or on the image); built off the event loop (objects/results.py)."""

    id: int
    rle: RLEMask
    box: Box | None  # the mask's box; None when the mask is empty
    presence_probability: float = Field(
        description="SAM2's object score as a probability (sigmoid of its logit): how sure the "
        "model is that the object is visible here. The same in every mode."
    )
    present: bool  # the object is visible: presence_probability > 0.5 and the mask is not empty


class ObjectInfo(BaseModel):
    id: int
    label: str
    source: ObjectSource
    description: str | None = None  # the last checked description
    verdict: Literal["verified", "unverified"] | None = None
    find_check: FindCheck | None = None  # Find's check of this object, when Find started it


class ChatTurn(BaseModel):
    """One turn of an object's chat, as the server keeps it (across restarts)."""

    role: Literal["user", "assistant"]
    content: str


class KeptObjectInfo(ObjectInfo):
    """An object of a kept clip or image: also what it holds on the server across restarts (the
    verdict's IoU, attempts and note, and the chat so far), so a page that opens it shows them."""

    iou: float | None = None
    attempts: int | None = None
    note: str | None = None  # why the verdict is unverified before all its attempts ran
    chat: list[ChatTurn] = []


class ObjectsMessage(Event):
    """The full list of objects, sent after every change."""

    type: Literal["objects"] = "objects"
    # KeptObjectInfo where `restored`, else ObjectInfo.
    objects: list[KeptObjectInfo | ObjectInfo]
    added: int | None = None  # the object this change created, if any
    # Live: the added object's description has started (a click on a new place with a VLM on; it
    # may wait its turn in the VLM share before description_start). Clip and Image say it in the
    # click's answer (`describe`), and the page asks for the description.
    describe: bool = False
    # Live, once a reconnect has brought the objects back: each one as the server kept it (its
    # verdict's IoU, attempts and note, and the chat so far), as a kept clip's or image's objects
    # come, so a reloaded page shows their descriptions and chat again.
    restored: bool = False


class DescriptionStartMessage(Event):
    type: Literal["description_start"] = "description_start"
    object_id: int
    frame_index: int  # the frame described (Clip: the last keyframe)
    frames: list[int] | None = None  # Clip: the keyframes sampled over the object's track


class DescriptionTokenMessage(Event):
    type: Literal["description_token"] = "description_token"
    object_id: int
    text: str
    attempt: int  # a new attempt starts the text over


class VerdictMessage(Event):
    """The checked description: verified when the grounded box matches the mask's box."""

    type: Literal["verdict"] = "verdict"
    object_id: int
    description: str
    verdict: Literal["verified", "unverified"]
    iou: float | None  # None: the description was never checked (grounding it failed)
    attempts: int
    box: Box | None = None  # where the description was grounded
    note: str | None = None  # why it is unverified before all its attempts ran (a VLM failure)


class ChatTokenMessage(Event):
    type: Literal["chat_token"] = "chat_token"
    object_id: int
    text: str


class ChatDoneMessage(Event):
    """The whole answer; it is kept with the object's chat history on the server."""

    type: Literal["chat_done"] = "chat_done"
    object_id: int
    answer: str
    frame_index: int | None = None  # the frame the question was asked on


class FoundObject(BaseModel):
    object_id: int
    box: Box  # the grounded box the object was started from
    label: str
    score: float | None = None  # the VLM's confidence in the box, when its answer gave one
    result: ObjectResult | None = None  # Image: the mask at once (Live/Clip: overlays follow)
    check: FindCheck | None = None  # the VLM's verdict on this candidate's Spotlight
    check_answer: str | None = None  # its words


class RejectedCandidate(BaseModel):
    """A Find candidate the VLM said is not the phrase: not tracked (unless all_candidates)."""

    box: Box
    label: str
    check: FindCheck
    check_answer: str | None = None


class FindResultMessage(Event):
    """The end of a Find or Find-all: the objects it started and the candidates the VLM turned
    down; Find-all adds its count."""

    type: Literal["find_result"] = "find_result"
    phrase: str
    objects: list[FoundObject]
    message: str | None = None  # e.g. why nothing was tracked
    frame_index: int | None = None  # the frame searched
    rejected: list[RejectedCandidate] = Field(default_factory=list)
    # A reset (Clear objects) came while it ran: nothing it made is kept, and `message` says so.
    cleared: bool = False
    # Find-all only: how many regions the VLM accepted as the phrase (the answer to "how many"),
    # the regions SAM2 proposed, and the VLM requests made.
    count: int | None = None
    proposals: int | None = None
    requests: int | None = None


class FindProgressMessage(Event):
    """Find-all under way: proposing regions, then classifying them (done of total so far)."""

    type: Literal["find_progress"] = "find_progress"
    phrase: str
    stage: Literal["proposing", "classifying", "stopped"]
    done: int = 0  # regions classified so far
    total: int = 0  # regions to classify (the proposals within the request limit)
    accepted: int = 0  # of those, accepted as the phrase so far
    requests: int = 0  # VLM requests answered so far


class RefineClickMessage(Event):
    """Auto-refine: the click the VLM proposed, applied as an ordinary refinement of the object."""

    type: Literal["refine_click"] = "refine_click"
    object_id: int
    step: int  # 1, 2, ... in the order applied
    x: float  # frame pixels
    y: float
    positive: bool  # False: a negative click (cuts a region from the mask)
    answer: str  # the VLM's words
    frame_index: int | None = None  # the frame it was applied on
    result: ObjectResult | None = None  # Image: the mask after the click (Live/Clip: overlays)


class RefineDoneMessage(Event):
    """Auto-refine ended: the VLM said done, the step limit, an answer that was no click, an
    empty mask, or the person stopped it. Every click applied so far stays (undo as any click)."""

    type: Literal["refine_done"] = "refine_done"
    object_id: int
    steps: int  # clicks applied
    reason: Literal["done", "limit", "unclear", "empty", "error", "stopped"]
    message: str


ErrorCode = Literal[
    "bad_message",
    "bad_prompt",
    "unknown_object",
    "unknown_clip",
    "unknown_image",
    "too_many_objects",
    "no_frame",
    "not_visible",
    "busy",
    "slow_down",
    "vlm_off",
    "vlm_error",
    "not_ready",
    "internal",
    "session_closed",
]


class ErrorMessage(Event):
    """Something the person should know; the session stays usable unless `fatal`."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    object_id: int | None = None
    request: str | None = None  # the request it answers (click, describe, chat, find, ...)
    phrase: str | None = (
        None  # a Find's or Find all's: the phrase asked (Live's Finds share a socket)
    )
    fatal: bool = False


def binary_frame_refused() -> ErrorMessage:
    """The answer to a websocket's binary frame, in every mode: the protocol is JSON text."""
    return ErrorMessage(
        code="bad_message", message="binary frames are not accepted: send JSON text"
    )


# The object events every mode sends; each mode's server->page union adds its own messages to these.
OBJECT_EVENTS: tuple[type[Event], ...] = (
    ObjectsMessage,
    DescriptionStartMessage,
    DescriptionTokenMessage,
    VerdictMessage,
    ChatTokenMessage,
    ChatDoneMessage,
    FindResultMessage,
    FindProgressMessage,
    RefineClickMessage,
    RefineDoneMessage,
    ErrorMessage,
)


def tagged_union(*models: type[BaseModel]) -> Any:
    """One pydantic union of `models`, told apart by their `type` field."""
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - built at runtime


def union_tags(union: Any) -> set[str]:
    """The `type` tags of a tagged_union's members."""
    members = get_args(get_args(union)[0])
    return {get_args(m.model_fields["type"].annotation)[0] for m in members}


ObjectEvent = tagged_union(*OBJECT_EVENTS)
event_adapter: TypeAdapter[Any] = TypeAdapter(ObjectEvent)


def parse_event(text: str | bytes) -> Any:
    """Parse one event line (an NDJSON line, a clip websocket message, tests)."""
    return event_adapter.validate_json(text)
