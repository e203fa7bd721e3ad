"""Who sent this? Standard Webhooks signatures (Svix) and the legacy Authorization header.

The signature itself is computed by the `standardwebhooks` library (`Webhook.sign`, the scheme
Svix builds on). Its `verify()` is not used as-is because it fixes the tolerance at five minutes,
reads only the `webhook-*` header family, takes one secret, and raises ValueError or
binascii.Error on a malformed signature header. Here the headers are parsed first, strictly,
so that anything malformed is a rejection with a reason and never an exception.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

MAX_MESSAGE_ID_LENGTH = 256
# A v1 signature is an HMAC-SHA256 in base64: 44 characters.
_V1_LENGTH = 44


class Rejected(Exception):
    """Verification failed. `reason` is a stable label for logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Verifier:
    def __init__(
        self,
        secrets: Sequence[str],
        *,
        legacy_authorization: str | None = None,
        tolerance_seconds: int = 300,
    ) -> None:
        # Several secrets at once: during rotation Codat signs with the new one while
        # deliveries signed with the old one are still being retried.
        self._webhooks = [Webhook(secret) for secret in secrets]
        self._legacy = legacy_authorization.encode() if legacy_authorization else None
        self._tolerance = tolerance_seconds

    def verify(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Return the signed message id, or raise Rejected (or BodyNotText).

        A legacy delivery verified by its Authorization header has no id in its headers
        (None): its id is in the body.
        """
        names = _header_names(headers)
        if names is None:
            return self._verify_legacy(headers)
        msg_id, raw_timestamp, raw_signature = (headers.get(name) for name in names)
        if not msg_id or not raw_timestamp or not raw_signature:
            raise Rejected("missing_headers")
        if len(msg_id) > MAX_MESSAGE_ID_LENGTH or not msg_id.isascii():
            raise Rejected("malformed_id")
        timestamp = self._check_timestamp(raw_timestamp)
        candidates = _v1_signatures(raw_signature)
        if not candidates:
            raise Rejected("malformed_signature")
        text = _utf8(body)
        signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
        for webhook in self._webhooks:
            expected = webhook.sign(msg_id, signed_at, text)[3:].encode()  # strip "v1,"
            for candidate in candidates:
                if hmac.compare_digest(expected, candidate):
                    return msg_id
        raise Rejected("bad_signature")

    def _verify_legacy(self, headers: Mapping[str, str]) -> None:
        given = headers.get("authorization")
        if given is None:
            raise Rejected("missing_headers")
        if self._legacy is None:
            raise Rejected("legacy_auth_not_configured")
        # Header values arrive decoded as latin-1; encoding back gives the bytes Codat sent.
        if not hmac.compare_digest(given.encode("latin-1"), self._legacy):
            raise Rejected("bad_authorization")
        return None

    def _check_timestamp(self, raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
            raise Rejected("malformed_timestamp")
        timestamp = int(raw)
        now = time.time()
        if timestamp < now - self._tolerance:
            raise Rejected("stale_timestamp")
        if timestamp > now + self._tolerance:
            raise Rejected("future_timestamp")
        return timestamp


class BodyNotText(Exception):
    """The body is not UTF-8, so no Standard Webhooks signature can cover it."""


# Svix sends the same three headers under either prefix; all three are read from one.
_FAMILIES = (
    ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ("svix-id", "svix-timestamp", "svix-signature"),
)


def _header_names(headers: Mapping[str, str]) -> tuple[str, str, str] | None:
    for names in _FAMILIES:
        if names[0] in headers or names[1] in headers or names[2] in headers:
            return names
    return None


def _v1_signatures(header: str) -> list[bytes]:
    """The well-formed `v1,<base64>` entries of a space-separated signature header."""
    found = []
    for entry in header.split(" "):
        version, comma, signature = entry.partition(",")
        if version == "v1" and comma and len(signature) == _V1_LENGTH and signature.isascii():
            found.append(signature.encode())
    return found


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyNotText from None
