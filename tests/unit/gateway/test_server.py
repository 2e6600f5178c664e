"""What ``tandem gateway`` asks of uvicorn (``gateway/server.py``); uvicorn itself is not started."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tandem.common.settings import GatewaySettings
from tandem.gateway import server


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    # The process-wide logging and tracing set-up belongs to a real gateway process, not to the test run.
    monkeypatch.setattr(server, "configure_logging", lambda **kwargs: None)
    monkeypatch.setattr(server, "setup_tracing", lambda *args: None)
    return calls


def test_the_gateway_runs_on_asyncios_loop_by_default(uvicorn_calls: list[dict[str, Any]]) -> None:
    # libuv (uvloop) accepts one connection per loop iteration: under load, new connections waited seconds.
    server.run(GatewaySettings(port=0))
    assert uvicorn_calls[0]["loop"] == "asyncio"


def test_uvloop_can_be_chosen(uvicorn_calls: list[dict[str, Any]]) -> None:
    server.run(GatewaySettings(port=0, event_loop="uvloop"))
    assert uvicorn_calls[0]["loop"] == "uvloop"


def test_an_unknown_loop_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="event_loop"):
        GatewaySettings(event_loop="trio")
