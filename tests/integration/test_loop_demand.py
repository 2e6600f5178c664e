"""The gateway's saturation clock counts the time its loop thread waits for a core, not only the time it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tandem.gateway.saturation import demand_clock

CPU_S = 0.05
GIVE_UP_S = 10.0


@contextmanager
def sharing_one_core() -> Iterator[None]:
    """This thread and a spinning process pinned to the same core, for the block's duration."""
    core = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spinner.pid, {core})
        os.sched_setaffinity(0, {core})
        yield
    finally:
        os.sched_setaffinity(0, before)
        spinner.kill()
        spinner.wait()


@pytest.mark.skipif(
    demand_clock is time.thread_time,
    reason="no /proc/thread-self/schedstat (not Linux): the gateway counts CPU time alone there, by design",
)
def test_a_thread_starved_of_cpu_shows_more_demand_than_cpu_time() -> None:
    with sharing_one_core():
        demand, cpu, wall = demand_clock(), time.thread_time(), time.monotonic()
        while time.thread_time() - cpu < CPU_S and time.monotonic() - wall < GIVE_UP_S:
            pass
        demand, cpu = demand_clock() - demand, time.thread_time() - cpu
    # Two runnable threads on one core: each runs about half the time and waits the other half.
    assert cpu >= CPU_S
    assert demand >= 1.3 * cpu
