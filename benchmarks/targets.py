"""Issue 7's targets, judged as ratios of figures taken in the same run (never as absolute times).

``evaluate(report)`` reads the scenarios' results (``benchmarks/run.py`` builds ``report``) and returns one
``Check`` per target and workload: the measured value, the bound, PASS or MISS, and the figures it came from. A
target whose scenario did not run is left out, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MOSEC_OVER_B1 = 3.3
"""The moonshot's stand-in for Mosec's saturated throughput when Mosec was not measured (its ratio to B1 on 2 cores)."""
TAIL_FRACTION = 0.7
"""The tail targets' load: this share of the system's max (closed-loop) throughput."""


@dataclass(frozen=True)
class Check:
    """One target: ``value`` compared with ``bound`` (``at_least`` or at most)."""

    group: str
    name: str
    value: float
    bound: float
    at_least: bool
    detail: str

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.value):
            return False
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def throughput_at_p99(points: Sequence[dict[str, Any]], p99_budget_ms: float) -> float:
    """The highest 200-throughput a sweep sustains with p99 within ``p99_budget_ms``, interpolated between points.

    Points are taken in order of offered load, and only while they are sustained (``sustained``); between the last
    point within budget and the first above it, throughput is interpolated linearly in p99.
    """
    best = 0.0
    previous: dict[str, Any] | None = None
    for point in sorted(points, key=lambda p: p["offered_rps"]):
        p99 = point["latency_ms"].get("200", {}).get("p99", float("inf"))
        if not point.get("sustained") or p99 > p99_budget_ms:
            if previous is not None and point.get("sustained"):
                low_p99 = previous["latency_ms"]["200"]["p99"]
                share = (p99_budget_ms - low_p99) / (p99 - low_p99) if p99 > low_p99 else 0.0
                best = max(
                    best, previous["throughput_rps"] + share * (point["throughput_rps"] - previous["throughput_rps"])
                )
            break
        best = max(best, point["throughput_rps"])
        previous = point
    return best


def best_sustained(points: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The sustained sweep point with the highest throughput."""
    sustained = [p for p in points if p.get("sustained")]
    return max(sustained, key=lambda p: p["throughput_rps"]) if sustained else None


def _ok_latency(summary: dict[str, Any], key: str) -> float:
    return summary["latency_ms"].get("200", {}).get(key, float("nan"))


def _no_regret(group: str, label: str, tandem: dict[str, Any], b1: dict[str, Any]) -> list[Check]:
    t50, b50 = _ok_latency(tandem, "p50"), _ok_latency(b1, "p50")
    t99, b99 = _ok_latency(tandem, "p99"), _ok_latency(b1, "p99")
    return [
        Check(group, f"no regret, {label}: p50 Tandem/B1", _div(t50, b50), 1.15, False, f"{t50:.3f} / {b50:.3f} ms"),
        Check(group, f"no regret, {label}: p99 Tandem/B1", _div(t99, b99), 1.25, False, f"{t99:.3f} / {b99:.3f} ms"),
    ]


def tail_point(system: dict[str, Any]) -> dict[str, Any] | None:
    """A system's open-loop sweep point at ``TAIL_FRACTION`` of its max throughput, the tail targets' load."""
    return next((p for p in system.get("sweep", []) if p["fraction"] == TAIL_FRACTION), None)


def _tail(group: str, point: dict[str, Any], ideal: dict[str, Any] | None = None) -> list[Check]:
    """``ideal``: the same ratios for a dynamic batcher with no overhead (``benchmarks/queueing.py``)."""
    p50, p99, p999 = (_ok_latency(point, k) for k in ("p50", "p99", "p999"))
    at = f"at {point['offered_rps']:.0f} req/s ({point['fraction']:.0%} of max)"
    reference = {"p99": "", "p999": ""}
    if ideal:
        for key in reference:
            reference[key] = f"; an ideal dynamic batcher with B0's call times: {ideal[f'{key}_over_p50']:.2f}"
    return [
        Check(
            group, "tail at 70% load: p99/p50", _div(p99, p50), 1.5, False,
            f"{p99:.2f} / {p50:.2f} ms {at}{reference['p99']}",
        ),
        Check(
            group, "tail at 70% load: p99.9/p50", _div(p999, p50), 2.5, False,
            f"{p999:.2f} / {p50:.2f} ms {at}{reference['p999']}",
        ),
    ]  # fmt: skip


