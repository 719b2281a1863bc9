"""Email over SMTP through Django's email backend, one connection per worker thread."""

from __future__ import annotations

import contextlib
import smtplib
from email.utils import make_msgid

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.utils import DNS_NAME

from notifications.providers.base import OutboundMessage, Provider, ProviderError, SendResult


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

    def send(self, message: OutboundMessage) -> SendResult:
        # The Message-ID Django would make, made here so it can be returned without
        # building the MIME message twice (once to read it, once to send).
        message_id = make_msgid(domain=str(DNS_NAME))
        email = EmailMessage(
            subject=message.subject,
            body=message.body,
            from_email=settings.SMTP_FROM,
            to=[message.to],
            headers={"Message-ID": message_id},
            connection=self._backend,
        )
        try:
            # open() is a no-op while the connection is up: one SMTP session serves
            # every message this thread sends.
            self._backend.open()
            email.send()
        except smtplib.SMTPRecipientsRefused as exc:
            raise _refused(exc) from exc
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPSenderRefused) as exc:
            # Our account or sender address, not the recipient: an operator can fix
            # it, so the message waits and retries instead of failing.
            self.close()
            raise ProviderError(
                f"SMTP {exc.smtp_code}: our login or sender was refused: {exc}", code="account"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            self.close()
            raise _response_error(exc) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self.close()  # the session is unusable; the next send reconnects
            raise ProviderError(f"SMTP: {type(exc).__name__}: {exc}", code="connection") from exc
        return SendResult(message_id=message_id.strip("<>"))

    def close(self) -> None:
        # Closing a broken connection may fail too; either way it is gone.
        with contextlib.suppress(Exception):
            self._backend.close()
        self._backend.connection = None


def _refused(exc: smtplib.SMTPRecipientsRefused) -> ProviderError:
    codes = [code for code, _ in exc.recipients.values()]
    detail = "; ".join(
        f"{rcpt}: {code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
        for rcpt, (code, msg) in exc.recipients.items()
    )
    permanent = bool(codes) and all(code >= 500 for code in codes)
    return ProviderError(f"SMTP refused {detail}", permanent=permanent, code=str(codes[0]))


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
