"""The HTTP server's protocols: a request's head (request line and headers) is bounded, whichever
parser uvicorn runs, before it can cost memory; and with httptools, a response's head and body
leave in one write (OneWriteTransport).

httptools (llhttp) has no bound: it buffers a header however long it grows, so one unsigned
request with a 64 MB header once took the web process from 46 MB to 175 MB at its peak.
BoundedHttpToolsProtocol counts the bytes of the head still being parsed and, past
MAX_HEAD_BYTES, answers 431 and closes the connection. h11 bounds only a head still incomplete
after a read, so a larger one that arrives within one read passes: BoundedH11Protocol also
measures each finished head (uvicorn then answers 400 and closes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Literal

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 64 * 1024

log = structlog.get_logger(__name__)

_BODY = b'{"status":"headers_too_large"}'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)

Parser = Literal["auto", "httptools", "h11"]

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (e.g. PyPy): protocol() falls back to h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def protocol(parser: Parser = "auto") -> type[asyncio.Protocol]:
    """What to give uvicorn as `http`."""
    if parser == "h11" or (parser == "auto" and HttpToolsProtocol is None):
        return BoundedH11Protocol
    if HttpToolsProtocol is None:
        raise RuntimeError("httptools is not installed")
    return BoundedHttpToolsProtocol


def _head_size(url: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int:
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)  # ": " and CRLF


class _BoundedH11Connection(h11.Connection):
    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request) and _head_size(event.target, event.headers.raw_items()) > MAX_HEAD_BYTES:
            log.warning("http.headers_too_large", status=400, limit=MAX_HEAD_BYTES)
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with every head bounded: incomplete ones by h11, finished ones here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _BoundedH11Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)


class OneWriteTransport:
    """The transport as uvicorn's request cycle sees it: a response's head goes out with its body.

    uvicorn writes the head (status line and headers) and then the body, each with a send() of
    its own, and on loopback each send costs the sender about as much as a delivery's signature
    check. Here a write is held until the next one in the same turn of the event loop, which
    takes it along: a fixed answer (every webhook's) leaves in one send(). A write with no
    follower (a streamed body's head, waiting for its first chunk) leaves at the end of the turn,
    as it would have before the loop waited for anything else, and always before a close.

    It is the protocol's transport, not only the request cycle's: the protocol's own answers (a
    400 for a malformed pipelined request, the 431 refusal) and closes (shutdown, the keep-alive
    timeout) go through it too, so they can neither pass nor drop a held write. Everything else
    (flow control, extra info) is the real transport's.
    """

    __slots__ = ("_flush_due", "_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_due = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush)
        else:
            self._held = None
            self.transport.write(b"".join((held, data)))

    def _flush(self) -> None:
        self._flush_due = False
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, with the head bounded.

        The parser calls back only once a URL or header is complete, so the bytes are counted
        as they arrive: a chunk that leaves the head unfinished, and began inside it, is all head.
        On a chunk that finishes a head, the head is measured exactly, but only when the chunk
        is large enough for it to matter: an ordinary delivery pays for a few comparisons.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_open = True  # between a message's end (or the connection's start) and its headers
            self._head_bytes = 0  # bytes known to be inside the open head
            self._chunk_bytes = 0
            self._message_done = False  # a message ended inside this chunk: it did not all belong to the head
            self._refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            if self._refused:  # closing: whatever still arrives is dropped unread
                return
            began_in_head, self._message_done = self._head_open, False
            self._chunk_bytes = len(data)
            super().data_received(data)
            if self._refused:
                self._refuse()
            elif self._head_open and began_in_head and not self._message_done:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refused = True
                    self._refuse()

        def on_headers_complete(self) -> None:
            self._head_open = False
            if self._refused or (
                self._head_bytes + self._chunk_bytes > MAX_HEAD_BYTES
                and _head_size(self.url, self.headers) > MAX_HEAD_BYTES
            ):
                self._refused = True  # no request cycle: the app never sees it
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._head_open, self._head_bytes, self._message_done = True, 0, True
            if not self._refused:
                super().on_message_complete()

        def _should_upgrade(self) -> bool:
            # A refused head has no request scope to upgrade with.
            return not self._refused and super()._should_upgrade()

        def _refuse(self) -> None:
            if self.transport.is_closing():  # already answered (a parser error's 400)
                return
            log.warning("http.headers_too_large", status=431, limit=MAX_HEAD_BYTES)
            self.transport.write(_TOO_LARGE)
            self.transport.close()
