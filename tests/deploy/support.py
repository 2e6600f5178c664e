"""Readers for the files under ``deploy/``, shared by the tests in ``tests/deploy/``.

Everything here is offline and engine-free: Compose files are read as YAML and interpolated the way Compose does,
Dockerfiles with a small line parser, kustomizations with a small renderer (resources, components, strategic-merge
patches by file, namespace), and ``tandem`` command lines with the real ``tandem.cli.build_parser``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from tandem.cli import GATEWAY_FIELDS, WORKER_FIELDS, build_parser
from tandem.common.settings import GatewaySettings, WorkerSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
SCHEMAS = DEPLOY / "schemas"
K8S = DEPLOY / "k8s"
DOCKERFILES = {"gateway": DEPLOY / "docker" / "Dockerfile.gateway", "worker": DEPLOY / "docker" / "Dockerfile.worker"}

# TANDEM_* variables the deploy files set before the code reads them: settings being added in parallel (Redis
# discovery, metrics, tracing). Each name is accepted only while it is not yet a field of the settings class
# (the real fields are checked first); delete a name here once its field lands in common/settings.py.
PENDING_WORKER_ENV: frozenset[str] = frozenset()
PENDING_GATEWAY_ENV: frozenset[str] = frozenset()
# Defaults the pending settings are agreed to have (the worker's Prometheus port).
PENDING_DEFAULTS = {"TANDEM_METRICS_PORT": "9100"}
# Subcommands the deploy files run before the CLI has them (`tandem features load`, being added in parallel):
# accepted only while the top-level parser does not know the subcommand; once it does, its flags are checked.
PENDING_SUBCOMMANDS: frozenset[tuple[str, str]] = frozenset()

SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")


# --- settings ---------------------------------------------------------------------------------------------------


def env_names(settings_class: type[WorkerSettings] | type[GatewaySettings]) -> set[str]:
    """The ``TANDEM_*`` variable of every field of a settings class."""
    return {f"TANDEM_{name.upper()}" for name in settings_class.model_fields}


def allowed_env(process: str) -> set[str]:
    """``TANDEM_*`` names a process of this kind reads: its real settings fields, then the pending ones."""
    if process == "worker":
        return env_names(WorkerSettings) | PENDING_WORKER_ENV
    if process == "gateway":
        return env_names(GatewaySettings) | PENDING_GATEWAY_ENV
    # Other subcommands (registry, models bootstrap, features load) read the shared settings and TANDEM_HOME.
    return env_names(WorkerSettings) | env_names(GatewaySettings) | PENDING_WORKER_ENV | PENDING_GATEWAY_ENV


@contextlib.contextmanager
def only_env(env: Mapping[str, str]) -> Iterator[None]:
    """Run with ``env`` as the only ``TANDEM_*`` variables of this process."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    with mock.patch.dict(os.environ, {**kept, **env}, clear=True):
        yield


