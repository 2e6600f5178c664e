"""deploy/README.md: every command in its build and run sections names files, services, images and ports that exist.

Each command line is parsed and checked against the files it refers to, so the documented commands cannot drift
from the stack. A command of a kind this test does not know fails: teach the test before documenting it.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    K8S,
    REPO,
    Dockerfile,
    load_compose,
    pod_spec,
    read_dotenv,
    render_kustomization,
    tandem_invocations,
)

README = DEPLOY / "README.md"
SECTIONS = ("Build the images", "Run with Docker Compose", "Run on Kubernetes")
GATEWAY_PATHS = ("/v2/health/ready", "/v2/health/live", "/v1/recommendations", "/v2/models")
COMPOSE_SUBCOMMANDS = {"up", "down", "logs", "ps", "build", "config", "pull", "restart"}
NAMESPACE = "tandem"


def section_commands(title: str) -> list[list[str]]:
    """The command lines in the fenced bash blocks of one ``## title`` section (comments dropped)."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"README has no section {title!r}"
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", match.group(1), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line, comments=True))
    assert commands, f"section {title!r} has no commands"
    return commands


@functools.cache
def compose_services() -> dict[str, Any]:
    return load_compose()["services"]


@functools.cache
def images_in_use() -> frozenset[str]:
    compose_images = {service["image"] for service in compose_services().values() if "build" in service}
    k8s_images = {
        container["image"]
        for kustomization in ("base", "overlays/gpu")
        for obj in render_kustomization(K8S / kustomization)
        for container in (pod_spec(obj) or {}).get("containers", [])
        if container["image"].startswith("tandem-")
    }
    return frozenset(compose_images | k8s_images)


def check_cp(argv: list[str], context: dict[str, Any]) -> None:
    source, destination = argv[1:]
    assert (REPO / source) == ENV_EXAMPLE and (REPO / destination) == COMPOSE_FILE.parent / ".env"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split(), "deploy/.env must stay out of git"


def check_docker(argv: list[str], context: dict[str, Any]) -> None:
    if argv[1] == "build":
        check_docker_build(argv[2:])
    elif argv[1] == "compose":
        check_docker_compose(argv[2:], context)
    else:
        pytest.fail(f"unknown docker command {shlex.join(argv)}")


def check_docker_build(args: list[str]) -> None:
    dockerfile = Dockerfile.parse(REPO / args[args.index("-f") + 1])
    tag = args[args.index("-t") + 1]
    assert args[-1] == ".", "the build context is the repository root"
    build_args = dict(a.split("=", 1) for i, a in enumerate(args) if i and args[i - 1] == "--build-arg")
    assert set(build_args) <= set(dockerfile.args())
    if "VARIANT" in build_args:
        assert tag.endswith(f"-{build_args['VARIANT']}")
    assert tag in images_in_use(), f"{tag} is built but used by neither Compose nor Kubernetes"


def check_docker_compose(args: list[str], context: dict[str, Any]) -> None:
    services = compose_services()
    assert args[:2] == ["-f", "deploy/docker-compose.yml"] and REPO / args[1] == COMPOSE_FILE
    rest = args[2:]
    profiles = set()
    while rest and rest[0] == "--profile":
        profiles.add(rest[1])
        rest = rest[2:]
    declared = {p for service in services.values() for p in service.get("profiles", [])}
    assert profiles <= declared
    subcommand, options = rest[0], rest[1:]
    assert subcommand in COMPOSE_SUBCOMMANDS
    for index, option in enumerate(options):
        if option == "--scale":
            name, count = options[index + 1].split("=")
            assert name in services and int(count) >= 0
            assert set(services[name].get("profiles", [])) <= profiles, f"{name} needs its profile"
        elif not option.startswith("-") and (index == 0 or options[index - 1] != "--scale"):
            assert option in services, f"unknown service {option}"
    if subcommand == "up":
        context["port"] = int(read_dotenv(ENV_EXAMPLE)["HTTP_PORT"])


def check_curl(argv: list[str], context: dict[str, Any]) -> None:
    (url,) = [a for a in argv[1:] if a.startswith("http")]
    match = re.fullmatch(r"http://localhost:(\d+)(/\S*)", url)
    assert match is not None, url
    assert int(match.group(1)) == context.get("port"), f"{url}: nothing listens there in this section"
    assert match.group(2).startswith(GATEWAY_PATHS)
    if "-d" in argv:
        json.loads(argv[argv.index("-d") + 1])


def check_kind(argv: list[str], context: dict[str, Any]) -> None:
    assert argv[1:3] == ["load", "docker-image"]
    assert set(argv[3:]) <= images_in_use()


def check_kubectl(argv: list[str], context: dict[str, Any]) -> None:
    args = argv[1:]
    if args[0] == "apply":
        assert args[1] == "-k"
        objects = render_kustomization(REPO / args[2])
        context["objects"] = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        return
    assert args[:2] == ["-n", NAMESPACE]
    objects = context["objects"]
    verb = args[2]
    (target,) = [a for a in args[3:] if "/" in a and not a.startswith("-")]
    kind, name = target.split("/")
    kinds = {"job": "Job", "deployment": "Deployment", "svc": "Service"}
    assert (kinds[kind], name) in objects, f"{target} is not in the applied kustomization"
    if verb == "port-forward":
        local, remote = (int(p) for p in args[args.index(target) + 1].split(":"))
        assert remote in {p["port"] for p in objects[("Service", name)]["spec"]["ports"]}
        context["port"] = local
    elif verb == "wait":
        assert "--for=condition=complete" in args and kind == "job"
    else:
        assert verb == "rollout" and args[3] == "status"


CHECKS: dict[str, Callable[[list[str], dict[str, Any]], None]] = {
    "cp": check_cp,
    "docker": check_docker,
    "curl": check_curl,
    "kind": check_kind,
    "kubectl": check_kubectl,
}


@pytest.mark.parametrize("section", SECTIONS)
def test_section_commands_match_the_files(section: str) -> None:
    context: dict[str, Any] = {}
    for argv in section_commands(section):
        if argv[0] == "tandem":
            tandem_invocations(argv)
            continue
        assert argv[0] in CHECKS, f"{section}: no check for `{shlex.join(argv)}`"
        CHECKS[argv[0]](argv, context)


def test_every_image_used_is_built_in_the_readme() -> None:
    built = {a[a.index("-t") + 1] for a in section_commands("Build the images")}
    assert images_in_use() == built
