"""Measurement phases run against one system: one client, saturation, an open-loop sweep, a fixed rate.

A ``Workload`` is what is sent (a body, its headers, the model it names); a ``Server`` (``benchmarks/stack.py``)
says where. Every phase returns the load generator's JSON-ready summary, with the goodput at the workload's
deadline. Nothing here judges the figures: ``benchmarks/targets.py`` does.

Deadlines: saturation and sweep requests carry a generous ``X-Request-Timeout-Ms`` (``SOAK_TIMEOUT_MS``) so that no
system's own shedding changes what is measured, and goodput is counted client-side at ``workload.deadline_ms``;
the overload phase sends ``workload.deadline_ms`` itself, so a system that sheds by deadline may.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.loadgen import LoadResult, build_request, closed_loop, open_loop, run
from benchmarks.stack import Server

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
SOAK_TIMEOUT_MS = 20000
SUSTAINED_RATIO = 0.95
"""A rate is sustained when at least this share of the requests sent came back 200 ..."""
KEPT_UP_RATIO = 0.9
"""... and 200s came back at no less than this share of the rate requests were sent at."""
MAX_CONNECTIONS = 1024
TAIL_STRETCH = 3.0
"""The tail point runs at most this many times ``tail_s`` to reach ``p999_requests``."""
ONE_CLIENT_STRETCH = 4.0
"""A one-client run goes on past its duration, to at most this many times it, to reach ``p99_requests``."""
OPEN_LOOP_WARMUP_S = 0.5
"""Every open-loop run sends this long before it counts, while the client's connection pool grows to what the rate
needs: the first request on each new connection waits for the server to accept it (at twice the ranker's
sustainable load, ~1,000 connections opened in the first 160 ms held every one of the slowest 1% of refusals)."""


@dataclass(frozen=True)
class Workload:
    """A fixed request: ``body`` and ``headers`` POSTed to each system's path for ``model``."""

    name: str
    model: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    deadline_ms: float = 1000.0
    path: str | None = None
    """A fixed path (e.g. ``/v1/recommendations``) instead of the server's V2 infer path."""


@dataclass(frozen=True)
class Durations:
    """Seconds per phase; ``scaled`` shortens them all for ``--quick``."""

    warmup_s: float = 2.0
    one_client_s: float = 4.0
    saturate_s: float = 4.0
    sweep_s: float = 4.0
    tail_s: float = 10.0
    overload_s: float = 6.0
    p99_requests: int = 1000
    """The one-client and low-load points run longer where needed to rest on this many requests (ten beyond
    their p99): at MiniLM's 10% load (11 req/s) a 4 s run sent 44, and its p99 was its slowest request."""
    p999_requests: int = 10000
    """The tail point (judged at p99.9) runs longer where needed for this many requests, up to
    ``TAIL_STRETCH`` times ``tail_s``: at MiniLM's 70% load 10 s sent ~2,100, two beyond the p99.9."""

    def scaled(self, factor: float) -> Durations:
        """Every phase ``factor`` times as long, and no point stretched for its request count."""
        seconds = {name: value * factor for name, value in self.__dict__.items() if name.endswith("_s")}
        return Durations(**seconds, p99_requests=0, p999_requests=0)

    def tail_seconds(self, rate_rps: float) -> float:
        """How long the tail point runs at ``rate_rps``: ``tail_s``, stretched toward ``p999_requests``."""
        wanted_s = self.p999_requests / rate_rps if rate_rps > 0 else 0.0
        return min(max(self.tail_s, wanted_s), TAIL_STRETCH * self.tail_s)


def _request(server: Server, workload: Workload, timeout_ms: float) -> bytes:
    path = workload.path or server.path_for(workload.model)
    headers = {**workload.headers, TIMEOUT_HEADER: str(int(timeout_ms))}
    return build_request(server.host, server.port, path, workload.body, headers)


