"""The verifier on its own, for what the HTTP tests cannot reach with one web process."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from service.core.config import ConfigError, Settings, signing_key
from service.web.verification import Unverified as Rejected
from service.web.verification import Verifier
from tests.support import SECRET, sign, sign_bytes

BODY = b'{"eventType": "connection.connected"}'


def test_legacy_authorization_without_configuration_is_refused() -> None:
    with pytest.raises(Rejected) as raised:
        Verifier([SECRET]).verify({"authorization": "anything"}, BODY)
    assert raised.value.reason == "legacy_auth_not_configured"


def test_tolerance_is_configurable_beyond_the_libraries_five_minutes() -> None:
    headers = sign(BODY, timestamp=int(time.time()) - 400)
    assert Verifier([SECRET], tolerance_seconds=600).verify(headers, BODY) == headers["webhook-id"]
    with pytest.raises(Rejected):
        Verifier([SECRET], tolerance_seconds=300).verify(headers, BODY)


def test_agrees_with_the_librarys_own_verify_on_what_it_accepts() -> None:
    headers = sign(BODY)
    assert Webhook(SECRET).verify(BODY, headers) is not None
    assert Verifier([SECRET]).verify(headers, BODY) == headers["webhook-id"]


def test_a_body_that_is_not_utf8_is_verified_over_its_bytes() -> None:
    # Who sent it is decided first: a wrong signature is a 401 whatever the body holds.
    body = b'{"name": "\xff\xfe"}'
    headers = sign_bytes(body)
    assert Verifier([SECRET]).verify(headers, body) == headers["webhook-id"]
    with pytest.raises(Rejected) as raised:
        Verifier([SECRET]).verify(sign(BODY), body)
    assert raised.value.reason == "bad_signature"


def test_signature_for_another_id_does_not_verify() -> None:
    headers = sign(BODY)
    other = Webhook(SECRET).sign(
        "msg_other", datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC), BODY.decode()
    )
    headers["webhook-signature"] = other
    with pytest.raises(Rejected) as raised:
        Verifier([SECRET]).verify(headers, BODY)
    assert raised.value.reason == "bad_signature"


# --- signing secrets: the rules docs/operator/configure.md states ------------------------------------------------

KEY = b"k" * 32
PADDED = base64.b64encode(KEY).decode()  # ends in "="


@pytest.mark.parametrize(
    "secret",
    ["whsec_" + PADDED, "whsec_" + PADDED.rstrip("="), PADDED, PADDED.rstrip("=")],
    ids=["whsec_ padded", "whsec_ unpadded", "bare padded", "bare unpadded"],
)
def test_secrets_load_as_the_standard_webhooks_libraries_read_them(secret: str) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://x", "CODAT_WEBHOOK_SECRETS": secret})
    assert signing_key(settings.webhook_secrets[0]) == KEY == Webhook(secret)._whsecret
    headers = sign(BODY, secret="whsec_" + PADDED)
    assert Verifier([secret]).verify(headers, BODY) == headers["webhook-id"]


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + PADDED[:20] + "*" + PADDED[20:],  # outside base64: the libraries would skip it
        "whsec_" + PADDED.replace("a", "-").replace("r", "_")[:-1],  # URL-safe alphabet
        "whsec_" + PADDED[:41],  # a length no base64 has
        "whsec_" + base64.b64encode(b"short").decode(),  # under 16 bytes
        "whsec_",
        "whsec_" + "ü" * 43,
    ],
    ids=["stray character", "url-safe", "bad length", "too short", "empty", "not ascii"],
)
def test_secrets_that_are_not_base64_keys_are_refused_without_echo(secret: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "redis://x", "CODAT_WEBHOOK_SECRETS": f"{SECRET},{secret}"})
    assert "entry 2" in str(raised.value)
    assert secret == "whsec_" or secret.removeprefix("whsec_") not in str(raised.value)


# --- header sets: whatever the svix library's Webhook.verify accepts, and only that -------------


def _header_sets() -> list[dict[str, str]]:
    good = sign(BODY)
    msg_id, timestamp, signature = good["webhook-id"], good["webhook-timestamp"], good["webhook-signature"]
    values = {
        "id": [msg_id, "msg_other", ""],
        "timestamp": [timestamp, "1000", ""],
        "signature": [signature, "v1," + "A" * 43 + "=", ""],
    }
    sets = []
    for field in ("id", "timestamp", "signature"):
        for family in ("svix", "webhook"):
            for value in values[field]:
                for base in ("webhook", "svix"):
                    headers = {f"{base}-id": msg_id, f"{base}-timestamp": timestamp, f"{base}-signature": signature}
                    headers[f"{family}-{field}"] = value
                    sets.append(headers)
    # one field from each family, in every split
    for mask in range(8):
        sets.append(
            {
                f"{('svix', 'webhook')[mask >> bit & 1]}-{field}": good[f"webhook-{field}"]
                for bit, field in enumerate(("id", "timestamp", "signature"))
            }
        )
    return sets


def test_header_sets_verify_exactly_as_the_svix_library_verifies_them() -> None:
    import svix.webhooks

    verifier, library = Verifier([SECRET]), svix.webhooks.Webhook(SECRET)
    accepted = 0
    for headers in _header_sets():
        try:
            library.verify(BODY, headers)
            theirs = True
        except svix.webhooks.WebhookVerificationError:
            theirs = False
        try:
            verifier.verify(headers, BODY)
            ours = True
        except Rejected:
            ours = False
        assert ours == theirs, headers
        accepted += ours
    assert accepted > 10  # the matrix holds accepted sets too, not only refusals
