"""Business post-processing of scored candidates for ``/v1/recommendations``: a pipeline of small steps.

A *step* is a function ``step(candidates, context) -> candidates``. It receives the candidates sorted by score
(highest first, ties by product id) and returns the ones to keep, in the order to show them: it may drop,
reorder, or change scores (then it re-sorts, e.g. with ``by_score``). The pipeline sorts, runs its steps in
order, and returns the first ``k``. Steps run on the gateway's event loop, once per request: keep them quick and
free of I/O.

Built-in steps (``STEPS``):

- ``sellable``: drop products out of stock or blocked (unknown products carry the defaults, out of stock, so
  they go too).
- ``in_stock`` / ``not_blocked``: each half of ``sellable`` alone.
- ``category_cap``: keep at most ``context.max_per_category`` products of one category (0: no cap), the best
  scored of each category first; applied before the cut to ``k``, so the top ``k`` holds the cap.

Which steps run is a setting (``TANDEM_POSTPROCESS_STEPS``, default ``sellable,category_cap``), per ranking model
if needed: ``sellable,category_cap`` applies to every model; ``sellable;ranker-v2=sellable,boost`` gives model
``ranker-v2`` its own list. A step is named either by its registered name or as ``module:function``, imported
when the gateway starts (an unknown name fails the start, not a request). To add one::

    # mycompany/steps.py
    from tandem.gateway.postprocess import register_step

    @register_step("no_patterns")
    def no_patterns(candidates, context):
        return [c for c in candidates if c.record.get("category") != "patterns"]

and set ``TANDEM_POSTPROCESS_STEPS=sellable,mycompany.steps:no_patterns,category_cap`` (the ``module:function``
form needs no registration). See ``docs/postprocessing.md``.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tandem.common.settings import split_list


@dataclass(slots=True)
class Candidate:
    """One scored product: its id, model score, raw record (the defaults when unknown) and whether it was known."""

    product_id: str
    score: float
    record: Mapping[str, Any]
    known: bool = True


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step may consult besides the candidates."""

    model: str
    k: int
    user: Mapping[str, Any]
    max_per_category: int = 0


Step = Callable[[list[Candidate], StepContext], list[Candidate]]

STEPS: dict[str, Step] = {}
DEFAULT_MODEL_KEY = ""  # the pipeline of models without their own entry
_MODEL_SEPARATOR = ";"
_MODEL_ASSIGN = "="


def register_step(name: str) -> Callable[[Step], Step]:
    """Decorator: make ``step`` selectable by ``name`` in ``TANDEM_POSTPROCESS_STEPS``."""

    def register(step: Step) -> Step:
        if name in STEPS and STEPS[name] is not step:
            raise ValueError(f"a post-processing step named {name!r} is already registered")
        STEPS[name] = step
        return step

    return register


def by_score(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Highest score first; ties by product id, so answers are stable."""
    return sorted(candidates, key=lambda c: (-c.score, c.product_id))


def is_in_stock(record: Mapping[str, Any]) -> bool:
    """The product has stock (a missing or malformed field counts as none)."""
    try:
        return float(record.get("stock", 0)) > 0
    except (TypeError, ValueError):
        return False


def is_blocked(record: Mapping[str, Any]) -> bool:
    """The product must not be shown."""
    return bool(record.get("blocked", False))


@register_step("in_stock")
def drop_out_of_stock(candidates: list[Candidate], context: StepContext) -> list[Candidate]:
    """Keep products with stock."""
    return [c for c in candidates if is_in_stock(c.record)]


@register_step("not_blocked")
def drop_blocked(candidates: list[Candidate], context: StepContext) -> list[Candidate]:
    """Keep products that are not blocked."""
    return [c for c in candidates if not is_blocked(c.record)]


@register_step("sellable")
def drop_unsellable(candidates: list[Candidate], context: StepContext) -> list[Candidate]:
    """Keep products in stock and not blocked."""
    return [c for c in candidates if is_in_stock(c.record) and not is_blocked(c.record)]


@register_step("category_cap")
def cap_per_category(candidates: list[Candidate], context: StepContext) -> list[Candidate]:
    """Keep at most ``context.max_per_category`` products of each category, in the order given (0: no cap)."""
    cap = context.max_per_category
    if cap <= 0:
        return candidates
    seen: Counter[str] = Counter()
    kept = []
    for candidate in candidates:
        category = str(candidate.record.get("category", ""))
        if seen[category] < cap:
            seen[category] += 1
            kept.append(candidate)
    return kept


def resolve_step(name: str) -> Step:
    """The step registered as ``name``, or the function ``module:function`` names; ``ValueError`` if neither."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            step = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load post-processing step {name!r}: {exc}") from exc
        if not callable(step):
            raise ValueError(f"post-processing step {name!r} is not callable")
        return step
    try:
        return STEPS[name]
    except KeyError:
        raise ValueError(f"unknown post-processing step {name!r}; known: {', '.join(sorted(STEPS))}") from None


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Named steps run in order over score-sorted candidates; the first ``k`` of what they leave is the answer."""

    names: tuple[str, ...]
    steps: tuple[Step, ...]

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Pipeline:
        """Resolve each step name now (an unknown one raises ``ValueError``)."""
        return cls(tuple(names), tuple(resolve_step(name) for name in names))

    def run(self, candidates: Sequence[Candidate], context: StepContext) -> list[Candidate]:
        """The at most ``context.k`` candidates to show, in order."""
        kept = by_score(candidates)
        for step in self.steps:
            kept = step(kept, context)
        return kept[: context.k]


class Pipelines:
    """The pipeline of each ranking model, with a default for models without their own."""

    def __init__(self, by_model: Mapping[str, Pipeline]) -> None:
        if DEFAULT_MODEL_KEY not in by_model:
            raise ValueError("a default pipeline is needed")
        self._by_model = dict(by_model)

    @classmethod
    def parse(cls, setting: str) -> Pipelines:
        """From ``TANDEM_POSTPROCESS_STEPS``: ``steps[;model=steps]...``, steps comma-separated (may be empty)."""
        by_model: dict[str, Pipeline] = {DEFAULT_MODEL_KEY: Pipeline((), ())}
        for entry in setting.split(_MODEL_SEPARATOR):
            model, assigned, steps = entry.partition(_MODEL_ASSIGN)
            if not assigned:
                model, steps = DEFAULT_MODEL_KEY, entry
            elif not model.strip():
                raise ValueError(f"a post-processing entry names no model: {entry!r}")
            by_model[model.strip()] = Pipeline.from_names(split_list(steps))
        return cls(by_model)

    def for_model(self, model: str) -> Pipeline:
        """The pipeline for ``model``."""
        return self._by_model.get(model, self._by_model[DEFAULT_MODEL_KEY])
