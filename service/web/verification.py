"""Who sent this? Standard Webhooks signatures (Svix) and the legacy Authorization header.

The scheme is the `standardwebhooks` library's (HMAC-SHA256 over `{id}.{timestamp}.{body}`, the
scheme Svix builds on), computed here over the body's raw bytes. The library's `verify()` is not
used: it fixes the tolerance at five minutes, reads only the `webhook-*` header family, takes one
secret, signs text (so a body that is not UTF-8 fails before its signature is looked at), and
raises ValueError or binascii.Error on a malformed signature header. Here the headers are parsed
first, strictly, so that anything malformed is a rejection with a reason and never an exception.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Mapping, Sequence

from service.core.config import signing_key

MAX_MESSAGE_ID_LENGTH = 256
# A v1 signature is an HMAC-SHA256 in base64: 44 characters.
_V1_LENGTH = 44


class Unverified(Exception):
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
        # deliveries signed with the old one are still being retried. Each key's HMAC is set up
        # once and copied per delivery: hmac.digest would look the hash up by name and hash the
        # key again for every message.
        self._macs = [hmac.new(signing_key(secret), digestmod="sha256") for secret in secrets]
        self._legacy = legacy_authorization.encode() if legacy_authorization else None
        self._tolerance = tolerance_seconds

    def verify(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Return the signed message id, or raise Unverified.

        A legacy delivery verified by its Authorization header has no id in its headers
        (None): its id is in the body. The body is taken as bytes, whatever they are: whether
        they are usable is for the parser to say, once it is known who sent them.
        """
        msg_id, raw_timestamp, raw_signature = (_header(headers, name) for name in _FIELDS)
        if msg_id is None and raw_timestamp is None and raw_signature is None:
            return self._verify_legacy(headers)
        if not msg_id or not raw_timestamp or not raw_signature:
            raise Unverified("missing_headers")
        if len(msg_id) > MAX_MESSAGE_ID_LENGTH or not msg_id.isascii():
            raise Unverified("malformed_id")
        timestamp = self._check_timestamp(raw_timestamp)
        candidates = _v1_signatures(raw_signature)
        if not candidates:
            raise Unverified("malformed_signature")
        # What Webhook.sign signs, as bytes: the id is ASCII (checked above), the timestamp
        # an integer, so only the body could differ from the library's UTF-8 encoding of text.
        signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
        for keyed in self._macs:
            mac = keyed.copy()
            mac.update(signed)
            expected = base64.b64encode(mac.digest())
            for candidate in candidates:
                if hmac.compare_digest(expected, candidate):
                    return msg_id
        raise Unverified("bad_signature")

    def _verify_legacy(self, headers: Mapping[str, str]) -> None:
        given = headers.get("authorization")
        if given is None:
            raise Unverified("missing_headers")
        if self._legacy is None:
            raise Unverified("legacy_auth_not_configured")
        # Header values arrive decoded as latin-1; encoding back gives the bytes Codat sent.
        if not hmac.compare_digest(given.encode("latin-1"), self._legacy):
            raise Unverified("bad_authorization")
        return None

    def _check_timestamp(self, raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
            raise Unverified("malformed_timestamp")
        timestamp = int(raw)
        now = time.time()
        if timestamp < now - self._tolerance:
            raise Unverified("stale_timestamp")
        if timestamp > now + self._tolerance:
            raise Unverified("future_timestamp")
        return timestamp


# Svix sends the same three headers under either prefix. Each is read as the svix library's
# Webhook.verify reads it, so that what it accepts is accepted here: `svix-X` if present, else
# `webhook-X`, field by field (a mixed set, or a stray header of the other family, included).
_FIELDS = (("svix-id", "webhook-id"), ("svix-timestamp", "webhook-timestamp"), ("svix-signature", "webhook-signature"))


def _header(headers: Mapping[str, str], names: tuple[str, str]) -> str | None:
    value = headers.get(names[0])
    return headers.get(names[1]) if value is None else value


def _v1_signatures(header: str) -> list[bytes]:
    """The well-formed `v1,<base64>` entries of a space-separated signature header."""
    found = []
    for entry in header.split(" "):
        version, comma, signature = entry.partition(",")
        if version == "v1" and comma and len(signature) == _V1_LENGTH and signature.isascii():
            found.append(signature.encode())
    return found
