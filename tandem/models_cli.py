"""``tandem models list | promote | rollback``: releases are decided in the MLflow Model Registry.

A release is an alias moving to another version (``ranker@champion`` -> 7). Workers poll the registry and
hot-swap the version in (``worker/registry.py``, ``worker/swap.py``); nothing else needs to be told.

- ``promote NAME VERSION --alias A`` points ``NAME@A`` at ``VERSION`` and records the move in the alias's
  history, a registered-model tag ``tandem.alias_history.A`` holding a JSON list of versions, oldest first.
- ``rollback NAME --alias A`` points ``NAME@A`` back at the version it held before (per that history) and drops
  the current one from the history, so a second rollback goes one further back. An alias moved by other means
  (``register_model(alias=...)``, the MLflow UI) still rolls back to the last version ``promote`` recorded.
- ``list`` shows every registered model's versions and aliases, the alias histories, and, given worker
  endpoints (``--workers`` or ``TANDEM_WORKERS``), which versions each worker serves under which alias, asked
  by a ZeroMQ ping as gateways do.

mlflow is imported on first use (never when ``tandem`` builds its parser) with telemetry off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

HISTORY_TAG_PREFIX = "tandem.alias_history."
HISTORY_LIMIT = 100
"""Most versions an alias's history keeps (the oldest are dropped)."""
PING_TIMEOUT_S = 1.0
MS_PER_S = 1000
_NOT_FOUND_CODES = frozenset(["RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"])


class ModelsError(Exception):
    """A command that cannot be done as asked; the message says why (exit status 1)."""


@dataclass
class VersionView:
    """One registered version: its aliases in the registry and where it is live."""

    version: str
    aliases: list[str]
    created_ms: int
    live_on: list[str] = field(default_factory=list)
    """``WORKER (alias, ...)`` for each worker serving this version."""


@dataclass
class ModelView:
    """One registered model as ``list`` shows it."""

    name: str
    versions: list[VersionView]
    history: dict[str, list[str]]


def _client(registry_uri: str) -> MlflowClient:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    return mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)


