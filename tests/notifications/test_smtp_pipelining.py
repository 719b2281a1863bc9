"""SMTP command pipelining: two writes per message where offered, smtplib's contract kept."""

from __future__ import annotations

import email
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import pytest
from django.core.mail import EmailMessage as DjangoEmailMessage

from flashsend.fakes import FakeSmtpServer
from notifications.providers.base import OutboundMessage, ProviderError
from notifications.providers.email import SmtpProvider
from notifications.providers.smtp_pipelining import sendmail

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

SENDER = "noreply@example.com"


class CountingSMTP(smtplib.SMTP):
    """smtplib's client, counting the writes it makes on the socket."""

    def __init__(self, host: str, port: int) -> None:
        self.writes: list[bytes] = []
        super().__init__(host, port, local_hostname="localhost", timeout=5)

    def send(self, s: ReadableBuffer | str) -> None:
        self.writes.append(s.encode() if isinstance(s, str) else bytes(s))
        super().send(s)


def _message(n: int, to: str = "ada@example.com") -> bytes:
    message = EmailMessage()
    message["Subject"] = f"Subject {n}"
    message["From"] = SENDER
    message["To"] = to
    message.set_content(f"Body {n}\n.a line starting with a dot\n")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))  # as Django's


@pytest.fixture(params=[True, False], ids=["pipelining", "without"])
def relay(request: pytest.FixtureRequest) -> Iterator[FakeSmtpServer]:
    with FakeSmtpServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
def client(relay: FakeSmtpServer) -> Iterator[CountingSMTP]:
    connection = CountingSMTP(relay.host, relay.port)
    connection.ehlo()
    connection.writes.clear()
    yield connection
    connection.close()


def _offers_pipelining(relay: FakeSmtpServer) -> bool:
    probe = smtplib.SMTP(relay.host, relay.port, local_hostname="localhost", timeout=5)
    try:
        probe.ehlo()
        return probe.has_extn("pipelining")
    finally:
        probe.close()


def test_the_fake_relay_offers_pipelining_unless_told_not_to() -> None:
    with FakeSmtpServer() as offering, FakeSmtpServer(pipelining=False) as plain:
        assert _offers_pipelining(offering)
        assert not _offers_pipelining(plain)


def test_messages_arrive_whole_over_one_session(
    relay: FakeSmtpServer, client: CountingSMTP
) -> None:
    for n in range(3):
        assert sendmail(client, SENDER, ["ada@example.com"], _message(n)) == {}
    recorded = relay.messages()
    assert [m.subject for m in recorded] == ["Subject 0", "Subject 1", "Subject 2"]
    assert recorded[0].body == "Body 0\r\n.a line starting with a dot\r\n"  # dot kept
    assert {(m.mail_from, m.rcpt_tos) for m in recorded} == {(SENDER, ("ada@example.com",))}
    # Pipelined: MAIL+RCPT+DATA in one write, the message in another. Without: one
    # write per command (MAIL, RCPT, DATA, the message).
    assert len(client.writes) == 3 * (2 if _offers_pipelining(relay) else 4)
    assert relay.connections_opened == 2  # the client's, and the probe's just now


def test_a_refused_recipient_raises_and_the_session_carries_the_next(
    relay: FakeSmtpServer, client: CountingSMTP
) -> None:
    relay.set_behaviour(reject_recipients=["nobody@example.com"])
    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        sendmail(client, SENDER, ["nobody@example.com"], _message(0, "nobody@example.com"))
    assert [code for code, _ in caught.value.recipients.values()] == [550]
    assert sendmail(client, SENDER, ["ada@example.com"], _message(1)) == {}
    assert [m.subject for m in relay.messages()] == ["Subject 1"]


