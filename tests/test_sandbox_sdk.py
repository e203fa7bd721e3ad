"""Codat's own Python SDK (`codat-platform`) against the sandbox: the quick-start, and every
operation the sandbox implements, called through the SDK and parsed into its typed models. A
sandbox answer the SDK cannot parse raises ResponseValidationError (or SDKError for a status the
operation does not document), so each call passing is the check."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from codat_platform import CodatPlatform
from codat_platform.models import errors, shared
from codat_platform.utils import RetryConfig

from tests.sandbox_schema import IMPLEMENTED
from tests.support import SANDBOX_KEY, Sandbox, SandboxControl, wait_until

T = TypeVar("T")


class Recorded:
    """The SDK client, and the operations called through it that answered, by operationId."""

    def __init__(self, sdk: CodatPlatform) -> None:
        self.sdk = sdk
        self.covered: set[str] = set()

    def __call__(self, operation_id: str, call: Callable[[], T]) -> T:
        result = call()
        self.covered.add(operation_id)
        return result


@pytest.fixture
def codat(sandbox: SandboxControl, sandbox_process: Sandbox) -> Iterator[Recorded]:
    # No retries: the SDK would otherwise retry a 5xx for up to an hour and hide it.
    sdk = CodatPlatform(
        security=shared.Security(auth_header="Basic " + base64.b64encode(SANDBOX_KEY.encode()).decode()),
        server_url=sandbox_process.url,
        retry_config=RetryConfig("none", None, False),
        timeout_ms=10_000,
    )
    with sdk:
        yield Recorded(sdk)


def all_complete(codat: Recorded, company_id: str) -> Any:
    pulls = codat.sdk.refresh_data.list_pull_operations(request={"company_id": company_id})
    return pulls if pulls.results and all(p.status == shared.DatasetStatus.COMPLETE for p in pulls.results) else None


def test_quick_start_through_codats_sdk(codat: Recorded, sandbox: SandboxControl) -> None:
    company = codat(
        "create-company",
        lambda: codat.sdk.companies.create(request={"name": "Platypus Properties", "description": "quick-start"}),
    )
    assert isinstance(company, shared.Company) and company.redirect.endswith(f"/link/{company.id}")
    pending = codat(
        "create-connection",
        lambda: codat.sdk.connections.create(
            request={"company_id": company.id, "request_body": {"platform_key": "mqjo"}}
        ),
    )
    assert isinstance(pending, shared.Connection) and pending.status == shared.DataConnectionStatus.PENDING_AUTH

    linked = sandbox.http.post(f"/_sandbox/companies/{company.id}/link").json()  # the SMB finishes Link
    assert linked["id"] == pending.id and linked["status"] == "Linked"
    # Codat's Fetch on first link (on by default) queued the first pulls itself; a refresh while
    # they run would be DatasetAlreadyInProgressException (the last test here), so wait them out.
    wait_until(lambda: all_complete(codat, company.id), what="Codat's own first pulls complete")

    assert codat("refresh-company-data", lambda: codat.sdk.refresh_data.all(request={"company_id": company.id})) is None
    pulls = wait_until(lambda: all_complete(codat, company.id), what="the initial pulls complete")
    codat.covered.add("list-pull-operations")
    assert isinstance(pulls, shared.PullOperations) and pulls.links.self_.href.endswith("/data/history")
    assert {p.connection_id for p in pulls.results} == {pending.id}
    one = codat(
        "get-pull-operation",
        lambda: codat.sdk.refresh_data.get_pull_operation(
            request={"company_id": company.id, "dataset_id": pulls.results[0].id}
        ),
    )
    assert isinstance(one, shared.PullOperation) and one.id == pulls.results[0].id and one.is_completed
    statuses = codat("get-company-data-status", lambda: codat.sdk.refresh_data.get(request={"company_id": company.id}))
    assert isinstance(statuses, shared.DataStatuses)
    assert statuses.invoices is not None and statuses.invoices.current_status == shared.DatasetStatus.COMPLETE

    connections = codat("list-connections", lambda: codat.sdk.connections.list(request={"company_id": company.id}))
    assert isinstance(connections, shared.Connections) and connections.total_results == 1
    assert connections.results[0].status == shared.DataConnectionStatus.LINKED
    unlinked = codat(
        "unlink-connection",
        lambda: codat.sdk.connections.unlink(
            request={
                "company_id": company.id,
                "connection_id": pending.id,
                "update_connection_status": {"status": "Unlinked"},
            }
        ),
    )
    assert unlinked.status == shared.DataConnectionStatus.UNLINKED
    assert (
        codat(
            "delete-connection",
            lambda: codat.sdk.connections.delete(request={"company_id": company.id, "connection_id": pending.id}),
        )
        is None
    )
    assert codat("delete-company", lambda: codat.sdk.companies.delete(request={"company_id": company.id})) is None
    with pytest.raises(errors.ErrorMessage) as gone:
        codat.sdk.companies.get(request={"company_id": company.id})
    assert gone.value.status_code == 404 and gone.value.data.status_code == 404
    assert [a["eventType"] for a in sandbox.deliveries()] == []  # no consumer registered: nothing sent


def test_every_implemented_operation_parses_in_codats_sdk(codat: Recorded, sandbox: SandboxControl) -> None:
    # Each operation's own answer, not Codat's first pulls (they are the last test's subject).
    sandbox.http.put("/_sandbox/fetch-on-first-link", json={"dataTypes": []}).raise_for_status()
    sdk = codat.sdk
    companies = [
        codat("create-company", lambda n=n: sdk.companies.create(request={"name": f"Toft stores {n}"}))
        for n in range(3)
    ]
    first = companies[0]
    page = codat("list-companies", lambda: sdk.companies.list(request={"page": 2, "page_size": 1}))
    assert isinstance(page, shared.Companies) and page.total_results == 3 and len(page.results) == 1
    assert page.links.current.href == "/companies?page=2&pageSize=1"
    assert page.links.next is not None and page.links.next.href == "/companies?page=3&pageSize=1"
    assert page.links.previous is not None and page.links.previous.href == "/companies?page=1&pageSize=1"
    got = codat("get-company", lambda: sdk.companies.get(request={"company_id": first.id}))
    assert isinstance(got, shared.Company) and got.name == "Toft stores 0"

    connection = sandbox.http.post(f"/_sandbox/companies/{first.id}/link", json={"platformKey": "gbol"}).json()
    fetched = codat(
        "get-connection",
        lambda: sdk.connections.get(request={"company_id": first.id, "connection_id": connection["id"]}),
    )
    assert isinstance(fetched, shared.Connection) and fetched.platform_name == "Xero"
    authorised = codat(
        "update-connection-authorization",
        lambda: sdk.connections.update_authorization(
            request={"company_id": first.id, "connection_id": connection["id"], "request_body": {"token": "x"}}
        ),
    )
    assert authorised.connection_info == {"token": "x"}

    # Without connectionId, Codat queues on the company's (accounting) linked connection.
    pull = codat(
        "refresh-data-type",
        lambda: sdk.refresh_data.by_data_type(request={"company_id": first.id, "data_type": "invoices"}),
    )
    assert isinstance(pull, shared.PullOperation) and pull.connection_id == connection["id"]
    pull = sdk.refresh_data.by_data_type(
        request={"company_id": first.id, "data_type": "bills", "connection_id": connection["id"]}
    )
    assert pull.data_type == "bills" and pull.status == shared.DatasetStatus.INITIAL

    consumer = codat(
        "create-webhook-consumer",
        lambda: sdk.webhooks.create_consumer(
            request={"url": "http://127.0.0.1:9/webhooks/codat", "event_types": ["company.created"]}
        ),
    )
    assert isinstance(consumer, shared.WebhookConsumer) and consumer.event_types == ["company.created"]
    listed = codat("list-webhook-consumers", lambda: sdk.webhooks.list_consumers())
    assert [c.id for c in listed.results] == [consumer.id]
    assert (
        codat("delete-webhook-consumer", lambda: sdk.webhooks.delete_consumer(request={"webhook_id": consumer.id}))
        is None
    )

    for operation_id, call in [
        ("list-connections", lambda: sdk.connections.list(request={"company_id": first.id, "page_size": 5000})),
        ("list-pull-operations", lambda: sdk.refresh_data.list_pull_operations(request={"company_id": first.id})),
        ("refresh-company-data", lambda: sdk.refresh_data.all(request={"company_id": first.id})),
        ("get-company-data-status", lambda: sdk.refresh_data.get(request={"company_id": first.id})),
        (
            "unlink-connection",
            lambda: sdk.connections.unlink(
                request={
                    "company_id": first.id,
                    "connection_id": connection["id"],
                    "update_connection_status": {"status": "Unlinked"},
                }
            ),
        ),
        (
            "delete-connection",
            lambda: sdk.connections.delete(request={"company_id": first.id, "connection_id": connection["id"]}),
        ),
        (
            "create-connection",
            lambda: sdk.connections.create(request={"company_id": first.id, "request_body": {"platform_key": "mqjo"}}),
        ),
        (
            "get-pull-operation",
            lambda: sdk.refresh_data.get_pull_operation(request={"company_id": first.id, "dataset_id": pull.id}),
        ),
        ("delete-company", lambda: sdk.companies.delete(request={"company_id": first.id})),
    ]:
        codat(operation_id, call)
    assert codat.covered == set(IMPLEMENTED)


def test_sandbox_errors_parse_as_codats_error_message(codat: Recorded) -> None:
    sdk = codat.sdk
    unknown = str(uuid.uuid4())
    with pytest.raises(errors.ErrorMessage) as missing:
        sdk.connections.list(request={"company_id": unknown})
    assert missing.value.status_code == 404 and missing.value.data.error == "company not found"
    with pytest.raises(errors.ErrorMessage) as out_of_range:
        sdk.companies.list(request={"page_size": 5001})
    assert out_of_range.value.status_code == 400
    with pytest.raises(errors.ErrorMessage) as public:
        sdk.webhooks.create_consumer(request={"url": "https://hooks.example.com/webhooks/codat"})
    assert public.value.status_code == 400 and "loopback" in (public.value.data.error or "")
    with pytest.raises(errors.ErrorMessage) as nothing_linked:
        company = sdk.companies.create(request={"name": "Bank of Dave"})
        sdk.refresh_data.by_data_type(request={"company_id": company.id, "data_type": "invoices"})
    assert nothing_linked.value.status_code == 400


@pytest.mark.parametrize("status", [400, 409])
def test_already_in_progress_parses_as_codats_error_message(
    codat: Recorded, sandbox: SandboxControl, status: int
) -> None:
    # Codat's default: a first link queues the Fetch-on-first-link types itself, and queueing one
    # of them while it runs is DatasetAlreadyInProgressException (status undocumented: 400 or 409).
    sandbox.http.put("/_sandbox/fetch-on-first-link", json={"dataTypes": ["invoices", "bills"]}).raise_for_status()
    sandbox.http.put("/_sandbox/behaviour", json={"inProgressStatus": status}).raise_for_status()
    sdk = codat.sdk
    company = sdk.companies.create(request={"name": "Bank of Dave"})
    sandbox.http.post(f"/_sandbox/companies/{company.id}/link").raise_for_status()
    expected = f"DatasetAlreadyInProgressException: Cannot queue invoices sync for {company.id}"
    # 400 is documented for the operation, so the SDK parses Codat's ErrorMessage; a 409 is not,
    # so it raises its plain SDKError with the body: the service reads the text either way.
    raised = errors.ErrorMessage if status == 400 else errors.SDKError
    with pytest.raises(raised) as running:
        sdk.refresh_data.by_data_type(request={"company_id": company.id, "data_type": "invoices"})
    assert running.value.status_code == status and expected in str(running.value)
    with pytest.raises(raised) as all_running:
        sdk.refresh_data.all(request={"company_id": company.id})
    assert "DatasetAlreadyInProgressException" in str(all_running.value)
    pull = sdk.refresh_data.by_data_type(request={"company_id": company.id, "data_type": "customers"})
    assert pull.data_type == "customers"  # a type Codat is not pulling is queued as before
