"""The Redis worker registry's layout, shared by workers (who register) and gateways (who read it).

A worker adds its endpoint to the set ``tandem:workers`` and keeps a heartbeat key
``tandem:worker:<endpoint>`` alive with a TTL. An endpoint whose heartbeat key has expired is gone (stopped, or
killed before it could deregister); readers drop it from the set. TTLs are kept by the Redis server, so no clock
agreement between machines is needed, and no key scan is needed (feature data may share the Redis).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

WORKERS_SET = "tandem:workers"
HEARTBEAT_PREFIX = "tandem:worker:"
HEARTBEAT_TTL_MS = 3000
HEARTBEAT_INTERVAL_S = 1.0
_WILDCARD_HOSTS = {"*", "0.0.0.0", "::", "[::]", ""}


def heartbeat_key(endpoint: str) -> str:
    """The key whose presence says ``endpoint`` is alive."""
    return HEARTBEAT_PREFIX + endpoint


def advertised_endpoint(bound: str, advertise: str = "") -> str:
    """The endpoint others should connect to: ``advertise`` when set, else the bound one with a real host name.

    ``tcp://0.0.0.0:5555`` (or ``tcp://*:5555``) becomes ``tcp://<this host's name>:5555``.
    """
    if advertise:
        return advertise
    parts = urlsplit(bound)
    host = parts.hostname or ""
    if host not in _WILDCARD_HOSTS and parts.netloc.split(":")[0] != "*":
        return bound
    port = bound.rsplit(":", 1)[1]
    return urlunsplit((parts.scheme, f"{socket.gethostname()}:{port}", "", "", ""))
