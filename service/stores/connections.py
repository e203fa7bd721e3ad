"""Reconciled connection state: one Redis hash per connection, changed only by scripts.

Deliveries arrive late, twice and out of order, and several workers run at once, so every
change is a compare-and-set inside Redis: a status is written only by an event newer than the
one that wrote the current status. The same hash holds the claim that makes a connection's
initial sync happen once: a worker takes it (owner + lease) before calling Codat and settles
it after; a claim found again by its owner, or found expired, means a call whose outcome is in
doubt (the worker died or timed out mid-call), and the new owner must look before it calls.

The scripts: lua/connection_apply.lua (the compare-and-set, its history entry and its lifecycle
events), connection_claim, connection_settle, connection_expire and connection_release. A first
link's claim is taken by its apply when that makes the sync due (`Claim`), and its settle gives
the company's data/all lock back (service.stores.companies): no round trip of their own.

The scripts run on the one primary every web and worker share, so they encode no JSON: the
history entry and the lifecycle events are encoded here, but for what only the script decides
(outcome, statuses, the events emitted; a settle's ids, as the state has them), which it joins
in as text.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import orjson
from redis.asyncio import Redis

from service.core.clock import iso, now_ms
from service.stores import keys
from service.stores.companies import COVERED_TTL_SECONDS, Refresh
from service.stores.keys import HISTORY_LENGTH, HISTORY_TTL_MS
from service.stores.keys import connection as key
from service.stores.outbox import SCHEMA_VERSION, Outbox
from service.stores.replication import PRIMARY_ONLY, Replication, execute
from service.stores.scripts import Script, decoded, text


class Claim(NamedTuple):
    """Take the initial-sync claim in the apply's own call, if the apply makes the sync due."""

    owner: str  # the job (its reruns find their own claim)
    lease_ms: int


class Applied(NamedTuple):
    outcome: str  # "applied" | "stale" | "tied"
    status: str | None  # the status now
    initial_sync: str | None  # None | "claimed" | "requested" (before any claim of this call)
    first_link_seen: bool
    emitted: tuple[str, ...] = ()  # the lifecycle events this change wrote
    claimed: str | None = None  # what the claim came to (claim_initial_sync's answers), when asked for and due

    @property
    def initial_sync_due(self) -> bool:
        """Worth a claim: a first-linked connection that is Linked now and never synced, or a
        claim that may have been left behind by a failed or killed job."""
        if self.initial_sync == "requested":
            return False
        return self.initial_sync == "claimed" or (self.first_link_seen and self.status == "Linked")


