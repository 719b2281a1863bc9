"""SMS through the official twilio SDK (Programmable Messaging API)."""

from __future__ import annotations

import requests
from django.conf import settings
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from notifications.providers.base import OutboundMessage, Provider, ProviderError, SendResult
from notifications.providers.http_session import read_environment_once

# Error codes that describe the recipient or the message, not Twilio or our account:
# another provider would refuse them too, so they end the notification as failed.
# https://www.twilio.com/docs/api/errors
PERMANENT_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21214,  # 'To' number cannot be reached
        21217,  # phone number does not appear to be valid
        21610,  # recipient replied STOP (unsubscribed)
        21612,  # 'To' number is not currently reachable via SMS
        21614,  # 'To' number is not a mobile number
        21617,  # body exceeds the concatenated message limit
    }
)


def is_configured() -> bool:
    return bool(settings.TWILIO_ACCOUNT_SID and settings.TWILIO_AUTH_TOKEN)


class TwilioProvider(Provider):
    name = "twilio"
    channel = "sms"

    def __init__(self) -> None:
        http_client = TwilioHttpClient(timeout=settings.PROVIDER_TIMEOUT_SECONDS)
        self._client = Client(
            settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client
        )
        if settings.TWILIO_BASE_URL:
            # The SDK has no host option; its API domain object holds the base URL.
            self._client.api.base_url = settings.TWILIO_BASE_URL
        if http_client.session is not None:
            read_environment_once(http_client.session, self._client.api.base_url)

    def send(self, message: OutboundMessage) -> SendResult:
        sender = settings.TWILIO_PHONE_NUMBER
        try:
            if settings.TWILIO_MESSAGING_SERVICE_SID:
                created = self._client.messages.create(
                    to=message.to,
                    body=message.body,
                    messaging_service_sid=settings.TWILIO_MESSAGING_SERVICE_SID,
                )
            else:
                created = self._client.messages.create(
                    to=message.to, from_=sender, body=message.body
                )
        except TwilioRestException as exc:
            raise _classify(exc) from exc
        except requests.Timeout as exc:
            raise ProviderError(f"Twilio timed out: {exc}", code="timeout") from exc
        except requests.RequestException as exc:
            raise ProviderError(f"Twilio unreachable: {exc}", code="connection") from exc
        return SendResult(message_id=str(created.sid))


def _classify(exc: TwilioRestException) -> ProviderError:
    code = exc.code if isinstance(exc.code, int) else None
    text = f"Twilio {exc.status}: {exc.msg}"
    return ProviderError(
        text, permanent=code in PERMANENT_CODES, code=str(code if code is not None else exc.status)
    )
