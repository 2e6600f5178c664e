"""``secure_server`` / ``secure_client`` on real ZeroMQ sockets: CURVE with ZAP, and the frame-size cap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio
from pydantic import SecretStr
from zmq.utils import z85

from tandem.common.curve import CurveClientConfig, secure_client, secure_server
from tandem.common.settings import WorkerSettings

ANSWER_TIMEOUT_MS = 5000
"""How long an exchange that should succeed may take (it returns as soon as the answer comes)."""
REFUSED_TIMEOUT_MS = 500
"""How long an exchange that should be refused is given to come through anyway."""


def _keys() -> tuple[bytes, bytes]:
    public, secret = zmq.curve_keypair()
    return z85.decode(public), z85.decode(secret)


SERVER_PUBLIC, SERVER_SECRET = _keys()
GATEWAY_PUBLIC, GATEWAY_SECRET = _keys()
STRANGER_PUBLIC, STRANGER_SECRET = _keys()
CURVE_SETTINGS = WorkerSettings(
    curve_server_secret_key=SecretStr(z85.encode(SERVER_SECRET).decode()),
    curve_client_keys=z85.encode(GATEWAY_PUBLIC).decode(),
    max_tensor_bytes=4096,
)
GATEWAY = CurveClientConfig(SERVER_PUBLIC, GATEWAY_PUBLIC, GATEWAY_SECRET)

Scenario = Callable[[zmq.asyncio.Context, str], Awaitable[None]]


async def _echo(router: zmq.asyncio.Socket) -> None:
    while True:
        await router.send_multipart(await router.recv_multipart())


def _run(settings: WorkerSettings, scenario: Scenario) -> asyncio.Task[None] | None:
    """Run ``scenario(context, endpoint)`` against an echoing ROUTER hardened by ``secure_server``."""

    async def main() -> asyncio.Task[None] | None:
        context = zmq.asyncio.Context()
        router = context.socket(zmq.ROUTER)
        zap = secure_server(router, settings)
        router.setsockopt(zmq.LINGER, 0)
        router.bind("tcp://127.0.0.1:0")
        echo = asyncio.create_task(_echo(router))
        try:
            await scenario(context, router.getsockopt_string(zmq.LAST_ENDPOINT))
        finally:
            echo.cancel()
            router.close(linger=0)
            context.destroy(linger=0)
            await asyncio.sleep(0.01)
        return zap

    return asyncio.run(main())


async def _exchange(
    context: zmq.asyncio.Context, endpoint: str, config: CurveClientConfig | None, *frames: bytes, served: bool
) -> list[bytes] | None:
    """Send ``frames`` and return the echo, or None when none came (waiting long only when ``served``)."""
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    secure_client(dealer, config)
    dealer.connect(endpoint)
    try:
        await dealer.send_multipart(list(frames) or [b"hello"])
        if not await dealer.poll(ANSWER_TIMEOUT_MS if served else REFUSED_TIMEOUT_MS):
            return None
        return await dealer.recv_multipart()
    finally:
        dealer.close(linger=0)


def test_an_authorized_gateway_is_served_and_everyone_else_is_refused() -> None:
    results = {}

    async def scenario(context: zmq.asyncio.Context, endpoint: str) -> None:
        results["gateway"] = await _exchange(context, endpoint, GATEWAY, served=True)
        results["plain"] = await _exchange(context, endpoint, None, served=False)
        stranger = CurveClientConfig(SERVER_PUBLIC, STRANGER_PUBLIC, STRANGER_SECRET)
        results["stranger"] = await _exchange(context, endpoint, stranger, served=False)
        impostor_public, _ = _keys()  # the gateway's keys, but it believes another server's key
        misled = CurveClientConfig(impostor_public, GATEWAY_PUBLIC, GATEWAY_SECRET)
        results["wrong server"] = await _exchange(context, endpoint, misled, served=False)
        results["gateway again"] = await _exchange(context, endpoint, GATEWAY, served=True)

    zap = _run(CURVE_SETTINGS, scenario)
    assert results == {
        "gateway": [b"hello"],
        "plain": None,
        "stranger": None,
        "wrong server": None,
        "gateway again": [b"hello"],
    }
    assert zap is not None and zap.cancelled()  # the ZAP handler ended with its context


def test_allow_any_client_admits_unknown_keys_but_not_plain_tcp() -> None:
    settings = WorkerSettings(
        curve_server_secret_key=SecretStr(z85.encode(SERVER_SECRET).decode()), curve_allow_any_client=True
    )
    results = {}

    async def scenario(context: zmq.asyncio.Context, endpoint: str) -> None:
        stranger = CurveClientConfig(SERVER_PUBLIC, STRANGER_PUBLIC, STRANGER_SECRET)
        results["stranger"] = await _exchange(context, endpoint, stranger, served=True)
        results["plain"] = await _exchange(context, endpoint, None, served=False)

    _run(settings, scenario)
    assert results == {"stranger": [b"hello"], "plain": None}


def test_without_curve_plain_tcp_is_served_and_no_zap_runs() -> None:
    results = {}

    async def scenario(context: zmq.asyncio.Context, endpoint: str) -> None:
        results["plain"] = await _exchange(context, endpoint, None, served=True)

    assert _run(WorkerSettings(), scenario) is None
    assert results == {"plain": [b"hello"]}


def test_a_frame_past_the_cap_is_dropped_before_allocation_and_others_are_still_served() -> None:
    settings = WorkerSettings(max_tensor_bytes=1024 * 1024)  # cap: 2 MiB
    results = {}

    async def scenario(context: zmq.asyncio.Context, endpoint: str) -> None:
        cap = 2 * 1024 * 1024
        results["within"] = await _exchange(context, endpoint, None, b"h", b"x" * cap, served=True)
        results["past"] = await _exchange(context, endpoint, None, b"h", b"x" * (cap + 1), served=False)
        results["after"] = await _exchange(context, endpoint, None, b"still there?", served=True)

    _run(settings, scenario)
    assert results["within"] is not None and len(results["within"][1]) == 2 * 1024 * 1024
    assert results["past"] is None
    assert results["after"] == [b"still there?"]