class ConnectionStore:
    def __init__(self, redis: Redis, outbox: Outbox | None = None, replication: Replication = PRIMARY_ONLY) -> None:
        self._redis = redis
        self._outbox = outbox or Outbox()
        self._replication = replication
        # lua/connection_*.lua
        self._apply = Script(redis, "connection_apply")
        self._claim = Script(redis, "connection_claim")
        self._settle = Script(redis, "connection_settle")
        self._release = Script(redis, "connection_release")
        self._expire = Script(redis, "connection_expire")

    async def apply(
        self,
        *,
        connection_id: str,
        company_id: str,
        status: str,
        at_ms: int,
        event_type: str,
        authoritative: bool = False,
        first_link: bool = False,
        webhook_id: str = "",
        occurred_at: str | None = None,
        company_name: str | None = None,
        first_link_at_ms: int | None = None,
        claim: Claim | None = None,
    ) -> Applied:
        """Write `status` as of `at_ms` unless a newer event wrote the current one, and keep the
        first-link mark whatever the outcome. `occurred_at`: the time Codat gives for it.

        With `claim`, the initial-sync claim is taken in the same call when the result makes the
        sync due: then, as with `claim_initial_sync`, this returns only once REDIS_MIN_REPLICAS
        replicas hold it (a Codat call may follow), else NotReplicated, and the job retries."""
        now = now_ms()
        webhook_id = webhook_id or ""
        # The JSON of the history entry and of the lifecycle events, encoded here but for what
        # only the script decides (it joins those in as text): the primary encodes nothing.
        entry = {
            "at": now,
            "eventAt": at_ms,
            "to": status,
            "authoritative": authoritative,
            "eventType": event_type,
            "webhookId": webhook_id,
        }
        told = {
            "companyId": company_id,
            "connectionId": connection_id,
            "occurredAt": occurred_at or iso(at_ms) or "",
            "derivedAt": iso(now),
            "webhookId": webhook_id,
            "codatEventType": event_type,
            "schemaVersion": SCHEMA_VERSION,
        }
        named = dict(
            connection=key(connection_id),
            history=keys.connection_history(connection_id),
            lifecycle=self._outbox.stream,
            company_connections=keys.company_connections(company_id),
            company_names=keys.COMPANY_NAMES,
            status=status,
            event_at=at_ms,
            company_id=company_id,
            connection_id=connection_id,
            event_type=event_type,
            now=now,
            authoritative=int(authoritative),
            first_link=int(first_link),
            company_name=company_name or "",
            first_link_at=first_link_at_ms or at_ms,
            history_last=HISTORY_LENGTH - 1,
            history_ttl_ms=HISTORY_TTL_MS,
            history_entry=orjson.dumps(entry)[:-1] + b",",  # open: the script closes it
            outbox_maxlen=self._outbox.maxlen,
            event_id=f"evt_{uuid.uuid4().hex}",
            event_fields=orjson.dumps(told)[1:],  # the rest of an object the script opens
            claim_owner=claim.owner if claim else "",
            lease_ms=claim.lease_ms if claim else 0,
        )
        if claim is None or not self._replication.replicas:
            reply = await self._apply(**named)
        else:
            pipe = self._redis.pipeline(transaction=False)
            self._apply.stage(pipe, **named)
            (reply,) = decoded(await execute(self._redis, pipe, self._replication))
        outcome, current, sync, seen, emitted, claimed = reply
        return Applied(outcome, current or None, sync or None, bool(seen), tuple(emitted or ()), claimed or None)

    async def claim_initial_sync(self, connection_id: str, owner: str, lease_ms: int) -> str:
        """ "claimed", "in_doubt" (call outcome unknown: look first), "orphaned" (in doubt, and
        not Linked now), "busy", "done", "not_first_linked" or "not_linked".

        A claim taken is on REDIS_MIN_REPLICAS replicas before this returns (the caller calls Codat
        next, and a claim lost in a failover would let a rerun call again): else NotReplicated, a
        RedisError, and the job retries."""
        claim = {"connection": key(connection_id), "owner": owner, "now": now_ms(), "lease_ms": lease_ms}
        if not self._replication.replicas:
            return str(await self._claim(**claim))
        pipe = self._redis.pipeline(transaction=False)
        self._claim.stage(pipe, **claim)
        (outcome,) = await execute(self._redis, pipe, self._replication)
        return str(decoded(outcome))

    async def settle_initial_sync(
        self, connection_id: str, owner: str, *, company_id: str = "", refresh: Refresh | None = None, **details: Any
    ) -> bool:
        """Mark it requested, if the claim is still `owner`'s; `details` go into the lifecycle
        event (mode, dataTypes, recovered, requestedBy, occurredAt). With `refresh`, the data/all
        made under the company's lock (of `company_id`): the connections it covered are recorded
        and the lock given up in the same call, whatever became of the claim, with the company
        slot the lock took for the call (`Refresh.slot`)."""
        now = now_ms()
        fields = {"occurredAt": iso(now), **{k: v for k, v in details.items() if v is not None}}
        # Encoded here; the script joins in the ids as the state has them (lua/connection_settle.lua).
        return bool(
            await self._settle(
                connection=key(connection_id),
                lifecycle=self._outbox.stream,
                covered=keys.company_refreshed_all(company_id),
                lock=keys.company_refresh_lock(company_id),
                calls=keys.company_calls(company_id),
                owner=owner,
                now=now,
                event=self._outbox.encoded("sync.initial_requested", fields),
                lock_owner=refresh.owner if refresh else "",
                slot=int(bool(refresh and refresh.slot)),
                covered_ids=orjson.dumps(sorted(refresh.linked) if refresh else []),
                covered_ttl=COVERED_TTL_SECONDS,
                outbox_maxlen=self._outbox.maxlen,
            )
        )

    async def expire_claim(self, connection_id: str, owner: str) -> bool:
        """End `owner`'s lease now (it failed for good): the next job takes the claim over as
        in doubt, without waiting for the lease."""
        return bool(await self._expire(connection=key(connection_id), owner=owner))

    async def release_initial_sync(self, connection_id: str, owner: str) -> bool:
        return bool(await self._release(connection=key(connection_id), owner=owner))

    async def claimed_at(self, connection_id: str) -> int | None:
        value = await self._redis.hget(key(connection_id), "initialSyncClaimedAt")
        return int(value) if value is not None else None

    async def first_link_at(self, connection_id: str) -> int | None:
        """When the first link happened, as the event that told of it says."""
        value = await self._redis.hget(key(connection_id), "firstLinkAt")
        return int(float(value)) if value is not None else None

    async def get(self, connection_id: str) -> dict[str, Any] | None:
        """The reconciled state, as /ops shows it."""
        raw = await self._redis.hgetall(key(connection_id))
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        requested = fields.get("initialSyncRequestedAt")
        status_at = fields.get("statusAt")
        return {
            "connectionId": fields.get("connectionId", connection_id),
            "companyId": fields.get("companyId"),
            "status": fields.get("status"),
            "statusAt": iso(int(status_at)) if status_at else None,
            "lastEventType": fields.get("lastEventType"),
            "updatedAt": iso(int(fields["updatedAt"])) if fields.get("updatedAt") else None,
            "firstLinkSeen": fields.get("firstLinkSeen") == "1",
            "initialSync": fields.get("initialSync"),
            "initialSyncRequestedAt": iso(int(requested)) if requested else None,
        }
