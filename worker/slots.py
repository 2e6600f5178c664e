"""The models a worker serves, by (name, version), and which version answers a request without one.

Owned by the event loop thread: admission resolves requests here, and promoting a new version is one
assignment between batches (``add``), so a batch already formed keeps the model object it was formed with.
"""

from __future__ import annotations

from collections.abc import Iterator

from tandem.common.errors import NotFound
from tandem.worker.loader import LoadedModel


class ModelSlots:
    """Loaded models keyed by (name, version), plus each name's alias -> version map."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        self._default_alias: dict[str, str] = {}
        self._first_version: dict[str, str] = {}

    def add(self, model: LoadedModel, alias: str | None = None) -> None:
        """Serve ``model``; ``alias`` is the configured alias it was loaded for, if any (re-pointed if known).

        A request without a version gets the version of its name's first configured alias (or, for a name
        configured only as NAME/VERSION, the first version added).
        """
        self._models[model.key] = model
        self._first_version.setdefault(model.name, model.version)
        if alias is not None:
            self._aliases.setdefault(model.name, {})[alias] = model.version
            self._default_alias.setdefault(model.name, alias)

    def resolve(self, name: str, version: str | None) -> LoadedModel:
        """The model answering (name, version); ``version`` may be a version, a configured alias, or None."""
        if name not in self._first_version:
            raise NotFound(f"model {name!r} is not served here")
        aliases = self._aliases.get(name, {})
        if version is None:
            alias = self._default_alias.get(name)
            version = aliases[alias] if alias is not None else self._first_version[name]
        model = self._models.get((name, version)) or self._models.get((name, aliases.get(version, "")))
        if model is None:
            raise NotFound(f"model {name!r} has no version {version!r} here")
        return model

    def __iter__(self) -> Iterator[LoadedModel]:
        """The served models, in the order they were added."""
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        """How many model versions are served."""
        return len(self._models)
