"""ASGI scopes for tests of admission rules, which read a request's method and headers only."""

from __future__ import annotations


def post_scope(timeout_ms: str | None = None) -> dict[str, object]:
    """A POST's scope, with ``X-Request-Timeout-Ms: timeout_ms`` when given."""
    headers = [(b"content-type", b"application/json")]
    if timeout_ms is not None:
        headers.append((b"x-request-timeout-ms", timeout_ms.encode()))
    return {"type": "http", "method": "POST", "headers": headers}
