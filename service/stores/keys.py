"""Every Redis key this service reads or writes, and the arq job format, in one place (as
arq's own constants.py holds arq's). The web process writes jobs here in arq's layout so that
the stock arq worker runs them; the dead letters write the same jobs on a replay.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

import orjson
import zstandard
from arq.constants import default_queue_name, health_check_key_suffix, in_progress_key_prefix, job_key_prefix

from service.core import config
from service.core.config import JOB_TTL_SECONDS

# arq's
QUEUE_NAME = default_queue_name
HEALTH_CHECK = QUEUE_NAME + health_check_key_suffix  # refreshed while a worker polls
JOB_KEY_PREFIX = job_key_prefix
IN_PROGRESS_KEY_PREFIX = in_progress_key_prefix
# Ours, beside arq's queue: a pub/sub channel (not a key) the intake publishes on once per batch
# it queues, so that waiting workers start at once instead of at their next poll.
QUEUE_WAKE = QUEUE_NAME + ":wake"

# The jobs' arq function names (workers.settings registers each under its own), their ids below.
# A job waits 7 days to be started (JOB_TTL_MS), so workers that are down for a day lose nothing
# (arq's default would drop a job not started within 24 hours). The dedup record is kept longer
# (Settings.dedup_ttl_seconds, 15 days): the job is not.
# A delivery, as the web process queues it.
PROCESS_EVENT = "process_event"
# The check, minutes after a first link, that the pulls Codat queues by itself did start.
CHECK_INITIAL_PULLS = "check_initial_pulls"
# One page of a reconcile run (workers.reconcile), each queueing the next.
RECONCILE_PAGE = "reconcile_page"
# One integrator handler called with one lifecycle event (workers.handlers).
RUN_HANDLER = "run_handler"
JOB_TTL_MS = JOB_TTL_SECONDS * 1000  # not the dedup horizon (config.DEDUP_TTL_SECONDS): jobs stay 7 days
# Tries of any kind (crashes, deferrals, retries) before a job becomes a dead letter. arq's own
# max_tries is one higher, so that the job's policy (workers.jobs), not arq, has the last word.
MAX_TRIES = 12
ARQ_MAX_TRIES = MAX_TRIES + 1

# Ours
RATE_LIMIT_PAUSED_UNTIL = "codat:rate-limit:paused-until"
RATE_LIMIT_LAST_EVENT_AT = "codat:rate-limit:last-event-at"  # orders reached/reset deliveries
RATE_LIMIT_DEFERRED = "codat:rate-limit:deferred"  # job ids deferred by the pause, woken by a reset
DEAD_LETTERS = "codat:dead-letters"
DEAD_LETTERS_BY_TIME = "codat:dead-letters:by-time"
RECONCILE_RUN = "codat:reconcile:run"  # the run in progress: its cursor and counts per page
RECONCILE_LOCK = "codat:reconcile:lock"  # one run at a time across all workers (leased)
RECONCILE_LAST = "codat:reconcile:last"  # the last complete run's summary
# When a worker of this deployment first started: connections Codat created before it were
# linked before this service listened (workers.reconcile).
DEPLOYED_AT = "codat:deployed-at"


COMPANY_NAMES = "codat:company-names"  # company id -> name, as events and the reconcile give it
# The lifecycle events' stream (service.stores.outbox): its default name, declared with its
# setting (CODAT_EVENTS_STREAM) in service.core.config; a deployment may name another.
LIFECYCLE_STREAM = config.LIFECYCLE_STREAM
HANDLERS_GROUP = "codat-handlers"  # the consumer group that turns the stream into handler jobs
HANDLED_PREFIX = "codat:handled:"  # + handler name + ":" + event id: queued once, ever
# Bounds of what the ops console reads (service.stores.history): per connection the last
# HISTORY_LENGTH state changes for HISTORY_TTL after the last one; per delivery a trace kept as
# long as its job would be (7 days; the dedup record outlives it).
HISTORY_LENGTH = 20
HISTORY_TTL_MS = 30 * 24 * 3600 * 1000
TRACE_TTL_SECONDS = JOB_TTL_SECONDS
# The console's last-hour chart (service.stores.activity): one small hash per minute of what
# the jobs did, each kept ACTIVITY_TTL_SECONDS from the start of its minute.
ACTIVITY_TTL_SECONDS = 2 * 3600


def seen(message_id: str) -> str:
    """The dedup record of a message id."""
    return f"codat:seen:{message_id}"


def connection(connection_id: str) -> str:
    return f"codat:connection:{connection_id}"


def company_syncs(company_id: str) -> str:
    return f"codat:sync:{company_id}"


def company_connections(company_id: str) -> str:
    return f"codat:company:{company_id}:connections"


def connection_history(connection_id: str) -> str:
    return f"codat:history:{connection_id}"


def company_calls(company_id: str) -> str:
    """The company's Codat calls in flight (service.stores.slots)."""
    return f"codat:company:{company_id}:calls"