def _overload(group: str, tandem: dict[str, Any]) -> list[Check]:
    over = tandem.get("overload")
    if not over:
        return []
    # The search for the max sustainable load ran open-loop points too, the fastest near that load.
    sustainable = tandem.get("sustainable", {})
    points = [*tandem.get("sweep", []), *sustainable.get("probes", [])]
    peak = max((p.get("goodput_rps", 0.0) for p in points), default=0.0)
    basis = f" (2 x {sustainable['rps']:.0f} sustainable)" if sustainable.get("rps") else ""
    rejected = [s for s in over["latency_ms"] if s not in ("200", "504")]
    rejection_p99 = max((over["latency_ms"][s]["p99"] for s in rejected), default=float("nan"))
    deadline, offered = over["deadline_ms"], over["offered_rps"]
    checks = [
        Check(
            group, "overload 2x: goodput / peak goodput", _div(over["goodput_rps"], peak), 0.9, True,
            f"{over['goodput_rps']:.0f} / {peak:.0f} req/s within {deadline:.0f} ms at {offered:.0f} offered{basis}",
        )
    ]  # fmt: skip
    if rejected:
        counts = ", ".join(f"{over['statuses'][s]} x {s}" for s in rejected)
        checks.append(
            Check(group, "overload 2x: rejection p99 (ms)", rejection_p99, 5.0, False, f"rejections: {counts}")
        )
    else:
        checks.append(
            Check(group, "overload 2x: rejection p99 (ms)", float("nan"), 5.0, False, "no request was rejected")
        )
    return checks


def evaluate(report: dict[str, Any]) -> list[Check]:
    """Every target the report has the figures for."""
    checks: list[Check] = []
    light = report.get("light")
    if light:
        checks += _light(light)
    minilm = report.get("minilm")
    if minilm:
        checks += _minilm(minilm)
    scaling = report.get("scaling")
    if scaling and "1" in scaling["workers"] and "4" in scaling["workers"]:
        one, four = scaling["workers"]["1"]["max_rps"], scaling["workers"]["4"]["max_rps"]
        checks.append(
            Check(
                "scaling (sleeper)", "4 workers / 1 worker", _div(four, one), 3.6, True, f"{four:.0f} / {one:.0f} req/s"
            )
        )
    return checks


def _light(light: dict[str, Any]) -> list[Check]:
    group = "light (ranker)"
    systems = light["systems"]
    tandem, b1, b2 = systems["tandem"], systems.get("B1"), systems.get("B2")
    t_max = tandem["saturation"]["max_rps"]
    checks: list[Check] = []
    if b1:
        b1_max = b1["saturation"]["max_rps"]
        checks.append(
            Check(group, "throughput Tandem/B1", _div(t_max, b1_max), 1.0, True, f"{t_max:.0f} / {b1_max:.0f} req/s")
        )
    if b2:
        b2_max = b2["saturation"]["max_rps"]
        checks.append(
            Check(group, "throughput Tandem/B2", _div(t_max, b2_max), 0.7, True, f"{t_max:.0f} / {b2_max:.0f} req/s")
        )
    mosec = systems.get("mosec")
    if mosec:
        # Judged against Tandem measured in the peers' own window (benchmarks/run.py), when there is one.
        beside = systems.get("tandem (peer window)", tandem)["saturation"]["max_rps"]
        m_max = mosec["saturation"]["max_rps"]
        checks.append(
            Check(
                group,
                "moonshot: throughput Tandem/Mosec",
                _div(beside, m_max),
                1.0,
                True,
                f"{beside:.0f} / {m_max:.0f} req/s (Tandem measured beside the peers)",
            )
        )
    elif b1:
        target = MOSEC_OVER_B1 * b1["saturation"]["max_rps"]
        checks.append(
            Check(
                group, "moonshot: throughput Tandem/(3.3 x B1)", _div(t_max, target), 1.0, True,
                f"{t_max:.0f} / {target:.0f} req/s (Mosec not measured: run make bench-peers)",
            )
        )  # fmt: skip
    if b1:
        t50, b50 = _ok_latency(tandem["one_client"], "p50"), _ok_latency(b1["one_client"], "p50")
        checks.append(
            Check(
                group, "moonshot: one-client p50 Tandem - B1 (ms)", t50 - b50, 0.3, False, f"{t50:.3f} - {b50:.3f} ms"
            )
        )
        checks += _no_regret(group, "one client", tandem["one_client"], b1["one_client"])
        if "low_load" in tandem and "low_load" in b1:
            checks += _no_regret(
                group, f"{tandem['low_load']['offered_rps']:.0f} req/s", tandem["low_load"], b1["low_load"]
            )
    echo = light.get("echo")
    if echo:
        te, b2e = echo["tandem"], echo["B2"]
        te_max, b2e_max = te["saturation"]["max_rps"], b2e["saturation"]["max_rps"]
        checks.append(
            Check(
                "system tax (echo)",
                "throughput Tandem/B2",
                _div(te_max, b2e_max),
                0.6,
                True,
                f"{te_max:.0f} / {b2e_max:.0f} req/s",
            )
        )
        t50, b50 = _ok_latency(te["one_client"], "p50"), _ok_latency(b2e["one_client"], "p50")
        checks.append(
            Check(
                "system tax (echo)",
                "one-client p50 Tandem - B2 (ms)",
                t50 - b50,
                0.3,
                False,
                f"{t50:.3f} - {b50:.3f} ms",
            )
        )
    tail = tail_point(tandem)
    if tail:
        checks += _tail(group, tail)
    checks += _overload(group, tandem)
    return checks


