"""Which version should be live: the registry poller, the versions it has seen rejected, and the lifecycle counters.

Each worker polls the MLflow Model Registry for the version every served alias (``ranker@champion``) points to,
every ``poll_interval_s`` plus a random jitter (so a fleet does not poll in lockstep). When an alias points to a
version other than the live one, the poller hands (alias, version) to the swapper (``worker/swap.py``), one at a
time. A version the loader rejects (``CandidateRejected``: fails to load, warm up or check) is remembered and not
tried again for ``rejected_retry_s``, so a broken release costs one load, not one per poll.

The registry being unreachable changes nothing that is served: the poller logs it, counts it, and tries again
after an exponential backoff (``poll_interval_s * 2**failures``, at most ``poll_max_backoff_s``, plus jitter).
An alias or model deleted from the registry is logged once and the loaded version keeps serving.

Threads: the poller is a coroutine on the worker's event loop; the registry calls block, so they run on a loader
thread (``asyncio.to_thread``). ``LiveVersions`` and ``LifecycleCounters`` are touched only on the loop thread.

Counters (``LifecycleCounters``, per model name) are kept here and nowhere else: polls and failed polls,
swaps (and how many were in place), rejected candidates and the last rejection's reason. They travel to
gateways in every pong (each model's ``"lifecycle"`` entry), where a metrics exporter can read them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tandem.common.errors import NotFound
from tandem.worker.loader import CandidateRejected, ModelRef

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Apply = Callable[[ModelRef, str], Awaitable[None]]
"""Make ``version`` live for the alias ``ref``, or raise ``CandidateRejected`` (the swapper's ``apply``)."""


class AliasSource(Protocol):
    """Where aliases are looked up (``loader.ModelSource``). Blocking: called on a loader thread."""

    def version_of(self, name: str, alias: str) -> str:
        """The version ``name@alias`` points to; ``NotFound`` when the model or alias does not exist."""
        ...


@dataclass(slots=True)
class LifecycleStats:
    """Counters of one model name's lifecycle on this worker."""

    polls: int = 0
    """Registry lookups of this model's served aliases that were answered."""
    poll_errors: int = 0
    """Lookups that failed (registry unreachable or failing)."""
    swaps: int = 0
    """Versions promoted to serve an alias (rollbacks included)."""
    swaps_in_place: int = 0
    """Of ``swaps``, those done by draining the worker because a second copy did not fit."""
    rejected: int = 0
    """Candidate versions that failed to load, warm up or check, and were never served."""
    last_rejected: str = ""
    """``VERSION: reason`` of the last rejected candidate."""
    last_swap_s: float = 0.0
    """Seconds the last swap took, from the poll that saw it to the promotion."""

    def snapshot(self) -> dict[str, Any]:
        """The counters as a map (what pongs carry)."""
        return asdict(self)


class LifecycleCounters:
    """Every model name's ``LifecycleStats``: the one place lifecycle events are counted."""

    def __init__(self) -> None:
        self._by_model: dict[str, LifecycleStats] = {}

    def of(self, name: str) -> LifecycleStats:
        """The counters of model ``name`` (created on first use)."""
        return self._by_model.setdefault(name, LifecycleStats())

    def snapshot(self, name: str) -> dict[str, Any]:
        """``of(name)`` as a map."""
        return self.of(name).snapshot()

    def snapshot_all(self) -> dict[str, dict[str, Any]]:
        """Every model's counters as maps (a copy: safe to hand to another thread)."""
        return {name: stats.snapshot() for name, stats in list(self._by_model.items())}


class LiveVersions:
    """The version live for each served alias, and the versions rejected recently. Pure; the clock is injected."""

    def __init__(self, rejected_retry_s: float, clock: Clock = time.monotonic) -> None:
        self._retry_s = rejected_retry_s
        self._clock = clock
        self._live: dict[ModelRef, str] = {}
        self._rejected: dict[tuple[str, str], tuple[float, str]] = {}

    def served(self, ref: ModelRef, version: str) -> None:
        """Record that ``version`` now serves the alias ``ref``."""
        self._live[ref] = version

    def live(self, ref: ModelRef) -> str | None:
        """The version serving ``ref``, if any."""
        return self._live.get(ref)

    def reject(self, name: str, version: str, reason: str) -> None:
        """Remember that ``name/version`` cannot be served (not retried for ``rejected_retry_s``)."""
        self._rejected[(name, version)] = (self._clock(), reason)

    def rejection(self, name: str, version: str) -> str | None:
        """Why ``name/version`` was rejected, while that is still remembered; else None."""
        entry = self._rejected.get((name, version))
        if entry is None:
            return None
        if self._clock() - entry[0] >= self._retry_s:
            del self._rejected[(name, version)]
            return None
        return entry[1]

    def wanted(self, ref: ModelRef, version: str) -> bool:
        """True when the alias ``ref`` should move to ``version``: not live already, and not rejected lately."""
        return self._live.get(ref) != version and self.rejection(ref.name, version) is None


def poll_delay_s(interval_s: float, failures: int, max_backoff_s: float, jitter_ratio: float, draw: float) -> float:
    """Seconds until the next poll: the interval, doubled per failure in a row up to ``max_backoff_s``, plus jitter.

    ``draw`` is a uniform random number in [0, 1); the jitter adds up to ``jitter_ratio`` of the delay.
    """
    base = interval_s if failures <= 0 else min(max_backoff_s, interval_s * 2.0 ** min(failures, 32))
    return base * (1.0 + jitter_ratio * draw)


class RegistryPoller:
    """Polls the served aliases and asks ``apply`` to make each new version live. Runs on the event loop.

    ``refs`` are the configured ``NAME@ALIAS`` references (pinned ``NAME/VERSION`` ones never change).
    """

    def __init__(
        self,
        refs: Sequence[ModelRef],
        source: AliasSource,
        apply: Apply,
        versions: LiveVersions,
        counters: LifecycleCounters,
        *,
        interval_s: float,
        jitter_ratio: float,
        max_backoff_s: float,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.refs = [ref for ref in refs if ref.alias is not None]
        self.versions = versions
        self.counters = counters
        self.failures = 0
        """Polls failed in a row (drives the backoff)."""
        self._source = source
        self._apply = apply
        self._interval_s = interval_s
        self._jitter_ratio = jitter_ratio
        self._max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._missing: set[ModelRef] = set()

    def next_delay_s(self) -> float:
        """Seconds to wait before the next poll."""
        draw = self._rng.random()
        return poll_delay_s(self._interval_s, self.failures, self._max_backoff_s, self._jitter_ratio, draw)

    async def run(self) -> None:
        """Poll until cancelled. A failed poll is logged and counted; what is loaded keeps serving."""
        while True:
            await self._sleep(self.next_delay_s())
            try:
                await self.poll_once()
                self.failures = 0
            except Exception as exc:  # registry unreachable, failing, or a bug: never stop serving for it
                self.failures += 1
                for ref in self.refs:
                    self.counters.of(ref.name).poll_errors += 1
                log.warning(
                    "registry poll failed (%d in a row): %s: %s; serving what is loaded, next try in about %.1f s",
                    self.failures,
                    type(exc).__name__,
                    exc,
                    poll_delay_s(self._interval_s, self.failures, self._max_backoff_s, 0.0, 0.0),
                    exc_info=self.failures == 1,  # the traceback once per outage, then one line per retry
                )

    async def poll_once(self) -> None:
        """Look every served alias up and make each moved alias's new version live, one alias at a time.

        Raises what the registry raised when it cannot be read; a rejected candidate is recorded, not raised.
        """
        if not self.refs:
            return
        started = self._clock()
        found = await asyncio.to_thread(self._lookup)
        for ref, version in found.items():
            if isinstance(version, NotFound):
                self._gone(ref, version)
                continue
            self._missing.discard(ref)
            self.counters.of(ref.name).polls += 1
            if not self.versions.wanted(ref, version):
                continue
            log.info("%s now points to version %s (serving %s): swapping", ref, version, self.versions.live(ref))
            try:
                await self._apply(ref, version)
            except CandidateRejected as exc:
                self._rejected(ref, version, exc.reason)
            except NotFound as exc:  # deleted between the lookup and the download
                log.warning("%s version %s vanished from the registry: %s", ref, version, exc.message)
            else:
                self.versions.served(ref, version)
                self.counters.of(ref.name).last_swap_s = round(self._clock() - started, 3)

    def _lookup(self) -> dict[ModelRef, str | NotFound]:
        """Each served alias's version in the registry, or the ``NotFound`` it raised. Runs on a loader thread."""
        found: dict[ModelRef, str | NotFound] = {}
        for ref in self.refs:
            try:
                found[ref] = self._source.version_of(ref.name, str(ref.alias))
            except NotFound as exc:
                found[ref] = exc
        return found

    def _gone(self, ref: ModelRef, error: NotFound) -> None:
        self.counters.of(ref.name).polls += 1
        if ref not in self._missing:
            log.warning("%s is not in the registry (%s); serving what is loaded", ref, error.message)
            self._missing.add(ref)

    def _rejected(self, ref: ModelRef, version: str, reason: str) -> None:
        self.versions.reject(ref.name, version, reason)
        stats = self.counters.of(ref.name)
        stats.rejected += 1
        stats.last_rejected = f"{version}: {reason}"
        log.error(
            "rejected %s version %s for %s: %s; it is never served, %s stays live",
            ref.name,
            version,
            ref,
            reason,
            self.versions.live(ref),
        )
