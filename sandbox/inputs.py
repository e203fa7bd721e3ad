"""Request checks for the operations the sandbox implements, as Codat-Platform.json defines their
inputs. Anything else is refused with `Invalid` (a 400), so nothing the sandbox stores can later
fail to serialise: an integer beyond 64 bits in a description once broke every event about its
company, because orjson writes only 64-bit integers."""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from sandbox import catalogue

_SPEC = catalogue.platform()["components"]
DATA_TYPES = frozenset(_SPEC["schemas"]["DataStatus"]["properties"]["dataType"]["enum"])
CONNECTION_STATUSES = frozenset(_SPEC["schemas"]["Connection"]["definitions"]["dataConnectionStatus"]["enum"])
_PAGE_SIZE = _SPEC["parameters"]["pageSize"]["schema"]
# PagingInfo caps a page at 2000 results while the pageSize parameter takes up to 5000: larger
# requests are accepted and served in pages of 2000, so the answer still fits Codat's schema.
_SERVED_PAGE_SIZE = _SPEC["schemas"]["PagingInfo"]["properties"]["pageSize"]["maximum"]
_INT32_MAX = 2**31 - 1
_COMPANY_NAME = re.compile(_SPEC["schemas"]["CompanyRequestBody"]["properties"]["name"]["pattern"])
_TAG_NAME = re.compile(
    _SPEC["schemas"]["Company"]["definitions"]["companyDetails"]["properties"]["tags"]["propertyNames"]["pattern"]
)
_PLATFORM_KEY = re.compile(r"[a-z]{4}")
_INTEGER = re.compile(r"-?[0-9]+")
_MAX_CONSUMERS = 50  # the most Codat's webhook consumer list holds (maxItems)


class Invalid(ValueError):
    """A request Codat would refuse with a 400; the message says why."""


def _kept(value: Any) -> Any:
    """What a request leaves in the sandbox, refused unless orjson can write it (the types are
    checked already; this catches a lone surrogate, which JSON can carry and UTF-8 cannot)."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise Invalid("a value cannot be stored: it is not valid Unicode") from None
    return value


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid(f"the body must be a JSON object ({what})")
    return body


def _string(body: dict[str, Any], key: str, *, required: bool = False, nullable: bool = False) -> str | None:
    """A field that is given must have its type: null only where the spec says `nullable`."""
    if (key not in body and not required) or (body.get(key) is None and nullable):
        return None
    value = body.get(key)
    if not isinstance(value, str):
        raise Invalid(f"{key} must be a string")
    return value


def _int32(text: str, name: str, minimum: int, maximum: int = _INT32_MAX) -> int:
    if not _INTEGER.fullmatch(text) or not minimum <= int(text) <= maximum:
        raise Invalid(f"{name} must be an integer from {minimum} to {maximum}")
    return int(text)


def paging(query: dict[str, str]) -> tuple[int, int]:
    """(page, page size) from `page` and `pageSize`; their defaults and bounds are the spec's."""
    page = _int32(query.get("page", "1"), "page", 1)
    size = _int32(
        query.get("pageSize", str(_PAGE_SIZE["default"])), "pageSize", _PAGE_SIZE["minimum"], _PAGE_SIZE["maximum"]
    )
    return page, min(size, _SERVED_PAGE_SIZE)


