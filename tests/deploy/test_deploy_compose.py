"""deploy/docker-compose.yml: valid Compose, real ``tandem`` commands and settings, consistent ports and wiring."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILES,
    ENV_EXAMPLE,
    SCHEMAS,
    SECRET_WORDS,
    Dockerfile,
    allowed_env,
    compose_command,
    compose_container_env,
    compose_dns_names,
    compose_dockerfile,
    compose_ports,
    effective_settings,
    example_env,
    interpolate,
    interpolated_names,
    load_compose,
    read_dotenv,
    tandem_invocations,
    tcp_port,
)

# What each Tandem service must run; the third-party services run their images' own commands.
EXPECTED_SUBCOMMANDS = {
    "mlflow": [("registry",)],
    "bootstrap": [("models", "bootstrap"), ("features", "load")],
    "worker": [("worker",)],
    "worker-gpu": [("worker",)],
    "gateway": [("gateway",)],
}
SCALED_SERVICES = ("gateway", "worker", "worker-gpu")
ONE_SHOT_SERVICES = ("bootstrap",)
PUBLIC_HTTP_SERVICE = "nginx"
URL = re.compile(r"\b(?P<scheme>[a-z]+)://(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def invocations(service: dict[str, Any]):
    return tandem_invocations(compose_command(service))


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    for document in (load_compose(raw=True), compose):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def compose_binary() -> list[str] | None:
    """The Compose command on this machine: the v2 plugin, else Debian's ``docker-compose`` (v1), else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """A Compose implementation's own check (``config`` needs no engine), where one is installed."""
    argv = compose_binary()
    if argv is None:
        pytest.skip("no Compose binary (docker compose plugin or docker-compose); the schema test covers the file")
    compose_file = COMPOSE_FILE
    version = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True).stdout.strip()
    if version.startswith("1."):
        # Compose v1 (Debian's docker-compose 1.29) predates the top-level `name`; it checks everything else.
        document = load_compose(raw=True)
        del document["name"]
        compose_file = tmp_path / "docker-compose.yml"
        compose_file.write_text(yaml.safe_dump(document))
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example_env().items()))
    options = ["--env-file", str(env_file), "--project-directory", str(DEPLOY), "-f", str(compose_file)]
    result = subprocess.run(
        [*argv, *options, "--profile", "gpu", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_variable_is_documented_and_no_secret_has_a_default() -> None:
    raw = load_compose(raw=True)
    documented = read_dotenv(ENV_EXAMPLE)
    used = interpolated_names(raw)
    assert used <= set(documented), f"add to {ENV_EXAMPLE.name}: {sorted(used - set(documented))}"
    text = COMPOSE_FILE.read_text()
    for name in used:
        if any(word in name for word in SECRET_WORDS):
            assert re.search(rf"\$\{{{name}:\?", text), f"{name} is a secret: require it (${{{name}:?...}})"
            assert documented[name] == "", f"{ENV_EXAMPLE.name} must leave {name} blank"
    # Without the secret, Compose refuses the file rather than starting with a default password.
    without_secrets = {k: v for k, v in example_env().items() if not any(w in k for w in SECRET_WORDS)}
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(raw, without_secrets)


def test_tandem_services_run_real_subcommands_with_real_flags(services: dict[str, Any]) -> None:
    for name, expected in EXPECTED_SUBCOMMANDS.items():
        found = invocations(services[name])  # parse errors raise here with the offending command
        assert [inv.subcommand for inv in found] == expected, name
    others = set(services) - set(EXPECTED_SUBCOMMANDS)
    assert all(not invocations(services[name]) for name in others)


def test_tandem_environment_names_are_settings(services: dict[str, Any]) -> None:
    for name, service in services.items():
        found = invocations(service)
        if not found:
            continue
        env = compose_container_env(service)
        for inv in found:
            names = {k for k in [*env, *inv.env] if k.startswith("TANDEM_")}
            unknown = names - allowed_env(inv.process)
            assert not unknown, f"{name}: {sorted(unknown)} are not settings of `tandem {inv.process}`"


def test_worker_and_gateway_settings_build_from_the_environment(services: dict[str, Any]) -> None:
    """The real settings classes accept every value (types, ranges) the file gives them."""
    for name in SCALED_SERVICES:
        service = services[name]
        (inv,) = invocations(service)
        env = {**compose_container_env(service), **inv.env}
        settings = effective_settings(inv.process, inv.args, env)
        if inv.process == "worker":
            port = tcp_port(settings.bind)
            # The image's health check pings the port TANDEM_BIND names: the flags must not move the worker.
            assert tcp_port(env["TANDEM_BIND"]) == port, f"{name}: --bind disagrees with TANDEM_BIND"
            assert tcp_port(inv.env["TANDEM_ADVERTISE"]) == port, f"{name} advertises another port than it binds"
            assert re.fullmatch(r"tcp://\$\(hostname\):\d+", inv.env["TANDEM_ADVERTISE"]), name
            metrics_port = int(compose_container_env(service)["TANDEM_METRICS_PORT"])
            assert {port, metrics_port} <= compose_ports(service), name
            assert settings.registry_uri == "http://mlflow:5000"
        else:
            assert settings.host == "0.0.0.0"
            assert {settings.port} == compose_ports(service)
            # The image's health check asks the port TANDEM_PORT names.
            assert int(env["TANDEM_PORT"]) == settings.port, f"{name}: --port disagrees with TANDEM_PORT"


def test_addresses_point_at_services_and_ports_that_exist(compose: dict[str, Any]) -> None:
    """Every ``scheme://host:port`` in the stack's files names a service on the network and a port it listens on."""
    services = compose["services"]
    dns = compose_dns_names(compose)
    texts = {f"{name} (compose)": json.dumps(service) for name, service in services.items()}
    for path in [
        DEPLOY / "nginx" / "tandem.conf",
        DEPLOY / "prometheus" / "prometheus.yml",
        DEPLOY / "otel" / "collector.yaml",
        *sorted((DEPLOY / "grafana" / "provisioning").rglob("*.yaml")),
    ]:
        texts[str(path.relative_to(DEPLOY))] = path.read_text()
    checked = 0
    for where, text in texts.items():
        for match in URL.finditer(text.replace("$(hostname)", "worker")):
            host, port = match["host"], int(match["port"])
            if host in {"127.0.0.1", "localhost", "0.0.0.0"}:
                continue
            assert host in dns, f"{where}: {match[0]} names no service"
            for service in dns[host]:
                assert port in compose_ports(services[service]), f"{where}: {service} does not listen on {port}"
            checked += 1
    assert checked >= 10