def company_refreshed_all(company_id: str) -> str:
    """The connections a `data/all` of this service covered (workers.initial_sync)."""
    return f"codat:company:{company_id}:refreshed-all"


def company_refresh_lock(company_id: str) -> str:
    """One `data/all` at a time per company (workers.initial_sync)."""
    return f"codat:company:{company_id}:refresh-lock"


def delivery_trace(message_id: str) -> str:
    return f"codat:trace:{message_id}"


def activity_minute(minute: int) -> str:
    """The counts of one minute (epoch minutes: ms // 60000)."""
    return f"codat:activity:{minute}"


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def event_job_id(message_id: str) -> str:
    return f"event:{message_id}"


def initial_pulls_check_job_id(connection_id: str) -> str:
    return f"initial-pulls:{connection_id}"


def reconcile_page_job_id(run_id: str, page: int) -> str:
    """Also the owner of the initial-sync claims the page takes: its rerun finds its own."""
    return f"reconcile:{run_id}:{page}"


def handler_job_id(name: str, event_id: str) -> str:
    """One per (handler, lifecycle event): arq refuses a job id it still holds, which keeps a
    redelivered stream entry from queueing the call twice (workers.handlers)."""
    return f"handler:{name}:{event_id}"


def replay_job_id(letter_id: str) -> str:
    return f"replay:{letter_id}"


