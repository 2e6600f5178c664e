"""deploy/docker/: multi-stage, non-root images with health checks that run real ``tandem`` subcommands."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

from tandem.common.settings import GatewaySettings, WorkerSettings
from tests.deploy.support import (
    DOCKERFILES,
    REPO,
    Dockerfile,
    allowed_env,
    effective_settings,
    tandem_invocations,
    tcp_port,
)

SLIM_BASE = "python:3.11-slim"
PENDING_METRICS_PORT = 9100  # TANDEM_METRICS_PORT's agreed default
HEALTHCHECK_SCRIPT = "/opt/tandem/worker_healthcheck.py"
EXPECTED_PORTS = {"gateway": {GatewaySettings.model_fields["port"].default}, "worker": {5555, PENDING_METRICS_PORT}}


def load_script(name: str) -> ModuleType:
    path = REPO / "deploy" / "docker" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"deploy_docker_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, Dockerfile.parse(DOCKERFILES[request.param])


def test_multi_stage_from_python_slim(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    stages = dockerfile.stages()
    assert len(stages) >= 2, f"{name}: build in one stage, run in another"
    assert all(stage_name for _, stage_name in stages), f"{name}: name every stage (FROM ... AS name)"
    final_image = dockerfile.resolve_args(stages[-1][0])
    assert final_image == SLIM_BASE
    assert dockerfile.of("COPY", final_stage=True)[0].value.startswith("--from="), "runtime copies the built venv"


def test_runs_as_a_numeric_non_root_user(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    user = dockerfile.user()
    assert user is not None and re.fullmatch(r"\d+(:\d+)?", user), f"{name}: numeric USER, so runAsNonRoot can check it"
    assert int(user.split(":")[0]) != 0
    last = dockerfile.instructions[-1]
    assert last.keyword == "CMD"
    assert any(ins.keyword == "USER" for ins in dockerfile.instructions if ins.stage == last.stage)


def test_cmd_runs_a_real_tandem_subcommand(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    (invocation,) = tandem_invocations(dockerfile.cmd())
    assert invocation.subcommand == (name,)


def test_env_names_are_settings_and_values_valid(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    env = dockerfile.env()
    tandem_env = {k for k in env if k.startswith("TANDEM_")}
    assert tandem_env <= allowed_env(name)
    (invocation,) = tandem_invocations(dockerfile.cmd())
    settings = effective_settings(name, invocation.args, env)
    assert str(settings.home) == env["TANDEM_HOME"] == env["HOME"]
    listening = {settings.port} if name == "gateway" else {tcp_port(settings.bind), PENDING_METRICS_PORT}
    exposed = {int(port) for ins in dockerfile.of("EXPOSE", final_stage=True) for port in ins.value.split()}
    assert exposed == listening == EXPECTED_PORTS[name]


def test_healthchecks(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    check = dockerfile.healthcheck()
    assert check is not None, f"{name}: add a HEALTHCHECK"
    options, command = check
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    if name == "gateway":
        # No curl in the slim image: python's urllib, on the port the gateway listens on.
        assert isinstance(command, str) and "urllib.request" in command and "/v2/health/live" in command
        assert "TANDEM_PORT" in command
    else:
        assert command == ["python", HEALTHCHECK_SCRIPT, "--require-ready"]
        copies = [ins.value.split() for ins in dockerfile.of("COPY", final_stage=True)]
        assert ["deploy/docker/worker_healthcheck.py", HEALTHCHECK_SCRIPT] in copies


def test_copies_every_package_directory_and_only_what_dockerignore_sends(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = {p.split("/")[0] for p in pyproject["tool"]["setuptools"]["package-dir"].values()}
    sources = set()
    for ins in dockerfile.of("COPY"):
        words = [w for w in ins.value.split() if not w.startswith("--")]
        if not ins.value.startswith("--from="):
            sources.update(words[:-1])
    assert {f"{d}/" for d in package_dirs} <= sources, f"{name}: a package directory is not copied"
    ignore = Path(f"{dockerfile.path}.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for source in sources:
        assert (REPO / source).exists(), f"{name}: COPY {source}: no such path"
        assert source in allowed, f"{name}: {source} is copied but {dockerfile.path.name}.dockerignore leaves it out"
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*", "the .dockerignore is an allow-list: it starts by leaving everything out"


def test_worker_variant_build_arg_selects_cpu_or_cuda_torch() -> None:
    dockerfile = Dockerfile.parse(DOCKERFILES["worker"])
    args = dockerfile.args()
    assert args["VARIANT"] == "cpu"
    names = {stage_name for _, stage_name in dockerfile.stages()}
    assert {"torch-cpu", "torch-cuda"} <= names
    assert ("torch-${VARIANT}", "builder") in dockerfile.stages()
    runs = {ins.stage: ins.value for ins in dockerfile.of("RUN") if "torch==" in ins.value}
    stage_of = {stage_name: index for index, (_, stage_name) in enumerate(dockerfile.stages())}
    assert "--index-url" in runs[stage_of["torch-cpu"]] and "whl/cpu" in args["TORCH_CPU_INDEX"]
    assert "--index-url" not in runs[stage_of["torch-cuda"]], "CUDA torch comes from PyPI (CUDA libraries bundled)"
    # The image's torch is the one the test suite runs against (the Makefile's pin).
    pin = re.search(r"^TORCH_PIN \?= torch==(\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert pin is not None and args["TORCH_VERSION"] == pin.group(1)


def test_gateway_image_installs_every_dependency_but_torch_and_mlflow() -> None:
    dockerfile = Dockerfile.parse(DOCKERFILES["gateway"])
    runs = " ".join(ins.value for ins in dockerfile.of("RUN"))
    assert "gateway_requirements.py" in runs and "pip install --no-deps ." in runs
    module = load_script("gateway_requirements")
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    kept = module.gateway_requirements(REPO / "pyproject.toml")
    dropped = [d for d in dependencies if d not in kept]
    assert [module.distribution_name(d) for d in dropped] == ["torch", "mlflow"]
    assert module.distribution_name("uvicorn[standard]>=0.29") == "uvicorn"
    assert module.distribution_name("Pydantic_Settings >= 2") == "pydantic-settings"


def test_gateway_runs_without_torch_or_mlflow() -> None:
    """The premise of the torch-free gateway image: nothing on the gateway's import path needs them."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['mlflow'] = None\n"
        "import tandem.cli, tandem.gateway.server, tandem.gateway.app, tandem.demo.dataset\n"
        "from tandem.common.settings import GatewaySettings\n"
        "tandem.gateway.app.create_app(GatewaySettings())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_worker_settings_default_bind_is_overridden_for_containers() -> None:
    """Inside a container the worker must listen on every interface, not the loopback default."""
    env = Dockerfile.parse(DOCKERFILES["worker"]).env()
    assert WorkerSettings.model_fields["bind"].default.startswith("tcp://127.0.0.1:")
    assert env["TANDEM_BIND"].startswith("tcp://0.0.0.0:")
