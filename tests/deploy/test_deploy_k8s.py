"""deploy/k8s/: each kustomization renders to objects that pass the Kubernetes schemas and fit together.

Core objects are checked against the OpenAPI-derived JSON schemas ``kubernetes-validate`` ships (strict: unknown
fields fail); KEDA's ScaledObject, a CRD outside those schemas, against the minimal schema vendored in
``deploy/schemas/``. The renderer is the small one in ``support.py``; where ``kubectl`` or ``kustomize`` is
installed, its output is compared with theirs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tandem.common.settings import WorkerSettings
from tests.deploy.support import (
    DOCKERFILES,
    K8S,
    PENDING_DEFAULTS,
    REPO,
    SCHEMAS,
    Dockerfile,
    allowed_env,
    container_command,
    container_env,
    effective_settings,
    pod_spec,
    render_kustomization,
    tandem_invocations,
    tcp_port,
)

KUSTOMIZATIONS = ("base", "overlays/cpu", "overlays/gpu")
# The oldest Kubernetes the manifests promise (README) and the newest the schema package knows.
OLDEST_KUBERNETES = "1.28"
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version())
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda-scaledobject-v1alpha1.json"}
GPU = "nvidia.com/gpu"
IMAGES = {"tandem-gateway": "gateway", "tandem-worker": "worker"}
HEALTHCHECK_SCRIPT = "/opt/tandem/worker_healthcheck.py"


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_kustomization(K8S / request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def tandem_containers(objects: list[dict[str, Any]]):
    """(object, container, image Dockerfile) for every container running a Tandem image."""
    for obj in objects:
        spec = pod_spec(obj)
        for container in (spec or {}).get("containers", []):
            repository = container["image"].split(":")[0]
            if repository in IMAGES:
                yield obj, container, Dockerfile.parse(DOCKERFILES[IMAGES[repository]])


def test_renders_unique_namespaced_objects(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    idents = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(idents) == len(set(idents)), f"{name}: duplicate objects"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "tandem", f"{name}: {obj['kind']}/{obj['metadata']['name']}"
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"} <= kinds
    assert ("ScaledObject" in kinds) == (name != "base"), "KEDA only where the keda component is used"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_pass_the_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]], version: str) -> None:
    name, objects = rendered
    for obj in objects:
        crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if crd_schema is not None:
            jsonschema.Draft7Validator(json.loads(crd_schema.read_text())).validate(obj)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")


def test_vendored_crd_schema_catches_mistakes() -> None:
    schema = json.loads(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")].read_text())
    (scaled,) = by_kind(render_kustomization(K8S / "overlays/cpu"), "ScaledObject").values()
    unquoted = json.loads(json.dumps(scaled))
    unquoted["spec"]["triggers"][0]["metadata"]["threshold"] = 512
    typo = json.loads(json.dumps(scaled))
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    for broken in (unquoted, typo):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(schema).validate(broken)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renderer_agrees_with_kustomize(kustomization: str) -> None:
    if shutil.which("kustomize"):
        argv = ["kustomize", "build"]
    elif shutil.which("kubectl"):
        argv = ["kubectl", "kustomize"]
    else:
        pytest.skip("neither kustomize nor kubectl is installed; the schema tests use the built-in renderer")
    result = subprocess.run([*argv, str(K8S / kustomization)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    def normalized(objects: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        return {(o["kind"], o["metadata"]["name"]): json.dumps(o, sort_keys=True) for o in objects}

    theirs = normalized([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    ours = normalized(render_kustomization(K8S / kustomization))
    assert ours.keys() == theirs.keys()
    for ident in ours:
        assert json.loads(ours[ident]) == json.loads(theirs[ident]), ident


def test_tandem_commands_and_environment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    seen = set()
    for obj, container, dockerfile in tandem_containers(objects):
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        invocations = tandem_invocations(container_command(container, dockerfile.cmd()))
        assert invocations, f"{where} runs no tandem subcommand"
        env = {**dockerfile.env(), **container_env(container, objects)}
        for inv in invocations:
            seen.add(inv.subcommand)
            unknown = {k for k in env if k.startswith("TANDEM_")} - allowed_env(inv.process)
            assert not unknown, f"{where}: {sorted(unknown)} are not settings of `tandem {inv.process}`"
            if inv.process in {"worker", "gateway"}:
                effective_settings(inv.process, inv.args, env)  # every value passes the settings' validation
    assert {("worker",), ("gateway",), ("registry",), ("models", "bootstrap"), ("features", "load")} <= seen


def test_container_ports_match_the_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    for obj, container, dockerfile in tandem_containers(objects):
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        (inv,) = tandem_invocations(container_command(container, dockerfile.cmd()))[:1]
        env = {**dockerfile.env(), **container_env(container, objects)}
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if inv.process == "gateway":
            settings = effective_settings("gateway", inv.args, env)
            assert ports == {"http": settings.port}, where
        elif inv.process == "worker":
            settings = effective_settings("worker", inv.args, env)
            metrics = int(env.get("TANDEM_METRICS_PORT", PENDING_DEFAULTS["TANDEM_METRICS_PORT"]))
            assert ports == {"zmq": tcp_port(settings.bind), "metrics": metrics}, where
            # The readiness probe (worker_healthcheck.py) pings the port TANDEM_BIND names.
            assert tcp_port(env["TANDEM_BIND"]) == ports["zmq"], where
            assert tcp_port(env["TANDEM_ADVERTISE"]) == ports["zmq"], where
            assert env["TANDEM_ADVERTISE"] == f"tcp://<pod_ip>:{ports['zmq']}", "advertise the pod IP"
            annotations = obj["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(metrics)
        elif inv.process == "registry":
            assert ports == {"http": inv.args.port}, where


def test_services_select_pods_and_target_their_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    workloads = [o for o in objects if pod_spec(o) is not None]
    for service in by_kind(objects, "Service").values():
        selector = service["spec"]["selector"]
        pods = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"{name}: Service/{service['metadata']['name']} selects {len(pods)} workloads"
        container_ports = {
            p.get("name"): p["containerPort"] for c in pod_spec(pods[0])["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in container_ports or target in container_ports.values(), f"{name}: {port}"


def test_addresses_name_services_and_their_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    services = {n: {p["port"] for p in s["spec"]["ports"]} for n, s in by_kind(objects, "Service").items()}
    text = json.dumps([o for o in objects if o["kind"] in {"ConfigMap", "Secret", "Deployment", "Job"}])
    found = re.findall(r"\b(?:http|redis|tcp)://(?:[^@/\"]*@)?([a-z0-9-]+):(\d+)", text)
    assert found
    for host, port in found:
        if host in {"0.0.0.0", "localhost"}:
            continue
        assert host in services and int(port) in services[host], f"{name}: {host}:{port} is no Service port"


def test_selectors_and_scale_targets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    deployments = by_kind(objects, "Deployment")
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for pdb in pdbs.values():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        targets = [d for d in deployments.values() if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1 and targets[0]["metadata"]["name"] == pdb["metadata"]["name"], name
    for scaler in [*by_kind(objects, "HorizontalPodAutoscaler").values(), *by_kind(objects, "ScaledObject").values()]:
        target = scaler["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target["name"] in deployments
    assert set(pdbs) == {"gateway", "worker"}
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert pdbs["gateway"]["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be able to evict one"


def test_probes_use_the_health_endpoints(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    deployments = by_kind(objects, "Deployment")
    (gateway,) = pod_spec(deployments["gateway"])["containers"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    (worker,) = pod_spec(deployments["worker"])["containers"]
    assert worker["readinessProbe"]["exec"]["command"] == ["python", HEALTHCHECK_SCRIPT, "--require-ready"]
    assert worker["livenessProbe"]["tcpSocket"]["port"] == "zmq"
    assert worker["startupProbe"]["tcpSocket"]["port"] == "zmq"
    worker_image = Dockerfile.parse(DOCKERFILES["worker"])
    assert any(ins.value.endswith(HEALTHCHECK_SCRIPT) for ins in worker_image.of("COPY", final_stage=True))
    for deployment in deployments.values():
        for container in pod_spec(deployment)["containers"]:
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                for action in ("httpGet", "tcpSocket"):
                    port = container.get(probe, {}).get(action, {}).get("port")
                    assert port is None or port in port_names, f"{name}: {container['name']} {probe} port {port}"


def test_pods_run_as_the_images_non_root_user(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, f"{name}: {obj['metadata']['name']}"
        assert spec.get("automountServiceAccountToken") is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
            assert "limits" in container["resources"] and "requests" in container["resources"]
    for obj, _, dockerfile in tandem_containers(objects):
        uid = int(dockerfile.user().split(":")[0])  # type: ignore[union-attr]
        assert pod_spec(obj)["securityContext"]["runAsUser"] == uid


def test_images_are_tagged_with_the_package_version(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = rendered
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]
    for obj, container, _ in tandem_containers(objects):
        repository, tag = container["image"].split(":")
        expected = {version} if repository == "tandem-gateway" else {f"{version}-cpu", f"{version}-cuda"}
        assert tag in expected, f"{name}: {obj['metadata']['name']} runs {container['image']}"


def test_gpu_overlay_requests_one_gpu_per_worker() -> None:
    for kustomization in KUSTOMIZATIONS:
        objects = render_kustomization(K8S / kustomization)
        worker = by_kind(objects, "Deployment")["worker"]
        (container,) = pod_spec(worker)["containers"]
        env = container_env(container, objects)
        resources = container["resources"]
        if kustomization == "overlays/gpu":
            assert resources["requests"][GPU] == resources["limits"][GPU] == 1
            assert container["image"].endswith("-cuda") and env["TANDEM_DEVICE"] == "cuda"
            assert worker["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
            assert any(t["key"] == GPU for t in pod_spec(worker)["tolerations"])
        else:
            assert GPU not in resources.get("requests", {}) and GPU not in resources.get("limits", {})
            assert container["image"].endswith("-cpu") and env["TANDEM_DEVICE"] == "cpu"
        # Nothing but the worker asks for a GPU.
        for obj in objects:
            for other in (pod_spec(obj) or {}).get("containers", []):
                if obj is not worker:
                    assert GPU not in other["resources"].get("limits", {})


def test_keda_scales_workers_on_queue_depth() -> None:
    objects = render_kustomization(K8S / "overlays/cpu")
    scaled = by_kind(objects, "ScaledObject")["worker"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert re.fullmatch(r"sum\(tandem_queue_depth(\{[^}]*\})?\)", trigger["metadata"]["query"])
    worker_config = by_kind(objects, "ConfigMap")["worker-config"]["data"]
    assert not {"TANDEM_MAX_BATCH_SIZE", "TANDEM_MAX_QUEUE_ROWS"} & set(worker_config), "threshold assumes defaults"
    threshold = int(trigger["metadata"]["threshold"])
    # Rows queued per worker: more than a full batch (or new workers would idle), well below the bound past which
    # a worker refuses work as overloaded (scale before callers see errors).
    assert WorkerSettings.model_fields["max_batch_size"].default <= threshold
    assert threshold <= WorkerSettings.model_fields["max_queue_rows"].default // 4
    assert scaled["spec"]["minReplicaCount"] >= 1, "a worker must stay up: the gateways answer 503 with none"
