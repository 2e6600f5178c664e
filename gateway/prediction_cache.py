"""An in-process prediction cache: least-recently-used, with a time to live per model.

Off unless a model is listed in ``TANDEM_CACHE_MODELS`` (``ranker:30,echo:5``: name and TTL in seconds); at most
``TANDEM_CACHE_MAX_ENTRIES`` answers are kept, the least recently used evicted first.

Key: ``(model, version, digest)``, the digest a BLAKE2b of every input's name, datatype, shape and raw bytes
(and of the requested output names). The version is the one live workers report for the model *before* the
request is sent (``pool.models()``): a request is cached only when that version is known without doubt (it names
one that is served, or exactly one version of the model is live). During a rollout, when two versions are live
at once, nothing is cached or served from cache. An answer is stored only under the version that computed it.
So once the gateway has heard (by a pong, within one ping interval) that a new version is live, an old version's
answer is never served for it: the cache is exactly as stale as routing itself.

``infer`` wraps ``pool.infer`` with all of this; ``key_for``/``get``/``put`` are the parts, for callers that
need them separately. Owned by the gateway's event loop thread (no locks).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from tandem.common.metric_children import child
from tandem.common.settings import split_list
from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.gateway import metrics

if TYPE_CHECKING:
    from tandem.common.settings import GatewaySettings
    from tandem.gateway.deadlines import Deadline

DIGEST_BYTES = 16
DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024  # answers larger than this are not worth keeping
_TTL_SEPARATOR = ":"


class ServingPool(Protocol):
    """What the cache needs of the worker pool."""

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Model name -> version -> metadata, for the live workers."""
        ...

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        """Send the request to a worker and return its reply."""
        ...


class CacheKey(NamedTuple):
    model: str
    version: str
    digest: bytes


@dataclass(slots=True)
class CacheStats:
    """Plain counters for metrics exporters (``as_dict``)."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0  # dropped as least recently used
    expirations: int = 0  # found past their TTL
    uncacheable: int = 0  # requests of a cached model whose live version was not known for sure

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)


def parse_ttls(setting: str) -> dict[str, float]:
    """``"ranker:30,echo:5"`` -> ``{"ranker": 30.0, "echo": 5.0}``; ``ValueError`` on a malformed entry."""
    ttls = {}
    for entry in split_list(setting):
        name, _, ttl = entry.rpartition(_TTL_SEPARATOR)
        try:
            ttl_s = float(ttl)
        except ValueError:
            ttl_s = -1.0
        if not name or ttl_s <= 0:
            raise ValueError(f"cache entry {entry!r} must be MODEL:TTL_S with a positive TTL")
        ttls[name] = ttl_s
    return ttls


def live_version(served: Mapping[str, Mapping[str, Any]], model: str, version: str | None) -> str | None:
    """The version that will answer a request for ``model`` (``version``), or None when it is not certain."""
    versions = served.get(model)
    if not versions:
        return None
    if version is not None:
        return version if version in versions else None
    return next(iter(versions)) if len(versions) == 1 else None


def digest_inputs(inputs: Sequence[Tensor], outputs: Sequence[str] | None = None) -> bytes:
    """A digest of the tensors' names, datatypes, shapes and bytes (and the requested outputs)."""
    hasher = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for tensor in inputs:
        name = tensor.name.encode()
        datatype = tensor.datatype.encode()
        data = memoryview(tensor.data)
        # Lengths first, so no two different requests can concatenate to the same bytes.
        hasher.update(struct.pack("<III", len(name), len(datatype), len(tensor.shape)))
        hasher.update(name)
        hasher.update(datatype)
        hasher.update(struct.pack(f"<{len(tensor.shape)}q", *tensor.shape))
        hasher.update(struct.pack("<Q", data.nbytes))
        hasher.update(data)
    if outputs is not None:
        hasher.update(b"\x00outputs")
        for name in outputs:
            encoded = name.encode()
            hasher.update(struct.pack("<I", len(encoded)))
            hasher.update(encoded)
    return hasher.digest()


class PredictionCache:
    """LRU + TTL cache of worker replies; see the module docstring for the keying rules."""

    def __init__(
        self,
        ttl_s_by_model: Mapping[str, float],
        max_entries: int,
        *,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._ttl_s = dict(ttl_s_by_model)
        self._max_entries = max_entries
        self._max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._entries: OrderedDict[CacheKey, tuple[float, Reply]] = OrderedDict()
        self.stats = CacheStats()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PredictionCache:
        """The cache ``TANDEM_CACHE_MODELS`` and ``TANDEM_CACHE_MAX_ENTRIES`` describe."""
        return cls(parse_ttls(settings.cache_models), settings.cache_max_entries)

    def __len__(self) -> int:
        return len(self._entries)

    def caches(self, model: str) -> bool:
        """True when answers of ``model`` are cached."""
        return model in self._ttl_s

    def key_for(
        self,
        model: str,
        version: str | None,
        inputs: Sequence[Tensor],
        served: Mapping[str, Mapping[str, Any]],
        outputs: Sequence[str] | None = None,
    ) -> CacheKey | None:
        """The key of this request, or None when it must not use the cache (model not cached, version unsure)."""
        if model not in self._ttl_s:
            return None
        live = live_version(served, model, version)
        if live is None:
            self.stats.uncacheable += 1
            return None
        return CacheKey(model, live, digest_inputs(inputs, outputs))

    def get(self, key: CacheKey) -> Reply | None:
        """The cached reply for ``key``, if present and fresh (it becomes the most recently used)."""
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        expires_at, reply = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            self.stats.expirations += 1
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return reply

    def put(self, key: CacheKey, reply: Reply) -> None:
        """Keep ``reply`` for ``key``'s TTL, if it succeeded, came from ``key``'s version and is small enough."""
        if not reply.ok or reply.version != key.version:
            return
        if sum(tensor.nbytes for tensor in reply.outputs) > self._max_entry_bytes:
            return
        self._entries[key] = (self._clock() + self._ttl_s[key.model], reply)
        self._entries.move_to_end(key)
        self.stats.stores += 1
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self.stats.evictions += 1

    async def infer(self, pool: ServingPool, request: InferRequest, deadline: Deadline) -> Reply:
        """``pool.infer(request, deadline)``, answered from the cache when it may be."""
        key = self.key_for(request.model, request.version, request.inputs, pool.models(), request.outputs)
        if key is not None:
            cached = self.get(key)
            child(metrics.CACHE, request.model, "miss" if cached is None else "hit").inc()
            if cached is not None:
                return cached
        reply = await pool.infer(request, deadline)
        if key is not None:
            self.put(key, reply)
        return reply
