"""nginx, Prometheus, Grafana and the OpenTelemetry collector agree with the Compose services and the settings."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tandem.common.settings import GatewaySettings
from tests.deploy.support import (
    DEPLOY,
    PENDING_DEFAULTS,
    compose_command,
    compose_container_env,
    compose_dns_names,
    compose_ports,
    effective_settings,
    load_compose,
    tandem_invocations,
    tcp_port,
)

NGINX_CONF = DEPLOY / "nginx" / "tandem.conf"
PROMETHEUS_CONF = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
COLLECTOR_CONF = DEPLOY / "otel" / "collector.yaml"
# The metric names the metrics code exports (agreed with its author); the dashboard shows each of them.
TANDEM_METRICS = {"tandem_request_duration_seconds": "histogram", "tandem_batch_size": "histogram"}
TANDEM_METRICS["tandem_queue_depth"] = "gauge"
PROMETHEUS_BUILTINS = {"up"}
PROMQL_FUNCTIONS = {"sum", "rate", "histogram_quantile", "count", "avg", "max", "min"}
SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def metrics_port(service_name: str, compose: dict[str, Any]) -> int:
    """Where a Tandem service serves /metrics: the gateway on its HTTP port, a worker on TANDEM_METRICS_PORT."""
    service = compose["services"][service_name]
    (inv,) = tandem_invocations(compose_command(service))
    env = {**compose_container_env(service), **inv.env}
    if inv.process == "gateway":
        return effective_settings("gateway", inv.args, env).port
    return int(env.get("TANDEM_METRICS_PORT", PENDING_DEFAULTS["TANDEM_METRICS_PORT"]))


def test_nginx_balances_over_the_gateway_service(compose: dict[str, Any]) -> None:
    conf = NGINX_CONF.read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)([^;]*);", conf, re.MULTILINE)
    assert len(servers) == 1
    host, port, options = servers[0]
    assert host == "gateway"
    assert int(port) == metrics_port("gateway", compose)  # the gateway's HTTP port
    assert "resolve" in options.split(), "re-resolve the scaled gateway service"
    assert re.search(r"^\s*resolver\s+127\.0\.0\.11\b", conf, re.MULTILINE), "Docker's embedded DNS"
    upstream = re.search(r"upstream\s+(\w+)\s*\{", conf)
    assert upstream is not None and f"proxy_pass http://{upstream.group(1)};" in conf
    nginx = compose["services"]["nginx"]
    assert any(v.endswith(":/etc/nginx/conf.d/default.conf:ro") and "tandem.conf" in v for v in nginx["volumes"])
    assert re.search(r"listen\s+(\d+);", conf).group(1) == str(nginx["ports"][0]).rsplit(":", 1)[1]  # type: ignore[union-attr]


def test_nginx_limits_do_not_undercut_the_gateway() -> None:
    conf = NGINX_CONF.read_text()
    size = re.search(r"client_max_body_size\s+(\d+)([kmg]?);", conf)
    assert size is not None
    body_limit = int(size.group(1)) * SIZE_UNITS.get(size.group(2), 1)
    assert body_limit >= GatewaySettings.model_fields["max_body_bytes"].default
    read_timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", conf)
    assert read_timeout is not None
    assert int(read_timeout.group(1)) * 1000 > GatewaySettings.model_fields["max_request_timeout_ms"].default


def test_prometheus_scrapes_each_replica_through_dns(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = compose_dns_names(compose)
    expected = {"tandem-gateway": {"gateway"}, "tandem-worker": {"worker", "worker-gpu"}}
    for job_name, services in expected.items():
        (sd,) = jobs[job_name]["dns_sd_configs"]
        assert sd["type"] == "A"
        found = set().union(*(dns[name] for name in sd["names"]))
        assert found == services, f"{job_name} scrapes {found}"
        for service in services:
            assert sd["port"] == metrics_port(service, compose), f"{job_name}: {service} serves metrics elsewhere"
            assert sd["port"] in compose_ports(compose["services"][service])
        assert jobs[job_name].get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisioning_matches_the_compose_mounts(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert (DEPLOY / mounts["./grafana/provisioning"].lstrip("/")).name == "provisioning"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())["providers"]
    (provider,) = providers
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def dashboard_targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            found += [(panel, target) for target in panel.get("targets", [])]
    return found


def test_dashboard_uses_provisioned_datasources_and_real_jobs() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())["datasources"]
    uids = {ds["uid"]: ds["type"] for ds in datasources}
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_CONF.read_text())["scrape_configs"]}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for panel, target in dashboard_targets():
        for ref in (panel["datasource"], target["datasource"]):
            assert uids.get(ref["uid"]) == ref["type"], f"{panel['title']}: unknown data source {ref}"
        for job in re.findall(r'job="([^"]+)"', target["expr"]):
            assert job in jobs, f"{panel['title']}: no scrape job {job}"


def test_dashboard_shows_the_agreed_metrics_and_only_those() -> None:
    used: set[str] = set()
    for panel, target in dashboard_targets():
        # Label matchers, groupings and range selectors name labels and durations, not metrics.
        expr = re.sub(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)|\[[^]]*\]", "", target["expr"])
        for name in set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", expr)) - PROMQL_FUNCTIONS:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in TANDEM_METRICS or name in PROMETHEUS_BUILTINS, f"{panel['title']}: unknown metric {name}"
            if base != name:
                assert TANDEM_METRICS.get(base) == "histogram", f"{name}: {base} is not a histogram"
            used.add(base)
    assert set(TANDEM_METRICS) <= used
    titles = {panel["title"] for panel, _ in dashboard_targets()}
    assert {"Request rate", "Error rate", "Latency p50 / p99", "Batch size", "Queue depth"} <= titles


def test_collector_receives_otlp_and_exports_to_jaeger(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(COLLECTOR_CONF.read_text())
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(config.get(kind, {})), f"undefined {kind} in a pipeline"
    assert set(config["service"].get("extensions", [])) <= set(config.get("extensions", {}))
    collector = compose["services"]["otel-collector"]
    receiver_ports = {tcp_port(f"tcp://{p['endpoint']}") for p in config["receivers"]["otlp"]["protocols"].values()}
    assert receiver_ports <= compose_ports(collector)
    exporter = config["exporters"]["otlp/jaeger"]
    host, port = exporter["endpoint"].split(":")
    assert host == "jaeger" and int(port) in compose_ports(compose["services"]["jaeger"])
    mounted = [v for v in collector["volumes"] if "collector.yaml" in v]
    assert mounted and mounted[0].split(":")[1] == collector["command"][0].split("=", 1)[1]
    for name in ("gateway", "worker", "worker-gpu"):
        endpoint = compose_container_env(compose["services"][name])["TANDEM_OTLP_ENDPOINT"]
        assert endpoint.startswith("http://otel-collector:") and tcp_port(endpoint) in receiver_ports
