"""The whole stack as real processes: a sqlite MLflow registry, workers and a gateway over real HTTP.

The registry is bootstrapped once per session (training the demo ranker takes seconds); stacks are started per
test or per module on free ports, and every process is stopped in teardown.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tandem.common.settings import sqlite_registry_uri
from tandem.processes import child_environment, tandem_command
from tests.support.stack import Registry, Stack


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A sqlite registry holding the demo models, and the demo catalog, in a fresh home."""
    home = tmp_path_factory.mktemp("tandem-home")
    uri = sqlite_registry_uri(home)
    subprocess.run(
        tandem_command("models", "bootstrap", "--home", str(home), "--registry-uri", uri),
        env=child_environment(),
        check=True,
        capture_output=True,
    )
    return Registry(home, uri)


@pytest.fixture
def make_stack(registry: Registry, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """A factory of stacks (N workers + one gateway); all are stopped at teardown."""
    stacks: list[Stack] = []

    def build(
        workers: int = 1,
        gateway_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
        *,
        gateway: bool = True,
    ) -> Stack:
        stack = Stack(registry, tmp_path, worker_args=worker_args)
        stacks.append(stack)
        for _ in range(workers):
            stack.start_worker()
        if gateway:
            stack.start_gateway(*gateway_args)
        return stack

    yield build
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="module")
def shared_stack(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two workers and a gateway shared by the tests of one module that do not break them."""
    stack = Stack(registry, tmp_path_factory.mktemp("stack-logs"))
    try:
        stack.start_worker()
        stack.start_worker()
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)
