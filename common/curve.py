"""Securing the ZeroMQ links between gateways and workers: CurveZMQ encryption and client authorization.

Off by default (plain TCP, as the embedded stack runs). Turn it on whenever the worker port can be reached by
anything other than the gateways: with CURVE every link is encrypted and authenticated (Curve25519, perfect
forward secrecy), gateways know they talk to a real worker, and a worker serves only gateways whose public key it
was given.

Keys are Z85 text (40 characters), as ``zmq.curve_keypair()`` makes them; ``tandem keys curve --out DIR`` writes
the certificate files (``zmq.auth.create_certificates``). All workers of a deployment share one server keypair
(gateways find workers through discovery and must know the key of any of them); each gateway may have its own
client keypair.

- Worker (``WorkerSettings``): its secret key (``curve_server_secret_key`` or ``curve_server_secret_key_file``;
  the public key is derived from it), and the gateways it admits: ``curve_client_keys`` (Z85 public keys) and/or
  ``curve_client_keys_dir`` (a directory of public ``*.key`` certificates), or ``curve_allow_any_client``
  (encryption without client authorization).
- Gateway (``GatewaySettings``): the workers' public key (``curve_server_public_key`` or
  ``curve_server_public_key_file``) and its own secret key (``curve_client_secret_key`` or ``..._file``).

Server and client settings have distinct names, so one environment can configure both process kinds without
a gateway ever picking up the workers' secret.

Client authorization is ZAP (ZeroMQ RFC 27): libzmq asks the handler bound at ``inproc://zeromq.zap.01`` in the
socket's context about every CURVE handshake; ``zap_reply`` (pure) decides and ``serve_zap`` answers on the
event loop. A client with another key, or a plain-TCP client, never gets a message through. libzmq admits every
CURVE client when no handler is bound, so the handler is bound before the server socket binds.

``secure_server`` also caps the frame size libzmq accepts (``ZMQ_MAXMSGSIZE``), checked before a frame is
allocated: a peer that sends a larger frame is disconnected, its message dropped. The cap (``max_frame_bytes``,
by default twice ``max_tensor_bytes``) sits above the tensor limit so that a tensor a little too large still gets
a ``bad_request`` answer from ``wire.decode``; only a frame no gateway would send costs the peer its connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.auth import load_certificate, load_certificates
from zmq.utils import z85

from tandem.common.settings import GatewaySettings, WorkerSettings, split_list
from tandem.common.wire import MAX_HEADER_BYTES

log = logging.getLogger("tandem.curve")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
ZAP_OK = b"200"
ZAP_DENIED = b"400"
ZAP_ERROR = b"500"
ZAP_REQUEST_FRAMES = 6
"""version, request id, domain, address, identity, mechanism; then the mechanism's credentials."""
CURVE = b"CURVE"
Z85_KEY_CHARS = 40
KEY_BYTES = 32
FRAME_CAP_FACTOR = 2
"""Default ``ZMQ_MAXMSGSIZE``: this many times ``max_tensor_bytes`` (see the module docstring)."""
_SHARED_MODE_BITS = stat.S_IRWXG | stat.S_IRWXO


def _decode_key(text: str, what: str) -> bytes:
    """The 32 raw bytes of a Z85 key; ValueError naming ``what`` when it is not one."""
    text = text.strip()
    try:
        raw = z85.decode(text.encode("ascii")) if len(text) == Z85_KEY_CHARS else b""
    except (ValueError, KeyError, IndexError, struct.error):  # z85 raises these for text that is not Z85
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{what} is not a Z85 CURVE key (40 characters, as `tandem keys curve` writes them)")
    return raw


def _read_certificate(path: str, what: str, *, secret: bool) -> bytes:
    """The Z85 public key, or with ``secret`` the secret key, of a zmq certificate file."""
    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} from {path}: {exc}") from None
    if not secret:
        return public
    if secret_key is None:
        raise ValueError(f"{path} holds no secret key; {what} needs the .key_secret file")
    if os.stat(path).st_mode & _SHARED_MODE_BITS:
        log.warning("%s (%s) can be read by other users; chmod 600 it", path, what)
    return secret_key


