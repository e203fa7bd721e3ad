"""Prometheus metrics of a worker, served on WORKER_METRICS_PORT (see service.web.metrics for
why each process serves its own)."""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger(__name__)

JOBS = Counter("codat_jobs", "Jobs by route and outcome.", ["route", "outcome"])
JOB_SECONDS = Histogram("codat_job_duration_seconds", "Time a job ran, by route.", ["route"])
CODAT_CALLS = Counter("codat_api_calls", "Calls to the Codat API by operation and status.", ["operation", "status"])
CODAT_CALL_SECONDS = Histogram("codat_api_call_seconds", "Codat API call time, by operation.", ["operation"])
SYNC_OUTCOMES = Counter(
    "codat_sync_outcomes", "Dataset outcomes reported by Codat, by data type and status.", ["data_type", "status"]
)
RECONCILE_DRIFT = Counter(
    "codat_reconcile_drift", "What the reconcile found out of line with Codat's API, by kind.", ["kind"]
)
HANDLER_CALLS = Counter(
    "codat_handler_calls",
    "CODAT_HANDLERS calls by handler and outcome (completed, failed, dead_lettered).",
    ["handler", "outcome"],
)
HANDLER_SECONDS = Histogram("codat_handler_seconds", "Time a CODAT_HANDLERS call took, by handler.", ["handler"])
RECONCILE_INTERVAL = Gauge(
    "codat_reconcile_interval_seconds", "RECONCILE_INTERVAL_SECONDS: how often a reconcile runs; 0 = never."
)
RECONCILE_RUNS = Counter("codat_reconcile_runs", "Reconcile runs by outcome (completed, failed).", ["outcome"])
CODAT_QUOTA = Gauge(
    "codat_api_quota",
    "Codat's X-Rate-Limit-* figures on its last answer: limit and remaining (requests this day), "
    "reset_timestamp_seconds (when the quota resets).",
    ["figure"],
)
CONNECTION_STATUSES = Counter("codat_connection_status_changes", "Connections moved to a status.", ["status"])


def serve(port: int) -> None:
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as exc:  # a worker without metrics still does its work
        log.error("worker.metrics_port_unavailable", port=port, error=str(exc))
