"""SMS through the official vonage SDK (SMS API)."""

from __future__ import annotations

import re

import requests
from django.conf import settings
from vonage import Auth, HttpClientOptions, Vonage
from vonage_http_client.errors import HttpRequestError
from vonage_sms import SmsMessage
from vonage_sms.errors import PartialFailureError, SmsError

from notifications.providers.base import OutboundMessage, Provider, ProviderError, SendResult
from notifications.providers.http_session import read_environment_once

# The SMS API answers HTTP 200 with a per-message status; these describe the
# recipient, so no other provider would do better.
# https://developer.vonage.com/en/messaging/sms/guides/troubleshooting-sms
PERMANENT_STATUSES = frozenset({"6", "7"})  # unroutable, number barred
INVALID_PARAMS = "3"
_STATUS = re.compile(r"error code (\d+)")


def is_configured() -> bool:
    return bool(settings.VONAGE_API_KEY and settings.VONAGE_API_SECRET)


class VonageProvider(Provider):
    name = "vonage"
    channel = "sms"

    def __init__(self) -> None:
        options = HttpClientOptions(
            rest_host=settings.VONAGE_REST_HOST,
            timeout=max(1, round(settings.PROVIDER_TIMEOUT_SECONDS)),
        )
        self._client = Vonage(
            Auth(api_key=settings.VONAGE_API_KEY, api_secret=settings.VONAGE_API_SECRET),
            http_client_options=options,
        )
        session = self._client.http_client._session
        if settings.VONAGE_CA_BUNDLE:
            # The SDK always speaks https and has no option for the CA to trust; a
            # private CA (a test fake, a TLS-inspecting proxy) is set on its session.
            # requests lets REQUESTS_CA_BUNDLE from the environment override a
            # session's verify, so the session stops reading the environment (below).
            session.verify = settings.VONAGE_CA_BUNDLE
        read_environment_once(session, f"https://{settings.VONAGE_REST_HOST}")

    def send(self, message: OutboundMessage) -> SendResult:
        sms = SmsMessage(to=message.to.lstrip("+"), from_=settings.VONAGE_FROM, text=message.body)
        try:
            response = self._client.sms.send(sms)
        except PartialFailureError as exc:
            raise _partial(exc) from exc
        except SmsError as exc:
            raise _classify_status(str(exc)) from exc
        except HttpRequestError as exc:
            raise ProviderError(f"Vonage HTTP error: {exc}", code="http_error") from exc
        except requests.Timeout as exc:
            raise ProviderError(f"Vonage timed out: {exc}", code="timeout") from exc
        except requests.RequestException as exc:
            raise ProviderError(f"Vonage unreachable: {exc}", code="connection") from exc
        return SendResult(message_id=str(response.messages[0].message_id))


def _partial(exc: PartialFailureError) -> ProviderError:
    """Some parts of a long SMS went out, others did not.

    Sending the whole body again (a retry, or another provider) would repeat the
    parts the recipient already has, so the notification fails visibly instead.
    """
    response: object = getattr(exc, "response", None)
    parts = response.get("messages", []) if isinstance(response, dict) else []
    entries = [part for part in parts if isinstance(part, dict)]
    statuses = [str(part.get("status")) for part in entries]
    sent = statuses.count("0")
    if statuses and not sent:
        # No part went out (the SDK raises this for any multi-part answer with a
        # failure): nothing can be duplicated, so the first part's status decides,
        # as it does for a one-part text.
        first = entries[0]
        return _classify_status(f"error code {first.get('status')}: {first.get('error-text', '')}")
    return ProviderError(
        f"Vonage delivered {sent} of {len(statuses) or '?'} parts; not resent to avoid "
        f"duplicates (part statuses: {', '.join(statuses) or 'unknown'})",
        permanent=True,
        code="partial",
    )


def _classify_status(text: str) -> ProviderError:
    match = _STATUS.search(text)
    status = match.group(1) if match else ""
    # Status 3 covers every invalid parameter; only an invalid recipient is the
    # message's fault (a bad sender id is our configuration, so fail over).
    permanent = status in PERMANENT_STATUSES or (
        status == INVALID_PARAMS and re.search(r"\bto\b", text, re.IGNORECASE) is not None
    )
    return ProviderError(f"Vonage: {text}", permanent=permanent, code=status or "sms_error")
