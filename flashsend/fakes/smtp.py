"""A loopback SMTP relay for tests, demos and benchmarks, built on aiosmtpd.

Django's SMTP backend talks to it unchanged::

    EmailBackend(host=server.host, port=server.port, timeout=2,
                 use_tls=False, use_ssl=False, username="", password="")

It speaks plain SMTP only (no STARTTLS, no AUTH), so FlashSend must run with
``SMTP_SECURITY=none`` and no username against it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, get_args

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from flashsend.fakes._lifecycle import StartStop

SmtpMode: TypeAlias = Literal["ok", "error", "reject"]
SMTP_MODES: Final[tuple[SmtpMode, ...]] = get_args(SmtpMode)
LOOPBACK: Final = "127.0.0.1"
MAX_DELAY_MS: Final = 60_000
MAX_FAIL_NEXT: Final = 1_000_000

# Postfix-style replies, so clients see the enhanced status codes a real relay sends.
REPLY_TEMPORARY_FAILURE: Final = "451 4.3.0 Error: temporary failure, try again later"
REPLY_UNKNOWN_RECIPIENT: Final = "550 5.1.1 <{address}>: Recipient address rejected: User unknown"


@dataclass(frozen=True)
class SmtpBehaviour:
    """How the relay answers. See ``FakeSmtpServer.set_behaviour``."""

    mode: SmtpMode = "ok"
    delay_ms: int = 0
    reject_recipients: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SmtpMessage:
    """A message the relay accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    body: str
    message_id: str
    received_at: datetime
    raw: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "subject": self.subject,
            "body": self.body,
            "message_id": self.message_id,
            "received_at": self.received_at.isoformat(),
        }


