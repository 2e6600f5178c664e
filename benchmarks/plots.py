"""PNG plots of a run: latency percentiles against offered load (one line per system), and worker scaling.

matplotlib comes with the ``bench`` extra; without it, plotting is skipped with a message and the JSON stands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PERCENTILES = (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_vs_load(title: str, systems: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """p50, p99 and p99.9 of 200 answers against offered load, one line per system that has a sweep."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib missing (pip install -e '.[bench]'): no plots")
        return None
    figure, axes = plt.subplots(1, len(PERCENTILES), figsize=(15, 4.5), sharex=False)
    for axis, (key, label) in zip(axes, PERCENTILES, strict=True):
        for name, figures in systems.items():
            points = sorted(figures.get("sweep", []), key=lambda p: p["offered_rps"])
            points = [p for p in points if "200" in p["latency_ms"]]
            if not points:
                continue
            axis.plot(
                [p["offered_rps"] for p in points], [p["latency_ms"]["200"][key] for p in points],
                marker="o", label=name,
            )  # fmt: skip
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("offered load (req/s, open loop; log scale)")
        axis.set_ylabel(f"{label} latency (ms)")
        axis.set_title(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def scaling(workers: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Saturated throughput against worker count, with ideal linear scaling for reference."""
    plt = _pyplot()
    if plt is None:
        return None
    counts = sorted(int(n) for n in workers)
    measured = [workers[str(n)]["max_rps"] for n in counts]
    figure, axis = plt.subplots(figsize=(6, 4.5))
    axis.plot(counts, measured, marker="o", label="Tandem")
    axis.plot(counts, [measured[0] * n for n in counts], linestyle="--", label="linear")
    axis.set_xlabel("workers")
    axis.set_ylabel("saturated throughput (req/s)")
    axis.set_xticks(counts)
    axis.set_title("Scaling with the sleeping model")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
