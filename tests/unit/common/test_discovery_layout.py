from __future__ import annotations

import socket

from tandem.common.discovery import advertised_endpoint, heartbeat_key


def test_a_specific_bind_address_is_advertised_as_is() -> None:
    assert advertised_endpoint("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"


def test_wildcard_binds_advertise_the_host_name() -> None:
    host = socket.gethostname()
    assert advertised_endpoint("tcp://0.0.0.0:5555") == f"tcp://{host}:5555"
    assert advertised_endpoint("tcp://*:6000") == f"tcp://{host}:6000"


def test_explicit_advertise_wins() -> None:
    assert advertised_endpoint("tcp://0.0.0.0:5555", "tcp://worker-3:5555") == "tcp://worker-3:5555"


def test_heartbeat_keys_are_per_endpoint() -> None:
    assert heartbeat_key("tcp://a:1") != heartbeat_key("tcp://a:10")
