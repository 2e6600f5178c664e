"""What ``tandem gateway`` asks of uvicorn (``gateway/server.py``); uvicorn itself is not started."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from uvicorn.importer import import_from_string

from tandem.common.settings import GatewaySettings
from tandem.gateway import server
from tandem.gateway.io_first_loop import LOOP_FACTORY, IOFirstEventLoop


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    # The process-wide logging and tracing set-up belongs to a real gateway process, not to the test run.
    monkeypatch.setattr(server, "configure_logging", lambda **kwargs: None)
    monkeypatch.setattr(server, "setup_tracing", lambda *args: None)
    return calls


def test_the_gateway_runs_on_the_io_first_asyncio_loop_by_default(uvicorn_calls: list[dict[str, Any]]) -> None:
    # libuv (uvloop) accepts one connection per loop iteration: under load, new connections waited seconds.
    server.run(GatewaySettings(port=0))
    assert uvicorn_calls[0]["loop"] == LOOP_FACTORY
    assert import_from_string(LOOP_FACTORY) is IOFirstEventLoop  # what uvicorn will import and call


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncios_own_loop_or_uvloop_can_be_chosen(uvicorn_calls: list[dict[str, Any]], loop: str) -> None:
    server.run(GatewaySettings(port=0, event_loop=loop))
    assert uvicorn_calls[0]["loop"] == loop


def test_an_unknown_loop_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="event_loop"):
        GatewaySettings(event_loop="trio")
