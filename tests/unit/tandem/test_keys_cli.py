"""``tandem keys api`` and ``tandem keys curve``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.cli import main
from tandem.common.curve import CurveClientConfig, CurveServerConfig
from tandem.common.settings import GatewaySettings, WorkerSettings
from tandem.gateway.auth import AuthPolicy


def _settings_printed(output: str) -> dict[str, str]:
    return dict(line.strip().split("=", 1) for line in output.splitlines() if line.strip().startswith("TANDEM_"))


def test_keys_api_prints_a_key_and_the_entry_that_accepts_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "api", "--models", "ranker,echo"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    key = next(line for line in lines if line.startswith("tdm_"))
    entry = next(line for line in lines if line.endswith(":ranker|echo"))
    policy = AuthPolicy.from_settings(GatewaySettings(api_keys=entry))
    found = policy.authenticate(key.encode())
    assert found is not None and found.models == frozenset({"ranker", "echo"})
    assert key not in entry


def test_keys_curve_writes_keypairs_that_configure_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "curve"
    assert main(["keys", "curve", "--out", str(out)]) == 0
    printed = _settings_printed(capsys.readouterr().out)
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in out.glob("*.key_secret"))
    worker = CurveServerConfig.from_settings(
        WorkerSettings(
            curve_server_secret_key_file=printed["TANDEM_CURVE_SERVER_SECRET_KEY_FILE"],
            curve_client_keys_dir=printed["TANDEM_CURVE_CLIENT_KEYS_DIR"],
        )
    )
    gateway = CurveClientConfig.from_settings(
        GatewaySettings(
            curve_server_public_key_file=printed["TANDEM_CURVE_SERVER_PUBLIC_KEY_FILE"],
            curve_client_secret_key_file=printed["TANDEM_CURVE_CLIENT_SECRET_KEY_FILE"],
        )
    )
    assert worker is not None and gateway is not None
    assert gateway.server_public_key == worker.public_key
    assert worker.allowed_clients == frozenset({gateway.public_key})

    assert main(["keys", "curve", "--out", str(out), "--gateway-name", "gw2"]) == 0  # keeps the workers' pair
    again = _settings_printed(capsys.readouterr().out)
    assert again["TANDEM_CURVE_SERVER_SECRET_KEY_FILE"] == printed["TANDEM_CURVE_SERVER_SECRET_KEY_FILE"]
    second = CurveServerConfig.from_settings(
        WorkerSettings(
            curve_server_secret_key_file=again["TANDEM_CURVE_SERVER_SECRET_KEY_FILE"],
            curve_client_keys_dir=again["TANDEM_CURVE_CLIENT_KEYS_DIR"],
        )
    )
    assert second is not None and second.public_key == worker.public_key and len(second.allowed_clients or ()) == 2

    assert main(["keys", "curve", "--out", str(out)]) == 1  # never overwrites a keypair
    assert "exists" in capsys.readouterr().out
