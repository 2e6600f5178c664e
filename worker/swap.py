"""The hot swap: make a new version live for a served alias without failing a request.

The registry poller (``worker/registry.py``) decides *what* should be live; the loader (``worker/loader.py``)
turns a version into a loaded, warmed, checked model or raises ``CandidateRejected``; the slots
(``worker/slots.py``) hold the double buffer. ``HotSwapper.apply`` runs the procedure between them, one swap
at a time (the poller awaits each), so at most two copies of an alias's model exist at any moment:

1. Fetch the version's files (loader thread) and check that a second copy fits: the model's size (the larger of
   the artifact on disk and the live copy's parameter bytes) times ``swap_headroom_ratio`` against the free
   memory of the device (``loader.available_bytes``).
2. Beside (it fits): build the candidate on a loader thread, on the live model's device, while the live one
   serves; promote it (one reference assignment between admissions); once no admitted request holds the old
   model, retire it on the inference thread (after the batch that held it; ``empty_cache`` on CUDA).
3. In place (it does not fit): drain this worker (pongs say ``ready=False`` for ``swap_drain_s`` so gateways
   route elsewhere), take the alias out of service (its requests are refused ``overloaded``, which gateways
   retry elsewhere), retire the old model once idle, build the candidate, promote it, re-admit. If the
   candidate is rejected, the old version is loaded again.

A candidate that fails to load, warm up or check is never served: ``apply`` raises ``CandidateRejected`` and the
poller remembers it. Which path each swap took is logged. Everything here runs on the event loop; blocking work
goes to threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import torch

from tandem.common.settings import WorkerSettings
from tandem.worker.loader import (
    Candidate,
    LoadedModel,
    ModelRef,
    ModelSource,
    available_bytes,
    build_model,
    model_builder,
)
from tandem.worker.registry import LifecycleCounters, LiveVersions, RegistryPoller
from tandem.worker.slots import ModelSlots

log = logging.getLogger(__name__)

MIB = 1024 * 1024
BESIDE = "beside"
IN_PLACE = "in_place"
_PATHS = {BESIDE: "beside the live copy", IN_PLACE: "in place (draining this worker)"}

Build = Callable[[Candidate, torch.device], LoadedModel]
Retire = Callable[[LoadedModel], Awaitable[None]]


class Fetcher(Protocol):
    """Downloads a version's files (``loader.ModelSource``). Blocking: called on a loader thread."""

    def fetch(self, ref: ModelRef | str) -> Candidate:
        """The files of ``ref``, ready to build."""
        ...


