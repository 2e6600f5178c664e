"""Traffic splits and shadows between aliases: ``tandem.gateway.traffic``, with a fake pool and a fake clock."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tandem.common.errors import ModelUnavailable
from tandem.common.wire import InferRequest, Reply, Tensor
from tandem.gateway.deadlines import Deadline
from tandem.gateway.traffic import (
    ModelTraffic,
    Route,
    Shadow,
    Traffic,
    TrafficConfig,
    TrafficFile,
    bucket,
    choose_route,
    compare_outputs,
    served_aliases,
)

SPLIT_90_10 = ModelTraffic(split=(("champion", 90.0), ("challenger", 10.0)))
BOTH = {"champion", "challenger"}
USERS = [f"u{i:05d}" for i in range(20_000)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def tensor(values: list[float], name: str = "y") -> Tensor:
    return Tensor.from_numpy(name, np.asarray(values, dtype=np.float32))


class AliasPool:
    """Serves champion (version 1, times 1) and challenger (version 2, times ``challenger_factor``)."""

    def __init__(self, challenger_factor: float = 2.0, aliases: dict[str, str] | None = None) -> None:
        self.aliases = aliases if aliases is not None else {"champion": "1", "challenger": "2"}
        self.factors = {"1": 1.0, "2": challenger_factor}
        self.sent: list[str | None] = []

    def models(self) -> dict[str, dict[str, dict[str, Any]]]:
        versions: dict[str, dict[str, Any]] = {}
        for alias, version in self.aliases.items():
            versions.setdefault(version, {"aliases": []})["aliases"].append(alias)
        return {"m": versions}

    async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
        self.sent.append(request.version)
        version = self.aliases.get(request.version or "champion", request.version or "1")
        x = request.inputs[0].to_numpy()
        return Reply("r", "ok", "m", version, [Tensor.from_numpy("y", x * np.float32(self.factors[version]))])


def request(values: list[float] | None = None) -> InferRequest:
    x = np.asarray(values or [1.0, 2.0], dtype=np.float32)
    return InferRequest("", "m", None, 0.0, [Tensor.from_numpy("x", x)])


def write_config(path: Path, models: dict[str, Any]) -> None:
    path.write_text(json.dumps({"models": models}))


def test_the_split_follows_the_weights_and_is_sticky_per_user() -> None:
    chosen = Counter(choose_route("ranker", SPLIT_90_10, user, BOTH).alias for user in USERS)
    assert chosen["champion"] + chosen["challenger"] == len(USERS)
    assert chosen["challenger"] / len(USERS) == pytest.approx(0.10, abs=0.01)
    for user in USERS[:100]:
        assert choose_route("ranker", SPLIT_90_10, user, BOTH) == choose_route("ranker", SPLIT_90_10, user, BOTH)


def test_widening_a_split_moves_users_one_way_only() -> None:
    wider = ModelTraffic(split=(("champion", 50.0), ("challenger", 50.0)))
    before = {user: choose_route("ranker", SPLIT_90_10, user, BOTH).alias for user in USERS[:2000]}
    after = {user: choose_route("ranker", wider, user, BOTH).alias for user in USERS[:2000]}
    assert all(after[user] == "challenger" for user, alias in before.items() if alias == "challenger")


def test_aliases_no_worker_serves_are_left_out_of_the_split() -> None:
    assert {choose_route("ranker", SPLIT_90_10, user, {"champion"}).alias for user in USERS[:500]} == {"champion"}
    assert choose_route("ranker", SPLIT_90_10, "u1", set()) == Route(None, None)


def test_shadow_copies_a_fraction_never_to_the_alias_that_answers() -> None:
    shadow = Shadow("challenger", fraction=0.25)
    traffic = ModelTraffic(split=(("champion", 1.0),), shadow=shadow)
    routes = [choose_route("ranker", traffic, user, BOTH) for user in USERS]
    assert {r.alias for r in routes} == {"champion"}
    assert sum(r.shadow is not None for r in routes) / len(routes) == pytest.approx(0.25, abs=0.02)
    everyone = ModelTraffic(split=(("challenger", 1.0),), shadow=Shadow("challenger", fraction=1.0))
    assert choose_route("ranker", everyone, "u1", BOTH).shadow is None
    assert choose_route("ranker", traffic, "u1", {"champion"}).shadow is None


def test_buckets_are_stable_and_depend_on_model_and_salt() -> None:
    assert bucket("ranker", "u1") == bucket("ranker", "u1")
    assert 0.0 <= bucket("ranker", "u1") < 1.0
    assert bucket("ranker", "u1") != bucket("other", "u1")
    assert bucket("ranker", "u1") != bucket("ranker", "u1", "shadow")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be"),
        ({"models": {"m": {"split": {"a": -1}}}}, "weight of 'a'"),
        ({"models": {"m": {"split": {"a": 0}}}}, "add up to 0"),
        ({"models": {"m": {"split": {"a": 1}, "mirror": {}}}}, "'split' and/or 'shadow'"),
        ({"models": {"m": {"shadow": {"fraction": 0.5}}}}, "needs an 'alias'"),
        ({"models": {"m": {"shadow": {"alias": "b", "fraction": 2}}}}, "shadow fraction"),
    ],
)
def test_malformed_configurations_are_refused_with_the_reason(document: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrafficConfig.parse(document)


def test_served_aliases_come_from_the_pools_model_table() -> None:
    table = {"m": {"1": {"aliases": ["champion"]}, "2": {"aliases": ["challenger", "champion"]}}}
    assert served_aliases(table, "m") == BOTH
    assert served_aliases(table, "other") == set()


def test_the_file_is_reread_on_change_at_most_once_per_interval_and_a_bad_one_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "traffic.json", FakeClock()
    write_config(path, {"m": {"split": {"champion": 1}}})
    file = TrafficFile(path, check_interval_s=1.0, clock=clock)
    assert file.current().models["m"].split == (("champion", 1.0),)
    write_config(path, {"m": {"split": {"challenger": 1}}})
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    clock.now += 0.5
    assert file.current().models["m"].split == (("champion", 1.0),)  # not checked again yet
    clock.now += 0.5
    assert file.current().models["m"].split == (("challenger", 1.0),)
    path.write_text("{not json")
    clock.now += 1.0
    with caplog.at_level(logging.ERROR):
        assert file.current().models["m"].split == (("challenger", 1.0),)
    assert "not valid, keeping the previous configuration" in caplog.text
    path.unlink()
    clock.now += 1.0
    assert file.current().models == {}


def test_compare_outputs_within_tolerance() -> None:
    assert compare_outputs([tensor([1.0, 2.0])], [tensor([1.0, 2.00001])], 1e-4) == (True, pytest.approx(1e-5, 0.1))
    assert compare_outputs([tensor([1.0, 2.0])], [tensor([1.0, 2.5])], 1e-4) == (False, 0.5)
    assert compare_outputs([tensor([1.0, 2.0])], [tensor([1.0])], 1e-4) == (False, math.inf)
    assert compare_outputs([tensor([1.0])], [tensor([1.0], name="z")], 1e-4) == (False, math.inf)
    assert compare_outputs([tensor([1.0])], [tensor([math.nan])], 1e-4) == (False, math.inf)


def traffic_with(tmp_path: Path, models: dict[str, Any], max_shadows: int = 64) -> Traffic:
    path = tmp_path / "traffic.json"
    write_config(path, models)
    return Traffic(TrafficFile(path, 1.0), max_shadows=max_shadows)


def test_unrouted_without_a_file_an_entry_or_with_an_explicit_version(tmp_path: Path) -> None:
    pool = AliasPool()
    assert Traffic(None, max_shadows=1).route(pool, "m", None, "u1") == Route()
    traffic = traffic_with(tmp_path, {"m": {"split": {"challenger": 1}}})
    assert traffic.route(pool, "other", None, "u1") == Route()
    assert traffic.route(pool, "m", "1", "u1") == Route()
    assert traffic.route(pool, "m", None, "u1").alias == "challenger"


def test_infer_routes_the_request_and_the_shadow_is_compared_and_counted(tmp_path: Path) -> None:
    traffic = traffic_with(tmp_path, {"m": {"split": {"champion": 1}, "shadow": {"alias": "challenger"}}})
    pool = AliasPool(challenger_factor=2.0)

    async def scenario() -> list[Reply]:
        replies = []
        for user in ("u1", "u2", "u3"):
            replies.append(await traffic.infer(pool.infer, pool, request(), Deadline(1000.0), key=user))
        await traffic.wait_shadows()
        await traffic.close()
        return replies

    replies = asyncio.run(scenario())
    assert [r.version for r in replies] == ["1", "1", "1"]  # the caller always gets the champion's answer
    assert sorted(pool.sent, key=str) == ["challenger"] * 3 + ["champion"] * 3
    stats = traffic.snapshot()["m@challenger"]
    assert (stats["sent"], stats["agreed"], stats["disagreed"], stats["failed"]) == (3, 0, 3, 0)
    assert stats["agreement_rate"] == 0.0 and stats["max_abs_diff"] == 2.0
    assert stats["shadow_p50_ms"] is not None and stats["primary_p99_ms"] is not None


def test_agreeing_shadows_and_the_inflight_cap(tmp_path: Path) -> None:
    traffic = traffic_with(
        tmp_path, {"m": {"split": {"champion": 1}, "shadow": {"alias": "challenger"}}}, max_shadows=1
    )
    pool = AliasPool(challenger_factor=1.0)

    async def scenario() -> None:
        await traffic.infer(pool.infer, pool, request(), Deadline(1000.0), key="u1")
        await traffic.infer(pool.infer, pool, request(), Deadline(1000.0), key="u2")  # the first is in flight
        await traffic.wait_shadows()

    asyncio.run(scenario())
    stats = traffic.snapshot()["m@challenger"]
    assert (stats["sent"], stats["skipped"], stats["agreed"], stats["agreement_rate"]) == (1, 1, 1, 1.0)


def test_a_routed_alias_that_is_not_served_right_now_falls_back_to_unrouted(tmp_path: Path) -> None:
    traffic = traffic_with(tmp_path, {"m": {"split": {"challenger": 1}}})

    class Draining(AliasPool):
        async def infer(self, request: InferRequest, deadline: Deadline) -> Reply:
            if request.version == "challenger":
                self.sent.append(request.version)
                raise ModelUnavailable("no worker is ready for model 'm'")
            return await super().infer(request, deadline)

    pool = Draining()
    reply = asyncio.run(traffic.infer(pool.infer, pool, request(), Deadline(1000.0), key="u1"))
    assert (reply.ok, reply.version, pool.sent) == (True, "1", ["challenger", None])
    assert traffic.fallbacks["m"] == 1 and traffic.routed[("m", "challenger")] == 1
