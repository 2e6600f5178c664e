"""The one place where errors become HTTP answers: ``{"error": message}`` with the error's status.

Routes raise ``TandemError`` subclasses and hold no try/except; client errors return their message, server
errors a generic one, with the detail logged here.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tandem.common.errors import Overloaded, TandemError
from tandem.gateway.pending import WorkerLost

log = logging.getLogger("tandem.gateway")

RETRY_AFTER_S = "1"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error body as the V2 protocol wants it."""
    return Response(
        orjson.dumps({"error": message}), status_code=status, media_type="application/json", headers=headers
    )


def error_parts(exc: BaseException, method: str, path: str) -> tuple[int, str, dict[str, str]]:
    """Status, public message and extra headers for an error raised while serving ``method path``.

    Server errors are logged here with their detail (call it from the ``except`` block, for the traceback).
    """
    if isinstance(exc, TandemError):
        if exc.http_status >= 500 and not exc.expose:
            log.error("request %s %s failed: %s", method, path, exc.message)
        headers = {"Retry-After": RETRY_AFTER_S} if isinstance(exc, (Overloaded, WorkerLost)) else {}
        return exc.http_status, exc.public_message(), headers
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return 500, "internal server error", {}


async def _tandem_error(request: Request, exc: TandemError) -> Response:
    status, message, headers = error_parts(exc, request.method, request.url.path)
    return error_response(status, message, headers or None)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return error_response(400, _describe_validation(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status, message, headers = error_parts(exc, request.method, request.url.path)
    return error_response(status, message, headers or None)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    status, message, _ = error_parts(exc, request.method, request.url.path)
    return error_response(status, message)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route can raise to its HTTP answer."""
    # Each handler is registered for exactly the type it annotates.
    app.add_exception_handler(TandemError, _tandem_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
