"""``python -m tandem.worker``: run one worker configured by ``TANDEM_*`` environment variables."""

from __future__ import annotations

from tandem.common.settings import WorkerSettings
from tandem.worker.server import run

if __name__ == "__main__":
    run(WorkerSettings())