def effective_settings(process: str, args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    """The settings object ``tandem worker``/``tandem gateway`` builds from these flags and this environment.

    Mirrors ``tandem.cli``: flags given on the command line override ``TANDEM_*`` variables, which override
    defaults. Building the real class also validates every value's type and range.
    """
    if process == "worker":
        settings_class, names = WorkerSettings, WORKER_FIELDS
    else:
        settings_class, names = GatewaySettings, GATEWAY_FIELDS
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    with only_env(env):
        return settings_class(**overrides)


def tcp_port(endpoint: str) -> int:
    """The port of ``tcp://host:port`` or ``http://host:port/...``."""
    match = re.fullmatch(r"[a-z]+://[^/]*:(\d+)(/.*)?", endpoint)
    if match is None:
        raise ValueError(f"no port in {endpoint!r}")
    return int(match.group(1))


# --- tandem command lines ---------------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One ``tandem ...`` command found in a container's command line."""

    argv: list[str]
    args: argparse.Namespace | None  # None: a pending subcommand the CLI does not have yet
    env: dict[str, str] = field(default_factory=dict)  # VAR=value assignments in front of it (shell form)

    @property
    def subcommand(self) -> tuple[str, ...]:
        """``("worker",)``, ``("models", "bootstrap")``, ..."""
        words = [word for word in self.argv if not word.startswith("-")]
        return tuple(words[:2]) if words and words[0] in {"models", "features"} else tuple(words[:1])

    @property
    def process(self) -> str:
        """``worker``, ``gateway`` or the subcommand's first word."""
        return self.subcommand[0]


class CommandError(AssertionError):
    """A command line that is not a valid ``tandem`` invocation."""


def parse_tandem(argv: list[str]) -> argparse.Namespace | None:
    """Parse ``tandem ARGV`` with the real parser; None for a pending subcommand; raises ``CommandError``."""
    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(argv)
    except SystemExit:
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        if tuple(argv[:2]) in PENDING_SUBCOMMANDS and argv[0] not in subcommands:
            return None
        message = errors.getvalue().strip().splitlines()[-1:] or ["--help or an unknown flag"]
        raise CommandError(f"`tandem {shlex.join(argv)}` is not accepted by tandem.cli: {message[0]}") from None


def tandem_invocations(command: list[str] | str | None) -> list[Invocation]:
    """Every ``tandem`` command in an exec-form command, or in the script of ``sh -c SCRIPT``.

    Shell scripts are split on ``&&``, ``||`` and ``;`` (written with spaces around them); leading ``VAR=value``
    assignments and ``exec`` are stripped and the assignments kept.
    """
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        segments: list[list[str]] = [[]]
        for word in shlex.split(argv[2]):
            if word in {"&&", "||", ";"}:
                segments.append([])
            else:
                segments[-1].append(word)
    else:
        segments = [argv]
    found = []
    for segment in segments:
        env: dict[str, str] = {}
        while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
            name, _, value = segment.pop(0).partition("=")
            env[name] = value
        if segment and segment[0] == "exec":
            segment = segment[1:]
        if segment and Path(segment[0]).name == "tandem":
            found.append(Invocation(segment[1:], parse_tandem(segment[1:]), env))
    return found


# --- Compose ----------------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty."""


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: not KEY=value: {line!r}")
            values[key.strip()] = value.strip()
    return values


def interpolated_names(value: Any) -> set[str]:
    """Every variable a Compose document interpolates."""
    if isinstance(value, dict):
        return set().union(*(interpolated_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(interpolated_names(v) for v in value)) if value else set()
    if isinstance(value, str):
        return {m.group("braced") or m.group("named") for m in _INTERPOLATION.finditer(value) if not m.group("escaped")}
    return set()


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``, ``$$`` ... as Compose does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env
        filled = present and env[name] != ""
        if op in (":-", "-"):
            return env[name] if (filled if op == ":-" else present) else arg
        if op in (":?", "?"):
            if not (filled if op == ":?" else present):
                raise InterpolationError(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if (filled if op == ":+" else present) else ""
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, value)


def example_env() -> dict[str, str]:
    """``deploy/.env.example`` with a placeholder in each blank secret, as a user's ``deploy/.env`` would be."""
    env = read_dotenv(ENV_EXAMPLE)
    return {k: (v or "placeholder-for-tests") if any(w in k for w in SECRET_WORDS) else v for k, v in env.items()}


def load_compose(*, raw: bool = False) -> dict[str, Any]:
    """The Compose file, interpolated with :func:`example_env` unless ``raw``."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return document if raw else interpolate(document, example_env())


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict (map or ``KEY=value`` list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose_dockerfile(service: Mapping[str, Any]) -> Path | None:
    """The Dockerfile a service is built from, if it is built here."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (COMPOSE_FILE.parent / build / "Dockerfile").resolve()
    return (COMPOSE_FILE.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()


def compose_container_env(service: Mapping[str, Any]) -> dict[str, str]:
    """The environment a service's container starts with: its image's ``ENV`` and then the service's own."""
    env = {}
    dockerfile = compose_dockerfile(service)
    if dockerfile is not None:
        env.update(Dockerfile.parse(dockerfile).env())
    env.update(compose_environment(service))
    return env


def compose_command(service: Mapping[str, Any]) -> list[str] | str | None:
    """The command a service's container runs: its own, or its image's ``CMD``."""
    command = service.get("command")
    if command is None and service.get("entrypoint") is None:
        dockerfile = compose_dockerfile(service)
        if dockerfile is not None:
            return Dockerfile.parse(dockerfile).cmd()
    if service.get("entrypoint") is not None:
        entry = service["entrypoint"]
        entry = shlex.split(entry) if isinstance(entry, str) else list(entry)
        rest = shlex.split(command) if isinstance(command, str) else list(command or [])
        return entry + rest
    return command


def compose_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports a service's containers listen on, as its ``expose`` list declares."""
    return {int(str(port).split("/")[0]) for port in service.get("expose", [])}


def compose_dns_names(compose: Mapping[str, Any]) -> dict[str, set[str]]:
    """Each DNS name on the project network and the services answering to it (service names and aliases)."""
    names: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        names.setdefault(name, set()).add(name)
        networks = service.get("networks")
        for network in networks.values() if isinstance(networks, dict) else []:
            for alias in (network or {}).get("aliases", []):
                names.setdefault(alias, set()).add(name)
    return names


# --- Dockerfiles ------------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    stage: int  # index of the build stage it belongs to; -1 before the first FROM


@dataclass
class Dockerfile:
    """A Dockerfile as instructions: continuation lines joined, comments and the syntax directive dropped."""

    path: Path
    instructions: list[Instruction]

    @classmethod
    def parse(cls, path: Path) -> Dockerfile:
        """Read ``path``; heredocs are not supported (the project's Dockerfiles use none)."""
        instructions: list[Instruction] = []
        stage = -1
        pending = ""
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if pending and stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = pending + stripped
            pending = ""
            keyword, _, value = text.partition(" ")
            keyword = keyword.upper()
            if "<<" in value and keyword == "RUN":
                raise ValueError(f"{path}: heredocs are not supported by this parser")
            if keyword == "FROM":
                stage += 1
            instructions.append(Instruction(keyword, value.strip(), stage))
        if pending:
            raise ValueError(f"{path}: the last instruction ends with a continuation")
        return cls(path, instructions)

    def stages(self) -> list[tuple[str, str | None]]:
        """``(image, name)`` of each ``FROM image [AS name]``."""
        result = []
        for ins in self.of("FROM"):
            words = [w for w in ins.value.split() if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append((words[0], name))
        return result

    def of(self, keyword: str, *, final_stage: bool = False) -> list[Instruction]:
        """The instructions with this keyword (only the final stage's with ``final_stage``)."""
        last = max(ins.stage for ins in self.instructions)
        return [i for i in self.instructions if i.keyword == keyword and (not final_stage or i.stage == last)]

    def args(self) -> dict[str, str | None]:
        """Every ``ARG NAME[=default]`` (the first default wins)."""
        result: dict[str, str | None] = {}
        for ins in self.of("ARG"):
            name, sep, default = ins.value.partition("=")
            if result.get(name) is None:
                result[name] = default.strip('"') if sep else None
        return result

    def resolve_args(self, text: str, overrides: Mapping[str, str] | None = None) -> str:
        """``text`` with ``${ARG}`` and ``$ARG`` replaced by their defaults (or ``overrides``)."""
        values = {k: v or "" for k, v in self.args().items()} | dict(overrides or {})
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)

    def env(self) -> dict[str, str]:
        """The final stage's ``ENV`` as the container sees it (``${PATH}``-style references left as they are)."""
        env = {}
        for ins in self.of("ENV", final_stage=True):
            for word in shlex.split(ins.value):
                name, _, value = word.partition("=")
                env[name] = value
        return env

    def exec_form(self, keyword: str) -> list[str] | None:
        """The JSON (exec) form of the final stage's last ``CMD``/``ENTRYPOINT``, if any."""
        found = self.of(keyword, final_stage=True)
        if not found:
            return None
        value = json.loads(found[-1].value)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{self.path}: {keyword} is not in exec form")
        return value

    def cmd(self) -> list[str] | None:
        """What the image runs by default: ``ENTRYPOINT`` then ``CMD``."""
        return (self.exec_form("ENTRYPOINT") or []) + (self.exec_form("CMD") or []) or None

    def healthcheck(self) -> tuple[dict[str, str], list[str] | str] | None:
        """The final stage's ``HEALTHCHECK``: its ``--options`` and its command (exec form list or shell string)."""
        found = self.of("HEALTHCHECK", final_stage=True)
        if not found:
            return None
        options, _, rest = found[-1].value.partition("CMD ")
        parsed = dict(opt.lstrip("-").split("=", 1) for opt in options.split())
        rest = rest.strip()
        return parsed, json.loads(rest) if rest.startswith("[") else rest

    def user(self) -> str | None:
        """The final stage's ``USER``."""
        found = self.of("USER", final_stage=True)
        return found[-1].value if found else None


# --- Kubernetes -------------------------------------------------------------------------------------------------

CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"})
SUPPORTED_KUSTOMIZATION_KEYS = frozenset({"apiVersion", "kind", "namespace", "resources", "components", "patches"})
# Strategic-merge keys of the lists the overlays patch (from the Kubernetes API's patchMergeKey markers).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "envFrom": None,
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """``patch`` merged into ``base`` the way ``kubectl``'s strategic merge patch does for these manifests."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = strategic_merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and MERGE_KEYS.get(key or ""):
        merge_key = MERGE_KEYS[key or ""]
        merged_list = [copy.deepcopy(item) for item in base]
        added = []
        for item in patch:
            index = next((i for i, old in enumerate(merged_list) if old.get(merge_key) == item.get(merge_key)), None)
            if index is None:
                added.append(copy.deepcopy(item))
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        # kustomize puts the items only the patch has first, in the patch's order.
        return added + merged_list
    return copy.deepcopy(patch)


class KustomizeError(ValueError):
    """A kustomization this renderer does not support, or a patch with no target."""


def _apply_patches(directory: Path, kustomization: Mapping[str, Any], objects: list[dict[str, Any]]) -> None:
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: - path: FILE` is supported, not {entry}")
        for patch in load_yaml_documents(directory / entry["path"]):
            ident = (patch["kind"], patch["metadata"]["name"])
            targets = [i for i, obj in enumerate(objects) if (obj["kind"], obj["metadata"]["name"]) == ident]
            if len(targets) != 1:
                raise KustomizeError(f"{directory / entry['path']}: {ident} matches {len(targets)} objects")
            objects[targets[0]] = strategic_merge(objects[targets[0]], patch)


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIRECTORY`` produces, for the subset of kustomize the project uses."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZATION_KEYS
    if unsupported:
        raise KustomizeError(f"{directory}: this renderer does not support {sorted(unsupported)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += render_kustomization(path) if path.is_dir() else load_yaml_documents(path)
    for component in kustomization.get("components", []):
        component_dir = directory / component
        component_kustomization = yaml.safe_load((component_dir / "kustomization.yaml").read_text())
        if component_kustomization.get("kind") != "Component":
            raise KustomizeError(f"{component_dir} is not a kustomize Component")
        for resource in component_kustomization.get("resources", []):
            objects += load_yaml_documents(component_dir / resource)
        _apply_patches(component_dir, component_kustomization, objects)
    _apply_patches(directory, kustomization, objects)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = namespace
    return objects


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a Deployment, StatefulSet, DaemonSet or Job."""
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    return None


def container_env(container: Mapping[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment: ``envFrom`` ConfigMaps and Secrets, then ``env`` (``valueFrom`` as a stand-in)."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])].get("data", {}))
        elif "secretRef" in source:
            secret = by_name[("Secret", source["secretRef"]["name"])]
            env.update(secret.get("stringData", {}))
            env.update({k: "<base64>" for k in secret.get("data", {})})
    for item in container.get("env", []):
        env[item["name"]] = (
            re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
            if "value" in item
            else f"<{item['name'].lower()}>"
        )
    return env


def container_command(container: Mapping[str, Any], image_cmd: list[str] | None) -> list[str] | None:
    """What a container runs: ``command`` + ``args``, defaulting to the image's."""
    command = container.get("command")
    args = container.get("args")
    if command is None and args is None:
        return image_cmd
    return list(command or []) + list(args or [])
