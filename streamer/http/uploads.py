"""Streaming multipart upload to disk: one file part written in chunks, with a byte limit enforced as it arrives.

Starlette's `request.form()` spools the whole body before a handler sees it, so a size limit could
only be checked after the upload; here the limit stops the transfer at the first byte over it and
nothing but the bounded parser buffers is ever held in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from streamer.http.access import request_owner
from streamer.http.errors import Refusal

# Left free on the disk beyond an upload's size, for the database, logs and exports.
FREE_SPACE_MARGIN = 256 * 1024 * 1024


@dataclass
class StoredUpload:
    """A file part written to disk under a generated name; `filename` is the user's, for display only."""

    path: Path
    filename: str
    content_type: str
    size: int


class UploadTooLarge(Exception):
    """The body passed the byte limit while streaming."""


@dataclass
class UploadsInFlight:
    """Uploads being received now: at most `max_uploads` at once (`max_per_owner` per browser),
    and their bytes on disk so far, which the disk budget counts (`bytes_in_flight`)."""

    max_uploads: int
    max_per_owner: int
    idle_timeout_s: float
    sizes: dict[int, int] = field(default_factory=dict)  # upload -> bytes written so far
    owners: Counter[str] = field(default_factory=Counter)
    _keys: Iterator[int] = field(default_factory=itertools.count)

    @property
    def bytes_in_flight(self) -> int:
        return sum(self.sizes.values())

    @contextmanager
    def admit(self, owner: str) -> Iterator[int]:
        if len(self.sizes) >= self.max_uploads or self.owners[owner] >= self.max_per_owner:
            raise Refusal(
                429,
                "busy",
                f"too many uploads at once ({self.max_uploads} in all, {self.max_per_owner} per "
                "browser); wait for one to finish and try again",
            )
        key = next(self._keys)
        self.sizes[key] = 0
        self.owners[owner] += 1
        try:
            yield key
        finally:
            del self.sizes[key]
            self.owners[owner] -= 1
            if not self.owners[owner]:
                del self.owners[owner]


def uploads_in_flight(request: Request) -> UploadsInFlight:
    """The app's uploads in flight (create_app builds it from the settings)."""
    return request.app.state.uploads


async def _chunks(request: Request, idle_timeout_s: float) -> AsyncIterator[bytes]:
    # A stalled body must not hold its file and descriptors until the client gives up.
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), idle_timeout_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise Refusal(
                408,
                "bad_upload",
                f"the upload stalled: no data for {idle_timeout_s:g} s; check the connection "
                "and upload again",
            ) from None
        yield chunk


# What a form may add to its file: the multipart envelope and small fields. The whole body is
# held to the file's limit plus this, declared or not: a part that is not the file is not
# written, but its bytes still take the connection's time and the parser's header buffers.
FORM_OVERHEAD = 64 * 1024


async def receive_file(
    request: Request,
    dest_dir: Path,
    *,
    field: str,
    max_bytes: int,
    what: str,
    suffix: str = ".upload",
) -> StoredUpload:
    """Stream the multipart part named `field` into `dest_dir/<uuid><suffix>`.

    Raises a Refusal (4xx) with a message a person can act on; on any failure the partial file is
    removed before the exception leaves.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise Refusal(
            415,
            "bad_upload",
            f"upload the {what} as multipart/form-data with a '{field}' file field "
            f"(got content type {ctype.decode('latin-1') or 'none'})",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD:
        raise Refusal(413, "too_large", _too_large(what, int(declared), max_bytes))

    dest_dir.mkdir(parents=True, exist_ok=True)
    expected = int(declared) if declared is not None and declared.isdigit() else max_bytes
    if shutil.disk_usage(dest_dir).free < expected + FREE_SPACE_MARGIN:
        raise Refusal(
            507,
            "no_space",
            f"the server has no room for this {what} now; try a smaller one or later",
        )
    inflight = uploads_in_flight(request)
    with inflight.admit(request_owner.get()) as key:
        return await _receive(
            request, dest_dir, inflight, key, params[b"boundary"], field, max_bytes, what, suffix
        )


async def _receive(
    request: Request,
    dest_dir: Path,
    inflight: UploadsInFlight,
    key: int,
    boundary: bytes,
    field: str,
    max_bytes: int,
    what: str,
    suffix: str,
) -> StoredUpload:
    path = dest_dir / f"{uuid.uuid4().hex}{suffix}"
    state: dict = {
        "headers": {},
        "field": b"",
        "value": b"",
        "name": None,
        "fname": "",
        "ctype": "",
        "writing": False,
        "done": False,
        "size": 0,
        "found": False,
    }
    out = open(path, "wb")  # noqa: SIM115 - closed in finally; the handle outlives callbacks

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        is_target = name == field and b"filename" in disp and not state["found"]
        state["writing"] = is_target
        if is_target:
            state["found"] = True
            state["fname"] = disp.get(b"filename", b"").decode("utf-8", "replace")
            state["ctype"] = state["headers"].get("content-type", b"").decode("latin-1")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if not state["writing"]:
            return
        state["size"] += end - start
        if state["size"] > max_bytes:
            raise UploadTooLarge()
        out.write(data[start:end])
        inflight.sizes[key] = state["size"]

    def on_part_end() -> None:
        state["writing"] = False
        state["headers"] = {}

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    ok = False
    received = 0
    try:
        async for chunk in _chunks(request, inflight.idle_timeout_s):
            received += len(chunk)
            if received > max_bytes + FORM_OVERHEAD:
                state["size"] = received  # what the message says arrived
                raise UploadTooLarge()
            parser.write(chunk)
        parser.finalize()
        if not state["found"]:
            raise Refusal(
                400,
                "bad_upload",
                f"no file in the upload: send the {what} in a '{field}' file field",
            )
        if state["size"] == 0:
            raise Refusal(
                400,
                "bad_upload",
                f"the uploaded {what} file is empty (0 bytes): choose another file",
            )
        ok = True
    except UploadTooLarge:
        raise Refusal(413, "too_large", _too_large(what, state["size"], max_bytes)) from None
    except Refusal:
        raise
    except Exception as exc:  # the parser's errors name the byte; the person needs the gist
        raise Refusal(
            400,
            "bad_upload",
            f"the upload could not be read as a multipart form; upload the {what} again",
        ) from exc
    finally:
        out.close()
        if not ok:
            _unlink(path)
    return StoredUpload(path, os.path.basename(state["fname"]), state["ctype"], state["size"])


def _too_large(what: str, size: int, max_bytes: int) -> str:
    return (
        f"the {what} is too large: more than {max_bytes / 1e6:.0f} MB (the limit); "
        f"got at least {size / 1e6:.1f} MB. Trim or compress it and upload again"
    )


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
