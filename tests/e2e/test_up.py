"""``tandem up`` as a user runs it: the MLflow server, bootstrap, two workers and two gateways, then Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tandem.processes import child_environment, tandem_command, wait_http_ok
from tests.support.ports import free_port_run

# Generous: a first start creates the MLflow database and trains the demo ranker, slow on a busy 2-core box.
START_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 20.0


def processes_with_home(home: Path) -> list[int]:
    """Pids of live processes whose environment names ``home`` as TANDEM_HOME (every child of ``tandem up``)."""
    marker = f"TANDEM_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.timeout(600)
def test_up_serves_the_readme_example_on_every_gateway_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port_run(2)  # one port per gateway
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            tandem_command("up", "--home", str(home), "--port", str(port), "--workers", "2", "--gateways", "2"),
            env=child_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Tandem is serving at" not in log_path.read_text():
            assert up.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.2)
        assert re.search(rf"serving at {re.escape(urls[0])}", log_path.read_text())
        for url in urls:
            assert wait_http_ok(f"{url}/v2/health/ready", 30)
            answer = httpx.post(f"{url}/v1/recommendations", json={"user_id": "u00042", "k": 5}, timeout=10)
            assert answer.status_code == 200, answer.text
            items = answer.json()["items"]
            assert len(items) == 5 and items[0]["score"] >= items[-1]["score"]
            echo = httpx.post(
                f"{url}/v2/models/echo/infer",
                json={"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))}]},
                timeout=10,
            )
            assert echo.status_code == 200 and echo.json()["outputs"][0]["data"] == list(range(16))
        children = processes_with_home(home)
        assert len(children) >= 5, children  # registry (+ its server), 2 workers, 2 gateways
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=STOP_TIMEOUT_S)
    assert up.returncode == 0, log_path.read_text()[-4000:]
    assert processes_with_home(home) == []