def _secret_key(value: str, file: str, what: str) -> bytes | None:
    """The raw secret key given inline (Z85) or as a certificate file; None when neither is set."""
    if value and file:
        raise ValueError(f"{what}: set the key or the key file, not both")
    if file:
        value = _read_certificate(file, what, secret=True).decode("ascii")
    return _decode_key(value, what) if value else None


def _public_key(value: str, file: str, what: str) -> bytes | None:
    if value and file:
        raise ValueError(f"{what}: set the key or the key file, not both")
    if file:
        value = _read_certificate(file, what, secret=False).decode("ascii")
    return _decode_key(value, what) if value else None


def _public_of(secret: bytes) -> bytes:
    return z85.decode(zmq.curve_public(z85.encode(secret)))


@dataclass(frozen=True, slots=True)
class CurveServerConfig:
    """A worker's CURVE keys (raw 32 bytes) and the gateway keys it admits (None: any CURVE client)."""

    public_key: bytes
    secret_key: bytes
    allowed_clients: frozenset[bytes] | None

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> CurveServerConfig | None:
        """The worker's CURVE configuration; None when CURVE is off. ValueError for an incomplete one."""
        secret = _secret_key(
            settings.curve_server_secret_key.get_secret_value(),
            settings.curve_server_secret_key_file,
            "the worker's CURVE secret key",
        )
        clients = {_decode_key(key, "a key in curve_client_keys") for key in split_list(settings.curve_client_keys)}
        if settings.curve_client_keys_dir:
            directory = settings.curve_client_keys_dir
            try:
                found = load_certificates(directory)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read gateway certificates from {directory}: {exc}") from None
            clients |= {_decode_key(key.decode("ascii"), f"a certificate in {directory}") for key in found}
        wants_clients = bool(clients) or settings.curve_allow_any_client or bool(settings.curve_client_keys_dir)
        if secret is None:
            if wants_clients:
                raise ValueError("gateway keys are set but CURVE is off: set TANDEM_CURVE_SERVER_SECRET_KEY_FILE")
            return None
        if settings.curve_allow_any_client:
            allowed = None
        elif clients:
            allowed = frozenset(clients)
        else:
            raise ValueError(
                "CURVE is on but no gateway may connect: set TANDEM_CURVE_CLIENT_KEYS_DIR or "
                "TANDEM_CURVE_CLIENT_KEYS (or TANDEM_CURVE_ALLOW_ANY_CLIENT=true for encryption only)"
            )
        return cls(_public_of(secret), secret, allowed)


@dataclass(frozen=True, slots=True)
class CurveClientConfig:
    """A gateway's CURVE keys and the workers' public key (raw 32 bytes each)."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> CurveClientConfig | None:
        """The gateway's CURVE configuration; None when CURVE is off. ValueError for an incomplete one."""
        server = _public_key(
            settings.curve_server_public_key, settings.curve_server_public_key_file, "the workers' CURVE public key"
        )
        secret = _secret_key(
            settings.curve_client_secret_key.get_secret_value(),
            settings.curve_client_secret_key_file,
            "the gateway's CURVE secret key",
        )
        if server is None and secret is None:
            return None
        if server is None or secret is None:
            raise ValueError(
                "CURVE needs both the workers' public key (TANDEM_CURVE_SERVER_PUBLIC_KEY_FILE) and the gateway's "
                "secret key (TANDEM_CURVE_CLIENT_SECRET_KEY_FILE)"
            )
        return cls(server, _public_of(secret), secret)


def max_frame_bytes(settings: WorkerSettings) -> int:
    """The largest frame a worker's socket accepts (``ZMQ_MAXMSGSIZE``); see the module docstring."""
    cap = settings.max_frame_bytes or FRAME_CAP_FACTOR * settings.max_tensor_bytes
    return max(cap, MAX_HEADER_BYTES)