def _parse_message(raw: bytes) -> tuple[str, str, str]:
    """Subject, text body (plain preferred, else HTML) and Message-ID of a raw message."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(preferencelist=("plain", "html"))
    body = part.get_content() if part is not None else ""
    return str(message.get("Subject", "")), str(body), str(message.get("Message-ID", "")).strip()


class _State:
    """Behaviour, records and the connection count, shared by the loop thread and callers."""

    def __init__(self, max_records: int) -> None:
        self._lock = threading.Lock()
        self._messages: deque[SmtpMessage] = deque(maxlen=max_records)
        self.behaviour = SmtpBehaviour()
        self.fail_next = 0
        self.connections_opened = 0

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self.behaviour = SmtpBehaviour()
            self.fail_next = 0
            self.connections_opened = 0

    def configure(self, behaviour: SmtpBehaviour, fail_next: int) -> None:
        with self._lock:
            self.behaviour = behaviour
            self.fail_next = fail_next

    def connection_opened(self) -> None:
        with self._lock:
            self.connections_opened += 1

    def zero_connections(self) -> None:
        with self._lock:
            self.connections_opened = 0

    def rejects(self, address: str) -> bool:
        with self._lock:
            behaviour = self.behaviour
        return behaviour.mode == "reject" or address.lower() in behaviour.reject_recipients

    def data_outcome(self) -> tuple[SmtpBehaviour, bool]:
        """The behaviour for this DATA and whether it fails, spending one fail_next."""
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.behaviour, True
            return self.behaviour, self.behaviour.mode == "error"

    def add(self, message: SmtpMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def messages(self) -> list[SmtpMessage]:
        with self._lock:
            return list(self._messages)


class _Handler:
    """aiosmtpd hooks: refuse recipients at RCPT, fail or accept at DATA."""

    def __init__(self, state: _State) -> None:
        self._state = state

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self._state.rejects(address):
            return REPLY_UNKNOWN_RECIPIENT.format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        behaviour, fails = self._state.data_outcome()
        if behaviour.delay_ms:
            await asyncio.sleep(behaviour.delay_ms / 1000)  # a relay's queue write
        if fails:
            return REPLY_TEMPORARY_FAILURE
        raw = envelope.original_content or b""
        subject, body, message_id = _parse_message(raw)
        self._state.add(
            SmtpMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                subject=subject,
                body=body,
                message_id=message_id,
                received_at=datetime.now(UTC),
                raw=raw,
            )
        )
        return f"250 2.0.0 Ok: queued as {secrets.token_hex(5).upper()}"


class _Controller(Controller):
    """Serves on a socket bound beforehand (so port 0 works) and counts connections.

    aiosmtpd calls ``factory()`` once per accepted connection, which makes it the
    place to count them.
    """

    def __init__(self, handler: _Handler, sock: socket.socket, state: _State) -> None:
        super().__init__(
            handler,
            hostname=LOOPBACK,
            port=int(sock.getsockname()[1]),
            server_hostname="fake-smtp.localhost",  # skips a getfqdn() DNS lookup
            ident="FlashSend fake SMTP",
        )
        self._sock = sock
        self._state = state

    def factory(self) -> SMTP:
        self._state.connection_opened()
        return SMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


class FakeSmtpServer(StartStop):
    """An SMTP relay on 127.0.0.1 that records what it accepts.

    Behaviours (``set_behaviour``): ``ok``; ``error``: ``451 4.3.0`` at DATA (Django
    raises ``smtplib.SMTPDataError``); ``reject`` / ``reject_recipients``: ``550 5.1.1``
    at RCPT (``smtplib.SMTPRecipientsRefused`` once every recipient is refused);
    ``fail_next=N``: the next N messages get the 451; ``delay_ms`` before each DATA
    answer.
    """

    def __init__(self, *, port: int = 0, max_records: int = 100_000) -> None:
        self._port = port
        self._state = _State(max_records)
        self._lifecycle = threading.Lock()
        self._controller: _Controller | None = None
        self._bound_port: int | None = None

    def start(self) -> FakeSmtpServer:
        with self._lifecycle:
            if self._controller is not None:
                raise RuntimeError("the fake SMTP server is already running")
            sock = _bind(self._port)
            controller = _Controller(_Handler(self._state), sock, self._state)
            try:
                controller.start()
            except BaseException:
                sock.close()
                raise
            # start() opened one probe connection of its own; it is no client's.
            self._state.zero_connections()
            self._controller = controller
            self._bound_port = controller.port
        return self

    def stop(self) -> None:
        with self._lifecycle:
            controller, self._controller = self._controller, None
            self._bound_port = None
        if controller is not None:
            controller.stop()  # cancels sessions, closes the socket, joins the loop thread

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the fake SMTP server is not running; call start()")
        return self._bound_port

    @property
    def connections_opened(self) -> int:
        """SMTP connections accepted since start (or the last reset)."""
        return self._state.connections_opened

    def set_behaviour(
        self,
        mode: SmtpMode = "ok",
        *,
        delay_ms: int = 0,
        reject_recipients: Iterable[str] = (),
        fail_next: int = 0,
    ) -> None:
        """Replace how the relay answers, from the next command on."""
        if mode not in SMTP_MODES:
            raise ValueError(f"mode must be one of {', '.join(SMTP_MODES)}; got {mode!r}")
        if not 0 <= delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"delay_ms must be between 0 and {MAX_DELAY_MS}; got {delay_ms}")
        if not 0 <= fail_next <= MAX_FAIL_NEXT:
            raise ValueError(f"fail_next must be between 0 and {MAX_FAIL_NEXT}; got {fail_next}")
        if isinstance(reject_recipients, str):
            raise ValueError("reject_recipients must be a list of addresses, not one string")
        behaviour = SmtpBehaviour(
            mode=mode,
            delay_ms=delay_ms,
            reject_recipients=frozenset(a.lower() for a in reject_recipients),
        )
        self._state.configure(behaviour, fail_next)

    def behaviour(self) -> SmtpBehaviour:
        return self._state.behaviour

    def reset(self) -> None:
        """Forget messages, behaviour and the connection count."""
        self._state.reset()

    def messages(self) -> list[SmtpMessage]:
        """Accepted messages, oldest first."""
        return self._state.messages()

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[SmtpMessage]:
        """Poll until ``count`` messages arrived (for senders on other threads)."""
        deadline = time.monotonic() + timeout
        found = self.messages()
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            found = self.messages()
        return found


__all__ = ["SMTP_MODES", "FakeSmtpServer", "SmtpBehaviour", "SmtpMessage", "SmtpMode"]
