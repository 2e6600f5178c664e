"""Which version should be live: ``tandem.worker.registry`` with a scripted registry and a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from tandem.common.errors import NotFound
from tandem.worker.loader import CandidateRejected, ModelRef
from tandem.worker.registry import LifecycleCounters, LiveVersions, RegistryPoller, poll_delay_s

CHAMPION = ModelRef("ranker", alias="champion")
CHALLENGER = ModelRef("ranker", alias="challenger")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedRegistry:
    """Aliases -> versions; ``down`` makes every lookup fail like an unreachable server."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = dict(aliases)
        self.down = False
        self.lookups = 0

    def version_of(self, name: str, alias: str) -> str:
        self.lookups += 1
        if self.down:
            raise ConnectionError("registry unreachable")
        if alias not in self.aliases:
            raise NotFound(f"no alias {alias}")
        return self.aliases[alias]


class Swapper:
    """Records each (alias, version) it is asked to make live; versions in ``broken`` are rejected."""

    def __init__(self, broken: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.broken = broken
        self.applied: list[tuple[str, str]] = []

    async def apply(self, ref: ModelRef, version: str) -> None:
        self.applied.append((str(ref.alias), version))
        if version in self.broken:
            raise CandidateRejected(f"version {version} answers NaN")


def make_poller(
    registry: ScriptedRegistry,
    swapper: Swapper,
    clock: FakeClock,
    live: dict[ModelRef, str],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> RegistryPoller:
    versions = LiveVersions(rejected_retry_s=600.0, clock=clock)
    for ref, version in live.items():
        versions.served(ref, version)
    return RegistryPoller(
        [CHAMPION, CHALLENGER, ModelRef("ranker", version="1")],
        registry,
        swapper.apply,
        versions,
        LifecycleCounters(),
        interval_s=5.0,
        jitter_ratio=0.2,
        max_backoff_s=60.0,
        rng=random.Random(0),
        clock=clock,
        sleep=sleep,
    )


def test_live_versions_want_a_new_version_once_and_forget_rejections_after_the_retry_time() -> None:
    clock = FakeClock()
    versions = LiveVersions(rejected_retry_s=60.0, clock=clock)
    versions.served(CHAMPION, "3")
    assert not versions.wanted(CHAMPION, "3")
    assert versions.wanted(CHAMPION, "4")
    versions.reject("ranker", "4", "NaN")
    assert not versions.wanted(CHAMPION, "4")
    assert not versions.wanted(CHALLENGER, "4")  # rejected is about the version, whichever alias points to it
    assert versions.rejection("ranker", "4") == "NaN"
    clock.now += 60.0
    assert versions.wanted(CHAMPION, "4")
    assert versions.rejection("ranker", "4") is None


@pytest.mark.parametrize(
    ("failures", "draw", "expected"),
    [(0, 0.0, 5.0), (0, 0.5, 5.5), (1, 0.0, 10.0), (3, 0.0, 40.0), (4, 0.0, 60.0), (200, 0.99, 60.0 * 1.198)],
)
def test_poll_delay_backs_off_exponentially_up_to_a_cap_plus_jitter(failures: int, draw: float, expected: float):
    assert poll_delay_s(5.0, failures, 60.0, 0.2, draw) == pytest.approx(expected)


def test_a_moved_alias_is_applied_once_and_pins_are_never_polled() -> None:
    registry = ScriptedRegistry({"champion": "3", "challenger": "4"})
    swapper, clock = Swapper(), FakeClock()
    poller = make_poller(registry, swapper, clock, {CHAMPION: "3", CHALLENGER: "4"})
    asyncio.run(poller.poll_once())
    assert swapper.applied == []
    assert registry.lookups == 2  # the pinned ranker/1 is not looked up
    registry.aliases["champion"] = "5"
    asyncio.run(poller.poll_once())
    asyncio.run(poller.poll_once())
    assert swapper.applied == [("champion", "5")]
    assert poller.versions.live(CHAMPION) == "5"
    assert poller.counters.snapshot("ranker")["polls"] == 6


def test_a_rejected_version_is_remembered_not_retried_and_counted() -> None:
    registry = ScriptedRegistry({"champion": "3", "challenger": "4"})
    swapper, clock = Swapper(broken={"6"}), FakeClock()
    poller = make_poller(registry, swapper, clock, {CHAMPION: "3", CHALLENGER: "4"})
    registry.aliases["champion"] = "6"
    for _ in range(5):
        asyncio.run(poller.poll_once())
    assert swapper.applied == [("champion", "6")]
    assert poller.versions.live(CHAMPION) == "3"
    stats = poller.counters.snapshot("ranker")
    assert (stats["rejected"], stats["last_rejected"]) == (1, "6: version 6 answers NaN")
    registry.aliases["champion"] = "3"  # a rollback to what is live costs nothing
    asyncio.run(poller.poll_once())
    assert swapper.applied == [("champion", "6")]


def test_an_unreachable_registry_backs_off_counts_and_keeps_what_is_live() -> None:
    registry = ScriptedRegistry({"champion": "3", "challenger": "4"})
    registry.down = True
    sleeps: list[float] = []

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 4:
            registry.down = False
            registry.aliases["champion"] = "5"
        if len(sleeps) == 6:
            raise asyncio.CancelledError

    swapper, clock = Swapper(), FakeClock()
    poller = make_poller(registry, swapper, clock, {CHAMPION: "3", CHALLENGER: "4"}, sleep=fake_sleep)

    async def scenario() -> None:
        with pytest.raises(asyncio.CancelledError):
            await poller.run()

    asyncio.run(scenario())
    # 5 s, then 10, 20, 40 (3 failures in a row), then back to 5 once the registry answers; plus up to 20 %.
    bases = [5.0, 10.0, 20.0, 40.0, 5.0, 5.0]
    assert all(base <= slept <= base * 1.2 for base, slept in zip(bases, sleeps, strict=True)), sleeps
    assert poller.failures == 0
    assert poller.counters.snapshot("ranker")["poll_errors"] == 3 * 2  # two aliases per failed poll
    assert swapper.applied == [("champion", "5")]


def test_a_deleted_alias_keeps_serving_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = ScriptedRegistry({"champion": "3"})
    swapper, clock = Swapper(), FakeClock()
    poller = make_poller(registry, swapper, clock, {CHAMPION: "3", CHALLENGER: "4"})
    for _ in range(3):
        asyncio.run(poller.poll_once())
    assert swapper.applied == []
    assert poller.versions.live(CHALLENGER) == "4"
    assert caplog.text.count("ranker@challenger is not in the registry") == 1
