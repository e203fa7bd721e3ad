"""Property-based fuzzing of POST /webhooks/codat against the real web process (uvicorn, Valkey).

Arbitrary header sets (either family, mixed, stray, legacy Authorization), ids, timestamps,
signature lists and bodies, signed with the test secret or not, sent as raw bytes so that nothing
a client library would refuse to send is left out. Whatever arrives: no 5xx but 503, the process
stays up, and every line it logs is JSON with no credential in it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import string
import time
from collections import Counter
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.web.httpserver import MAX_HEAD_BYTES
from tests.support import LEGACY_AUTH, OLD_SECRET, OPS_TOKEN, SECRET, Web, catalogue_examples
from tests.test_logs import CREDENTIALS

EXAMPLES = [orjson.dumps(body) for _, _, body in catalogue_examples()]
CREDENTIAL_VALUES = [SECRET, OLD_SECRET, SECRET.removeprefix("whsec_"), LEGACY_AUTH, OPS_TOKEN]
MAX_EXAMPLES = 250

# Header values as bytes: visible ASCII, tab, and obs-text (0x80-0xff); never CR, LF or NUL,
# which would end the header rather than test its value.
header_bytes = st.binary(max_size=80).map(lambda b: bytes(c for c in b if c in range(0x20, 0x100) and c != 0x7F))
token = st.text(string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=20)

msg_ids = st.one_of(
    st.builds(lambda n: f"msg_{n:032x}", st.integers(0, 2**128)),
    st.text(string.printable.strip(), max_size=300),
    st.text(max_size=40),  # any code point: non-ASCII ids must be refused, not crash
    st.sampled_from(CREDENTIAL_VALUES),  # an id the log would otherwise carry verbatim
    st.just(""),
)
timestamps = st.one_of(
    st.integers(-400, 400).map(lambda skew: str(int(time.time()) + skew)),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(str),
    st.text(max_size=20),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
bodies = st.one_of(
    st.sampled_from(EXAMPLES),
    json_values.map(lambda value: orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(orjson.dumps),
    st.integers(1, 1200).map(lambda depth: b'{"eventType":"x","a":' + b"[" * depth + b"]" * depth + b"}"),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"[]",
            b"null",
            b'{"a":"\xff"}',
            b'{"a":"\\ud800"}',
            b'{"a":1e400}',
            b'{"n":123456789012345678901234567890}',
            b'{"n":-9223372036854775809}',
            b"\xef\xbb\xbf{}",
        ]
    ),
)


def _v1(msg_id: str, timestamp: str, body: bytes, secret: str = SECRET) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode(errors="surrogatepass") + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = draw(bodies)
    # Well formed and signed half the time: the paths past verification get their share.
    well_formed = draw(st.booleans())
    msg_id = draw(msg_ids.filter(str.isascii).filter(bool) if well_formed else msg_ids)
    timestamp = str(int(time.time())) if well_formed else draw(timestamps)
    signed = well_formed or draw(st.booleans())
    entries = draw(
        st.lists(
            st.one_of(
                st.just(_v1(msg_id, timestamp, body))
                if signed
                else st.just(_v1(msg_id, timestamp, body, OLD_SECRET + "x")),
                st.builds(lambda raw: "v1," + base64.b64encode(raw).decode(), st.binary(min_size=32, max_size=32)),
                st.sampled_from(["v1a," + "A" * 88, "v1,", "v1", ",", "v2,abc", "v1,=" * 11]),
                st.text(max_size=50),
            ),
            max_size=4,
        )
    )
    if well_formed or (signed and draw(st.booleans())):  # the correct signature, among the others
        entries.insert(draw(st.integers(0, len(entries))), _v1(msg_id, timestamp, body))
    fields = {"id": msg_id, "timestamp": timestamp, "signature": draw(st.sampled_from([" ", "  ", ","])).join(entries)}
    headers: list[tuple[bytes, bytes]] = []
    for field, value in fields.items():
        families = [["webhook"], ["svix"], ["webhook", "svix"]] + ([] if well_formed else [[]])
        for family in draw(st.sampled_from(families)):
            headers.append((f"{family}-{field}".encode(), value.encode("utf-8", "surrogatepass")))
    authorization = draw(st.one_of(st.none(), st.just(LEGACY_AUTH), st.sampled_from(CREDENTIAL_VALUES), token))
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    headers += draw(st.lists(st.tuples(token.map(str.encode).filter(_not_framing), header_bytes), max_size=4))
    if draw(st.integers(0, 19)) == 0:  # now and then a head around the limit
        headers.append((b"x-pad", b"p" * draw(st.integers(MAX_HEAD_BYTES - 4096, MAX_HEAD_BYTES + 4096))))
    return draw(st.permutations(headers)), body


def _not_framing(name: bytes) -> bool:
    # These would change how the request is framed, not what it says: a test of the client.
    return name not in (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect")


def send(port: int, headers: list[tuple[bytes, bytes]], body: bytes) -> int | None:
    """The status code, or None if the server closed the connection without an answer."""
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request = b"POST /webhooks/codat HTTP/1.1\r\nhost: fuzz\r\nconnection: close\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        head,
        body,
    )
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(request)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return None
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def test_no_input_gets_a_5xx_crashes_the_process_or_breaks_a_log_line(web: Web) -> None:
    since = web.log_offset()
    statuses: Counter[int | None] = Counter()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(deliveries())
    def post_anything(delivery: tuple[list[tuple[bytes, bytes]], bytes]) -> None:
        headers, body = delivery
        status = send(web.port, headers, body)
        statuses[status] += 1
        head_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
        if status is None:  # only a head over the limit may be cut off without an answer
            assert head_bytes > MAX_HEAD_BYTES - 1024, headers
        else:
            assert status < 500 or status == 503, (status, headers, body[:200])
        assert web.proc is not None and web.proc.poll() is None, "the web process died"

    post_anything()
    print(f"fuzz: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert httpx.get(f"{web.url}/healthz", timeout=5).status_code == 200
    # The generator reaches every outcome, not only refusals.
    assert statuses[202] and statuses[401] and statuses[400], statuses
    with open(web.log_path, "rb") as log:
        log.seek(since)
        text = log.read().decode()
    lines = text.splitlines()
    assert len(lines) >= sum(statuses.values()) // 2
    for line in lines:
        entry: Any = orjson.loads(line)  # fails on any line that is not JSON
        assert isinstance(entry, dict) and "event" in entry and "level" in entry, line
    for name, value in CREDENTIALS.items():
        assert value not in text, f"the {name} reached the web log"
