"""Email over SMTP: Django's MIME message and session, one connection per worker thread.

Django opens, logs in to and closes the session, and builds every message that needs
its care (encoded or folded headers, quoted-printable bodies); the simple ones, most
notifications, are written directly with the same bytes (``mime``). The envelope and
the transfer are done here rather than by ``EmailBackend.send_messages``: the
sender's address is checked once per provider, not once per message, and the
transfer pipelines its commands when the relay offers PIPELINING
(``smtp_pipelining``), two round trips per message instead of four.
"""

from __future__ import annotations

import contextlib
import smtplib
import time
from email.utils import formatdate, make_msgid

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.message import sanitize_address
from django.core.mail.utils import DNS_NAME

from notifications.providers import mime, smtp_pipelining
from notifications.providers.base import OutboundMessage, Provider, ProviderError, SendResult
from notifications.providers.smtp_pipelining import CLOSING


def is_configured() -> bool:
    return bool(settings.SMTP_HOST)


class SmtpProvider(Provider):
    name = "smtp"
    channel = "email"

    def __init__(self) -> None:
        self._backend = EmailBackend(
            host=settings.SMTP_HOST,
            port=settings.SMTP_PORT,
            username=settings.SMTP_USERNAME or None,
            password=settings.SMTP_PASSWORD or None,
            use_tls=settings.SMTP_USE_TLS,
            use_ssl=settings.SMTP_USE_SSL,
            timeout=settings.PROVIDER_TIMEOUT_SECONDS,
            fail_silently=False,
        )
        self._envelope_from: str | None = None  # checked on first send, see _sender()
        self._last_used = 0.0  # monotonic time of the session's last message
        # Whether messages may be written directly (mime.plain_text): the From header
        # must be one Django writes as it is, and the charset exactly "utf-8", the one
        # value for which Django picks 8bit or quoted-printable as mime does.
        self._direct = (
            settings.DEFAULT_CHARSET == "utf-8"
            and bool(settings.SMTP_FROM)  # Django writes DEFAULT_FROM_EMAIL for an empty one
            and mime.header_fits("From", settings.SMTP_FROM)
        )

    def send(self, message: OutboundMessage) -> SendResult:
        # The Message-ID Django would make, made here so it can be returned.
        message_id = make_msgid(domain=str(DNS_NAME))
        recipient, raw = _envelope_and_message(message, message_id, self._direct)
        envelope_from = self._sender()
        connection = self._open()
        try:
            smtp_pipelining.sendmail(connection, envelope_from, [recipient], raw)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refused(exc) from exc
        except smtplib.SMTPSenderRefused as exc:
            self.close()
            if exc.smtp_code == CLOSING:  # the relay is going away, not refusing us
                raise _response_error(exc) from exc
            # Our sender address, not the recipient: an operator can fix it, so the
            # message waits and retries instead of failing.
            raise ProviderError(
                f"SMTP {exc.smtp_code}: our sender was refused: {exc}", code="account"
            ) from exc
        except smtplib.SMTPHeloError as exc:
            # EHLO and HELO refused: the relay will not talk to this client, which says
            # nothing about the message (smtplib greets on the first message).
            self.close()
            raise _unavailable(exc) from exc
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise _response_error(exc) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self.close()  # the session is unusable; the next send reconnects
            raise ProviderError(f"SMTP: {type(exc).__name__}: {exc}", code="connection") from exc
        finally:
            self._last_used = time.monotonic()
        return SendResult(message_id=message_id.strip("<>"))

    def _open(self) -> smtplib.SMTP:
        """This thread's session, opened if need be.

        A failure to open one says nothing about the message: the relay is down, busy
        or refusing this client (a 554 greeting included), so it is never permanent and
        the chain goes on to the next provider. A refused login is the operator's to fix.
        """
        try:
            return self._session()
        except smtplib.SMTPAuthenticationError as exc:
            self.close()
            raise ProviderError(
                f"SMTP {exc.smtp_code}: our login was refused: {exc}", code="account"
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self.close()
            raise _unavailable(exc) from exc

    def _sender(self) -> str:
        """The envelope sender, SMTP_FROM checked once. Checked here rather than when
        the provider is built, so that a bad SMTP_FROM fails this provider's attempts
        (the chain goes on to the next) instead of the building of the whole chain."""
        if self._envelope_from is None:
            sender = settings.SMTP_FROM or settings.DEFAULT_FROM_EMAIL  # as Django's header
            self._envelope_from = sanitize_address(sender, settings.DEFAULT_CHARSET)
        return self._envelope_from

    def _session(self) -> smtplib.SMTP:
        """This thread's open session: the kept one, or a new one if it has ended."""
        kept = self._backend.connection
        if kept is not None and not self._still_open(kept):
            self.close()  # closed by a 421, a refusal's clean-up or the relay: reconnect
        # open() is a no-op while the connection is up: one SMTP session serves every
        # message this thread sends.
        self._backend.open()
        connection = self._backend.connection
        if connection is None:  # open() reports failures by raising; never here
            raise smtplib.SMTPServerDisconnected("the SMTP session did not open")
        return connection

    def _still_open(self, kept: smtplib.SMTP) -> bool:
        """Whether the kept session can carry a message. Relays end sessions left idle
        (Postfix after 300 s, hosted relays sooner) without smtplib noticing: a message
        written into one fails and waits a retry round. So a session idle for
        SMTP_IDLE_CHECK_SECONDS is asked a NOOP first, one round trip after a pause."""
        if getattr(kept, "sock", None) is None:
            return False
        if time.monotonic() - self._last_used < settings.SMTP_IDLE_CHECK_SECONDS:
            return True
        try:
            code, _ = kept.noop()
        except (TimeoutError, smtplib.SMTPException, OSError):
            return False
        return code == 250

    def close(self) -> None:
        # Closing a broken connection may fail too; either way it is gone.
        with contextlib.suppress(Exception):
            self._backend.close()
        self._backend.connection = None


def _envelope_and_message(
    message: OutboundMessage, message_id: str, direct: bool
) -> tuple[str, bytes]:
    """The envelope recipient and the message's bytes. An address or a message that
    cannot be written (Django refuses it) never will be: a permanent failure, not a
    reason to retry or to drop the session."""
    try:
        recipient = mime.envelope_address(message.to) or sanitize_address(
            message.to, settings.DEFAULT_CHARSET
        )
    except (ValueError, TypeError) as exc:  # Django's parser raises both on bad input
        raise ProviderError(
            f"invalid recipient address: {exc}", permanent=True, code="invalid_recipient"
        ) from exc
    try:
        raw = (direct and _direct_message(message, message_id)) or _django_message(
            message, message_id
        )
    except ValueError as exc:  # BadHeaderError is a ValueError
        raise ProviderError(
            f"the message cannot be written: {exc}", permanent=True, code="invalid_message"
        ) from exc
    return recipient, raw


def _direct_message(message: OutboundMessage, message_id: str) -> bytes | None:
    return mime.plain_text(
        from_header=settings.SMTP_FROM,
        to=message.to,
        subject=message.subject,
        body=message.body,
        date=formatdate(localtime=settings.EMAIL_USE_LOCALTIME),
        message_id=message_id,
    )


def _django_message(message: OutboundMessage, message_id: str) -> bytes:
    """The message as Django's EmailMessage writes it (encoded, folded headers)."""
    email = EmailMessage(
        subject=message.subject,
        body=message.body,
        from_email=settings.SMTP_FROM,
        to=[message.to],
        headers={"Message-ID": message_id},
    )
    raw: bytes = email.message().as_bytes(linesep="\r\n")
    return raw


def _refused(exc: smtplib.SMTPRecipientsRefused) -> ProviderError:
    codes = [code for code, _ in exc.recipients.values()]
    detail = "; ".join(
        f"{rcpt}: {code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
        for rcpt, (code, msg) in exc.recipients.items()
    )
    permanent = bool(codes) and all(code >= 500 for code in codes)
    return ProviderError(f"SMTP refused {detail}", permanent=permanent, code=str(codes[0]))


def _unavailable(exc: BaseException) -> ProviderError:
    return ProviderError(
        f"SMTP: no session with the relay: {type(exc).__name__}: {exc}", code="connection"
    )


def _response_error(exc: smtplib.SMTPResponseException) -> ProviderError:
    text = (
        exc.smtp_error.decode(errors="replace")
        if isinstance(exc.smtp_error, bytes)
        else str(exc.smtp_error)
    )
    # 5xx is the server's final word on this message; 4xx asks us to try later.
    return ProviderError(
        f"SMTP {exc.smtp_code}: {text}", permanent=exc.smtp_code >= 500, code=str(exc.smtp_code)
    )
