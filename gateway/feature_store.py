"""Where the gateway finds raw user and product features.

``FeatureStore`` is the seam; ``InMemoryFeatureStore`` is the embedded default, loaded from the demo catalog that
``tandem models bootstrap`` writes under ``--home``. Unknown entities are reported, not hidden: the caller fills
them with the documented defaults of ``tandem.common.features`` and marks the answer degraded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("tandem.gateway.features")


@dataclass(slots=True)
class FeatureLookup:
    """Raw records found for one request; ``None`` where an entity is unknown."""

    user: Mapping[str, Any] | None
    products: list[Mapping[str, Any] | None]
    missing_products: list[str] = field(default_factory=list)


class FeatureStore(Protocol):
    """Raw features by entity id."""

    async def lookup(self, user_id: str, product_ids: Sequence[str]) -> FeatureLookup:
        """The user's record and each product's record, in the order asked."""
        ...

    def catalog(self) -> Sequence[str]:
        """Every known product id: the candidates when a request names none."""
        ...


class InMemoryFeatureStore:
    """Records held in dicts; lookups cost no I/O."""

    def __init__(self, users: Sequence[Mapping[str, Any]], products: Sequence[Mapping[str, Any]]) -> None:
        self._users = {u["user_id"]: u for u in users}
        self._products = {p["product_id"]: p for p in products}
        self._catalog = list(self._products)

    @classmethod
    def from_home(cls, home: Path) -> InMemoryFeatureStore:
        """Load the demo catalog written by the bootstrap; empty (all lookups miss) when there is none."""
        from tandem.demo.dataset import read_catalog

        try:
            users, products = read_catalog(home)
        except FileNotFoundError:
            log.warning("no demo catalog under %s: every feature lookup will use defaults", home)
            return cls([], [])
        return cls(users, products)

    async def lookup(self, user_id: str, product_ids: Sequence[str]) -> FeatureLookup:
        """The records for ``user_id`` and ``product_ids``."""
        products = [self._products.get(pid) for pid in product_ids]
        missing = [pid for pid, rec in zip(product_ids, products, strict=True) if rec is None]
        return FeatureLookup(self._users.get(user_id), products, missing)

    def catalog(self) -> Sequence[str]:
        """Every known product id."""
        return self._catalog
