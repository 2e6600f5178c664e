"""The models a worker serves, by (name, version), which version each served alias points to, and the hot swap's
double buffer.

Owned by the event loop thread (no locks): admission resolves requests here, and the swapper promotes here.

Double buffer. Each served alias (``ranker@champion``) has one live model; a candidate is loaded beside it on a
loader thread and is not in the slots until ``promote``, which is one reference assignment (the alias's entry),
made on the loop between two admissions. A request resolved before it keeps the old model object in its job, and
a batch is formed from one (name, version) key, so every batch runs entirely on one version. The displaced model
is returned to the caller, which waits for ``wait_idle`` (no admitted request holds it any more) and then queues
its retirement on the inference thread. So at most two copies per alias exist: the live one and the standby.

``hold``/``release`` count admitted, unanswered requests per model object: that is how ``wait_idle`` knows.

In-place swap (no memory for a second copy): ``unserve`` takes an alias's model out of service; until the next
``promote`` requests for that alias are refused ``Overloaded`` (gateways retry those on another worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from tandem.common.errors import NotFound, Overloaded
from tandem.worker.loader import LoadedModel

ModelKey = tuple[str, str]


class ModelSlots:
    """Loaded models keyed by (name, version), each name's alias -> version map, and per-model holds."""

    def __init__(self) -> None:
        self._models: dict[ModelKey, LoadedModel] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        self._default_alias: dict[str, str] = {}
        self._first_version: dict[str, str] = {}
        self._pinned: set[ModelKey] = set()
        self._swapping: set[tuple[str, str]] = set()
        self._holds: dict[LoadedModel, int] = {}
        self._idle: dict[LoadedModel, asyncio.Event] = {}

    def add(self, model: LoadedModel, alias: str | None = None) -> None:
        """Serve ``model``; ``alias`` is the configured alias it was loaded for (None: pinned NAME/VERSION).

        A request without a version gets the version of its name's first configured alias (or, for a name
        configured only as NAME/VERSION, the first version added).
        """
        self._models[model.key] = model
        self._first_version.setdefault(model.name, model.version)
        if alias is None:
            self._pinned.add(model.key)
        else:
            self._aliases.setdefault(model.name, {})[alias] = model.version
            self._default_alias.setdefault(model.name, alias)

    def resolve(self, name: str, version: str | None) -> LoadedModel:
        """The model answering (name, version); ``version`` may be a version, a served alias, or None.

        Raises ``NotFound`` for what is not served here, ``Overloaded`` for an alias in an in-place swap.
        """
        if name not in self._first_version:
            raise NotFound(f"model {name!r} is not served here")
        aliases = self._aliases.get(name, {})
        asked = version
        if version is None:
            asked = self._default_alias.get(name)
            target = self._first_version[name] if asked is None else aliases.get(asked)
        else:
            target = version if (name, version) in self._models else aliases.get(version)
        model = None if target is None else self._models.get((name, target))
        if model is None:
            if (name, asked) in self._swapping:
                raise Overloaded(f"model {name}@{asked} is being swapped on this worker; retry elsewhere")
            raise NotFound(f"model {name!r} has no version {version!r} here")
        return model

    def get(self, name: str, version: str) -> LoadedModel | None:
        """The loaded model of exactly (name, version), if any."""
        return self._models.get((name, version))

    def live(self, name: str, alias: str) -> LoadedModel | None:
        """The model ``name@alias`` serves now (None during an in-place swap or before it is added)."""
        version = self._aliases.get(name, {}).get(alias)
        return None if version is None else self._models.get((name, version))

    def promote(self, model: LoadedModel, alias: str) -> LoadedModel | None:
        """Serve ``model`` as ``name@alias`` from the next admission on: one reference assignment.

        Returns the model this displaced when nothing else serves it any more (retire it once ``wait_idle``
        returns), else None. A model already loaded under that version is re-pointed to with ``point`` instead.
        """
        if model.key in self._models and self._models[model.key] is not model:
            raise ValueError(f"{model.name}/{model.version} is already loaded; point the alias at it instead")
        self._models[model.key] = model
        return self._assign(model.name, alias, model.version)

    def point(self, name: str, alias: str, version: str) -> LoadedModel | None:
        """Re-point ``name@alias`` at the already loaded ``version``; returns the displaced model as ``promote``."""
        if (name, version) not in self._models:
            raise ValueError(f"{name}/{version} is not loaded")
        return self._assign(name, alias, version)

    def unserve(self, name: str, alias: str) -> LoadedModel | None:
        """Take ``name@alias`` out of service for an in-place swap; returns the displaced model as ``promote``.

        Until the next ``promote`` of that alias, requests for it are refused ``Overloaded``.
        """
        self._swapping.add((name, alias))
        previous = self._aliases.get(name, {}).pop(alias, None)
        return self._displaced(name, previous)

    def _assign(self, name: str, alias: str, version: str) -> LoadedModel | None:
        aliases = self._aliases.setdefault(name, {})
        previous = aliases.get(alias)
        aliases[alias] = version  # the promotion: from here on admissions resolve to ``version``
        self._swapping.discard((name, alias))
        self._default_alias.setdefault(name, alias)
        self._first_version.setdefault(name, version)
        return None if previous == version else self._displaced(name, previous)

    def _displaced(self, name: str, version: str | None) -> LoadedModel | None:
        """Drop (name, version) from service when no alias and no pin still serves it; the dropped model."""
        if version is None or (name, version) in self._pinned or version in self._aliases.get(name, {}).values():
            return None
        return self._models.pop((name, version), None)

    def aliases_of(self, model: LoadedModel) -> list[str]:
        """The aliases this worker serves ``model`` under, sorted."""
        if self._models.get(model.key) is not model:
            return []
        return sorted(alias for alias, version in self._aliases.get(model.name, {}).items() if version == model.version)

    def hold(self, model: LoadedModel) -> None:
        """Count one admitted request that will run on ``model``."""
        self._holds[model] = self._holds.get(model, 0) + 1

    def release(self, model: LoadedModel) -> None:
        """Count one request on ``model`` answered (computed, refused, expired or cancelled)."""
        left = self._holds.get(model, 0) - 1
        if left > 0:
            self._holds[model] = left
            return
        self._holds.pop(model, None)
        idle = self._idle.pop(model, None)
        if idle is not None:
            idle.set()

    def holds(self, model: LoadedModel) -> int:
        """Admitted requests not yet answered on ``model``."""
        return self._holds.get(model, 0)

    async def wait_idle(self, model: LoadedModel) -> None:
        """Return once no admitted request holds ``model`` (at once if none does). Never polls."""
        if self._holds.get(model, 0) > 0:
            await self._idle.setdefault(model, asyncio.Event()).wait()

    def describe(self, lifecycle: Callable[[str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Each served model's pong entry: ``describe()`` with the aliases served here (and lifecycle counters)."""
        described = []
        for model in self:
            entry = model.describe()
            entry["aliases"] = self.aliases_of(model)
            if lifecycle is not None:
                entry["lifecycle"] = lifecycle(model.name)
            described.append(entry)
        return described

    def __iter__(self) -> Iterator[LoadedModel]:
        """The served models, in the order they were added."""
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        """How many model versions are served."""
        return len(self._models)
