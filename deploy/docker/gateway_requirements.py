"""Print the gateway image's requirements: the package's runtime dependencies less the worker-only ones.

``tandem gateway`` never imports torch or mlflow (the CLI imports them inside the worker, registry and models
subcommands only), so the gateway image installs every dependency of ``pyproject.toml`` except those and then the
package itself with ``--no-deps``. Reading the list from ``pyproject.toml`` keeps one source of truth: a dependency
added for the gateway reaches its image without anyone editing the Dockerfile.

Usage: ``python gateway_requirements.py [PYPROJECT]`` (default ``pyproject.toml``); one requirement a line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

WORKER_ONLY = frozenset({"torch", "mlflow"})
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def distribution_name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement (``"uvicorn[standard]>=0.29"`` -> ``uvicorn``)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def gateway_requirements(pyproject: Path) -> list[str]:
    """The ``[project] dependencies`` of ``pyproject`` without the worker-only distributions."""
    with pyproject.open("rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    return [dep for dep in dependencies if distribution_name(dep) not in WORKER_ONLY]


def main(argv: list[str]) -> int:
    """Print the requirements, one a line."""
    pyproject = Path(argv[1]) if len(argv) > 1 else Path("pyproject.toml")
    print("\n".join(gateway_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
