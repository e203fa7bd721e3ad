"""The verifier on its own, for what the HTTP tests cannot reach with one web process."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from service.verification import BodyNotText, Rejected, Verifier
from tests.support import SECRET, sign

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


def test_a_body_that_is_not_utf8_cannot_be_verified() -> None:
    headers = sign(BODY)
    with pytest.raises(BodyNotText):
        Verifier([SECRET]).verify(headers, b"\xff\xfe")


def test_signature_for_another_id_does_not_verify() -> None:
    headers = sign(BODY)
    other = Webhook(SECRET).sign("msg_other", datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC),
                                 BODY.decode())
    headers["webhook-signature"] = other
    with pytest.raises(Rejected) as raised:
        Verifier([SECRET]).verify(headers, BODY)
    assert raised.value.reason == "bad_signature"
