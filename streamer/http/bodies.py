"""Request bodies bounded before they are read: by Content-Length, then by counting what arrives.

Every route but the two uploads (which stream to disk under their own limits, see uploads.py)
takes a small JSON body; this middleware reads at most `max_bytes` of it and answers 413 past
that, so no route ever holds more than the limit of one request in memory.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamer.http.errors import error_response

# POST here is a multipart upload, streamed to disk with its own byte limit.
UPLOAD_PATHS = frozenset({"/api/clips", "/api/images"})


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        message = (
            f"the request body ({size} bytes or more) is over the {self.max_bytes}-byte limit "
            "for this route; send less (uploads go to POST /api/clips or /api/images)"
        )
        response = error_response(413, "too_large", message, headers={"connection": "close"})
        await response(scope, receive, send)
