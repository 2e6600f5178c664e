"""``tandem models list | promote | rollback`` against a real sqlite MLflow registry (and a scripted worker)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from tandem.cli import main
from tandem.common import wire
from tandem.models_cli import HISTORY_TAG_PREFIX, ModelsError, promote, rollback
from tests.support.lifecycle import SCALE, register_scale, set_alias
from tests.support.registry import Registry, create_registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = create_registry(tmp_path / "registry")
    register_scale(registry, 1.0, aliases=("champion",))
    register_scale(registry, 2.0)
    register_scale(registry, 3.0)
    return registry


def champion(registry: Registry) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    return str(client.get_model_version_by_alias(SCALE, "champion").version)


def history_tag(registry: Registry, alias: str) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=registry.uri, registry_uri=registry.uri)
    return json.loads(client.get_registered_model(SCALE).tags[HISTORY_TAG_PREFIX + alias])


def test_promote_records_the_history_and_rollback_walks_it_back(registry: Registry) -> None:
    assert promote(registry.uri, SCALE, "2", "champion") == "1"
    assert promote(registry.uri, SCALE, "3", "champion") == "2"
    assert history_tag(registry, "champion") == ["1", "2", "3"]
    assert rollback(registry.uri, SCALE, "champion") == ("3", "2")
    assert history_tag(registry, "champion") == ["1", "2"]
    assert champion(registry) == "2"
    assert rollback(registry.uri, SCALE, "champion") == ("2", "1")
    with pytest.raises(ModelsError, match="no earlier version"):
        rollback(registry.uri, SCALE, "champion")
    with pytest.raises(ModelsError, match="no model 'scale' version '9'"):
        promote(registry.uri, SCALE, "9", "champion")
    assert champion(registry) == "1"


def test_an_alias_moved_by_other_means_rolls_back_to_the_last_promoted_version(registry: Registry) -> None:
    promote(registry.uri, SCALE, "2", "champion")
    set_alias(registry, "champion", "3")  # e.g. register_model(alias=...) or the MLflow UI
    assert rollback(registry.uri, SCALE, "champion") == ("3", "2")
    promote(registry.uri, SCALE, "3", "challenger")
    with pytest.raises(ModelsError, match="no earlier version"):
        rollback(registry.uri, SCALE, "challenger")


@pytest.fixture
def scripted_worker() -> Iterator[str]:
    """A ROUTER that answers pings: scale version 2 under champion and challenger."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{socket.bind_to_random_port('tcp://127.0.0.1')}"
    stopped = threading.Event()
    table = [{"name": SCALE, "version": "2", "aliases": ["challenger", "champion"]}]

    def serve() -> None:
        while not stopped.is_set():
            if socket.poll(50):
                identity, *frames = socket.recv_multipart()
                ping = wire.decode(frames)
                if isinstance(ping, wire.Ping):
                    pong = wire.Pong(ping.seq, "w-1", True, 0, 0, table)
                    socket.send_multipart([identity, *wire.encode(pong)])

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield endpoint
    finally:
        stopped.set()
        thread.join()
        socket.close(linger=0)
        context.term()


def test_the_commands(registry: Registry, scripted_worker: str, capsys: pytest.CaptureFixture[str]) -> None:
    uri = ["--registry-uri", registry.uri]
    assert main(["models", "promote", SCALE, "2", *uri]) == 0
    assert capsys.readouterr().out.strip() == "scale@champion: 1 -> 2"
    assert main(["models", "list", *uri, "--workers", scripted_worker]) == 0
    table = capsys.readouterr().out
    assert "history of @champion: 1 -> 2" in table
    assert "w-1 (challenger, champion)" in table
    assert main(["models", "list", *uri, "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["aliases"]) for v in model["versions"]] == [("3", []), ("2", ["champion"]), ("1", [])]
    assert model["history"] == {"champion": ["1", "2"]}
    assert main(["models", "rollback", SCALE, *uri]) == 0
    assert capsys.readouterr().out.strip() == "scale@champion: 2 -> 1 (rolled back)"
    assert main(["models", "rollback", SCALE, *uri]) == 1
    assert "no earlier version" in capsys.readouterr().err