def test_some_recipients_refused_are_returned_and_the_rest_get_it(
    relay: FakeSmtpServer, client: CountingSMTP
) -> None:
    relay.set_behaviour(reject_recipients=["nobody@example.com"])
    refused = sendmail(client, SENDER, ["nobody@example.com", "ada@example.com"], _message(0))
    assert list(refused) == ["nobody@example.com"]
    assert refused["nobody@example.com"][0] == 550
    [message] = relay.messages()
    assert message.rcpt_tos == ("ada@example.com",)


def test_a_refused_sender_raises_and_the_session_carries_the_next(
    relay: FakeSmtpServer, client: CountingSMTP
) -> None:
    relay.set_behaviour("reject_sender")
    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
        sendmail(client, SENDER, ["ada@example.com"], _message(0))
    assert caught.value.smtp_code == 553
    relay.set_behaviour()
    assert sendmail(client, SENDER, ["ada@example.com"], _message(1)) == {}
    assert [m.subject for m in relay.messages()] == ["Subject 1"]


def test_a_refusal_after_the_data_raises_and_the_session_carries_the_next(
    relay: FakeSmtpServer, client: CountingSMTP
) -> None:
    relay.set_behaviour(fail_next=1)
    with pytest.raises(smtplib.SMTPDataError) as caught:
        sendmail(client, SENDER, ["ada@example.com"], _message(0))
    assert caught.value.smtp_code == 451
    assert sendmail(client, SENDER, ["ada@example.com"], _message(1)) == {}
    assert [m.subject for m in relay.messages()] == ["Subject 1"]


def test_an_address_with_a_line_break_is_refused_before_anything_is_sent(
    relay: FakeSmtpServer, client: CountingSMTP
) -> None:
    with pytest.raises(ValueError, match="line break"):
        sendmail(client, SENDER, ["ada@example.com\r\nRCPT TO:<eve@example.com>"], _message(0))
    assert relay.messages() == []


# --- replies no fake relay gives: a scripted one ------------------------------------


class OneSessionRelay:
    """A relay on a loopback port serving one session, as ``serve_session`` says."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, conn.makefile("rb") as lines:
            self.serve_session(conn, lines)

    def serve_session(self, conn: socket.socket, lines: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)


class ScriptedRelay(OneSessionRelay):
    """Answers EHLO with PIPELINING, then gives the scripted replies, one per line it
    reads (the message between 354 and its dot counts as one); records what it read."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.received: list[bytes] = []
        super().__init__()

    def serve_session(self, conn: socket.socket, lines: Any) -> None:
        conn.sendall(b"220 scripted ESMTP\r\n")
        lines.readline()  # EHLO
        conn.sendall(b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
        in_data = False
        for reply in self.replies:
            line = lines.readline()
            while in_data and line not in (b".\r\n", b""):
                line = lines.readline()
            self.received.append(line.strip())
            in_data = reply.startswith(b"354")
            conn.sendall(reply)
            if reply.startswith(b"421"):
                return


def test_data_accepted_after_every_recipient_was_refused_is_ended_with_a_lone_dot() -> None:
    # A relay that answers 354 to a pipelined DATA although no RCPT was accepted waits
    # for a message: RFC 2920 has the client end it with a dot, unsent, then RSET.
    replies = [b"250 ok", b"550 no such user", b"354 go on", b"554 no recipients", b"250 reset"]
    relay = ScriptedRelay([reply + b"\r\n" for reply in replies])
    connection = smtplib.SMTP("127.0.0.1", relay.port, local_hostname="localhost", timeout=5)
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            sendmail(connection, SENDER, ["nobody@example.com"], _message(0))
    finally:
        connection.close()
        relay.close()
    assert relay.received[0].startswith(b"MAIL FROM:<noreply@example.com> SIZE=")
    commands = [line.upper() for line in relay.received[1:]]  # smtplib sends "rset"
    assert commands == [b"RCPT TO:<NOBODY@EXAMPLE.COM>", b"DATA", b".", b"RSET"]


def test_a_relay_closing_with_421_leaves_the_session_closed() -> None:
    relay = ScriptedRelay([b"421 4.3.2 shutting down\r\n"])
    connection = smtplib.SMTP("127.0.0.1", relay.port, local_hostname="localhost", timeout=5)
    try:
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:  # as smtplib raises it
            sendmail(connection, SENDER, ["ada@example.com"], _message(0))
        assert caught.value.smtp_code == 421
        assert connection.sock is None  # closed, so the provider's next send reconnects
    finally:
        connection.close()
        relay.close()


def test_a_421_to_the_reset_after_a_refusal_leaves_the_session_closed() -> None:
    replies = [b"250 ok", b"550 no such user", b"554 no recipients", b"421 4.3.2 going away"]
    relay = ScriptedRelay([reply + b"\r\n" for reply in replies])
    connection = smtplib.SMTP("127.0.0.1", relay.port, local_hostname="localhost", timeout=5)
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused):  # the refusal is the news
            sendmail(connection, SENDER, ["nobody@example.com"], _message(0))
        assert connection.sock is None
    finally:
        connection.close()
        relay.close()


