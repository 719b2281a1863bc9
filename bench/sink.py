"""A lean SMTP sink for the peer benchmark: a relay on another machine costs this one nothing.

The peer benchmark's senders and their sink share two cores. ``flashsend.fakes``'s relay
(aiosmtpd, built for tests: AUTH, behaviours, every message parsed) spends 0.7-0.9 ms
of CPU per message even with parsing off, which on this machine is a third of what a
fast sender spends, and it caps every sender that uses both cores. This sink speaks just
enough SMTP for any client (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) on one
asyncio protocol per connection, records each message's arrival time, sender, recipients
and size, and answers each DATA at once or after ``delay_ms`` (a relay's queue write).

It reads commands from a buffer in order, so a client that pipelines them (RFC 2920) is
answered correctly, and advertises PIPELINING as Postfix and the hosted relays do
(``pipelining=False``: a relay without it).

Same interface as the parts of ``FakeSmtpServer`` the benchmarks use: ``host``, ``port``,
``reset()``, ``set_behaviour(delay_ms=...)``, ``messages()``, ``wait_for_messages()``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, Protocol, TypeAlias, cast, get_args

from flashsend.fakes._lifecycle import StartStop

LOOPBACK: Final = "127.0.0.1"
MAX_LINE: Final = 4096
MAX_MESSAGE: Final = 10 * 1024 * 1024
END_OF_DATA: Final = b"\r\n.\r\n"


@dataclass(frozen=True)
class SinkMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    received_at: datetime


class _Records:
    """Messages and the delay, shared by the loop thread and the benchmark's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[SinkMessage] = []
        self.delay_ms = 0
        self.connections = 0


