"""Where the gateway finds raw user and product features: one interface, two implementations.

``FeatureStore`` is the seam. ``InMemoryFeatureStore`` is the embedded default (``tandem up``), loaded from the
demo catalog that ``tandem models bootstrap`` writes under ``--home``; ``RedisFeatureStore``
(``tandem.gateway.redis_features``) reads the records ``tandem features load`` wrote, and is chosen when
``TANDEM_REDIS_URL`` is set. ``open_feature_store`` picks one from the settings.

Contract of ``lookup``: it never raises for the store's own trouble. Unknown entities come back as ``None`` (the
caller fills in the documented defaults of ``tandem.common.features`` and marks the answer degraded); a store
that cannot answer in time (down, slow, its circuit breaker open) returns a lookup whose ``failure`` says why,
with every record ``None``. Records are returned exactly as stored (plain dicts as JSON gives them), so the
shared feature code sees the same values in training and serving.

Every store counts what happened in ``stats`` (a ``FeatureStats``; ``stats.as_dict()`` for metrics exporters).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tandem.common.settings import GatewaySettings

log = logging.getLogger("tandem.gateway.features")

# Why a lookup returned no records at all (``FeatureLookup.failure``).
FAILURE_TIMEOUT = "timeout"  # the store did not answer within the lookup's budget
FAILURE_ERROR = "error"  # the store answered with an error or the connection failed
FAILURE_UNAVAILABLE = "unavailable"  # skipped: the circuit breaker is open after repeated failures

Record = Mapping[str, Any]


@dataclass(slots=True)
class FeatureLookup:
    """Raw records found for one request, in the order asked; ``None`` where an entity is unknown."""

    user: Record | None
    products: list[Record | None]
    missing_products: list[str] = field(default_factory=list)
    failure: str | None = None  # None: the store answered; else one of FAILURE_*, and every record is None

    @classmethod
    def failed(cls, product_ids: Sequence[str], reason: str) -> FeatureLookup:
        """The lookup of a store that could not answer: nothing known, ``failure`` set to ``reason``."""
        return cls(None, [None] * len(product_ids), list(product_ids), reason)


@dataclass(slots=True)
class FeatureStats:
    """Plain counters, only ever incremented, for metrics exporters to read (``as_dict``)."""

    lookups: int = 0  # lookups asked of the store
    errors: int = 0  # lookups that failed with an error (connection refused, reset, protocol error)
    timeouts: int = 0  # lookups that ran out of time
    short_circuits: int = 0  # lookups skipped because the circuit breaker was open
    defaulted_users: int = 0  # users given default features (unknown, or the store failed)
    defaulted_products: int = 0  # products given default features (unknown, or the store failed)
    bad_records: int = 0  # stored records that did not decode (treated as unknown)

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)

    def count(self, lookup: FeatureLookup) -> FeatureLookup:
        """Count the defaults ``lookup`` implies; returns it."""
        self.defaulted_users += lookup.user is None
        self.defaulted_products += len(lookup.missing_products)
        return lookup


class FeatureStore(Protocol):
    """Raw features by entity id."""

    stats: FeatureStats

    async def lookup(self, user_id: str, product_ids: Sequence[str], timeout_s: float | None = None) -> FeatureLookup:
        """The user's record and each product's record, in the order asked, within ``timeout_s`` if given."""
        ...

    def catalog(self) -> Sequence[str]:
        """Every known product id: the candidates when a request names none (may be empty)."""
        ...


def found(user: Record | None, product_ids: Sequence[str], products: list[Record | None]) -> FeatureLookup:
    """A successful lookup, with the ids of the unknown products listed."""
    missing = [pid for pid, record in zip(product_ids, products, strict=True) if record is None]
    return FeatureLookup(user, products, missing)


class InMemoryFeatureStore:
    """Records held in dicts; lookups cost no I/O and never fail."""

    def __init__(self, users: Sequence[Record], products: Sequence[Record]) -> None:
        self._users = {u["user_id"]: u for u in users}
        self._products = {p["product_id"]: p for p in products}
        self._catalog = list(self._products)
        self.stats = FeatureStats()

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

    async def lookup(self, user_id: str, product_ids: Sequence[str], timeout_s: float | None = None) -> FeatureLookup:
        """The records for ``user_id`` and ``product_ids`` (``timeout_s`` is moot: nothing waits)."""
        self.stats.lookups += 1
        products = [self._products.get(pid) for pid in product_ids]
        return self.stats.count(found(self._users.get(user_id), product_ids, products))

    def catalog(self) -> Sequence[str]:
        """Every known product id."""
        return self._catalog


async def open_feature_store(settings: GatewaySettings, stack: AsyncExitStack) -> FeatureStore:
    """The store the settings ask for: Redis when ``redis_url`` is set (closed by ``stack``), else in memory."""
    if not settings.redis_url:
        return InMemoryFeatureStore.from_home(settings.home)
    from tandem.gateway.redis_features import RedisFeatureStore

    store = RedisFeatureStore.from_settings(settings)
    stack.push_async_callback(store.close)
    await store.start()
    return store