def links(path: str, query: dict[str, str], page: int, size: int, total: int) -> dict[str, Any]:
    """Codat's HAL links for one page: self, current, and next / previous where there is one."""
    kept = {key: query[key] for key in ("query", "orderBy", "tags") if key in query}

    def href(number: int) -> dict[str, str]:
        return {"href": f"{path}?{urlencode({**kept, 'page': number, 'pageSize': size})}"}

    found: dict[str, Any] = {"self": {"href": path}, "current": href(page)}
    if page * size < total:
        found["next"] = href(page + 1)
    if page > 1:
        found["previous"] = href(min(page - 1, max(1, -(-total // size))))
    return found


def uuid_or_none(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        raise Invalid(f"{name} must be a UUID") from None
    return value


def data_type(value: str) -> str:
    if value not in DATA_TYPES:
        raise Invalid(f"{value!r} is not a Codat data type")
    return value


def company(body: Any) -> tuple[str, str | None, str | None, dict[str, str] | None]:
    """(name, description, platformType, tags) of a create-company body."""
    body = _object(body, "CompanyRequestBody")
    name = _string(body, "name", required=True)
    if not name or not _COMPANY_NAME.fullmatch(name):
        raise Invalid("name is required: letters, digits, spaces and -',&@.?! only")
    tags = body.get("tags")
    if "tags" in body:
        if not isinstance(tags, dict) or len(tags) > 10:
            raise Invalid("tags must be an object of at most 10 tags")
        for key, value in tags.items():
            if not _TAG_NAME.search(key) or not isinstance(value, str) or len(value) > 100:
                raise Invalid("each tag is a name of 1-27 characters and a string of at most 100")
    # platformType is not in Codat's spec, but the service's CLI and the seeds' quick-start send it.
    return _kept((name, _string(body, "description"), _string(body, "platformType", nullable=True), tags))


def platform_key(body: Any) -> str:
    key = _string(_object(body, '{"platformKey": "mqjo"}'), "platformKey", required=True)
    if key is None or not _PLATFORM_KEY.fullmatch(key):
        raise Invalid("platformKey (four lower-case letters) is required")
    return key


def unlink(body: Any) -> None:
    body = _object(body, '{"status": "Unlinked"}')
    status = body.get("status")
    if set(body) - {"status"} or not (status is None or (isinstance(status, str) and status in CONNECTION_STATUSES)):
        raise Invalid("the body is UpdateConnectionStatus: only a status")
    if status != "Unlinked":
        raise Invalid('the only change is {"status": "Unlinked"}')


def authorization(body: Any) -> dict[str, str]:
    body = _object(body, "strings by name")
    if not all(isinstance(value, str) for value in body.values()):
        raise Invalid("every authorization value must be a string")
    return _kept(body)


def consumer(body: Any, allow_any_host: bool, registered: int) -> tuple[str, list[str], bool, list[str] | None]:
    """(url, eventTypes, disabled, companyTags) of a create-webhook-consumer body."""
    body = _object(body, "webhookConsumerPrototype")
    url = _string(body, "url", required=True)
    assert url is not None
    refused = url_refusal(url, allow_any_host)
    if refused:
        raise Invalid(refused)
    event_types = body.get("eventTypes")
    if "eventTypes" in body and not (isinstance(event_types, list) and all(isinstance(t, str) for t in event_types)):
        raise Invalid("eventTypes must be a list of strings")
    disabled = body.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise Invalid("disabled must be true or false")
    tags = body.get("companyTags")
    if tags is not None and not (
        isinstance(tags, list) and len(tags) <= 10 and all(isinstance(t, str) and len(t) <= 128 for t in tags)
    ):
        raise Invalid("companyTags must be at most 10 strings of at most 128 characters")
    if registered >= _MAX_CONSUMERS:
        raise Invalid(f"at most {_MAX_CONSUMERS} webhook consumers")
    return _kept((url, event_types or [], bool(disabled), tags))


def url_refusal(url: str, allow_any_host: bool) -> str | None:
    """Why the sandbox will not deliver to `url`, or None. Only loopback hosts, unless allowed:
    a sandbox must not post events to the internet because someone registered a public URL.
    The host is judged as written, never looked up, so no public name is ever resolved."""
    try:
        parsed = httpx.URL(url)
        host, port = parsed.host, parsed.port  # the host's IDNA form is decoded here, and may fail
    except (httpx.InvalidURL, ValueError):
        return "url is not a valid URL"
    if parsed.scheme not in ("http", "https") or not host or (port is not None and not 0 < port < 65536):
        return "url must be an absolute http or https URL"
    if allow_any_host or host == "localhost":
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        return (
            "the sandbox delivers only to loopback hosts (127.0.0.0/8, ::1, localhost);"
            " SANDBOX_ALLOW_ANY_HOST=1 allows others"
        )
    return None


def sync_settings(body: Any) -> dict[str, dict[str, Any]]:
    """POST .../syncSettings: {settings: [SyncSetting, ...]} (Codat-Platform.json), by data type.
    `dataType` and `fetchOnFirstLink` are what the sandbox acts on; the rest is kept as given."""
    settings = _object(body, "sync settings").get("settings")
    if not isinstance(settings, list):
        raise Invalid("settings must be a list of SyncSetting objects")
    found: dict[str, dict[str, Any]] = {}
    for setting in settings:
        setting = _object(setting, "SyncSetting")
        name = data_type(str(_string(setting, "dataType", required=True)))
        if not isinstance(setting.get("fetchOnFirstLink"), bool):
            raise Invalid("fetchOnFirstLink must be true or false")
        found[name] = _kept(dict(setting))
    return found
