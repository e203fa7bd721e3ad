"""What a job's outcome (workers.jobs, the delivery trace's `outcome`) means, in a sentence."""

from __future__ import annotations

STATUSES = ("PendingAuth", "Linked", "Unlinked", "Deauthorized", "Deleted")

OUTCOMES = {
    "stale": "older than the event behind the connection's current state: dropped, nothing changed",
    "ignored": "nothing to act on (a connection event without ids, or a status Codat gave that is not one)",
    "recorded": "recorded: logged, and for a sync event its outcome kept as the data type's latest",
    "dead_lettered": "failed for good: kept as a dead letter until it is replayed",
    "deferred": "sent back to the queue for a later try (rate limit, Codat unavailable, or Redis away)",
    "initial_sync_requested": "the connection's initial sync was requested from Codat",
    "initial_sync_done": "the initial sync had been requested before: nothing more to do",
    "initial_sync_busy": "another job held the initial-sync claim at that moment",
    "initial_sync_not_linked": "the connection was not Linked: no initial sync",
    "initial_sync_not_first_linked": "the connection was never seen linked for the first time: no initial sync",
    "initial_sync_off": "CODAT_INITIAL_SYNC=off: state kept, nothing requested",
    "initial_sync_released": "a claim left by a failed job was released (nothing had been requested)",
    "initial_sync_partly_requested": "a claim left by a failed job was kept: some data types were requested",
    "initial_sync_claim_lost": "the job outlived its claim's lease; another job took over",
    "paused": "outgoing Codat calls paused (rate limit reached)",
    "resumed": "outgoing Codat calls resumed (rate limit reset)",
    "expired": "a rate-limit pause that had already ended: nothing changed",
}


def outcome(value: str | None) -> str:
    if not value:
        return "no outcome recorded"
    if value in STATUSES:
        return f"the connection's state is {value} (written by this event, or kept as it was)"
    return OUTCOMES.get(value, value)