def closed(
    server: Server, workload: Workload, concurrency: int, duration_s: float, timeout_ms: float = SOAK_TIMEOUT_MS,
    *, min_requests: int = 0, max_duration_s: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``concurrency`` closed-loop clients for ``duration_s``, and on until ``min_requests`` (``closed_loop``)."""
    request = _request(server, workload, timeout_ms)
    cpu_before = server.cpu_s()
    result = run(
        closed_loop(
            server.host, server.port, request, concurrency=concurrency, duration_s=duration_s,
            min_requests=min_requests, max_duration_s=max_duration_s,
        )
    )  # fmt: skip
    return _with_cpu(result.summary(workload.deadline_ms / 1000), server.cpu_s() - cpu_before, result.elapsed_s)


def one_client_run(server: Server, workload: Workload, durations: Durations) -> dict[str, Any]:
    """One closed-loop client for ``one_client_s``, longer when needed for ``p99_requests`` requests."""
    seconds = durations.one_client_s
    return closed(
        server, workload, 1, seconds, min_requests=durations.p99_requests, max_duration_s=ONE_CLIENT_STRETCH * seconds
    )


def _with_cpu(summary: dict[str, Any], cpu_s: float, elapsed_s: float) -> dict[str, Any]:
    """Add the server's CPU use: cores busy on average, and CPU microseconds per answered request."""
    answered = summary["requests"]
    summary["server_cpu_cores"] = round(cpu_s / elapsed_s, 3) if elapsed_s else float("nan")
    summary["server_cpu_us_per_request"] = round(cpu_s / answered * 1e6, 1) if answered else float("nan")
    return summary


def at_rate(
    server: Server, workload: Workload, rate_rps: float, duration_s: float, *, timeout_ms: float = SOAK_TIMEOUT_MS,
    seed: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Open-loop Poisson arrivals at ``rate_rps`` for ``duration_s``."""
    result, cpu_s = _open_loop_run(server, workload, rate_rps, duration_s, timeout_ms, seed)
    return _rate_summary(result, cpu_s, duration_s, workload)


def _open_loop_run(
    server: Server, workload: Workload, rate_rps: float, duration_s: float, timeout_ms: float, seed: int
) -> tuple[LoadResult, float]:
    """One open-loop run's requests, and the server processes' CPU seconds during it."""
    request = _request(server, workload, timeout_ms)
    cpu_before = server.cpu_s()
    result = run(
        open_loop(
            server.host, server.port, request, rate_rps=rate_rps, duration_s=duration_s, seed=seed,
            max_connections=MAX_CONNECTIONS, warmup_s=OPEN_LOOP_WARMUP_S,
        )
    )  # fmt: skip
    return result, server.cpu_s() - cpu_before


def _rate_summary(result: LoadResult, cpu_s: float, duration_s: float, workload: Workload) -> dict[str, Any]:
    """An open-loop result's figures, with the server's CPU use and whether the rate was sustained."""
    summary = _with_cpu(result.summary(workload.deadline_ms / 1000), cpu_s, result.elapsed_s)
    # Sustained: nearly every request answered 200, and answered about as fast as they were sent (a backlog
    # that only drains after the sending stops shows as throughput well under the rate actually offered).
    sent_rps = result.sent / duration_s
    summary["sent_rps"] = round(sent_rps, 1)
    summary["sustained"] = bool(
        result.sent and result.ok >= SUSTAINED_RATIO * result.sent and result.throughput >= KEPT_UP_RATIO * sent_rps
    )
    return summary


@dataclass(frozen=True)
class Entry:
    """One line of a comparison: a system, what it is sent, the concurrencies tried, whether it is swept."""

    label: str
    server: Server
    workload: Workload
    concurrencies: tuple[int, ...]
    swept: bool = True


def representative(runs: list[dict[str, Any]], key: str = "p50_ms") -> dict[str, Any]:
    """The run with the median ``key`` (with two runs, the lower one: the one least disturbed by other tenants)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def compare(
    entries: list[Entry], durations: Durations, *, rounds: int, fractions: Sequence[float] = (),
    long_fraction: float | None = None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Measure every entry with its phases interleaved, so a noisy minute hits every system alike.

    Per entry: a warm-up; ``rounds`` one-client runs (``one_client`` is ``representative`` of them); saturation
    (``rounds`` rounds, the first trying every concurrency, the later ones the best so far; ``max_rps`` is the
    best run); then, for swept entries, one open-loop point per fraction of the entry's own ``max_rps``, the
    entries taking turns at each fraction. Every run is kept in the result.
    """
    for entry in entries:
        closed(entry.server, entry.workload, max(entry.concurrencies), durations.warmup_s)
    figures: dict[str, dict[str, Any]] = {
        e.label: {"system": e.server.name, "workload": e.workload.name} for e in entries
    }
    one_client: dict[str, list[dict[str, Any]]] = {e.label: [] for e in entries}
    saturation: dict[str, list[dict[str, Any]]] = {e.label: [] for e in entries}
    for round_index in range(rounds):
        for entry in entries:
            one_client[entry.label].append(one_client_run(entry.server, entry.workload, durations))
        for entry in entries:
            runs = saturation[entry.label]
            tried = entry.concurrencies if round_index == 0 else (_best(runs)["concurrency"],)
            runs += [closed(entry.server, entry.workload, c, durations.saturate_s) for c in tried]
    for entry in entries:
        best = _best(saturation[entry.label])
        figures[entry.label]["one_client"] = representative(one_client[entry.label])
        figures[entry.label]["one_client_runs"] = one_client[entry.label]
        figures[entry.label]["saturation"] = {
            "max_rps": best["throughput_rps"],
            "best_concurrency": best["concurrency"],
            "runs": saturation[entry.label],
        }
    swept = [e for e in entries if e.swept]
    for entry in swept:
        figures[entry.label]["sweep"] = []
    for fraction in sorted(fractions):
        for entry in swept:
            max_rps = figures[entry.label]["saturation"]["max_rps"]
            rate = fraction * max_rps
            seconds = durations.tail_seconds(rate) if fraction == long_fraction else durations.sweep_s
            point = at_rate(entry.server, entry.workload, rate, seconds, seed=int(fraction * 1000))
            point["fraction"] = fraction
            figures[entry.label]["sweep"].append(point)
    return figures


def paired_rate(
    entries: list[Entry], rate_rps: float, duration_s: float, rounds: int, *, min_requests: int = 0
) -> dict[str, dict[str, Any]]:
    """Every entry at the same open-loop rate, taking turns for ``rounds`` rounds; each entry's rounds pooled.

    Each round runs ``duration_s``, or longer where the rate is low, so that the pool holds ``min_requests``
    (``Durations.p99_requests``). ``runs`` keeps each round's own figures.
    """
    seconds = max(duration_s, min_requests / rate_rps / rounds)
    runs: dict[str, list[tuple[LoadResult, float]]] = {e.label: [] for e in entries}
    for round_index in range(rounds):
        for entry in entries:
            runs[entry.label].append(
                _open_loop_run(entry.server, entry.workload, rate_rps, seconds, SOAK_TIMEOUT_MS, seed=11 + round_index)
            )
    figures: dict[str, dict[str, Any]] = {}
    for entry in entries:
        each = runs[entry.label]
        pool = LoadResult.pooled([result for result, _ in each])
        pooled = _rate_summary(pool, sum(cpu_s for _, cpu_s in each), seconds * rounds, entry.workload)
        figures[entry.label] = {
            **pooled,
            "pooled_rounds": rounds,
            "runs": [_rate_summary(result, cpu_s, seconds, entry.workload) for result, cpu_s in each],
        }
    return figures


def meets_slo(point: dict[str, Any], deadline_ms: float) -> bool:
    """Whether an open-loop run kept up with its rate and answered 99% of its 200s within ``deadline_ms``."""
    p99 = point["latency_ms"].get("200", {}).get("p99", float("inf"))
    return bool(point.get("sustained")) and p99 <= deadline_ms


def bisect_sustainable(
    points: Sequence[dict[str, Any]], deadline_ms: float, probe: Callable[[float], dict[str, Any]], steps: int
) -> dict[str, Any]:
    """The highest open-loop rate that ``meets_slo``: MLPerf's server-scenario capacity, found by bisection.

    Starts from a sweep's ``points``: between the fastest point that meets the SLO and the slowest faster one
    that does not, ``probe(rate)`` runs ``steps`` more points, each halving the interval. When every point
    meets it, the fastest point is the answer (nothing faster was offered); when none does, the search runs
    below the slowest. ``rps`` is the lower end of the last interval: a rate actually seen to meet the SLO.
    """
    ordered = sorted(points, key=lambda p: p["offered_rps"])
    met = [p["offered_rps"] for p in ordered if meets_slo(p, deadline_ms)]
    low = max(met, default=0.0)
    missed = [p["offered_rps"] for p in ordered if p["offered_rps"] > low and not meets_slo(p, deadline_ms)]
    probes: list[dict[str, Any]] = []
    if missed:
        high = min(missed)
        for _ in range(steps):
            rate = (low + high) / 2
            run_at = probe(rate)
            probes.append(run_at)
            if meets_slo(run_at, deadline_ms):
                low = rate
            else:
                high = rate
    return {"rps": round(low, 1), "deadline_ms": deadline_ms, "probes": probes}


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r["throughput_rps"])
