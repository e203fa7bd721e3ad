"""The deploy kit, read as its consumers read it: every manifest and rule file parses, carries the
parts it must, and refers only to metrics and log events this service really produces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import service.web.metrics  # noqa: F401  (registers the metrics of both process types)
import workers.metrics  # noqa: F401
from service.core.config import Settings
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
ALERTS = (
    "CodatWebhookRejectedSignatures",
    "CodatDeadLetters",
    "CodatDatasetFailures",
    "CodatConnectionsDeauthorized",
    "CodatRateLimited",
    "CodatQueueBacklog",
    "CodatWorkerNotPolling",
)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kube() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(base.startswith("python:3.11-slim") for base in bases)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*healthz", text, re.MULTILINE | re.DOTALL)
    assert 'CMD ["codat-webhooks", "web"]' in text


def test_compose_has_redis_with_aof_web_worker_and_the_sandbox_behind_a_profile() -> None:
    [compose] = documents(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["web"]["command"] == ["codat-webhooks", "web"]
    assert services["worker"]["command"] == ["codat-webhooks", "worker"]
    assert services["worker"]["image"] == services["web"]["image"]  # one image, both process types
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert services["web"]["environment"]["REDIS_URL"].startswith("redis://redis:")


def test_kubernetes_web_deployment_service_hpa_pdb_and_probes() -> None:
    objects = kube()
    web = objects[("Deployment", "codat-webhooks-web")]
    spec = container(web)
    assert spec["command"] == ["codat-webhooks", "web"]
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["lifecycle"]["preStop"]
    pod = web["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # preStop + uvicorn's graceful shutdown (service.cli: 20 s) must fit in the grace period
    assert pod["terminationGracePeriodSeconds"] >= 5 + 20
    assert objects[("Service", "codat-webhooks-web")]["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    hpa = objects[("HorizontalPodAutoscaler", "codat-webhooks-web")]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert ("PodDisruptionBudget", "codat-webhooks-web") in objects


def test_kubernetes_worker_scales_on_queue_depth_and_outlasts_its_jobs() -> None:
    objects = kube()
    worker = objects[("Deployment", "codat-webhooks-worker")]
    assert container(worker)["command"] == ["codat-webhooks", "worker"]
    assert container(worker)["livenessProbe"]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # running jobs finish, or go back on the queue, within the grace period
    assert grace > Settings.shutdown_wait_seconds
    hpa = objects[("HorizontalPodAutoscaler", "codat-webhooks-worker")]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == "codat_queue_depth"
    assert ("PodDisruptionBudget", "codat-webhooks-worker") in objects
    assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9100"


def exported_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def rules(path: Path) -> dict[str, dict[str, Any]]:
    [doc] = documents(path)
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def test_prometheus_rules_cover_the_catalogue_with_metrics_that_exist() -> None:
    prometheus = rules(DEPLOY / "prometheus" / "alerts.yml")
    assert set(ALERTS) <= set(prometheus)
    exported = exported_metric_names()
    for name, rule in prometheus.items():
        used = set(re.findall(r"\b(codat_[a-z_]+)", rule["expr"]))
        assert used, name
        assert used <= exported, f"{name} uses metrics nobody exports: {used - exported}"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")


def logged_event_names() -> set[str]:
    source = "\n".join(p.read_text() for folder in ("service", "workers") for p in (ROOT / folder).rglob("*.py"))
    names = set(re.findall(r'log\.(?:debug|info|warning|error|exception|critical)\(\s*f?"([a-z_.{}]+)"', source))
    for name in list(names):  # f"webhook.{outcome}"
        if "{" in name:
            names.discard(name)
            names.update(f"webhook.{o}" for o in ("accepted", "duplicate", "rejected", "malformed", "too_large"))
    return names


def test_logql_rules_match_the_prometheus_ones_and_name_real_events() -> None:
    loki = rules(DEPLOY / "loki" / "alerts.yml")
    assert set(ALERTS) <= set(loki)
    events = logged_event_names()
    assert "sync.failed" in events and "job.dead_lettered" in events  # guards the scan itself
    for name, rule in loki.items():
        used = set(re.findall(r'event="([^"]+)"', rule["expr"]))
        assert used and used <= events, f"{name} keys on events nobody logs: {used - events}"


@pytest.mark.parametrize("alert", ALERTS)
def test_readme_catalogue_names_each_alert(alert: str) -> None:
    assert alert in (ROOT / "README.md").read_text()