# --- the SMTP provider ----------------------------------------------------------------


@pytest.fixture
def smtp_settings(settings: Any) -> Iterator[tuple[Any, FakeSmtpServer]]:
    with FakeSmtpServer() as relay:
        settings.SMTP_HOST, settings.SMTP_PORT = relay.host, relay.port
        settings.SMTP_USE_TLS = settings.SMTP_USE_SSL = False
        settings.SMTP_FROM = "FlashSend <noreply@example.com>"
        settings.PROVIDER_TIMEOUT_SECONDS = 2.0
        yield settings, relay


def _outbound(to: str = "ann@example.com", subject: str = "Hi") -> OutboundMessage:
    return OutboundMessage(notification_id=1, channel="email", to=to, subject=subject, body="b")


def test_the_provider_reconnects_when_its_session_was_closed(
    smtp_settings: tuple[Any, FakeSmtpServer],
) -> None:
    _, relay = smtp_settings
    provider = SmtpProvider()
    provider.send(_outbound())
    session = provider._backend.connection
    assert session is not None
    session.close()  # as a 421 or a failed clean-up leaves it: kept, but closed
    provider.send(_outbound(subject="again"))
    assert [m.subject for m in relay.messages()] == ["Hi", "again"]
    assert relay.connections_opened == 2
    provider.close()


@pytest.mark.parametrize("to", ["ann@", "ann@@example.com", "<>", "ann@exa mple.com"])
def test_an_address_that_cannot_be_written_fails_for_good_without_touching_the_session(
    smtp_settings: tuple[Any, FakeSmtpServer], to: str
) -> None:
    _, relay = smtp_settings
    provider = SmtpProvider()
    with pytest.raises(ProviderError) as caught:
        provider.send(_outbound(to=to))
    assert (caught.value.permanent, caught.value.code) == (True, "invalid_recipient")
    assert relay.connections_opened == 0


def test_a_charset_spelled_otherwise_is_written_by_django(
    smtp_settings: tuple[Any, FakeSmtpServer],
) -> None:
    settings, relay = smtp_settings
    settings.DEFAULT_CHARSET = "UTF-8"  # Django encodes the body differently for this
    provider = SmtpProvider()
    provider.send(_outbound())
    provider.close()
    [message] = relay.messages()
    django = DjangoEmailMessage(subject="Hi", body="b", from_email=settings.SMTP_FROM, to=["x@y.z"])
    expected = django.message()["Content-Transfer-Encoding"]
    assert email.message_from_bytes(message.raw)["Content-Transfer-Encoding"] == expected


def test_a_bad_sender_address_fails_the_provider_not_the_chain(
    smtp_settings: tuple[Any, FakeSmtpServer],
) -> None:
    settings, relay = smtp_settings
    settings.SMTP_FROM = "noreply@@example.com"
    provider = SmtpProvider()  # built: the chain's other providers stay usable
    with pytest.raises(ValueError, match="Invalid address"):
        provider.send(_outbound())
    assert relay.messages() == []