def test_depends_on_waits_for_health_or_completion(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert isinstance(rule, dict), f"{name}: use the long form of depends_on with a condition"
            target = services[dependency]
            if rule["condition"] == "service_healthy":
                dockerfile = compose_dockerfile(target)
                has_image_check = dockerfile is not None and Dockerfile.parse(dockerfile).healthcheck() is not None
                assert "healthcheck" in target or has_image_check, f"{name} waits for {dependency}'s missing check"
            elif rule["condition"] == "service_completed_successfully":
                assert dependency in ONE_SHOT_SERVICES, f"{name} waits for {dependency} to exit"


def test_restart_policies(services: dict[str, Any]) -> None:
    for name, service in services.items():
        expected = {"no"} if name in ONE_SHOT_SERVICES else {"unless-stopped", "always"}
        assert service.get("restart") in expected, name


def test_scaled_services_publish_nothing_and_have_no_fixed_name(services: dict[str, Any]) -> None:
    for name in SCALED_SERVICES:
        assert "ports" not in services[name], f"{name} scales: a host port would collide between replicas"
        assert "container_name" not in services[name], name
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    for name, ports in published.items():
        for port in ports:
            if name != PUBLIC_HTTP_SERVICE:
                assert str(port).startswith("127.0.0.1:"), f"{name}: operator UIs listen on loopback only"


def test_bind_mounts_exist() -> None:
    for name, service in load_compose(raw=True)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"


def test_services_built_here_use_the_project_dockerfiles(services: dict[str, Any]) -> None:
    built = {name: compose_dockerfile(service) for name, service in services.items() if "build" in service}
    assert set(built.values()) == set(DOCKERFILES.values())
    for name, path in built.items():
        args = services[name]["build"].get("args", {})
        assert set(args) <= set(Dockerfile.parse(path).args()), f"{name}: unknown build args {args}"
        variant = args.get("VARIANT")
        if variant is not None:
            assert services[name]["image"].endswith(f"-{variant}"), f"{name}: image tag does not say {variant}"


def test_gpu_profile_reserves_nvidia_devices(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert compose_container_env(gpu)["TANDEM_DEVICE"] == "cuda"
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    # Same DNS name as the CPU workers, so Prometheus finds both.
    assert "worker" in gpu["networks"]["default"]["aliases"]
    assert all("profiles" not in service for name, service in services.items() if name != "worker-gpu")


def test_references_resolve() -> None:
    """What the schema cannot see: depends_on names services, named volumes are declared, YAML anchors merged."""
    document = load_compose(raw=True)
    services = document["services"]
    declared_volumes = set(document.get("volumes", {}))
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), f"{name} depends on an unknown service"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        assert "<<" not in service, f"{name}: a YAML merge key was not resolved"
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert declared_volumes <= used, "an unused named volume"


def test_tandem_services_run_under_an_init(services: dict[str, Any]) -> None:
    """Signals reach the Tandem process (graceful drain on `docker compose stop`) and children are reaped."""
    for name in EXPECTED_SUBCOMMANDS:
        assert services[name].get("init") is True, name
