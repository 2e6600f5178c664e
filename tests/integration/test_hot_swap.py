"""Hot swap in a real worker process against a real sqlite MLflow registry, over real ZeroMQ sockets.

Each test moves aliases in its own registry while a steady load runs on the worker, then checks that no request
failed, that each answer is exactly one version's computation, and what the worker's pongs and log say.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tandem.common.wire import InferRequest, Reply, Tensor
from tests.support.lifecycle import (
    SCALE,
    WIDTH,
    WorkerLoad,
    lifecycle,
    live_version,
    memory_kib,
    register_scale,
    register_unloadable,
    reset_peak,
    scaled,
    set_alias,
    steady_load,
)
from tests.support.processes import wait_until
from tests.support.registry import Registry, create_registry
from tests.support.workers import RunningWorker, running_worker

POLL_S = 0.2
SWAP_TIMEOUT_S = 30.0
MIB_IN_KIB = 1024
BALLAST_BYTES = 40 * 1024 * 1024
SWAPS = 20


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return create_registry(tmp_path / "registry")


def start_worker(registry: Registry, tmp_path: Path, models: str, **settings: object):
    return running_worker(
        registry_uri=registry.uri,
        models=models,
        home=tmp_path,
        log_path=tmp_path / "worker.log",
        **{"poll_interval_s": POLL_S, "torch_threads": 1, **settings},
    )


def wait_live(worker: RunningWorker, alias: str, version: str) -> None:
    wait_until(
        lambda: live_version(worker.pong(), alias) == version,
        what=f"{SCALE}@{alias} live on version {version}",
        timeout_s=SWAP_TIMEOUT_S,
        process=worker.process,
    )


def wait_rejected(worker: RunningWorker, count: int) -> None:
    wait_until(
        lambda: lifecycle(worker.pong()).get("rejected", 0) >= count,
        what=f"{count} rejected candidates",
        timeout_s=SWAP_TIMEOUT_S,
        process=worker.process,
    )


def assert_all_answered_by_one_version(load: WorkerLoad, factors: dict[str, float]) -> set[str]:
    """Every answer is ok and equals exactly the computation of the version it names; returns the versions."""
    assert not load.errors
    assert load.answers
    failed = [a.reply for a in load.answers if not a.reply.ok]
    assert not failed, failed[:3]
    for answer in load.answers:
        (y,) = answer.reply.outputs
        assert answer.reply.version in factors, answer.reply.version
        np.testing.assert_array_equal(y.to_numpy(), scaled(answer.x, factors[answer.reply.version]))
    return {a.reply.version for a in load.answers if a.reply.version is not None}


def test_a_promoted_version_is_swapped_in_under_load_and_the_old_one_retired(registry: Registry, tmp_path: Path):
    v1 = register_scale(registry, 1.0, aliases=("champion",))
    v2 = register_scale(registry, 2.0)
    with start_worker(registry, tmp_path, f"{SCALE}@champion") as worker:
        with steady_load(worker.endpoint) as load:
            time.sleep(0.3)
            set_alias(registry, "champion", v2)
            promoted_at = time.monotonic()
            wait_live(worker, "champion", v2)
            swapped_at = time.monotonic()
            time.sleep(0.3)
        pong = worker.pong()
    assert assert_all_answered_by_one_version(load, {v1: 1.0, v2: 2.0}) == {v1, v2}
    # Every request sent after the pong reported the swap was answered by the new version.
    assert all(a.reply.version == v2 for a in load.answers if a.sent_at > swapped_at)
    assert swapped_at - promoted_at < 10.0
    assert [m["version"] for m in pong.models] == [v2]  # the old copy is retired
    stats = lifecycle(pong)
    assert (stats["swaps"], stats["swaps_in_place"], stats["rejected"]) == (1, 0, 0)
    log = worker.process.log_tail(100_000)
    assert "swapped beside the live copy" in log and f"retired {SCALE} version {v1}" in log


def test_broken_versions_are_never_served_and_counted(registry: Registry, tmp_path: Path):
    v1 = register_scale(registry, 1.0, aliases=("champion",))
    unloadable = register_unloadable(registry)
    nan = register_scale(registry, float("nan"))
    with start_worker(registry, tmp_path, f"{SCALE}@champion") as worker:
        with steady_load(worker.endpoint) as load:
            set_alias(registry, "champion", unloadable)
            wait_rejected(worker, 1)
            set_alias(registry, "champion", nan)
            wait_rejected(worker, 2)
            polls = lifecycle(worker.pong())["polls"]
            wait_until(lambda: lifecycle(worker.pong())["polls"] >= polls + 5, what="more polls", timeout_s=10)
        stats = lifecycle(worker.pong())
    assert assert_all_answered_by_one_version(load, {v1: 1.0}) == {v1}
    assert (stats["rejected"], stats["swaps"]) == (2, 0)  # each broken version was tried once, not per poll
    assert stats["last_rejected"].startswith(f"{nan}: output 'y' is not finite")
    log = worker.process.log_tail(100_000)
    assert f"rejected {SCALE} version {unloadable}" in log and "broken on purpose" in log
    assert f"rejected {SCALE} version {nan}" in log


def test_two_aliases_serve_side_by_side_and_share_a_copy(registry: Registry, tmp_path: Path):
    v1 = register_scale(registry, 1.0, aliases=("champion",))
    v2 = register_scale(registry, 2.0, aliases=("challenger",))
    with start_worker(registry, tmp_path, f"{SCALE}@champion,{SCALE}@challenger") as worker:
        x = np.ones((2, WIDTH), np.float32)
        with worker.client() as client:
            for asked, version in ((None, v1), ("champion", v1), ("challenger", v2), (v1, v1), (v2, v2)):
                reply = client.request(InferRequest(f"q-{asked}", SCALE, asked, 5000.0, [Tensor.from_numpy("x", x)]))
                assert isinstance(reply, Reply) and reply.ok, reply
                assert reply.version == version
        # Challenger moves to champion's version: no second copy is loaded, and v2 is retired.
        set_alias(registry, "challenger", v1)
        wait_live(worker, "challenger", v1)
        pong = worker.pong()
        assert [(m["version"], m["aliases"]) for m in pong.models] == [(v1, ["challenger", "champion"])]
        assert "to the copy already loaded" in worker.process.log_tail(100_000)


def test_in_place_swap_drains_the_worker_and_restores_the_old_version_on_rejection(registry: Registry, tmp_path: Path):
    v1 = register_scale(registry, 1.0, aliases=("champion",))
    v2 = register_scale(registry, 2.0)
    broken = register_unloadable(registry)
    with start_worker(registry, tmp_path, f"{SCALE}@champion", swap_mode="in_place", swap_drain_s=0.5) as worker:
        set_alias(registry, "champion", v2)
        wait_until(lambda: not worker.pong().ready, what="a draining worker", timeout_s=SWAP_TIMEOUT_S)
        wait_live(worker, "champion", v2)
        assert worker.pong().ready
        set_alias(registry, "champion", broken)
        wait_rejected(worker, 1)
        pong = worker.pong()
        assert pong.ready and live_version(pong, "champion") == v2
        stats = lifecycle(pong)
        assert (stats["swaps"], stats["swaps_in_place"], stats["rejected"]) == (1, 1, 1)
    log = worker.process.log_tail(100_000)
    assert "swapped in place" in log
    assert f"back on version {v2} after a rejected in-place swap" in log
    assert v1 != v2


@pytest.fixture
def heavy(tmp_path: Path) -> Iterator[tuple[Registry, str, str]]:
    registry = create_registry(tmp_path / "registry")
    v1 = register_scale(registry, 1.0, ballast_bytes=BALLAST_BYTES, aliases=("champion",))
    v2 = register_scale(registry, 2.0, ballast_bytes=BALLAST_BYTES)
    yield registry, v1, v2


def test_memory_stays_within_two_copies_during_swaps_and_does_not_leak(heavy, tmp_path: Path):
    registry, v1, v2 = heavy
    model_kib = BALLAST_BYTES // 1024
    with start_worker(registry, tmp_path, f"{SCALE}@champion", poll_interval_s=0.05) as worker:
        pid = worker.process.pid
        with worker.client() as client:  # warm the serving path so the baseline includes its buffers
            for i in range(20):
                x = np.ones((1 + i % 4, WIDTH), np.float32)
                client.request(InferRequest(f"w{i}", SCALE, None, 5000.0, [Tensor.from_numpy("x", x)]))
        baseline = memory_kib(pid)["VmRSS"]
        reset_peak(pid)
        set_alias(registry, "champion", v2)
        wait_live(worker, "champion", v2)
        # The old copy is retired just after the promotion the pong reports: on a busy machine that can take a
        # moment, so wait (boundedly) for its pages to go back before judging.
        first = memory_kib(pid)
        give_up = time.monotonic() + 5.0
        while first["VmRSS"] - baseline >= model_kib // 2 and time.monotonic() < give_up:
            time.sleep(0.05)
            first = memory_kib(pid)
        # The baseline holds the live copy; the peak adds the standby (measured: about one copy more), never
        # more than two copies' worth. Each copy is one tensor, so freeing it returns its pages to the OS.
        assert model_kib // 2 < first["VmHWM"] - baseline < 2 * model_kib, (baseline, first)
        assert first["VmRSS"] - baseline < model_kib // 2, (baseline, first)
        after_first = first["VmRSS"]
        for swap in range(SWAPS - 1):
            version = v1 if swap % 2 == 0 else v2
            set_alias(registry, "champion", version)
            wait_live(worker, "champion", version)
        # Retirement of the last swap's old copy runs right after the promotion the pong reports.
        time.sleep(0.2)
        last = memory_kib(pid)
        assert lifecycle(worker.pong())["swaps"] == SWAPS
    assert last["VmRSS"] - after_first < 16 * MIB_IN_KIB, (baseline, after_first, last)
