"""Which loaded model answers a (name, version) request: ``tandem.worker.slots``."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tandem.common.errors import NotFound, Overloaded
from tandem.worker.loader import LoadedModel
from tandem.worker.slots import ModelSlots


def model(name: str, version: str) -> LoadedModel:
    return LoadedModel(name, version, [], torch.nn.Identity(), torch.device("cpu"), [], [], 0)


def test_version_none_means_the_first_configured_alias() -> None:
    slots = ModelSlots()
    slots.add(model("ranker", "3"), "champion")
    slots.add(model("ranker", "4"), "challenger")
    assert slots.resolve("ranker", None).version == "3"
    assert slots.resolve("ranker", "4").version == "4"
    assert slots.resolve("ranker", "challenger").version == "4"
    assert [m.key for m in slots] == [("ranker", "3"), ("ranker", "4")]
    assert len(slots) == 2


def test_an_alias_beats_a_pinned_version_and_can_be_repointed() -> None:
    slots = ModelSlots()
    slots.add(model("ranker", "1"))
    assert slots.resolve("ranker", None).version == "1"
    slots.add(model("ranker", "2"), "champion")
    assert slots.resolve("ranker", None).version == "2"
    slots.add(model("ranker", "5"), "champion")  # what a hot swap does
    assert slots.resolve("ranker", None).version == "5"
    assert slots.resolve("ranker", "champion").version == "5"
    assert slots.resolve("ranker", "1").version == "1"


def test_unknown_names_and_versions_are_not_found() -> None:
    slots = ModelSlots()
    slots.add(model("ranker", "1"), "champion")
    with pytest.raises(NotFound) as caught:
        slots.resolve("x", None)
    assert caught.value.message == "model 'x' is not served here"
    with pytest.raises(NotFound) as caught:
        slots.resolve("ranker", "9")
    assert caught.value.message == "model 'ranker' has no version '9' here"


def test_promotion_repoints_an_alias_and_hands_back_the_displaced_model() -> None:
    slots = ModelSlots()
    old, new = model("ranker", "3"), model("ranker", "4")
    slots.add(old, "champion")
    held = slots.resolve("ranker", None)  # a request admitted before the swap keeps this object
    assert slots.promote(new, "champion") is old
    assert held is old
    assert slots.resolve("ranker", None) is new
    assert slots.resolve("ranker", "champion") is new
    assert [m.key for m in slots] == [("ranker", "4")]
    with pytest.raises(NotFound):
        slots.resolve("ranker", "3")


def test_a_version_still_served_by_another_alias_or_a_pin_is_not_displaced() -> None:
    slots = ModelSlots()
    v1, v2, v3 = model("ranker", "1"), model("ranker", "2"), model("ranker", "3")
    slots.add(v1, "champion")
    slots.add(v2, "challenger")
    assert slots.point("ranker", "challenger", "1") is v2  # challenger joins champion's copy
    assert slots.aliases_of(v1) == ["challenger", "champion"]
    assert slots.promote(v3, "champion") is None  # v1 still serves challenger
    assert slots.aliases_of(v1) == ["challenger"]
    pinned = ModelSlots()
    pinned.add(v1)
    pinned.add(v1, "champion")
    assert pinned.promote(v2, "champion") is None  # ranker/1 is configured as a pin


def test_promoting_a_second_copy_of_a_loaded_version_is_refused() -> None:
    slots = ModelSlots()
    slots.add(model("ranker", "1"), "champion")
    slots.add(model("ranker", "2"), "challenger")
    with pytest.raises(ValueError, match="already loaded"):
        slots.promote(model("ranker", "2"), "champion")


def test_an_alias_out_of_service_for_an_in_place_swap_is_overloaded_until_promoted() -> None:
    slots = ModelSlots()
    old = model("ranker", "1")
    slots.add(old, "champion")
    assert slots.unserve("ranker", "champion") is old
    for version in (None, "champion"):
        with pytest.raises(Overloaded, match="being swapped"):
            slots.resolve("ranker", version)
    assert slots.describe() == []
    slots.promote(model("ranker", "2"), "champion")
    assert slots.resolve("ranker", None).version == "2"


def test_holds_tell_when_a_model_is_idle() -> None:
    slots = ModelSlots()
    m = model("ranker", "1")
    slots.add(m, "champion")

    async def scenario() -> None:
        await slots.wait_idle(m)  # nothing holds it: at once
        slots.hold(m)
        slots.hold(m)
        waiter = asyncio.create_task(slots.wait_idle(m))
        slots.release(m)
        await asyncio.sleep(0)
        assert not waiter.done()
        slots.release(m)
        await asyncio.wait_for(waiter, 1.0)
        assert slots.holds(m) == 0

    asyncio.run(scenario())


def test_describe_reports_the_aliases_served_here_and_lifecycle_counters() -> None:
    slots = ModelSlots()
    m = model("ranker", "1")
    m.aliases = ["champion", "staging"]  # what the registry said at load time
    slots.add(m, "champion")
    (entry,) = slots.describe(lambda name: {"swaps": 2, "of": name})
    assert (entry["version"], entry["aliases"], entry["lifecycle"]) == ("1", ["champion"], {"swaps": 2, "of": "ranker"})