def _history(client: MlflowClient, name: str, alias: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    try:
        history = json.loads(tags.get(HISTORY_TAG_PREFIX + alias, "[]"))
    except ValueError:
        return []
    return [str(v) for v in history] if isinstance(history, list) else []


def _save_history(client: MlflowClient, name: str, alias: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG_PREFIX + alias, json.dumps(history[-HISTORY_LIMIT:]))


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND_CODES:
            return None
        raise


def _check_version(client: MlflowClient, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND_CODES:
            raise ModelsError(f"the registry has no model {name!r} version {version!r}") from None
        raise


def promote(registry_uri: str, name: str, version: str, alias: str) -> str | None:
    """Point ``name@alias`` at ``version`` and record it in the alias's history; the version it held before."""
    client = _client(registry_uri)
    _check_version(client, name, version)
    current = _alias_version(client, name, alias)
    history = _history(client, name, alias)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # moved by other means since the last promote: remember where it was
    client.set_registered_model_alias(name, alias, version)
    if not history or history[-1] != version:
        history.append(version)
    _save_history(client, name, alias, history)
    return current


def rollback(registry_uri: str, name: str, alias: str) -> tuple[str, str]:
    """Point ``name@alias`` back at the version it held before; returns (from, to)."""
    client = _client(registry_uri)
    current = _alias_version(client, name, alias)
    if current is None:
        raise ModelsError(f"{name}@{alias} does not exist")
    history = _history(client, name, alias)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise ModelsError(
            f"{name}@{alias} has no earlier version on record (its history grows with `tandem models promote`)"
        )
    target = history[-1]
    _check_version(client, name, target)
    client.set_registered_model_alias(name, alias, target)
    _save_history(client, name, alias, history)
    return current, target


def list_models(registry_uri: str, workers: list[str] | None = None) -> list[ModelView]:
    """Every registered model with its versions, aliases and alias histories; where each version is live."""
    client = _client(registry_uri)
    served = serving(workers or [])
    views = []
    for registered in _all_registered(client):
        name = registered.name
        aliases: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = [
            VersionView(
                str(mv.version),
                sorted(aliases.get(str(mv.version), [])),
                int(mv.creation_timestamp or 0),
                served.get((name, str(mv.version)), []),
            )
            for mv in client.search_model_versions(f"name = '{name}'")
        ]
        versions.sort(key=lambda v: int(v.version) if v.version.isdigit() else -1, reverse=True)
        history = {
            key.removeprefix(HISTORY_TAG_PREFIX): _history(client, name, key.removeprefix(HISTORY_TAG_PREFIX))
            for key in (registered.tags or {})
            if key.startswith(HISTORY_TAG_PREFIX)
        }
        views.append(ModelView(name, versions, history))
    return views


def _all_registered(client: MlflowClient) -> list[Any]:
    found, token = [], None
    while True:
        page = client.search_registered_models(page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda m: m.name)


def serving(endpoints: list[str]) -> dict[tuple[str, str], list[str]]:
    """(name, version) -> ``WORKER (aliases)`` for each worker at ``endpoints`` serving it (silent ones skipped)."""
    import zmq

    from tandem.common.wire import Ping, Pong, decode, encode

    live: dict[tuple[str, str], list[str]] = {}
    context = zmq.Context()
    try:
        for endpoint in endpoints:
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoint)
            try:
                socket.send_multipart(encode(Ping(1)))
                if not socket.poll(int(PING_TIMEOUT_S * MS_PER_S)):
                    print(f"worker {endpoint} did not answer", file=sys.stderr)
                    continue
                pong = decode(socket.recv_multipart())
            finally:
                socket.close(linger=0)
            if not isinstance(pong, Pong):
                continue
            state = "" if pong.ready else ", not ready"
            for model in pong.models:
                aliases = ", ".join(model.get("aliases") or []) or "pinned"
                key = (str(model.get("name")), str(model.get("version")))
                live.setdefault(key, []).append(f"{pong.worker_id} ({aliases}{state})")
    finally:
        context.term()
    return live


def render(views: list[ModelView]) -> str:
    """The ``list`` table."""
    import datetime

    lines = []
    for view in views:
        lines.append(view.name)
        lines.append(f"  {'version':<8} {'aliases':<24} {'created (UTC)':<17} live on")
        for v in view.versions:
            created = datetime.datetime.fromtimestamp(v.created_ms / MS_PER_S, datetime.timezone.utc)
            lines.append(
                f"  {v.version:<8} {', '.join(v.aliases) or '-':<24} {created:%Y-%m-%d %H:%M}  "
                f"{'; '.join(v.live_on) or '-'}"
            )
        for alias, history in sorted(view.history.items()):
            lines.append(f"  history of @{alias}: {' -> '.join(history) or '-'}")
    return "\n".join(lines) if lines else "no registered models"


def registry_uri_of(args: argparse.Namespace) -> str:
    """``--registry-uri``, else ``TANDEM_REGISTRY_URI``, else the sqlite store in ``--home``."""
    from tandem.common.settings import default_home, sqlite_registry_uri

    home = Path(args.home).resolve() if getattr(args, "home", None) else default_home()
    return args.registry_uri or os.environ.get("TANDEM_REGISTRY_URI") or sqlite_registry_uri(home)


def run_list(args: argparse.Namespace) -> int:
    """``tandem models list``."""
    from tandem.common.settings import split_list

    workers = split_list(args.workers or os.environ.get("TANDEM_WORKERS", ""))
    views = list_models(registry_uri_of(args), workers)
    print(json.dumps([asdict(v) for v in views], indent=2) if args.json else render(views))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    """``tandem models promote NAME VERSION --alias ALIAS``."""
    try:
        previous = promote(registry_uri_of(args), args.name, args.version, args.alias)
    except ModelsError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.name}@{args.alias}: {previous or '(none)'} -> {args.version}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """``tandem models rollback NAME --alias ALIAS``."""
    try:
        current, target = rollback(registry_uri_of(args), args.name, args.alias)
    except ModelsError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.name}@{args.alias}: {current} -> {target} (rolled back)")
    return 0
