"""Ports picked for children to listen on come from below the kernel's ephemeral range."""

from __future__ import annotations

import socket

from tandem.processes import ephemeral_port_low, free_port, port_is_free


def test_a_picked_port_is_free_and_below_the_ephemeral_range() -> None:
    low = ephemeral_port_low()
    for _ in range(20):
        port = free_port()
        assert 1024 < port < low
        assert port_is_free("127.0.0.1", port)


def test_outgoing_connections_never_take_a_picked_port() -> None:
    """The race this avoids: the local end of an outgoing connection is an ephemeral port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        clients = [socket.create_connection(server.getsockname()) for _ in range(20)]
        try:
            local_ports = {client.getsockname()[1] for client in clients}
            assert all(port >= ephemeral_port_low() for port in local_ports)
            assert free_port() not in local_ports
        finally:
            for client in clients:
                client.close()


def test_a_bound_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        assert not port_is_free("127.0.0.1", sock.getsockname()[1])
