"""The hot-swap procedure, ``tandem.worker.swap.HotSwapper``, with a fake registry, loader and memory."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
import torch

from tandem.common.errors import Overloaded
from tandem.worker.loader import Candidate, CandidateRejected, LoadedModel, ModelRef
from tandem.worker.registry import LifecycleCounters
from tandem.worker.slots import ModelSlots
from tandem.worker.swap import HotSwapper

CPU = torch.device("cpu")
CHAMPION = ModelRef("ranker", alias="champion")
MODEL_BYTES = 1000


def model(version: str) -> LoadedModel:
    return LoadedModel("ranker", version, [], torch.nn.Identity(), CPU, [], [], MODEL_BYTES)


class Fakes:
    """The swapper's surroundings: what it fetched, built, retired, and when it drained."""

    def __init__(self, free_bytes: int = 10 * MODEL_BYTES, broken: frozenset[str] = frozenset()) -> None:
        self.free = free_bytes
        self.broken = broken
        self.events: list[str] = []
        self.draining = False

    def fetch(self, ref: ModelRef | str) -> Candidate:
        assert isinstance(ref, ModelRef) and ref.version is not None
        self.events.append(f"fetch {ref.version}")
        scratch = tempfile.TemporaryDirectory()
        return Candidate("ranker", ref.version, [], Path(scratch.name), MODEL_BYTES, scratch)

    def build(self, candidate: Candidate, device: torch.device) -> LoadedModel:
        self.events.append(f"build {candidate.version}")
        if candidate.version in self.broken:
            raise CandidateRejected("answers NaN")
        return model(candidate.version)

    async def retire(self, retired: LoadedModel) -> None:
        self.events.append(f"retire {retired.version}")

    def set_draining(self, draining: bool) -> None:
        self.draining = draining
        self.events.append("drain" if draining else "admit")

    def swapper(self, slots: ModelSlots, mode: str = "auto") -> HotSwapper:
        return HotSwapper(
            slots,
            self,
            CPU,
            LifecycleCounters(),
            retire=self.retire,
            set_draining=self.set_draining,
            mode=mode,
            headroom_ratio=1.5,
            drain_s=0.0,
            build=self.build,
            free_bytes=lambda device: self.free,
        )


def test_beside_when_a_second_copy_fits_and_the_old_one_waits_for_its_requests() -> None:
    slots, fakes = ModelSlots(), Fakes()
    old = model("1")
    slots.add(old, "champion")
    swapper = fakes.swapper(slots)

    async def scenario() -> None:
        slots.hold(old)  # a request admitted on the old version is still queued
        swap = asyncio.create_task(swapper.apply(CHAMPION, "2"))
        for _ in range(1000):  # the fetch and the build run on loader threads
            if slots.live("ranker", "champion") is not old:
                break
            await asyncio.sleep(0.001)
        assert slots.resolve("ranker", None).version == "2"  # promoted while the old one still serves its request
        assert "retire 1" not in fakes.events
        slots.release(old)
        await asyncio.wait_for(swap, 1.0)

    asyncio.run(scenario())
    assert fakes.events == ["fetch 2", "build 2", "retire 1"]
    assert swapper.counters.snapshot("ranker")["swaps"] == 1


def test_in_place_when_it_does_not_fit_drains_first_and_readmits() -> None:
    slots, fakes = ModelSlots(), Fakes(free_bytes=MODEL_BYTES)  # 1.5x the model's size is needed
    slots.add(model("1"), "champion")
    swapper = fakes.swapper(slots)
    asyncio.run(swapper.apply(CHAMPION, "2"))
    assert fakes.events == ["fetch 2", "drain", "retire 1", "build 2", "admit"]
    assert slots.resolve("ranker", "champion").version == "2"
    stats = swapper.counters.snapshot("ranker")
    assert (stats["swaps"], stats["swaps_in_place"]) == (1, 1)


def test_a_rejected_candidate_beside_leaves_the_live_model_untouched() -> None:
    slots, fakes = ModelSlots(), Fakes(broken=frozenset({"2"}))
    live = model("1")
    slots.add(live, "champion")
    with pytest.raises(CandidateRejected):
        asyncio.run(fakes.swapper(slots).apply(CHAMPION, "2"))
    assert fakes.events == ["fetch 2", "build 2"]
    assert slots.resolve("ranker", None) is live


def test_a_rejected_candidate_in_place_brings_the_old_version_back() -> None:
    slots, fakes = ModelSlots(), Fakes(broken=frozenset({"2"}))
    slots.add(model("1"), "champion")
    with pytest.raises(CandidateRejected):
        asyncio.run(fakes.swapper(slots, mode="in_place").apply(CHAMPION, "2"))
    assert fakes.events == ["fetch 2", "drain", "retire 1", "build 2", "fetch 1", "build 1", "admit"]
    assert slots.resolve("ranker", None).version == "1"
    assert not fakes.draining


def test_when_even_the_old_version_cannot_come_back_the_alias_stays_out_of_service() -> None:
    slots, fakes = ModelSlots(), Fakes(broken=frozenset({"1", "2"}))
    slots.add(model("1"), "champion")
    with pytest.raises(CandidateRejected):
        asyncio.run(fakes.swapper(slots, mode="in_place").apply(CHAMPION, "2"))
    with pytest.raises(Overloaded):
        slots.resolve("ranker", None)
    assert not fakes.draining


def test_an_alias_moving_to_a_version_loaded_for_another_alias_shares_that_copy() -> None:
    slots, fakes = ModelSlots(), Fakes()
    slots.add(model("1"), "champion")
    slots.add(model("2"), "challenger")
    asyncio.run(fakes.swapper(slots).apply(CHAMPION, "2"))
    assert fakes.events == ["retire 1"]
    assert slots.resolve("ranker", "champion") is slots.resolve("ranker", "challenger")
