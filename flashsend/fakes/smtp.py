"""A loopback SMTP relay for tests, demos and benchmarks, built on aiosmtpd.

It advertises PIPELINING (RFC 2920), as Postfix and the hosted relays do, and answers
pipelined commands in order; ``pipelining=False`` makes a relay without it.

Django's SMTP backend talks to it unchanged::

    EmailBackend(host=server.host, port=server.port, timeout=2,
                 use_tls=False, use_ssl=False, username="", password="")

It speaks plain SMTP only (no STARTTLS), so FlashSend must run with
``SMTP_SECURITY=none`` against it. It offers AUTH PLAIN and LOGIN over that plain
connection (``auth_require_tls=False``; a real relay would insist on TLS first):
with ``username``/``password`` given it requires them before MAIL, otherwise any
login is accepted and none is needed. Django logs in when both ``username`` and
``password`` are set (FlashSend: ``SMTP_USERNAME`` and ``SMTP_PASSWORD``)::

    EmailBackend(host=server.host, port=server.port, timeout=2,
                 use_tls=False, use_ssl=False, username="user", password="secret")
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import logging
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
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from flashsend.fakes._lifecycle import StartStop

SmtpMode: TypeAlias = Literal["ok", "error", "reject", "auth_fail", "reject_sender"]
SMTP_MODES: Final[tuple[SmtpMode, ...]] = get_args(SmtpMode)
LOOPBACK: Final = "127.0.0.1"
MAX_DELAY_MS: Final = 60_000
MAX_FAIL_NEXT: Final = 1_000_000

# Postfix-style replies, so clients see the enhanced status codes a real relay sends.
REPLY_TEMPORARY_FAILURE: Final = "451 4.3.0 Error: temporary failure, try again later"
REPLY_UNKNOWN_RECIPIENT: Final = "550 5.1.1 <{address}>: Recipient address rejected: User unknown"
REPLY_AUTH_FAILED: Final = "535 5.7.8 Error: authentication failed: authentication failure"
REPLY_AUTH_REQUIRED: Final = "530 5.7.0 Authentication required"
REPLY_SENDER_REFUSED: Final = (
    "553 5.7.1 <{address}>: Sender address rejected: not owned by user {login}"
)
REPLY_SENDER_OK: Final = "250 2.1.0 Ok"

# aiosmtpd logs a deprecation warning from inside its own AUTH command on every
# successful login (it sets the deprecated Session.login_data itself); it says
# nothing about this code, so it is dropped.
_AIOSMTPD_LOGIN_DATA_NOTICE: Final = "Session.login_data is deprecated"


class _DropLoginDataNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_AIOSMTPD_LOGIN_DATA_NOTICE)


_aiosmtpd_log = logging.getLogger("mail.log")
if not any(isinstance(f, _DropLoginDataNotice) for f in _aiosmtpd_log.filters):
    _aiosmtpd_log.addFilter(_DropLoginDataNotice())


@dataclass(frozen=True)
class SmtpBehaviour:
    """How the relay answers. See ``FakeSmtpServer.set_behaviour``."""

    mode: SmtpMode = "ok"
    delay_ms: int = 0
    reject_recipients: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SmtpMessage:
    """A message the relay accepted; ``login``: who the session logged in as, if anyone."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    body: str
    message_id: str
    received_at: datetime
    raw: bytes
    login: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "subject": self.subject,
            "body": self.body,
            "message_id": self.message_id,
            "received_at": self.received_at.isoformat(),
            "login": self.login,
        }


@dataclass(frozen=True)
class SmtpAuthAttempt:
    """One AUTH exchange (the password is not kept)."""

    login: str
    mechanism: str
    accepted: bool
    received_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "login": self.login,
            "mechanism": self.mechanism,
            "accepted": self.accepted,
            "received_at": self.received_at.isoformat(),
        }


