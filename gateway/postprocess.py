"""Business post-processing of scored candidates for ``/v1/recommendations``.

A step takes the scored candidates and returns the ones to show, in order. The default pipeline drops products
that are out of stock or blocked, then returns the top ``k`` by score (ties by product id, so answers are
stable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Candidate:
    product_id: str
    score: float
    record: Mapping[str, Any]


def is_sellable(record: Mapping[str, Any]) -> bool:
    """In stock and not blocked."""
    return int(record.get("stock", 0)) > 0 and not record.get("blocked", False)


def top_k(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """Sellable candidates, highest score first, at most ``k``."""
    sellable = [c for c in candidates if is_sellable(c.record)]
    sellable.sort(key=lambda c: (-c.score, c.product_id))
    return sellable[:k]
