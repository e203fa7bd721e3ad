"""What a job works with, built complete once per worker process from Settings and the handlers
(workers.settings) and handed to every job as one typed object (workers.job: `Job.deps`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from arq.connections import ArqRedis
from redis.asyncio import Redis

from service.core.config import Settings
from service.stores.companies import CompanyRefreshes
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.history import HistoryStore
from service.stores.keys import QUEUE_NAME, deserialize_job
from service.stores.outbox import Outbox
from service.stores.rate_limit import RateLimits
from service.stores.reconcile import ReconcileStore
from service.stores.replication import Replication
from service.stores.slots import CompanySlots
from service.stores.syncs import SyncStore
from workers.api import Handler
from workers.codat import CodatClient
from workers.rate_limit import RateLimitGate
from workers.sync_settings import FetchOnFirstLink

# Codat: "10 concurrent requests per ACC" (https://docs.codat.io/using-the-api/rate-limits).
CODAT_CALLS_PER_COMPANY = 10


@dataclass(frozen=True)
class Deps:
    settings: Settings
    connections: ConnectionStore
    syncs: SyncStore
    dead_letters: DeadLetters
    rate_limits: RateLimits
    reconciles: ReconcileStore
    history: HistoryStore
    companies: CompanyRefreshes
    codat: CodatClient
    # Which data types Codat queues by itself on a first link (workers.initial_sync).
    fetch_on_first_link: FetchOnFirstLink
    # arq's client on the same connections, for the jobs a job schedules.
    queue: ArqRedis
    # The initial-sync claim's lease: arq runs a job killed with its worker again once its
    # in-progress key expires, after the job timeout + 10 s; the claim is leased exactly as long.
    lease_ms: int
    # A job's own budget for its Codat calls, inside arq's job timeout, so that a hung call is
    # retried by the job's policy rather than failed by arq (which would neither retry nor keep it).
    call_budget_seconds: float
    # The integrator's handlers by name (CODAT_HANDLERS, loaded by workers.handlers.load).
    handlers: Mapping[str, Handler]

    @classmethod
    def build(cls, settings: Settings, redis: Redis, handlers: Mapping[str, Handler] | None = None) -> Deps:
        """`handlers`: none for what runs no handler job (the command line's reconcile)."""
        outbox = Outbox(settings.events_stream, settings.events_maxlen)
        rate_limits = RateLimits(redis, outbox)
        call_timeout = 10.0
        # a slot outlives the longest call it can guard, and no more: a crash gives it back soon
        slots = CompanySlots(redis, CODAT_CALLS_PER_COMPANY, lease_ms=int((call_timeout + 5) * 1000))
        codat = CodatClient(
            settings.codat_base_url,
            settings.codat_api_key or "",
            before_call=RateLimitGate(rate_limits),
            slots=slots,
            timeout=call_timeout,
        )
        queue = ArqRedis(
            connection_pool=redis.connection_pool,
            job_serializer=orjson.dumps,
            job_deserializer=deserialize_job,
            default_queue_name=QUEUE_NAME,
        )
        return cls(
            settings=settings,
            connections=ConnectionStore(redis, outbox, Replication.of(settings)),
            syncs=SyncStore(redis, outbox),
            dead_letters=DeadLetters(redis, settings.credentials()),  # masked before written
            rate_limits=rate_limits,
            reconciles=ReconcileStore(redis, Replication.of(settings)),
            history=HistoryStore(redis),
            # a data/all takes its call's slot (and reads the pause) with the company's lock
            companies=CompanyRefreshes(redis, Replication.of(settings), slots),
            codat=codat,
            fetch_on_first_link=FetchOnFirstLink(codat),
            queue=queue,
            lease_ms=(settings.job_timeout_seconds + 10) * 1000,
            call_budget_seconds=settings.job_timeout_seconds - 2,
            handlers=dict(handlers or {}),
        )

    async def aclose(self) -> None:
        await self.codat.aclose()
