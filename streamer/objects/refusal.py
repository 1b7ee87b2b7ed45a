"""ObjectRefused: a request an object table turns down, with a code and a reason a person can act on."""

from __future__ import annotations

import logging

from streamer import metrics
from streamer.objects.events import ErrorCode, ErrorMessage

# The HTTP status each refusal answers with in Clip and Image (Live sends the code itself).
HTTP_STATUS: dict[str, int] = {
    "bad_prompt": 422,
    "unknown_object": 404,
    "too_many_objects": 409,
    "no_frame": 409,
    "not_visible": 409,
    "busy": 409,
    "vlm_off": 503,
    "not_ready": 503,
    "vlm_error": 502,
}
log = logging.getLogger("fmu.vlm")


class ObjectRefused(Exception):
    """A request turned down with a reason a person can act on; the session or clip stays usable."""

    def __init__(self, code: ErrorCode, message: str, object_id: int | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.object_id = object_id
        metrics.ERRORS.labels(code).inc()
        if code == "vlm_error":  # the server's side of it, for whoever runs the service
            log.warning("%s", message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    def event(self, request: str | None = None, phrase: str | None = None) -> ErrorMessage:
        return ErrorMessage(
            code=self.code,
            message=str(self),
            object_id=self.object_id,
            request=request,
            phrase=phrase,
        )