class Unqueueable(ValueError):
    """The job cannot be written; `reason` is a stable label for logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def serialize_job(args: list[Any], enqueue_time_ms: int, function: str = PROCESS_EVENT) -> bytes:
    """Raises Unqueueable for what orjson read but cannot write back: nesting past its depth
    limit. Catching its error costs nothing per delivery; a depth scan first would not."""
    try:
        # The layout of arq.jobs.serialize_job, with orjson (the workers read it with
        # deserialize_job: workers.settings); job_try None means "first try".
        return orjson.dumps({"t": None, "f": function, "a": args, "k": {}, "et": enqueue_time_ms})
    except orjson.JSONEncodeError as exc:
        raise Unqueueable("too_deep" if "recursion" in str(exc).lower() else "not_serialisable") from None


# --- issue 24: a queued delivery's job, compressed ----------------------------------------------
# A delivery's job is most of what Redis holds for it while it waits (a ~0.9 KB body gave a
# 1.26 KB job, 1.6 KB of Redis memory with its dedup record and queue entry), and most of what
# the web sends Redis. The intake writes it compressed with a preset dictionary of what every job
# and Codat payload repeats: the job's and the event record's keys, Codat's payload keys, URL
# templates, statuses and event types. No value of any one example is in it.
#
# Two formats, each a prefix and a compressed JSON job; the workers read both:
# - V2, written now: a zstd frame (level 3, the dictionary as raw content, no checksum: Redis
#   keeps what it was given). That job: 0.41 KB; ~6 us to compress, ~2 us to read back.
# - V1, read only (jobs a web older than V2 queued): raw DEFLATE (level 3, no zlib header).
#   0.38 KB, but ~10-17 us to deflate and ~4 to inflate; a web spends ~105 us a delivery in all,
#   so V1 was a tenth of it (bench/README.md, "Fourth pass").
#
# The dictionary is part of both formats: a job written with it can be read only with it, byte
# for byte. Never edit it; a better one is a new version (a new prefix, read beside these).
JOB_DEFLATED_V1 = b"\x00zj1"  # no JSON text begins with a NUL: a job is one or the other
JOB_ZSTD_V2 = b"\x00zj2"
JOB_DICTIONARY_V1 = (
    b'"ClientId":"","ClientName":"","RuleId":"","AlertId":"","Message":"","DailyQuota":,"QuotaRemaining":,'
    b'"ExpiresUtc":"","ResetReason":"","RuleType":"","CompanyId":"","DataConnectionId":"","Data":{'
    b'"dataConnectionId":"","platformKey":"","oldStatus":"","newStatus":"","datasetId":"","datasetStatus":"",'
    b'"syncId":"","syncType":"","pushOperationKey":"","attachmentId":"","modifiedDate":"","record":{'
    b'"dailyQuota":,"quotaRemaining":,"expiryDate":"","errorMessage":"","statusCode":,"statusText":"",'
    b'"erroredOnUtc":"","dataConnectionErrors":[],"requestedOnDate":"","completedOnDate":"",'
    b'"dataTypes":[{"dataType":"","status":"Complete","connectionId":"","recordsModified":}],'
    b'"read.completed.initial","read.completed","connection.created","connection.disconnected",'
    b'"company.created","Unlinked","PendingAuth","Deauthorized","Accounting","Commerce","Banking",'
    b'"payload":{"referenceCompany":{"id":"","name":"","description":"","links":{"portal":'
    b'"https://app.codat.io/companies//summary"},"tags":{}},"connection":{"id":"","integrationId":"",'
    b'"integrationKey":"","sourceId":"","platformName":"","linkUrl":"https://link-api.codat.io/companies/'
    b'/connections//start","status":"Linked","lastSync":"","created":"","sourceType":""},"connectionId":"",'
    b'"companyId":"","connection.connected","type":"","eventType":"","generatedDate":"T00:00:00.000Z"'
    b'{"t":null,"f":"process_event","a":[{"message_id":"msg_","event_type":"","known":true,"legacy":false,'
    b'"generated_date":"","company_id":"","connection_id":"","received_at_ms":,"body":{"id":"'
)
# A compressed job is at most this large once read back: a frame that says otherwise is refused
# before anything is allocated for it. A job holds one body of at most MAX_BODY_BYTES, as orjson
# writes it again (a number can come out ~4x longer: 9e15 is 9000000000000000.0), and fields
# copied out of it; a job larger than this all the same is written as plain JSON, which is read
# without the bound: whatever the web accepted, a worker can read.
MAX_JOB_BYTES = 8 * config.MAX_BODY_BYTES


class _Codecs(threading.local):
    """zstd's compressor and decompressor, one of each per thread (neither may be shared by two
    threads at once), with the dictionary digested once, not per job."""

    def __init__(self) -> None:
        dictionary = zstandard.ZstdCompressionDict(JOB_DICTIONARY_V1, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        self.compress = zstandard.ZstdCompressor(
            level=3, dict_data=dictionary, write_checksum=False, write_content_size=True, write_dict_id=False
        ).compress
        self.decompress = zstandard.ZstdDecompressor(dict_data=dictionary).decompress


_codecs = _Codecs()


def serialize_event_job(record: dict[str, Any], enqueue_time_ms: int) -> bytes:
    """A delivery's process_event job, as the intake queues it: serialize_job's JSON, compressed
    (V2), or left JSON past MAX_JOB_BYTES. Raises Unqueueable as serialize_job does. Only the
    workers read it (deserialize_job): jobs that operators or tests read as JSON (a replayed dead
    letter's) stay JSON."""
    job = serialize_job([record], enqueue_time_ms)
    return job if len(job) > MAX_JOB_BYTES else JOB_ZSTD_V2 + _codecs.compress(job)


def deserialize_job(raw: bytes) -> dict[str, Any]:
    """Any job this service queues, JSON, V2 or V1, as arq reads one (the workers' job_deserializer)."""
    if raw.startswith(JOB_ZSTD_V2):
        frame = memoryview(raw)[len(JOB_ZSTD_V2) :]
        if not 0 <= zstandard.frame_content_size(frame) <= MAX_JOB_BYTES:  # -1: not in the frame
            raise ValueError("a compressed job that does not say its size, or is larger than any queued")
        raw = _codecs.decompress(frame)
    elif raw.startswith(JOB_DEFLATED_V1):
        # Any window: the 32 KB one reads what a smaller one wrote.
        inflate = zlib.decompressobj(-15, zdict=JOB_DICTIONARY_V1)
        raw = inflate.decompress(memoryview(raw)[len(JOB_DEFLATED_V1) :]) + inflate.flush()
    job: dict[str, Any] = orjson.loads(raw)
    return job


# --- issue 20: the ops surface (service.stores.deadletters, service.stores.sessions) ---------------
# The dead letters' indexes, written and removed in the same transaction as the letters: by webhook
# id, one sorted set in lexical order (score 0, member "<webhook id>\0<letter id>"), so that an id
# or its unique prefix finds every letter of a delivery; by company, a sorted set per company
# (letter id, scored by its failure time).
DEAD_LETTERS_BY_WEBHOOK = "codat:dead-letters:by-webhook"
# Set once the letters written before the indexes existed were indexed (DeadLetters.index_existing).
DEAD_LETTERS_INDEXED = "codat:dead-letters:indexed"


def dead_letters_of_company(company_id: str) -> str:
    return f"codat:dead-letters:company:{company_id}"


def revoked_session(nonce: str) -> str:
    """A console session ended by its logout: kept until the session would have run out anyway."""
    return f"codat:ops:revoked-session:{nonce}"


# --- issue 21: acknowledged means replicated (service.stores.intake, service.stores.replication) ---
# INCRed by an intake batch that found a duplicate while replicas must confirm: WAIT covers what
# the calling connection wrote, and a duplicate writes nothing, so without this write a 200 could
# go out while the original (written by another connection) is still on the primary alone.
REPLICATION_BARRIER = "codat:intake:barrier"


# --- issue 23: delivery health (service.stores.delivery_health, service.stores.gaps) --------------
# The time (ms) of the last delivery answered 2xx, per family (connection, sync, other): a hash
# written by the web processes at most once a second each (max wins), read at every scrape.
LAST_ACCEPTED = "codat:deliveries:last-accepted"
# The last moment (ms) any web process was known up: refreshed every few seconds by each. A web
# that starts and finds it old records the time nobody was there to answer as a gap.
WEB_ALIVE_AT = "codat:web:alive-at"
# The Linked connections counted by the workers' delivery watch, and when: {count, at} (JSON).
LINKED_CONNECTIONS = "codat:watch:linked-connections"
# The consumer watch's last report (JSON: checkedAt, url, consumers, problems).
CONSUMER_REPORT = "codat:watch:consumers"
# One delivery-watch run per interval across all workers: held for the interval (SET NX PX).
WATCH_DUE = "codat:watch:due"
# The intervals deliveries could not be taken: id -> JSON, and the ids by start time (ms).
GAPS = "codat:gaps"
GAPS_BY_START = "codat:gaps:by-start"


def reconcile_listed(run_id: str) -> str:
    """The company ids a reconcile run listed (workers.reconcile): held companies it did not list
    are checked with Codat at the run's end."""
    return f"codat:reconcile:listed:{run_id}"
