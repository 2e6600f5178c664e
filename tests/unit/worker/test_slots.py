"""Which loaded model answers a (name, version) request: ``tandem.worker.slots``."""

from __future__ import annotations

import pytest
import torch

from tandem.common.errors import NotFound
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
