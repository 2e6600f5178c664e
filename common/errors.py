"""Tandem's error hierarchy, shared by gateway and worker.

Every error carries the status it travels as on the wire (``code``) and the HTTP status the gateway answers
with (``http_status``), so no other module keeps a mapping table::

    TandemError (internal, 500)
    ├── BadRequest (bad_request, 400)          the caller sent something wrong; the message says what
    │   ├── WireError (bad_request, 400)       a ZeroMQ message that does not parse or match its spec
    │   └── PayloadTooLarge (bad_request, 413) a body or tensor past a configured limit
    ├── NotFound (not_found, 404)              unknown model or version
    ├── Overloaded (overloaded, 503)           queue full: retry later, elsewhere
    ├── ModelUnavailable (model_unavailable, 503)  no worker can serve the model right now
    ├── DeadlineExceeded (deadline_exceeded, 504)  the request's time budget ran out
    └── InternalError (internal, 500)          a bug or a model that failed; detail is logged, not returned

Client errors (4xx) return their message to the caller; server errors return a generic message unless the
message is known to be safe (``expose``).
"""

from __future__ import annotations


class TandemError(Exception):
    """Base of every error Tandem raises on purpose."""

    code: str = "internal"
    http_status: int = 500
    expose: bool = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__

    def public_message(self) -> str:
        """The text a caller may see: the message itself for client errors, a generic one otherwise."""
        if self.expose or self.http_status < 500:
            return self.message
        return "internal server error"


class BadRequest(TandemError):
    code = "bad_request"
    http_status = 400


class WireError(BadRequest):
    """A ZeroMQ message that cannot be decoded or whose frames do not match its header."""


class PayloadTooLarge(BadRequest):
    http_status = 413


class NotFound(TandemError):
    code = "not_found"
    http_status = 404


class Overloaded(TandemError):
    code = "overloaded"
    http_status = 503
    expose = True


class ModelUnavailable(TandemError):
    code = "model_unavailable"
    http_status = 503
    expose = True


class DeadlineExceeded(TandemError):
    code = "deadline_exceeded"
    http_status = 504
    expose = True


class InternalError(TandemError):
    code = "internal"
    http_status = 500


_BY_CODE: dict[str, type[TandemError]] = {
    cls.code: cls for cls in (BadRequest, NotFound, Overloaded, ModelUnavailable, DeadlineExceeded, InternalError)
}

STATUS_OK = "ok"


def error_from_code(code: str, message: str) -> TandemError:
    """Rebuild the error a peer reported as (code, message); unknown codes become InternalError."""
    return _BY_CODE.get(code, InternalError)(message)
