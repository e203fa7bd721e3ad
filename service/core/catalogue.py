"""Codat's event types, as its catalogue (sandbox/catalogue/Webhooks.json, 67 types) names
them, grouped by what the workers do with them; tests check the two agree."""

from __future__ import annotations

CONNECTION_EVENTS = frozenset(
    {
        "connection.created",
        "connection.connected",
        "connection.failed",
        "connection.disconnected",
        "connection.reconnected",
        "connection.deleted",
        "DataConnectionStatusChanged",
    }
)
SYNC_EVENTS = frozenset(
    {
        "read.completed",
        "read.completed.initial",
        "DataSyncCompleted",
        "DatasetDataChanged",
        "DataSyncStatusChangedToError",
        "NewCompanySynchronized",
    }
)
RATE_LIMIT_EVENTS = frozenset(
    {
        "client.rateLimit.reached",
        "client.rateLimit.reset",
        "ClientRateLimitReached",
        "ClientRateLimitReset",
    }
)
LEGACY_EVENTS = frozenset(
    {
        "DataConnectionStatusChanged",
        "NewCompanySynchronized",
        "DataSyncCompleted",
        "DatasetDataChanged",
        "DataSyncStatusChangedToError",
        "PushOperationStatusChanged",
        "PushOperationTimedOut",
        "AccountCategoriesUpdated",
        "SyncConnectionDeleted",
        "SyncCompleted",
        "SyncFailed",
        "ClientRateLimitReached",
        "ClientRateLimitReset",
    }
)
_WRITE_DATA_TYPES = (
    "bills",
    "bankTransactions",
    "items",
    "suppliers",
    "directCosts",
    "invoices",
    "bankAccounts",
    "purchaseOrders",
    "billPayments",
    "directIncomes",
    "journalEntries",
    "chartOfAccounts",
    "billCreditNotes",
    "creditNotes",
    "customers",
    "journals",
    "transfers",
    "payments",
)
KNOWN_EVENTS = (
    CONNECTION_EVENTS
    | SYNC_EVENTS
    | RATE_LIMIT_EVENTS
    | LEGACY_EVENTS
    | frozenset(
        {
            "company.created",
            "company.deleted",
            "expenses.sync.successful",
            "expenses.sync.unsuccessful",
            "bankFeeds.sourceAccount.connected",
            "bankFeeds.sourceAccount.disconnected",
            "reports.categorizedBankStatement.generate.successful",
            "reports.categorizedBankStatement.generate.unsuccessful",
            *(
                f"{data_type}.write.{outcome}"
                for data_type in _WRITE_DATA_TYPES
                for outcome in ("successful", "unsuccessful")
            ),
        }
    )
)


def squash(rule_type: str) -> str:
    """Letters and digits only, lower case: legacy RuleTypes come as names and as prose."""
    return "".join(ch for ch in rule_type.lower() if ch.isalnum())


# Legacy RuleType, letters and digits only, lower case -> catalogue name.
LEGACY_BY_RULE = {squash(name): name for name in LEGACY_EVENTS} | {
    "ratelimitreached": "ClientRateLimitReached",
    "ratelimitreset": "ClientRateLimitReset",
}


def _lifecycle_types() -> tuple[str, ...]:
    """The lifecycle event types (docs/integrator/lifecycle-events.md), as their JSON Schema lists them."""
    import json
    from importlib.resources import files

    schema = json.loads(files("service.core").joinpath("lifecycle.schema.json").read_text())
    return tuple(schema["properties"]["type"]["enum"])


# What the workers derive and hand to CODAT_HANDLERS (workers.handlers), not what Codat sends.
LIFECYCLE_TYPES = _lifecycle_types()
# A Codat webhook type given where a lifecycle type belongs -> the lifecycle types derived from it.
LIFECYCLE_FROM_CODAT = {
    "connection.connected": ("connection.linked",),
    "connection.reconnected": ("connection.relinked",),
    "connection.disconnected": ("connection.unlinked", "connection.deauthorized"),
    "DataConnectionStatusChanged": (
        "connection.linked",
        "connection.relinked",
        "connection.unlinked",
        "connection.deauthorized",
    ),
    "read.completed": ("sync.completed", "sync.failed"),
    "read.completed.initial": ("sync.completed", "sync.failed"),
    "DataSyncCompleted": ("sync.completed", "sync.failed"),
    "DatasetDataChanged": ("sync.completed", "sync.failed"),
    "NewCompanySynchronized": ("sync.completed", "sync.failed"),
    "DataSyncStatusChangedToError": ("sync.failed",),
    "client.rateLimit.reached": ("rate_limit.paused",),
    "ClientRateLimitReached": ("rate_limit.paused",),
    "client.rateLimit.reset": ("rate_limit.resumed",),
    "ClientRateLimitReset": ("rate_limit.resumed",),
}
