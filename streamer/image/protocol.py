"""Image mode's messages: request bodies and answers (describe, chat and find answer with the shared
object events of streamer/objects/events.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from streamer.http.kept import RemovedItem
from streamer.objects.events import Box, KeptObjectInfo, RLEMask
from streamer.objects.requests import AutoRefineBody, ChatBody, ClickBody, FindAllBody, FindBody

__all__ = [
    "AutoRefineBody",
    "ChatBody",
    "ClickBody",
    "FindAllBody",
    "FindBody",
    "ImageObject",
    "ImageInfo",
    "ClickAnswer",
    "ImageSummary",
    "ImageList",
]


class ImageObject(KeptObjectInfo):
    """An object of the image: what it is called and described as, and its result."""

    rle: RLEMask
    box: Box | None
    presence_probability: float
    present: bool


class ImageInfo(BaseModel):
    """An image as GET /api/images/{id} answers it."""

    id: str
    filename: str
    width: int
    height: int
    encode_ms: float  # the one SAM2 encode, at upload
    image_url: str
    descriptions: bool  # whether a VLM is on (a new object is then described at once)
    objects: list[ImageObject]


class ClickAnswer(BaseModel):
    object: ImageObject
    describe: bool = False  # a new object with a VLM on: the page streams its description now
    decode_ms: float  # this click's decoder-only pass
    encode_ms: float


class ImageSummary(BaseModel):
    """One image of GET /api/images (the library), newest first."""

    id: str
    filename: str
    created: float  # seconds since the epoch, when it was uploaded
    width: int
    height: int
    bytes: int  # the kept copy on disk
    objects: int
    state: Literal["new", "segmented", "described"]


class ImageList(BaseModel):
    images: list[ImageSummary]
    removed: list[RemovedItem] = []  # by retention since the server started, newest first