class _Session(asyncio.Protocol):
    """One SMTP conversation. Input is handled line by line from a buffer, so pipelined
    commands are answered in order; while a delayed DATA answer is pending, input waits."""

    def __init__(self, records: _Records, loop: asyncio.AbstractEventLoop, ehlo: bytes) -> None:
        self._records = records
        self._loop = loop
        self._ehlo = ehlo
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._in_data = False
        self._waiting = False
        self._mail_from: str | None = None
        self._rcpt: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # create_server gives TCP ones
        with self._records.lock:
            self._records.connections += 1
        self._transport.write(b"220 sink.localhost ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._waiting:
            self._process()

    def _reply(self, line: bytes) -> None:
        if self._transport is not None:
            self._transport.write(line)

    def _process(self) -> None:
        while self._transport is not None and not self._waiting:
            if self._in_data:
                end = self._buffer.find(END_OF_DATA)
                if end < 0:
                    if len(self._buffer) > MAX_MESSAGE:
                        self._reply(b"552 5.3.4 Message too big\r\n")
                        self._transport.close()
                    return
                size = end + 2
                del self._buffer[: end + len(END_OF_DATA)]
                self._in_data = False
                self._end_of_data(size)
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    self._reply(b"500 5.5.2 Line too long\r\n")
                    self._transport.close()
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._command(line)

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"MAIL":
            self._mail_from = _address(line)
            self._rcpt = []
            self._reply(b"250 2.1.0 Ok\r\n")
        elif verb == b"RCPT":
            if self._mail_from is None:
                self._reply(b"503 5.5.1 Error: need MAIL command\r\n")
            else:
                self._rcpt.append(_address(line))
                self._reply(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA":
            if not self._rcpt:
                self._reply(b"554 5.5.1 Error: no valid recipients\r\n")
            else:
                self._in_data = True
                self._reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"EHLO":
            self._reply(self._ehlo)
        elif verb == b"HELO":
            self._reply(b"250 sink.localhost\r\n")
        elif verb == b"RSET":
            self._mail_from, self._rcpt = None, []
            self._reply(b"250 2.0.0 Ok\r\n")
        elif verb == b"NOOP":
            self._reply(b"250 2.0.0 Ok\r\n")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye\r\n")
            if self._transport is not None:
                self._transport.close()
        else:
            self._reply(b"502 5.5.2 Error: command not recognized\r\n")

    def _end_of_data(self, size: int) -> None:
        message = (self._mail_from or "", tuple(self._rcpt), size)
        self._mail_from, self._rcpt = None, []
        delay = self._records.delay_ms
        if not delay:
            self._accept(message)
            return
        self._waiting = True
        self._loop.call_later(delay / 1000, self._accept_later, message)

    def _accept_later(self, message: tuple[str, tuple[str, ...], int]) -> None:
        self._waiting = False
        self._accept(message)
        self._process()

    def _accept(self, message: tuple[str, tuple[str, ...], int]) -> None:
        if self._transport is None:
            return
        record = SinkMessage(message[0], message[1], message[2], datetime.now(UTC))
        with self._records.lock:
            self._records.messages.append(record)
        self._reply(b"250 2.0.0 Ok: queued\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


def _address(line: bytes) -> str:
    """The address between the first < and > of MAIL FROM / RCPT TO (empty if none)."""
    start, end = line.find(b"<"), line.find(b">")
    return line[start + 1 : end].decode("utf-8", "replace") if 0 <= start < end else ""


class LeanSmtpSink(StartStop):
    """The sink on 127.0.0.1 (port 0: any free port), its loop on a thread of its own."""

    def __init__(self, *, port: int = 0, pipelining: bool = True) -> None:
        self._port = port
        self._records = _Records()
        extensions = [b"250-sink.localhost", b"250-SIZE 10485760", b"250-8BITMIME"]
        if pipelining:
            extensions.append(b"250-PIPELINING")
        self._ehlo = b"\r\n".join([*extensions, b"250 SMTPUTF8"]) + b"\r\n"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None

    def start(self) -> LeanSmtpSink:
        if self._thread is not None:
            raise RuntimeError("the sink is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: _Session(self._records, loop, self._ehlo), LOOPBACK, self._port
                )
            )
            self._bound_port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="lean-smtp-sink", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the sink did not start within 10 s")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._bound_port = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the sink is not running; call start()")
        return self._bound_port

    @property
    def connections_opened(self) -> int:
        return self._records.connections

    def reset(self) -> None:
        with self._records.lock:
            self._records.messages = []
            self._records.delay_ms = 0
            self._records.connections = 0

    def set_behaviour(self, *, delay_ms: int = 0) -> None:
        if not 0 <= delay_ms <= 60_000:
            raise ValueError(f"delay_ms must be between 0 and 60000; got {delay_ms}")
        with self._records.lock:
            self._records.delay_ms = delay_ms

    def messages(self) -> list[SinkMessage]:
        with self._records.lock:
            return list(self._records.messages)

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[SinkMessage]:
        deadline = time.monotonic() + timeout
        while True:
            with self._records.lock:
                arrived = len(self._records.messages)
            if arrived >= count or time.monotonic() >= deadline:
                return self.messages()
            time.sleep(0.01)


class Sink(Protocol):
    """What the benchmarks use of a sink: this one or ``flashsend.fakes.FakeSmtpServer``."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def reset(self) -> None: ...

    def set_behaviour(self, *, delay_ms: int = 0) -> None: ...

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> Sequence[Arrival]: ...


class Arrival(Protocol):
    @property
    def received_at(self) -> datetime: ...


SinkKind: TypeAlias = Literal["lean", "aiosmtpd"]
SINK_KINDS: Final[tuple[SinkKind, ...]] = get_args(SinkKind)


@contextmanager
def open_sink(kind: SinkKind, *, pipelining: bool = True, parse: bool = False) -> Iterator[Sink]:
    """The lean sink, or FakeSmtpServer (aiosmtpd; parsing each message only if ``parse``)."""
    if kind == "lean":
        with LeanSmtpSink(pipelining=pipelining) as lean:
            yield lean
        return
    if not parse:
        _skip_parsing()
    from flashsend.fakes import FakeSmtpServer

    with FakeSmtpServer(pipelining=pipelining) as fake:
        yield fake


def _skip_parsing() -> None:
    """Make FakeSmtpServer record arrivals without parsing each message.

    It parses every message it accepts (subject, body, Message-ID), about 1 ms of CPU
    each, in this process. The benchmarks only need the arrival times, so the parser is
    swapped for one that reads nothing, in this process only.
    """
    from flashsend.fakes import smtp

    if not hasattr(smtp, "_parse_message"):
        print("the sink's parser was not found; messages are parsed", flush=True)
        return

    def no_parse(raw: bytes) -> tuple[str, str, str]:
        return "", "", ""

    smtp._parse_message = no_parse