@dataclass(frozen=True)
class _Credentials:
    """Expected login; None accepts any value. Either one given makes AUTH required."""

    username: str | None = None
    password: str | None = None

    @property
    def required(self) -> bool:
        return self.username is not None or self.password is not None

    def accept(self, login: str, password: str) -> bool:
        wrong_user = self.username is not None and not _same(login, self.username)
        wrong_password = self.password is not None and not _same(password, self.password)
        return not (wrong_user or wrong_password)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _parse_message(raw: bytes) -> tuple[str, str, str]:
    """Subject, text body (plain preferred, else HTML) and Message-ID of a raw message."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    part = message.get_body(preferencelist=("plain", "html"))
    body = part.get_content() if part is not None else ""
    return str(message.get("Subject", "")), str(body), str(message.get("Message-ID", "")).strip()


class _State:
    """Behaviour, records and the connection count, shared by the loop thread and callers."""

    def __init__(self, max_records: int, credentials: _Credentials, pipelining: bool) -> None:
        self._lock = threading.Lock()
        self.pipelining = pipelining
        self._messages: deque[SmtpMessage] = deque(maxlen=max_records)
        self._auth_attempts: deque[SmtpAuthAttempt] = deque(maxlen=max_records)
        self.credentials = credentials
        self.behaviour = SmtpBehaviour()
        self.fail_next = 0
        self.connections_opened = 0

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self._auth_attempts.clear()
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

    def refuses_sender(self) -> bool:
        with self._lock:
            return self.behaviour.mode == "reject_sender"

    def authenticate(self, mechanism: str, login: str, password: str) -> bool:
        """Whether this login is accepted (mode auth_fail refuses all); recorded."""
        with self._lock:
            accepted = self.behaviour.mode != "auth_fail" and self.credentials.accept(
                login, password
            )
            self._auth_attempts.append(
                SmtpAuthAttempt(login, mechanism, accepted, datetime.now(UTC))
            )
        return accepted

    def auth_attempts(self) -> list[SmtpAuthAttempt]:
        with self._lock:
            return list(self._auth_attempts)

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


def _session_login(session: Session) -> str | None:
    """The login of an authenticated session (``_authenticate`` stores it as auth_data)."""
    return (
        session.auth_data if session.authenticated and isinstance(session.auth_data, str) else None
    )


class _Handler:
    """aiosmtpd hooks: check logins, refuse senders at MAIL and recipients at RCPT,
    fail or accept at DATA."""

    def __init__(self, state: _State) -> None:
        self._state = state

    async def handle_EHLO(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd's EHLO reply, with PIPELINING added when offered (before the last line)."""
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        if self._state.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd's ``authenticator``: PLAIN and LOGIN hand over a LoginPassword."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_FAILED)
        login = auth_data.login.decode("utf-8", errors="replace")
        password = auth_data.password.decode("utf-8", errors="replace")
        if not self._state.authenticate(mechanism, login, password):
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_FAILED)
        return AuthResult(success=True, auth_data=login)

    async def handle_MAIL(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Checked here rather than with aiosmtpd's auth_required, which warns on
        # every connection when TLS is not required too.
        if self._state.credentials.required and not session.authenticated:
            return REPLY_AUTH_REQUIRED
        if self._state.refuses_sender():
            login = _session_login(session) or "anonymous"
            return REPLY_SENDER_REFUSED.format(address=address, login=login)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return REPLY_SENDER_OK

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
                login=_session_login(session),
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
            authenticator=handler.authenticate,
            auth_require_tls=False,  # AUTH over plain SMTP: the fake has no TLS
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
    ``auth_fail``: every AUTH gets ``535 5.7.8`` (``smtplib.SMTPAuthenticationError``),
    whatever the credentials; ``reject_sender``: ``553 5.7.1`` at MAIL FROM
    (``smtplib.SMTPSenderRefused``); ``fail_next=N``: the next N messages get the 451;
    ``delay_ms`` before each DATA answer.

    PIPELINING is offered unless ``pipelining=False``. AUTH (PLAIN, LOGIN) is offered
    without TLS. ``username``/``password``: given ones
    are enforced (``535 5.7.8`` otherwise), and either makes AUTH required before MAIL
    (``530 5.7.0``). Without them any login is accepted and none is needed. Each AUTH
    is recorded (``auth_attempts``), and each message with the login that sent it.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        max_records: int = 100_000,
        username: str | None = None,
        password: str | None = None,
        pipelining: bool = True,
    ) -> None:
        self._port = port
        self._state = _State(max_records, _Credentials(username, password), pipelining)
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
        """Forget messages, AUTH attempts, behaviour and the connection count."""
        self._state.reset()

    def messages(self) -> list[SmtpMessage]:
        """Accepted messages, oldest first."""
        return self._state.messages()

    def auth_attempts(self) -> list[SmtpAuthAttempt]:
        """Every AUTH exchange that reached a login check, oldest first."""
        return self._state.auth_attempts()

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[SmtpMessage]:
        """Poll until ``count`` messages arrived (for senders on other threads)."""
        deadline = time.monotonic() + timeout
        found = self.messages()
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            found = self.messages()
        return found


__all__ = [
    "SMTP_MODES",
    "FakeSmtpServer",
    "SmtpAuthAttempt",
    "SmtpBehaviour",
    "SmtpMessage",
    "SmtpMode",
]
