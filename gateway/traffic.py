"""Traffic between a model's aliases: weighted sticky splits and shadow traffic, set in a JSON file.

A release is decided in the MLflow Model Registry (which version each alias points to); how much traffic each
alias gets is decided here, per gateway, from the file ``TANDEM_TRAFFIC_CONFIG`` names::

    {"models": {"ranker": {"split": {"champion": 90, "challenger": 10},
                           "shadow": {"alias": "challenger", "fraction": 0.05, "tolerance": 1e-4}}}}

- ``split``: alias -> weight (any non-negative numbers). A request without an explicit version is sent to one
  alias, chosen by a hash of its sticky key (the user id; for V2 calls the ``X-User-Id`` header, else the
  request id), so one user sees one alias for as long as the split stays the same. Only aliases some live worker
  serves are chosen (the weights of the others are left out); when none is, the request goes unrouted (the
  worker's default alias), as it does for a model with no entry. A routed request whose alias turns out not to
  be served by a ready worker (one draining for an in-place swap) is sent again unrouted rather than failed.
- ``shadow``: a ``fraction`` of requests (again by hash of the sticky key) is also sent to ``alias`` after the
  caller's answer is in; the shadow's answer is never returned, only compared with the caller's (it agrees when
  every output has the same shape and a max abs difference of at most ``tolerance``) and counted with its
  latency. At most ``shadow_max_inflight`` shadow requests are in flight; past that a copy is skipped (counted).

No restart is needed to change any of it: the file is re-read when its modification time, size or inode
changes, checked with one ``stat`` at most every ``traffic_check_interval_s``. A file that does not parse is
logged and the previous configuration stays in force. The gateway never imports mlflow; it knows which aliases
are served from the workers' pongs (``WorkerPool.models()``).

Everything runs on the gateway's event loop thread. ``TrafficConfig.parse``, ``choose_route`` and
``compare_outputs`` are pure; ``TrafficFile`` is the tiny loader; ``Traffic`` is what the app holds (the file,
the shadow counters and the shadow tasks), opened by the V2 router's lifespan as ``app.state.traffic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from tandem.common.datatypes import BYTES
from tandem.common.errors import ModelUnavailable, NotFound, TandemError
from tandem.common.settings import GatewaySettings
from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.gateway.deadlines import Deadline

log = logging.getLogger("tandem.gateway.traffic")

USER_ID_HEADER = "x-user-id"
"""The header a V2 caller names its user in, for sticky splits."""
HASH_BYTES = 8
HASH_SPACE = float(2 ** (8 * HASH_BYTES))
SHADOW_SALT = "shadow"
DEFAULT_TOLERANCE = 1e-5
LATENCY_WINDOW = 2048
"""Latest shadow latencies kept for the percentiles."""
SHADOW_LOG_EVERY = 100
"""A summary line is logged every this many compared shadow answers."""
_MS_PER_S = 1000.0
UNSERVED_CODES = frozenset([NotFound.code, ModelUnavailable.code])

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Shadow:
    """Copy ``fraction`` of requests to ``alias``; answers agree within ``tolerance`` (max abs difference)."""

    alias: str
    fraction: float
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True, slots=True)
class ModelTraffic:
    """One model's split (alias, weight) in file order, and its shadow."""

    split: tuple[tuple[str, float], ...] = ()
    shadow: Shadow | None = None


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    """Every model's traffic; a model without an entry is not routed here."""

    models: Mapping[str, ModelTraffic] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> TrafficConfig:
        """The configuration in a decoded JSON document; ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ValueError('the traffic file must be {"models": {NAME: {"split": ..., "shadow": ...}}}')
        return cls({str(name): _model_traffic(name, entry) for name, entry in data.get("models", {}).items()})


def _number(value: Any, what: str, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{what} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _model_traffic(name: str, entry: Any) -> ModelTraffic:
    if not isinstance(entry, dict) or set(entry) - {"split", "shadow"}:
        raise ValueError(f"model {name!r}: expected an object with 'split' and/or 'shadow'")
    split_entry = entry.get("split", {})
    if not isinstance(split_entry, dict):
        raise ValueError(f"model {name!r}: 'split' must map aliases to weights")
    split = tuple(
        (str(alias), _number(weight, f"model {name!r}: weight of {alias!r}", low=0.0))
        for alias, weight in split_entry.items()
    )
    if split and not sum(weight for _, weight in split) > 0:
        raise ValueError(f"model {name!r}: the split's weights add up to 0")
    shadow = None
    if entry.get("shadow") is not None:
        raw = entry["shadow"]
        if not isinstance(raw, dict) or not isinstance(raw.get("alias"), str) or not raw["alias"]:
            raise ValueError(f"model {name!r}: 'shadow' needs an 'alias'")
        shadow = Shadow(
            raw["alias"],
            _number(raw.get("fraction", 1.0), f"model {name!r}: shadow fraction", low=0.0, high=1.0),
            _number(raw.get("tolerance", DEFAULT_TOLERANCE), f"model {name!r}: shadow tolerance", low=0.0),
        )
    return ModelTraffic(split, shadow)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: ``alias`` (None: unrouted, the worker's default) and the shadow copy, if any."""

    alias: str | None = None
    shadow: Shadow | None = None


