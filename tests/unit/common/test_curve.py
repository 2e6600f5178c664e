"""CURVE configuration from settings and the ZAP decision, pure (the sockets are in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
from pydantic import SecretStr
from zmq.utils import z85

from tandem.common.curve import (
    ZAP_VERSION,
    CurveClientConfig,
    CurveServerConfig,
    max_frame_bytes,
    write_certificates,
    zap_reply,
)
from tandem.common.settings import GatewaySettings, WorkerSettings
from tandem.common.wire import MAX_HEADER_BYTES


def _pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def _request(mechanism: bytes, *credentials: bytes) -> list[bytes]:
    return [ZAP_VERSION, b"7", b"", b"10.0.0.1", b"", mechanism, *credentials]


def test_curve_is_off_unless_configured() -> None:
    assert CurveServerConfig.from_settings(WorkerSettings()) is None
    assert CurveClientConfig.from_settings(GatewaySettings()) is None


def test_a_worker_key_and_client_keys_from_the_environment() -> None:
    server_public, server_secret = _pair()
    client_public, _ = _pair()
    settings = WorkerSettings(curve_server_secret_key=SecretStr(server_secret), curve_client_keys=client_public)
    config = CurveServerConfig.from_settings(settings)
    assert config is not None
    assert config.public_key == z85.decode(server_public)  # derived from the secret
    assert config.allowed_clients == frozenset({z85.decode(client_public)})


def test_keys_from_the_files_tandem_keys_curve_writes(tmp_path: Path) -> None:
    server_public, server_secret = write_certificates(tmp_path, "server")
    (tmp_path / "ok").mkdir()
    _, gateway_secret = write_certificates(tmp_path / "ok", "gateway")
    assert oct(server_secret.stat().st_mode & 0o777) == "0o600"
    worker = CurveServerConfig.from_settings(
        WorkerSettings(curve_server_secret_key_file=str(server_secret), curve_client_keys_dir=str(tmp_path / "ok"))
    )
    gateway = CurveClientConfig.from_settings(
        GatewaySettings(
            curve_server_public_key_file=str(server_public), curve_client_secret_key_file=str(gateway_secret)
        )
    )
    assert worker is not None and gateway is not None
    assert gateway.server_public_key == worker.public_key
    assert worker.allowed_clients == frozenset({gateway.public_key})
    with pytest.raises(FileExistsError):
        write_certificates(tmp_path, "server")


def test_allow_any_client_is_encryption_without_authorization() -> None:
    _, secret = _pair()
    settings = WorkerSettings(curve_server_secret_key=SecretStr(secret), curve_allow_any_client=True)
    config = CurveServerConfig.from_settings(settings)
    assert config is not None and config.allowed_clients is None


@pytest.mark.parametrize(
    "fields",
    [
        {"curve_server_secret_key": "SECRET"},  # CURVE on, but no gateway may connect
        {"curve_client_keys": "PUBLIC"},  # gateway keys, but CURVE off
        {"curve_server_secret_key": "SECRET", "curve_client_keys": "not-a-key"},
        {"curve_server_secret_key": "#" * 40, "curve_client_keys": "PUBLIC"},  # not Z85
        {"curve_server_secret_key": "SECRET", "curve_server_secret_key_file": "/x", "curve_client_keys": "PUBLIC"},
        {"curve_server_secret_key": "SECRET", "curve_client_keys_dir": "/nonexistent"},
        {"curve_server_secret_key_file": "/nonexistent", "curve_allow_any_client": True},
    ],
)
def test_incomplete_or_malformed_worker_configuration_fails_at_start(fields: dict[str, object]) -> None:
    public, secret = _pair()
    values = {
        k: (v.replace("SECRET", secret).replace("PUBLIC", public) if isinstance(v, str) else v)
        for k, v in fields.items()
    }
    if "curve_server_secret_key" in values:
        values["curve_server_secret_key"] = SecretStr(str(values["curve_server_secret_key"]))
    with pytest.raises(ValueError):
        CurveServerConfig.from_settings(WorkerSettings(**values))


@pytest.mark.parametrize("which", ["server_only", "client_only"])
def test_a_gateway_needs_both_keys(which: str) -> None:
    public, secret = _pair()
    fields = (
        {"curve_server_public_key": public}
        if which == "server_only"
        else {"curve_client_secret_key": SecretStr(secret)}
    )
    with pytest.raises(ValueError, match="both"):
        CurveClientConfig.from_settings(GatewaySettings(**fields))


def test_zap_admits_only_allowed_curve_keys() -> None:
    allowed_key, other_key = (z85.decode(p) for p, _ in (zmq.curve_keypair(), zmq.curve_keypair()))
    allowed = frozenset({allowed_key})
    ok = zap_reply(_request(b"CURVE", allowed_key), allowed)
    assert ok[:3] == [ZAP_VERSION, b"7", b"200"] and ok[4] == z85.encode(allowed_key)
    assert zap_reply(_request(b"CURVE", other_key), allowed)[2] == b"400"
    assert zap_reply(_request(b"CURVE", other_key), None)[2] == b"200"  # allow any
    assert zap_reply(_request(b"NULL"), allowed)[2] == b"400"
    assert zap_reply(_request(b"PLAIN", b"user", b"pass"), None)[2] == b"400"
    assert zap_reply(_request(b"CURVE", b"short"), None)[2] == b"400"


def test_a_malformed_zap_request_is_answered_with_an_error() -> None:
    assert zap_reply([b"2.0", b"9", b"", b"", b"", b"CURVE", b"k" * 32], None)[1:3] == [b"9", b"500"]
    assert zap_reply([ZAP_VERSION], None)[2] == b"500"
    assert zap_reply([], None)[2] == b"500"


def test_the_frame_cap_sits_above_the_tensor_limit() -> None:
    assert max_frame_bytes(WorkerSettings(max_tensor_bytes=1000)) == max(2000, MAX_HEADER_BYTES)
    assert max_frame_bytes(WorkerSettings(max_tensor_bytes=10**8)) == 2 * 10**8
    assert max_frame_bytes(WorkerSettings(max_frame_bytes=10**6)) == 10**6
