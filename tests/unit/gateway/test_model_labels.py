"""Model and version labels of the gateway's request metrics: only names a worker served."""

from __future__ import annotations

from typing import Any

from tandem.gateway.metrics import UNKNOWN_LABEL, ModelLabels

SERVED: dict[str, dict[str, dict[str, Any]]] = {"ranker": {"3": {"aliases": ["champion"]}, "4": {"aliases": []}}}


class Table:
    """A worker pool's models table that the test can change, counting how often it is read."""

    def __init__(self, models: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.models = models
        self.reads = 0

    def __call__(self) -> dict[str, dict[str, dict[str, Any]]]:
        self.reads += 1
        return self.models


def test_a_served_model_and_its_versions_and_aliases_keep_their_names() -> None:
    labels = ModelLabels(Table(SERVED))
    assert labels.labels("ranker", "", answered=False) == ("ranker", "")
    assert labels.labels("ranker", "4", answered=False) == ("ranker", "4")
    assert labels.labels("ranker", "champion", answered=False) == ("ranker", "champion")


def test_made_up_names_are_unknown() -> None:
    labels = ModelLabels(Table(SERVED))
    assert labels.labels("nope", "", answered=False) == (UNKNOWN_LABEL, "")
    assert labels.labels("nope", "7", answered=False) == (UNKNOWN_LABEL, UNKNOWN_LABEL)
    assert labels.labels("ranker", "99", answered=False) == ("ranker", UNKNOWN_LABEL)


def test_what_a_worker_answered_for_is_labelled_and_remembered() -> None:
    table = Table({})
    labels = ModelLabels(table)
    assert labels.labels("fresh", "1", answered=True) == ("fresh", "1")
    # Later, with no worker up (an empty table), the model keeps its name in its 503s.
    assert labels.labels("fresh", "", answered=False) == ("fresh", "")
    assert labels.labels("fresh", "1", answered=False) == ("fresh", "1")
    assert labels.labels("fresh", "2", answered=False) == ("fresh", UNKNOWN_LABEL)


def test_names_seen_served_are_remembered_when_their_workers_go() -> None:
    table = Table(SERVED)
    labels = ModelLabels(table)
    assert labels.labels("ranker", "champion", answered=False) == ("ranker", "champion")
    table.models = {}
    reads = table.reads
    assert labels.labels("ranker", "champion", answered=False) == ("ranker", "champion")
    assert table.reads == reads  # known names are not looked up again


def test_a_route_without_a_model_has_empty_labels() -> None:
    assert ModelLabels(None).labels("", "", answered=False) == ("", "")
    assert ModelLabels(None).labels("nope", "", answered=False) == (UNKNOWN_LABEL, "")