def test_an_empty_sender_setting_sends_from_djangos_default_as_django_would(
    smtp_settings: tuple[Any, FakeSmtpServer],
) -> None:
    settings, relay = smtp_settings
    settings.SMTP_FROM = ""
    settings.DEFAULT_FROM_EMAIL = "Default <default@example.com>"
    provider = SmtpProvider()
    provider.send(_outbound())
    provider.close()
    [message] = relay.messages()
    assert message.mail_from == "default@example.com"
    assert email.message_from_bytes(message.raw)["From"] == "Default <default@example.com>"


class RefusingRelay(OneSessionRelay):
    """Greets with ``greeting``; if that is a 220, answers every line with ``reply``."""

    def __init__(self, greeting: bytes, reply: bytes = b"") -> None:
        self.greeting, self.reply = greeting, reply
        super().__init__()

    def serve_session(self, conn: socket.socket, lines: Any) -> None:
        conn.sendall(self.greeting)
        while self.greeting.startswith(b"220") and lines.readline():
            conn.sendall(self.reply)


@pytest.mark.parametrize(
    ("greeting", "reply"),
    [
        (b"554 5.7.1 client host blocked\r\n", b""),
        (b"421 4.3.2 too busy\r\n", b""),
        (b"220 relay ESMTP\r\n", b"550 5.7.1 not talking to you\r\n"),  # EHLO, then HELO
    ],
    ids=["554-greeting", "421-greeting", "helo-refused"],
)
def test_a_relay_that_will_not_talk_to_us_fails_the_attempt_not_the_message(
    smtp_settings: tuple[Any, FakeSmtpServer], greeting: bytes, reply: bytes
) -> None:
    """A refusal before any message says nothing about the message: a passing failure,
    so the chain tries the next provider and the notification is retried."""
    settings, _ = smtp_settings
    relay = RefusingRelay(greeting, reply)
    settings.SMTP_PORT = relay.port
    provider = SmtpProvider()
    try:
        with pytest.raises(ProviderError) as caught:
            provider.send(_outbound())
    finally:
        provider.close()
        relay.close()
    assert (caught.value.permanent, caught.value.code) == (False, "connection")
    assert provider._backend.connection is None


def _sent_once_then_dropped() -> SmtpProvider:
    """A provider that has sent "Hi" and whose session the relay has since dropped:
    its socket is shut down under smtplib, which still holds it and cannot know."""
    provider = SmtpProvider()
    provider.send(_outbound())
    session = provider._backend.connection
    assert session is not None
    assert session.sock is not None
    session.sock.shutdown(socket.SHUT_RDWR)
    return provider


def test_a_session_the_relay_dropped_while_idle_is_checked_and_replaced(
    smtp_settings: tuple[Any, FakeSmtpServer],
) -> None:
    settings, relay = smtp_settings
    settings.SMTP_IDLE_CHECK_SECONDS = 0.2
    provider = _sent_once_then_dropped()
    time.sleep(0.3)
    provider.send(_outbound(subject="after a pause"))
    provider.close()
    assert [m.subject for m in relay.messages()] == ["Hi", "after a pause"]
    assert relay.connections_opened == 2


def test_a_dropped_session_used_without_a_pause_fails_the_attempt_only(
    smtp_settings: tuple[Any, FakeSmtpServer],
) -> None:
    """Within SMTP_IDLE_CHECK_SECONDS no NOOP is spent: a session dropped meanwhile
    fails that one attempt (retried later), and the next send reconnects."""
    settings, relay = smtp_settings
    settings.SMTP_IDLE_CHECK_SECONDS = 60.0
    provider = _sent_once_then_dropped()
    with pytest.raises(ProviderError) as caught:
        provider.send(_outbound(subject="lost attempt"))
    assert (caught.value.permanent, caught.value.code) == (False, "connection")
    provider.send(_outbound(subject="next"))
    provider.close()
    assert [m.subject for m in relay.messages()] == ["Hi", "next"]