UNROUTED = Route()


def bucket(model: str, key: str, salt: str = "") -> float:
    """A stable number in [0, 1) for (model, key): the same on every gateway and across restarts."""
    digest = hashlib.blake2b(f"{salt}\x00{model}\x00{key}".encode(), digest_size=HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / HASH_SPACE


def choose_route(model: str, traffic: ModelTraffic, key: str, served: Collection[str]) -> Route:
    """The route of a request for ``model`` with sticky ``key``, given the aliases live workers serve."""
    alias = None
    split = [(name, weight) for name, weight in traffic.split if name in served and weight > 0]
    if split:
        point = bucket(model, key) * sum(weight for _, weight in split)
        for name, weight in split:
            alias = name
            point -= weight
            if point < 0:
                break
    shadow = traffic.shadow
    if (
        shadow is None
        or shadow.alias not in served
        or shadow.alias == alias
        or bucket(model, key, SHADOW_SALT) >= shadow.fraction
    ):
        shadow = None
    return Route(alias, shadow)


def served_aliases(models: Mapping[str, Mapping[str, Mapping[str, Any]]], model: str) -> set[str]:
    """The aliases of ``model`` some live worker serves, from ``WorkerPool.models()``."""
    aliases: set[str] = set()
    for entry in models.get(model, {}).values():
        aliases.update(a for a in entry.get("aliases", ()) if isinstance(a, str))
    return aliases


def compare_outputs(primary: Sequence[Tensor], shadow: Sequence[Tensor], tolerance: float) -> tuple[bool, float]:
    """(agree, max abs difference) of two answers: same output names, datatypes and shapes, values within
    ``tolerance``. Answers that cannot be compared (different outputs, shapes, NaN) disagree with difference inf.
    """
    theirs = {tensor.name: tensor for tensor in shadow}
    if len(theirs) != len(primary):
        return False, math.inf
    worst = 0.0
    for ours in primary:
        other = theirs.get(ours.name)
        if other is None or other.datatype != ours.datatype or other.shape != ours.shape:
            return False, math.inf
        a, b = ours.to_numpy(), other.to_numpy()
        if ours.datatype == BYTES:
            if not np.array_equal(a, b):
                return False, math.inf
            continue
        if a.size:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            worst = max(worst, diff if not math.isnan(diff) else math.inf)
    return worst <= tolerance, worst


class TrafficFile:
    """The traffic file, re-read when it changes; checked with one ``stat`` at most every ``check_interval_s``."""

    def __init__(self, path: Path, check_interval_s: float, clock: Clock = time.monotonic) -> None:
        self.path = path
        self._interval_s = check_interval_s
        self._clock = clock
        self._checked_at = -math.inf
        self._signature: tuple[int, int, int] | None = None
        self._config = TrafficConfig()

    def current(self) -> TrafficConfig:
        """The configuration in force (the file's, as of the last check)."""
        now = self._clock()
        if now - self._checked_at >= self._interval_s:
            self._checked_at = now
            self._reload_if_changed()
        return self._config

    def _reload_if_changed(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            if self._signature != (0, 0, 0):
                log.warning("traffic file %s cannot be read (%s): no splits, no shadows", self.path, exc)
                self._signature, self._config = (0, 0, 0), TrafficConfig()
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._config = TrafficConfig.parse(orjson.loads(self.path.read_bytes()))
        except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
            log.error("traffic file %s is not valid, keeping the previous configuration: %s", self.path, exc)
            return
        log.info("traffic configuration loaded from %s: %s", self.path, _describe(self._config))


def _describe(config: TrafficConfig) -> str:
    parts = []
    for name, traffic in config.models.items():
        split = ", ".join(f"{alias} {weight:g}" for alias, weight in traffic.split) or "unrouted"
        shadow = traffic.shadow
        parts.append(f"{name}: {split}" + (f"; shadow {shadow.fraction:g} to {shadow.alias}" if shadow else ""))
    return "; ".join(parts) or "no models"


@dataclass(slots=True)
class ShadowStats:
    """Counters of one model's shadow traffic to one alias. Event loop thread only."""

    sent: int = 0
    skipped: int = 0
    """Copies not sent because ``shadow_max_inflight`` shadows were in flight."""
    failed: int = 0
    """Shadows that got an error or no answer in time."""
    agreed: int = 0
    disagreed: int = 0
    max_abs_diff: float = 0.0
    """The largest difference seen (inf when answers could not be compared)."""
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    primary_latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    @property
    def agreement_rate(self) -> float | None:
        """Agreed / compared (None before the first comparison)."""
        compared = self.agreed + self.disagreed
        return self.agreed / compared if compared else None

    def snapshot(self) -> dict[str, Any]:
        """The counters and latency percentiles (ms) of the latest answers, as a map."""

        def percentile_ms(values: deque[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)) * _MS_PER_S, 3) if values else None

        return {
            "sent": self.sent,
            "skipped": self.skipped,
            "failed": self.failed,
            "agreed": self.agreed,
            "disagreed": self.disagreed,
            "agreement_rate": self.agreement_rate,
            "max_abs_diff": self.max_abs_diff,
            "shadow_p50_ms": percentile_ms(self.latencies_s, 50),
            "shadow_p99_ms": percentile_ms(self.latencies_s, 99),
            "primary_p50_ms": percentile_ms(self.primary_latencies_s, 50),
            "primary_p99_ms": percentile_ms(self.primary_latencies_s, 99),
        }


class Pool(Protocol):
    """What traffic needs of the worker pool."""

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Model name -> version -> metadata (with ``aliases``), for the live workers."""
        ...

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        """Send the request to a worker and return its reply."""
        ...


Send = Callable[[InferRequest, Deadline], Awaitable[Reply]]


class Traffic:
    """The gateway's traffic policy: routes requests between aliases and runs shadow copies. Event loop only."""

    def __init__(self, file: TrafficFile | None, *, max_shadows: int, clock: Clock = time.monotonic) -> None:
        self.file = file
        self.stats: dict[tuple[str, str], ShadowStats] = {}
        """(model, shadow alias) -> counters; a metrics exporter reads them (``snapshot``)."""
        self.routed: Counter[tuple[str, str]] = Counter()
        """(model, alias) -> requests the split sent there."""
        self.fallbacks: Counter[str] = Counter()
        """model -> routed requests sent again unrouted because their alias was not served."""
        self._max_shadows = max_shadows
        self._clock = clock
        self._shadows: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Traffic:
        """Traffic from ``TANDEM_TRAFFIC_CONFIG`` (none configured: every request unrouted)."""
        path = settings.traffic_config
        file = TrafficFile(Path(path), settings.traffic_check_interval_s) if path else None
        if file is not None:
            file.current()  # read it at start-up, so a broken file shows in the log at once
        return cls(file, max_shadows=settings.shadow_max_inflight)

    def route(self, pool: Pool, model: str, version: str | None, key: str | None) -> Route:
        """Where a request for ``model`` (``version``, when the caller named one) with sticky ``key`` goes.

        Without a key (empty or None) the request is placed at random.
        """
        if self.file is None or version is not None:
            return UNROUTED
        traffic = self.file.current().models.get(model)
        if traffic is None:
            return UNROUTED
        return choose_route(model, traffic, key or uuid.uuid4().hex, served_aliases(pool.models(), model))

    async def infer(
        self, send: Send, pool: Pool, request: InferRequest, deadline: Deadline, *, key: str | None
    ) -> Reply:
        """``send(request, deadline)`` routed by the split; a shadow copy, when drawn, follows the answer.

        ``send`` is how the caller's request goes (the pool, or the prediction cache in front of it); shadows go
        to ``pool`` directly. The caller's reply is returned as it came, whatever the shadow does.
        """
        route = self.route(pool, request.model, request.version, key)
        if route.alias is not None:
            request.version = route.alias
            self.routed[(request.model, route.alias)] += 1
        started = self._clock()
        reply = await self._send(send, request, deadline, routed=route.alias is not None)
        if route.shadow is not None and reply.ok:
            self._start_shadow(pool, request, reply, route.shadow, self._clock() - started, deadline.budget_ms)
        return reply

    async def _send(self, send: Send, request: InferRequest, deadline: Deadline, *, routed: bool) -> Reply:
        """``send``; a request this policy routed to an alias that no ready worker serves right now (a worker
        draining for an in-place swap, or gone since its last pong) is sent again unrouted instead of failing."""
        try:
            reply: Reply | None = await send(request, deadline)
        except (NotFound, ModelUnavailable):
            if not routed:
                raise
            reply = None
        if routed and (reply is None or reply.status in UNSERVED_CODES):
            self.fallbacks[request.model] += 1
            log.debug("%s@%s is not served right now; sending unrouted", request.model, request.version)
            request.version = None
            reply = await send(request, deadline)
        return reply

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every shadow's counters, keyed ``model@alias``."""
        return {f"{model}@{alias}": stats.snapshot() for (model, alias), stats in self.stats.items()}

    async def wait_shadows(self) -> None:
        """Return once the shadow requests in flight now have finished."""
        await asyncio.gather(*self._shadows, return_exceptions=True)

    async def close(self) -> None:
        """Cancel the shadow requests still in flight."""
        for task in list(self._shadows):
            task.cancel()
        for task in list(self._shadows):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start_shadow(
        self, pool: Pool, request: InferRequest, reply: Reply, shadow: Shadow, primary_s: float, budget_ms: float
    ) -> None:
        stats = self.stats.setdefault((request.model, shadow.alias), ShadowStats())
        if len(self._shadows) >= self._max_shadows:
            stats.skipped += 1
            return
        stats.sent += 1
        copy = InferRequest("", request.model, shadow.alias, 0.0, request.inputs, request.outputs, request.trace)
        task = asyncio.create_task(self._shadow(pool, copy, reply, shadow, stats, primary_s, budget_ms))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        pool: Pool,
        request: InferRequest,
        primary: Reply,
        shadow: Shadow,
        stats: ShadowStats,
        primary_s: float,
        budget_ms: float,
    ) -> None:
        started = self._clock()
        try:
            answer = await pool.infer(request, Deadline(budget_ms, self._clock))
        except TandemError as exc:
            stats.failed += 1
            log.debug("shadow %s@%s failed: %s", request.model, shadow.alias, exc.message)
            return
        except Exception:  # a shadow must never hurt serving: log it, count it, go on
            stats.failed += 1
            log.exception("shadow %s@%s failed", request.model, shadow.alias)
            return
        if not answer.ok:
            stats.failed += 1
            return
        stats.latencies_s.append(self._clock() - started)
        stats.primary_latencies_s.append(primary_s)
        agree, diff = compare_outputs(primary.outputs, answer.outputs, shadow.tolerance)
        stats.max_abs_diff = max(stats.max_abs_diff, diff)
        if agree:
            stats.agreed += 1
        else:
            stats.disagreed += 1
        if (stats.agreed + stats.disagreed) % SHADOW_LOG_EVERY == 0:
            log.info("shadow %s@%s: %s", request.model, shadow.alias, stats.snapshot())