def _capped(cap: int | None) -> str:
    return f", batches capped at {cap} by the worker's profile" if cap else ""


def _minilm(minilm: dict[str, Any]) -> list[Check]:
    group = "compute-heavy (minilm)"
    systems = minilm["systems"]
    tandem, b1 = systems["tandem"], systems.get("B1")
    checks: list[Check] = []
    efficiency = minilm.get("pipeline")
    if efficiency:
        ratio = _div(efficiency["tandem_rps"], efficiency["b0_rps"])
        checks.append(
            Check(
                group, "pipeline efficiency: Tandem / B0 on its batches", ratio, 0.95, True,
                f"{efficiency['tandem_rps']:.1f} / {efficiency['b0_rps']:.1f} req/s "
                f"(mean batch {efficiency['mean_batch']:.1f} rows{_capped(efficiency.get('batch_cap'))})",
            )
        )  # fmt: skip
    b0 = minilm["b0"]
    if b1 and "sweep" in b1 and "sweep" in tandem:
        anchor = best_sustained(b1["sweep"])
        if anchor is not None:
            budget = anchor["latency_ms"]["200"]["p99"]
            t_at = throughput_at_p99(tandem["sweep"], budget)
            b1_at = throughput_at_p99(b1["sweep"], budget)
            gain = _div(t_at, b1_at)
            bound = 0.9 * b0["best_rps"] / b0["batch1_rps"]
            checks.append(
                Check(
                    group, "batching gain at equal p99: Tandem/B1", gain, bound, True,
                    f"{t_at:.1f} / {b1_at:.1f} req/s at p99 <= {budget:.0f} ms; bound 0.9 x B0 best/batch-1 = "
                    f"0.9 x {b0['best_rps']:.1f} / {b0['batch1_rps']:.1f}",
                )
            )  # fmt: skip
    if b1:
        checks += _no_regret(group, "one client", tandem["one_client"], b1["one_client"])
        if "low_load" in tandem and "low_load" in b1:
            checks += _no_regret(
                group, f"{tandem['low_load']['offered_rps']:.0f} req/s", tandem["low_load"], b1["low_load"]
            )
    tail = tail_point(tandem)
    if tail:
        checks += _tail(group, tail, minilm.get("ideal_tail"))
    checks += _overload(group, tandem)
    return checks


def table(checks: Sequence[Check]) -> str:
    """The checks as a Markdown table."""
    lines = ["| workload | target | measured | bound | verdict | from |", "|---|---|---|---|---|---|"]
    for c in checks:
        bound = f"{'>=' if c.at_least else '<='} {c.bound:.3g}"
        lines.append(f"| {c.group} | {c.name} | {c.value:.3f} | {bound} | {c.verdict} | {c.detail} |")
    return "\n".join(lines)