def zap_reply(request: list[bytes], allowed: frozenset[bytes] | None) -> list[bytes]:
    """The ZAP reply to one request: 200 for a CURVE client whose key is allowed (or any, when None), else 400.

    Pure. Frames of a request: version, request id, domain, address, identity, mechanism, credentials (for
    CURVE: the client's 32-byte public key). A reply: version, request id, status, text, user id, metadata.
    """
    if len(request) < ZAP_REQUEST_FRAMES or request[0] != ZAP_VERSION:
        request_id = request[1] if len(request) > 1 else b""
        return [ZAP_VERSION, request_id, ZAP_ERROR, b"malformed ZAP request", b"", b""]
    request_id, mechanism, credentials = request[1], request[5], request[6:]
    if mechanism != CURVE or len(credentials) != 1 or len(credentials[0]) != KEY_BYTES:
        return [ZAP_VERSION, request_id, ZAP_DENIED, b"CURVE required", b"", b""]
    key = credentials[0]
    if allowed is not None and key not in allowed:
        return [ZAP_VERSION, request_id, ZAP_DENIED, b"unknown key", b"", b""]
    return [ZAP_VERSION, request_id, ZAP_OK, b"OK", z85.encode(key), b""]


async def serve_zap(socket: zmq.asyncio.Socket, allowed: frozenset[bytes] | None) -> None:
    """Answer ZAP requests on ``socket`` (a bound REP) until it is closed, which cancels this coroutine."""
    while True:
        request = await socket.recv_multipart()
        reply = zap_reply(request, allowed)
        if reply[2] != ZAP_OK:
            address = request[3].decode("ascii", "replace") if len(request) > 3 else "?"
            key = z85.encode(request[6]).decode() if len(request) > 6 and len(request[6]) == KEY_BYTES else "-"
            log.warning("refused a gateway from %s (CURVE key %s): %s", address, key, reply[3].decode())
        await socket.send_multipart(reply)


def secure_server(socket: zmq.asyncio.Socket, settings: WorkerSettings) -> asyncio.Task[None] | None:
    """Harden a worker's ROUTER before it binds: the frame-size cap, and CURVE with ZAP when configured.

    Call on the event loop thread. Returns the ZAP handler task (None without CURVE): keep a reference to it.
    It ends when the socket's context is destroyed, which closes the handler's socket.
    """
    socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(settings))
    config = CurveServerConfig.from_settings(settings)
    if config is None:
        return None
    zap = socket.context.socket(zmq.REP)
    zap.setsockopt(zmq.LINGER, 0)
    zap.bind(ZAP_ENDPOINT)
    task = asyncio.get_running_loop().create_task(serve_zap(zap, config.allowed_clients), name="tandem-zap")
    socket.setsockopt(zmq.CURVE_SECRETKEY, config.secret_key)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, config.public_key)
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    admitted = "any gateway" if config.allowed_clients is None else f"{len(config.allowed_clients)} gateway keys"
    log.info("CURVE on: worker key %s, admitting %s", z85.encode(config.public_key).decode(), admitted)
    return task


def secure_client(socket: zmq.Socket, config: CurveClientConfig | None) -> None:
    """Make a gateway's DEALER a CURVE client of the workers (before it connects); no-op when ``config`` is None."""
    if config is None:
        return
    socket.setsockopt(zmq.CURVE_SERVERKEY, config.server_public_key)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, config.public_key)
    socket.setsockopt(zmq.CURVE_SECRETKEY, config.secret_key)


def write_certificates(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (mode 600) into ``directory``; refuse to overwrite."""
    from zmq.auth import create_certificates

    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; move it away or choose another directory")
    # Created empty with mode 600 first, so the secret is never readable by others, even for a moment.
    secret.touch(mode=0o600)
    create_certificates(directory, name)
    secret.chmod(0o600)
    return public, secret
