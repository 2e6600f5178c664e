"""The tail an ideal dynamic batcher reaches: Tandem's batching policy simulated with no overhead at all.

The tail targets ask for p99/p50 <= 1.5 and p99.9/p50 <= 2.5 at 70% load under Poisson arrivals. How close a
perfect implementation of the policy can come is a property of the arrivals and of the model's call times, not of
any code: this module simulates it, so the benchmark can print the measured tail beside that reference.

The simulated system is what ``worker/batcher.py`` and the gateway's routing describe, with every cost but the
model's call removed: requests arrive one row each at Poisson times; each goes to the worker with the fewest
requests queued or computing (ties broken at random, as the gateway's power of two choices does with two
workers); a worker that is idle, or finishes a batch, takes every request queued for it at once, up to
``max_rows``, and computes them in ``call_s(rows)``: no wait window, no hand-offs, no other tenant.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

CallTime = Callable[[int], float]
DEFAULT_REQUESTS = 100_000
WARMUP_SHARE = 0.1
"""The first requests are left out of the percentiles: the simulation starts with every worker idle."""


def call_time_from_table(table: Mapping[int, Mapping[str, float]]) -> CallTime:
    """Seconds per call at any batch size, from B0's ``{rows: {"call_ms": ...}}``: linear between the sizes
    measured, and beyond the largest along the line through the two largest."""
    sizes = sorted(table)
    call_s = [table[size]["call_ms"] / 1000 for size in sizes]
    if len(sizes) == 1:
        return lambda rows: call_s[0] * rows / sizes[0]
    slope = (call_s[-1] - call_s[-2]) / (sizes[-1] - sizes[-2])

    def call_time(rows: int) -> float:
        if rows <= sizes[-1]:
            return float(np.interp(rows, sizes, call_s))
        return call_s[-1] + slope * (rows - sizes[-1])

    return call_time


def ideal_latencies_s(
    rate_rps: float, call_s: CallTime, *, workers: int, max_rows: int, requests: int = DEFAULT_REQUESTS,
    seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """Every request's latency (arrival to its batch's end), in arrival order, warm-up included."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate_rps, requests))
    latencies = np.empty(requests)
    queues: list[deque[int]] = [deque() for _ in range(workers)]
    computing = [0] * workers  # requests in the batch each worker computes now (0: idle)
    ends: list[tuple[float, int]] = []  # (time, worker) of the batches computing

    def start_batch(worker: int, now: float) -> None:
        queue = queues[worker]
        rows = min(max_rows, len(queue))
        end = now + call_s(rows)
        for _ in range(rows):
            index = queue.popleft()
            latencies[index] = end - arrivals[index]
        computing[worker] = rows
        heapq.heappush(ends, (end, worker))

    next_arrival = 0
    while next_arrival < requests or ends:
        if next_arrival < requests and (not ends or arrivals[next_arrival] < ends[0][0]):
            now = arrivals[next_arrival]
            loads = [len(queues[w]) + computing[w] for w in range(workers)]
            least = min(loads)
            worker = int(rng.choice([w for w in range(workers) if loads[w] == least]))
            queues[worker].append(next_arrival)
            next_arrival += 1
            if not computing[worker]:
                start_batch(worker, now)
        else:
            now, worker = heapq.heappop(ends)
            computing[worker] = 0
            if queues[worker]:
                start_batch(worker, now)
    return latencies


def ideal_tail(
    rate_rps: float, call_s: CallTime, *, workers: int, max_rows: int, requests: int = DEFAULT_REQUESTS,
    seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """p50, p99 and p99.9 (ms) of an ideal dynamic batcher at ``rate_rps``, and the two tail ratios."""
    latencies = ideal_latencies_s(rate_rps, call_s, workers=workers, max_rows=max_rows, requests=requests, seed=seed)
    p50, p99, p999 = np.percentile(latencies[int(WARMUP_SHARE * requests) :] * 1000, [50, 99, 99.9])
    return {
        "rate_rps": round(rate_rps, 1),
        "workers": workers,
        "max_rows": max_rows,
        "p50_ms": round(float(p50), 3),
        "p99_ms": round(float(p99), 3),
        "p999_ms": round(float(p999), 3),
        "p99_over_p50": round(float(p99 / p50), 3),
        "p999_over_p50": round(float(p999 / p50), 3),
    }
