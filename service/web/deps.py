"""What the web process works with, built complete once from Settings (service.web.app) and handed
to the webhook endpoint, /metrics, /ops and the console, as workers.deps.Deps is to the jobs.

One Redis client, one store of each kind, one masker, one pace for wrong tokens, one
authentication layer: the JSON routes and the console share them rather than build their own."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from redis.asyncio import Redis

from service.core.config import Settings
from service.core.logs import Masker
from service.stores.client import connect
from service.stores.connections import ConnectionStore
from service.stores.deadletters import DeadLetters
from service.stores.delivery_health import DeliveryMarks
from service.stores.gaps import GapStore
from service.stores.history import HistoryStore
from service.stores.intake import Intake
from service.stores.lifecycle import LifecycleStream
from service.stores.reconcile import ReconcileStore
from service.stores.replication import Replication
from service.stores.sessions import RevokedSessions
from service.stores.syncs import SyncStore
from service.web.auth import OpsAuth
from service.web.guessing import WrongGuesses
from service.web.verification import Verifier


@dataclass(frozen=True)
class WebDeps:
    settings: Settings
    redis: Redis
    # The ingress: verify, then the one durable write; `marks` remembers the last delivery taken.
    verifier: Verifier
    intake: Intake
    marks: DeliveryMarks
    # What /ops, the console and /metrics read (the workers write them).
    connections: ConnectionStore
    dead_letters: DeadLetters
    syncs: SyncStore
    reconciles: ReconcileStore
    lifecycle: LifecycleStream
    history: HistoryStore
    gaps: GapStore
    # Every /ops answer and console page passes through it: no credential the process holds.
    mask: Masker
    # The /ops routes and the console exist only with OPS_TOKEN: None without it.
    auth: OpsAuth | None

    @classmethod
    def build(cls, settings: Settings, redis: Redis | None = None) -> WebDeps:
        redis = redis if redis is not None else connect(settings.redis_url)
        gaps = GapStore(redis)
        auth = None
        if settings.ops_token:
            auth = OpsAuth(
                settings.ops_token,
                secure=settings.ops_cookie_secure,
                revoked=RevokedSessions(redis),
                guesses=WrongGuesses(),
            )
        return cls(
            settings=settings,
            redis=redis,
            verifier=Verifier(
                settings.webhook_secrets,
                legacy_authorization=settings.webhook_auth,
                tolerance_seconds=settings.tolerance_seconds,
            ),
            intake=Intake(redis, Replication.of(settings), dedup_ttl_seconds=settings.dedup_ttl_seconds),
            marks=DeliveryMarks(redis, gaps, f"{socket.gethostname()}:{os.getpid()}"),
            connections=ConnectionStore(redis),
            dead_letters=DeadLetters(redis, settings.credentials()),  # masked as written and as read
            syncs=SyncStore(redis),
            reconciles=ReconcileStore(redis),
            lifecycle=LifecycleStream(redis, settings.events_stream),
            history=HistoryStore(redis),
            gaps=gaps,
            mask=Masker(settings.credentials()),
            auth=auth,
        )