class HotSwapper:
    """Runs the swap procedure of the module docstring for the poller (``apply``). Event loop thread only.

    ``retire`` frees a model on the inference thread; ``set_draining`` makes pongs report not ready.
    """

    def __init__(
        self,
        slots: ModelSlots,
        fetcher: Fetcher,
        device: torch.device,
        counters: LifecycleCounters,
        *,
        retire: Retire,
        set_draining: Callable[[bool], None],
        mode: str = "auto",
        headroom_ratio: float = 1.5,
        drain_s: float = 1.0,
        build: Build = build_model,
        free_bytes: Callable[[torch.device], int] = available_bytes,
    ) -> None:
        self.slots = slots
        self.counters = counters
        self._fetcher = fetcher
        self._device = device
        self._retire = retire
        self._set_draining = set_draining
        self._mode = mode
        self._headroom_ratio = headroom_ratio
        self._drain_s = drain_s
        self._build = build
        self._free_bytes = free_bytes

    async def apply(self, ref: ModelRef, version: str) -> None:
        """Make ``version`` live for the alias ``ref``; ``CandidateRejected`` when it cannot be served."""
        alias = str(ref.alias)
        started = time.perf_counter()
        loaded = self.slots.get(ref.name, version)
        if loaded is not None:  # another alias (or a pin) serves it already: no second copy needed
            displaced = self.slots.point(ref.name, alias, version)
            self._promoted(ref, version, "to the copy already loaded", started)
            await self._retire_when_idle(displaced)
            return
        candidate = await asyncio.to_thread(self._fetcher.fetch, ModelRef(ref.name, version=version))
        try:
            live = self.slots.live(ref.name, alias)
            path = self._path(candidate, live)
            if path == BESIDE:
                await self._beside(ref, candidate, started)
            else:
                await self._in_place(ref, candidate, live, started)
        finally:
            await asyncio.to_thread(candidate.close)  # deleting the downloaded files is disk I/O

    def _path(self, candidate: Candidate, live: LoadedModel | None) -> str:
        """Beside when a second copy fits (or the mode says so), else in place; logs the figures."""
        if self._mode in (BESIDE, IN_PLACE):
            log.info("%s/%s: swapping %s (swap_mode)", candidate.name, candidate.version, _PATHS[self._mode])
            return self._mode
        size = max(candidate.artifact_bytes, live.nbytes if live is not None else 0)
        needed = int(size * self._headroom_ratio)
        free = self._free_bytes(self._device)
        path = BESIDE if needed <= free else IN_PLACE
        log.info(
            "%s/%s needs about %.1f MiB on %s, %.1f MiB free: swapping %s",
            candidate.name,
            candidate.version,
            needed / MIB,
            self._device,
            free / MIB,
            _PATHS[path],
        )
        return path

    async def _beside(self, ref: ModelRef, candidate: Candidate, started: float) -> None:
        model = await asyncio.to_thread(self._build, candidate, self._device)
        displaced = self.slots.promote(model, str(ref.alias))
        self._promoted(ref, model.version, "beside the live copy", started)
        await self._retire_when_idle(displaced)

    async def _in_place(self, ref: ModelRef, candidate: Candidate, live: LoadedModel | None, started: float) -> None:
        alias = str(ref.alias)
        self._set_draining(True)
        try:
            await asyncio.sleep(self._drain_s)  # gateways hear ready=False in their next pong and route elsewhere
            await self._retire_when_idle(self.slots.unserve(ref.name, alias))
            try:
                model = await asyncio.to_thread(self._build, candidate, self._device)
            except Exception:  # rejected, or failing for another reason: the old version must come back
                if live is not None:
                    await self._restore(ref, live.version)
                raise
            self.slots.promote(model, alias)
            self.counters.of(ref.name).swaps_in_place += 1
            self._promoted(ref, model.version, "in place", started)
        finally:
            self._set_draining(False)

    async def _restore(self, ref: ModelRef, version: str) -> None:
        """Load ``version`` again after an in-place swap to a rejected candidate."""
        try:
            with await asyncio.to_thread(self._fetcher.fetch, ModelRef(ref.name, version=version)) as candidate:
                model = await asyncio.to_thread(self._build, candidate, self._device)
        except Exception:  # the registry or the old version failing now: the alias stays out of service
            log.exception("could not reload %s version %s after a rejected in-place swap", ref, version)
            return
        self.slots.promote(model, str(ref.alias))
        log.warning("%s is back on version %s after a rejected in-place swap", ref, version)

    async def _retire_when_idle(self, model: LoadedModel | None) -> None:
        """Free ``model`` on the inference thread once no admitted request holds it."""
        if model is None:
            return
        await self.slots.wait_idle(model)
        await self._retire(model)
        log.info("retired %s version %s", model.name, model.version)

    def _promoted(self, ref: ModelRef, version: str, how: str, started: float) -> None:
        self.counters.of(ref.name).swaps += 1
        log.info("%s serves version %s now, swapped %s in %.2f s", ref, version, how, time.perf_counter() - started)


def registry_watcher(
    settings: WorkerSettings,
    slots: ModelSlots,
    device: torch.device,
    counters: LifecycleCounters,
    *,
    retire: Retire,
    set_draining: Callable[[bool], None],
) -> RegistryPoller | None:
    """The poller that keeps ``slots`` on the versions the registry's aliases point to (None: polling is off).

    Call after the configured models are in ``slots``: the versions live then are the poller's starting point.
    """
    refs = [ModelRef.parse(ref) for ref in settings.model_refs()]
    refs = [ref for ref in refs if ref.alias is not None]
    if not refs or settings.poll_interval_s <= 0:
        return None
    source = ModelSource(settings.resolved_registry_uri())
    versions = LiveVersions(settings.rejected_retry_s)
    for ref in refs:
        live = slots.live(ref.name, str(ref.alias))
        if live is not None:
            versions.served(ref, live.version)
    swapper = HotSwapper(
        slots,
        source,
        device,
        counters,
        retire=retire,
        set_draining=set_draining,
        mode=settings.swap_mode,
        headroom_ratio=settings.swap_headroom_ratio,
        drain_s=settings.swap_drain_s,
        build=model_builder(settings),
    )
    return RegistryPoller(
        refs,
        source,
        swapper.apply,
        versions,
        counters,
        interval_s=settings.poll_interval_s,
        jitter_ratio=settings.poll_jitter_ratio,
        max_backoff_s=settings.poll_max_backoff_s,
    )
