"""A loopback HTTP(S) server that speaks Twilio's and Vonage's SMS APIs.

The real ``twilio`` and ``vonage`` SDKs talk to it unchanged, so tests, demos and
benchmarks exercise the same code path as production without reaching a provider.

Pointing the SDKs at it:

* Twilio (plain HTTP is fine)::

      client = twilio.rest.Client(sid, token, http_client=TwilioHttpClient(timeout=2))
      client.api.base_url = server.url

  (Where ``HTTP_PROXY`` is set and ``NO_PROXY`` does not cover 127.0.0.1, also set
  ``client.http_client.session.trust_env = False``, or requests proxies loopback.)

* Vonage. The 4.x SDK always builds ``https://{rest_host}{path}``
  (``vonage_http_client.HttpClient.make_request``), so the fake must run with
  ``tls=True`` and the client must trust the fake's self-signed certificate. The SDK
  has no public option for that, so the ``requests`` session inside it is adjusted::

      client = vonage.Vonage(
          vonage.Auth(api_key=key, api_secret=secret),
          http_client_options=vonage.HttpClientOptions(rest_host=server.host_port, timeout=2),
      )
      session = client.http_client._session
      session.verify = server.ca_file
      session.trust_env = False

  ``trust_env = False`` is not optional: ``requests`` lets ``REQUESTS_CA_BUNDLE`` or
  ``CURL_CA_BUNDLE`` from the environment win over ``session.verify`` (many machines
  and CI images set them), and would send loopback traffic through ``HTTPS_PROXY``
  unless ``NO_PROXY`` covers it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, cast, get_args
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flashsend.fakes._lifecycle import StartStop

logger = logging.getLogger(__name__)

Provider: TypeAlias = Literal["twilio", "vonage"]
Mode: TypeAlias = Literal["ok", "error", "timeout", "ratelimit", "reject", "internal", "partial"]
PROVIDERS: Final[tuple[Provider, ...]] = get_args(Provider)
MODES: Final[tuple[Mode, ...]] = get_args(Mode)

LOOPBACK: Final = "127.0.0.1"
MAX_BODY_BYTES: Final = 1_000_000
MAX_FORM_FIELDS: Final = 200
MAX_DELAY_MS: Final = 60_000
MAX_HANG_SECONDS: Final = 600.0
MAX_FAIL_NEXT: Final = 1_000_000
MAX_ACCEPTED_PARTS: Final = 1_000
STOP_JOIN_SECONDS: Final = 5.0
TLS_HANDSHAKE_SECONDS: Final = 5.0
HANG: Final = 0  # _Answer.status meaning "hold the request, then drop the connection"

TWILIO_SMS_MAX_CHARS: Final = 1600
TWILIO_API_VERSION: Final = "2010-04-01"
_TWILIO_PATH: Final = re.compile(r"/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json")
_VONAGE_PATH: Final = "/sms/json"
_SECRET_FIELDS: Final = frozenset({"api_secret", "sig"})
# Modes only one provider has: Twilio accepts or refuses a concatenated message whole.
_PROVIDER_MODES: Final[dict[Mode, Provider]] = {"partial": "vonage"}
# What a part refused in mode "partial" carries: the account's throughput limit
# (status "1" Throttled) is what cuts a long text off part-way.
_PARTIAL_STATUS: Final = "1"
_PARTIAL_ERROR: Final = "Throttled"

# GSM 03.38: the basic table (ESC left out) and the extension table, whose characters
# take two septets. Anything else makes the carrier send UCS-2.
_GSM_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED: Final = frozenset("^{}\\[~]|€\f")


# --- Public records and behaviour ---------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How one provider answers. See ``FakeProviderServer.set_behaviour``."""

    mode: Mode = "ok"
    delay_ms: int = 0
    reject_numbers: frozenset[str] = frozenset()
    status: int = 500
    hang_seconds: float = 30.0
    accepted_parts: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "delay_ms": self.delay_ms,
            "reject_numbers": sorted(self.reject_numbers),
            "status": self.status,
            "hang_seconds": self.hang_seconds,
            "accepted_parts": self.accepted_parts,
        }


@dataclass(frozen=True)
class FakeMessage:
    """A message the fake accepted (what the provider would have delivered).

    ``segments`` is how many SMS parts the body takes. ``failed_segments`` counts the
    trailing parts refused in mode "partial": the recipient got only the first
    ``segments - failed_segments`` parts of ``body``.
    """

    provider: Provider
    to: str
    from_: str
    body: str
    message_id: str
    received_at: datetime
    segments: int = 1
    failed_segments: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "message_id": self.message_id,
            "segments": self.segments,
            "failed_segments": self.failed_segments,
            "received_at": self.received_at.isoformat(),
        }


@dataclass(frozen=True)
class FakeRequest:
    """One provider API request and the answer given (``status`` None: dropped, no answer).

    ``outcome`` is the mode that decided the answer ("ok", "error", "timeout",
    "ratelimit", "reject", "internal", "partial") or "unauthorized" / "invalid" when
    the request failed before any mode applied. Secrets in ``params`` are redacted.
    """

    provider: Provider
    method: str
    path: str
    params: Mapping[str, str]
    outcome: str
    status: int | None
    response: Any
    received_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "method": self.method,
            "path": self.path,
            "params": dict(self.params),
            "outcome": self.outcome,
            "status": self.status,
            "response": self.response,
            "received_at": self.received_at.isoformat(),
        }


def build_behaviour(
    mode: str = "ok",
    delay_ms: int = 0,
    reject_numbers: Iterable[str] = (),
    status: int = 500,
    hang_seconds: float = 30.0,
    accepted_parts: int = 1,
    provider: Provider | None = None,
) -> Behaviour:
    """Validate the knobs once, for the Python API and the HTTP control endpoint alike.

    With ``provider`` given, modes that provider does not have are refused too.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    only_for = _PROVIDER_MODES.get(cast(Mode, mode))
    if provider is not None and only_for is not None and provider != only_for:
        raise ValueError(f"mode {mode!r} exists for {only_for} only, not {provider}")
    if not 0 <= accepted_parts <= MAX_ACCEPTED_PARTS:
        raise ValueError(
            f"accepted_parts must be between 0 and {MAX_ACCEPTED_PARTS}; got {accepted_parts}"
        )
    if not 0 <= delay_ms <= MAX_DELAY_MS:
        raise ValueError(f"delay_ms must be between 0 and {MAX_DELAY_MS}; got {delay_ms}")
    if not 500 <= status <= 599:
        raise ValueError(f"status must be a 5xx HTTP status; got {status}")
    if not 0 < hang_seconds <= MAX_HANG_SECONDS:
        raise ValueError(f"hang_seconds must be in (0, {MAX_HANG_SECONDS}]; got {hang_seconds}")
    if isinstance(reject_numbers, str):
        raise ValueError("reject_numbers must be a list of numbers, not one string")
    return Behaviour(
        mode=cast(Mode, mode),
        delay_ms=delay_ms,
        reject_numbers=frozenset(normalise_number(n) for n in reject_numbers),
        status=status,
        hang_seconds=float(hang_seconds),
        accepted_parts=accepted_parts,
    )


def normalise_number(number: str) -> str:
    """Digits only: Twilio sends "+15005550001", Vonage "15005550001" for one phone."""
    digits = "".join(ch for ch in number if ch.isdigit())
    return digits or number.strip()


def sms_segments(text: str) -> int:
    """How many SMS parts a carrier needs: 160/153 GSM-7 septets or 70/67 UCS-2 units."""
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in text):
        units = sum(2 if ch in _GSM_EXTENDED else 1 for ch in text)
        single, part = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part = 70, 67
    return 1 if units <= single else -(-units // part)


# --- Shared state -------------------------------------------------------------------


class _Registry:
    """Behaviour and records for both providers, guarded by one lock."""

    def __init__(self, max_records: int) -> None:
        self._lock = threading.Lock()
        self._behaviour: dict[Provider, Behaviour] = {}
        self._fail_next: dict[Provider, int] = {}
        self._messages: deque[FakeMessage] = deque(maxlen=max_records)
        self._requests: deque[FakeRequest] = deque(maxlen=max_records)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._behaviour = {p: Behaviour() for p in PROVIDERS}
            self._fail_next = dict.fromkeys(PROVIDERS, 0)
            self._messages.clear()
            self._requests.clear()

    def configure(self, provider: Provider, behaviour: Behaviour, fail_next: int) -> None:
        if not 0 <= fail_next <= MAX_FAIL_NEXT:
            raise ValueError(f"fail_next must be between 0 and {MAX_FAIL_NEXT}; got {fail_next}")
        with self._lock:
            self._behaviour[provider] = behaviour
            self._fail_next[provider] = fail_next

    def behaviour(self, provider: Provider) -> Behaviour:
        with self._lock:
            return self._behaviour[provider]

    def fail_next(self, provider: Provider) -> int:
        with self._lock:
            return self._fail_next[provider]

    def next_mode(self, provider: Provider) -> tuple[Behaviour, Mode]:
        """The mode for the next valid request, spending one ``fail_next`` if any is left."""
        with self._lock:
            behaviour = self._behaviour[provider]
            if self._fail_next[provider] > 0:
                self._fail_next[provider] -= 1
                return behaviour, "error"
            return behaviour, behaviour.mode

    def add_message(self, message: FakeMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def add_request(self, request: FakeRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def messages(self, provider: Provider | None) -> list[FakeMessage]:
        with self._lock:
            return [m for m in self._messages if provider in (None, m.provider)]

    def requests(self, provider: Provider | None) -> list[FakeRequest]:
        with self._lock:
            return [r for r in self._requests if provider in (None, r.provider)]


@dataclass(frozen=True)
class _Credentials:
    """Expected credentials; None accepts any value (but one must still be sent)."""

    account_sid: str | None = None
    auth_token: str | None = None
    api_key: str | None = None
    api_secret: str | None = None


@dataclass(frozen=True)
class _Answer:
    status: int  # HANG: hold the request for hang_seconds, then close without answering
    payload: Any = None
    outcome: str = "ok"
    hang_seconds: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


def _now() -> datetime:
    return datetime.now(UTC)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# --- Twilio Messages API ------------------------------------------------------------


def _twilio_error(status: int, code: int, message: str, outcome: str) -> _Answer:
    """Twilio's legacy error body: the SDK turns it into TwilioRestException(status, code).

    The keys type/title must stay absent: with them the SDK raises the RFC 9457
    TwilioServiceException instead.
    """
    payload = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = (("WWW-Authenticate", 'Basic realm="Twilio API"'),)
    return _Answer(status, payload, outcome, headers=headers)


def _twilio_auth_failure(
    path_sid: str, authorization: str | None, expected: _Credentials
) -> _Answer | None:
    supplied = _basic_credentials(authorization)
    if supplied is None:
        return _twilio_error(401, 20003, "Authenticate", "unauthorized")
    user, token = supplied
    # An API key (SK...) may act for the account in the path; an account SID must match it.
    user_fits_path = user == path_sid or (expected.account_sid is None and user.startswith("SK"))
    wrong_sid = expected.account_sid is not None and path_sid != expected.account_sid
    wrong_token = expected.auth_token is not None and not _same_secret(token, expected.auth_token)
    if not user_fits_path or wrong_sid or wrong_token:
        return _twilio_error(401, 20003, "Authenticate", "unauthorized")
    return None


def _twilio_invalid_params(fields: Mapping[str, str]) -> _Answer | None:
    body = fields.get("Body", "")
    if not fields.get("To", "").strip():
        return _twilio_error(400, 21604, "A 'To' phone number is required.", "invalid")
    if not (fields.get("From") or fields.get("MessagingServiceSid")):
        return _twilio_error(400, 21603, "A 'From' phone number is required.", "invalid")
    if not (body or fields.get("MediaUrl") or fields.get("ContentSid")):
        return _twilio_error(400, 21602, "Message body is required.", "invalid")
    if len(body) > TWILIO_SMS_MAX_CHARS:
        text = "The concatenated message body exceeds the 1600 character limit."
        return _twilio_error(400, 21617, text, "invalid")
    return None


def _twilio_resource(
    account_sid: str, fields: Mapping[str, str], message_sid: str
) -> dict[str, Any]:
    """A Message resource as Twilio returns it right after create."""
    stamp = format_datetime(_now())
    uri = f"/{TWILIO_API_VERSION}/Accounts/{account_sid}/Messages/{message_sid}"
    sender = fields.get("From") or None
    body = fields.get("Body", "")
    return {
        "account_sid": account_sid,
        "api_version": TWILIO_API_VERSION,
        "body": body,
        "date_created": stamp,
        "date_sent": None,
        "date_updated": stamp,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": sender,
        "messaging_service_sid": fields.get("MessagingServiceSid") or None,
        "num_media": "0",
        "num_segments": str(sms_segments(body)),
        "price": None,
        "price_unit": "USD",
        "sid": message_sid,
        # With only a messaging service Twilio picks the sender later: "accepted".
        "status": "queued" if sender else "accepted",
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": fields["To"],
        "uri": f"{uri}.json",
    }


def _twilio_exchange(
    registry: _Registry,
    expected: _Credentials,
    path_sid: str,
    fields: Mapping[str, str],
    authorization: str | None,
) -> _Answer:
    failure = _twilio_auth_failure(path_sid, authorization, expected)
    failure = failure or _twilio_invalid_params(fields)
    if failure is not None:
        return failure
    behaviour, mode = registry.next_mode("twilio")
    to = fields["To"]
    if mode == "ok" and normalise_number(to) in behaviour.reject_numbers:
        mode = "reject"
    if mode == "timeout":
        return _Answer(HANG, outcome=mode, hang_seconds=behaviour.hang_seconds)
    if mode == "reject":
        return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.", mode)
    if mode == "ratelimit":
        return _twilio_error(429, 20429, "Too Many Requests", mode)
    if mode in ("error", "internal"):
        status = behaviour.status if mode == "error" else 500
        code = 20503 if status == 503 else 20500
        return _twilio_error(status, code, "Internal Server Error", mode)
    message_sid = "SM" + secrets.token_hex(16)
    resource = _twilio_resource(path_sid, fields, message_sid)
    registry.add_message(
        FakeMessage(
            provider="twilio",
            to=to,
            from_=fields.get("From") or fields.get("MessagingServiceSid", ""),
            body=resource["body"],
            message_id=message_sid,
            received_at=_now(),
            segments=int(resource["num_segments"]),
        )
    )
    return _Answer(201, resource, "ok")


# --- Vonage SMS API -----------------------------------------------------------------


def _vonage_error(status: str, text: str, outcome: str) -> _Answer:
    """Vonage's SMS API reports per-message failures in a 200 answer (status != "0")."""
    payload = {"message-count": "1", "messages": [{"status": status, "error-text": text}]}
    return _Answer(200, payload, outcome)


def _vonage_http_error(status: int) -> _Answer:
    title = "Service Unavailable" if status == 503 else "Internal Server Error"
    payload = {
        "type": "https://developer.vonage.com/api-errors#internal-error",
        "title": title,
        "detail": "The fake provider is configured to fail.",
        "instance": str(uuid.uuid4()),
    }
    return _Answer(status, payload, "error")


def _vonage_auth_failure(
    fields: Mapping[str, str], authorization: str | None, expected: _Credentials
) -> _Answer | None:
    """The SDK sends Basic auth; the API also takes api_key/api_secret or a signature.

    A signed request carries no secret, so only its api_key can be checked here.
    """
    basic = _basic_credentials(authorization)
    key, secret = basic if basic else (fields.get("api_key"), fields.get("api_secret"))
    signed = basic is None and bool(fields.get("sig"))
    if not key:
        return _vonage_error("2", "Missing api_key", "unauthorized")
    if secret is None and not signed:
        return _vonage_error("2", "Missing api_secret", "unauthorized")
    wrong_key = expected.api_key is not None and key != expected.api_key
    wrong_secret = (
        expected.api_secret is not None
        and secret is not None
        and not _same_secret(secret, expected.api_secret)
    )
    if wrong_key or wrong_secret:
        return _vonage_error("4", "Bad Credentials", "unauthorized")
    return None


def _vonage_invalid_params(fields: Mapping[str, str]) -> _Answer | None:
    content = "body" if fields.get("type") == "binary" else "text"
    for name in ("to", "from", content):
        if not fields.get(name):
            return _vonage_error("2", f"Missing {name} param", "invalid")
    return None


def _vonage_parts(
    registry: _Registry, fields: Mapping[str, str], accepted_parts: int | None = None
) -> _Answer:
    """Vonage splits long text itself and answers one entry per part.

    ``accepted_parts`` (mode "partial"): only that many leading parts are accepted;
    each later part gets its own error entry, in the same 200 answer, as Vonage does
    when a long text is throttled part-way. None accepts every part.
    """
    text = fields.get("text") or fields.get("body", "")
    parts = sms_segments(text)
    accepted = parts if accepted_parts is None else min(accepted_parts, parts)
    entries: list[dict[str, str]] = []
    for index in range(parts):
        entry = {"to": fields["to"]}
        if index < accepted:
            entry.update(
                {
                    "message-id": str(uuid.uuid4()),
                    "status": "0",
                    "remaining-balance": "10.0",
                    "message-price": "0.03",
                    "network": "12345",
                }
            )
        else:
            entry.update({"status": _PARTIAL_STATUS, "error-text": _PARTIAL_ERROR})
        if fields.get("client-ref"):
            entry["client-ref"] = fields["client-ref"]
        entries.append(entry)
    if accepted:
        registry.add_message(
            FakeMessage(
                provider="vonage",
                to=fields["to"],
                from_=fields["from"],
                body=text,
                message_id=entries[0]["message-id"],
                received_at=_now(),
                segments=parts,
                failed_segments=parts - accepted,
            )
        )
    outcome = "ok" if accepted == parts else "partial"
    return _Answer(200, {"message-count": str(parts), "messages": entries}, outcome)


def _vonage_exchange(
    registry: _Registry,
    expected: _Credentials,
    fields: Mapping[str, str],
    authorization: str | None,
) -> _Answer:
    failure = _vonage_auth_failure(fields, authorization, expected)
    failure = failure or _vonage_invalid_params(fields)
    if failure is not None:
        return failure
    behaviour, mode = registry.next_mode("vonage")
    to = fields["to"]
    if mode in ("ok", "partial") and normalise_number(to) in behaviour.reject_numbers:
        mode = "reject"
    if mode == "timeout":
        return _Answer(HANG, outcome=mode, hang_seconds=behaviour.hang_seconds)
    if mode == "reject":
        return _vonage_error("3", f"Invalid to address: {to}", mode)
    if mode == "ratelimit":
        return _vonage_error("1", "Throttled", mode)
    if mode == "internal":
        return _vonage_error("5", "Internal Error", mode)
    if mode == "error":
        return _vonage_http_error(behaviour.status)
    if mode == "partial":
        return _vonage_parts(registry, fields, behaviour.accepted_parts)
    return _vonage_parts(registry, fields)


# --- Control endpoints --------------------------------------------------------------


def _control_provider(query: str) -> Provider | None:
    values = parse_qs(query).get("provider")
    if not values:
        return None
    if values[0] not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
    return cast(Provider, values[0])


def _int_field(data: Mapping[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return int(value)


def _behaviour_from_json(body: bytes) -> tuple[Provider, Behaviour, int]:
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    allowed = {
        "provider",
        "mode",
        "delay_ms",
        "reject_numbers",
        "fail_next",
        "status",
        "hang_seconds",
        "accepted_parts",
    }
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    provider = data.get("provider")
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
    numbers = data.get("reject_numbers", [])
    if not isinstance(numbers, list) or not all(isinstance(n, str) for n in numbers):
        raise ValueError("reject_numbers must be a list of strings")
    hang = data.get("hang_seconds", 30.0)
    if isinstance(hang, bool) or not isinstance(hang, int | float):
        raise ValueError("hang_seconds must be a number")
    behaviour = build_behaviour(
        mode=str(data.get("mode", "ok")),
        delay_ms=_int_field(data, "delay_ms", 0),
        reject_numbers=numbers,
        status=_int_field(data, "status", 500),
        hang_seconds=float(hang),
        accepted_parts=_int_field(data, "accepted_parts", 1),
        provider=cast(Provider, provider),
    )
    return cast(Provider, provider), behaviour, _int_field(data, "fail_next", 0)


def _control_exchange(
    registry: _Registry, method: str, path: str, query: str, body: bytes
) -> _Answer:
    """/_fake/...: read records and steer behaviour from another process (demos, curl)."""
    try:
        if method == "GET" and path == "/_fake/messages":
            found = registry.messages(_control_provider(query))
            return _Answer(200, {"messages": [m.as_dict() for m in found]})
        if method == "GET" and path == "/_fake/requests":
            seen = registry.requests(_control_provider(query))
            return _Answer(200, {"requests": [r.as_dict() for r in seen]})
        if method == "GET" and path == "/_fake/behaviour":
            current = {
                p: {**registry.behaviour(p).as_dict(), "fail_next": registry.fail_next(p)}
                for p in PROVIDERS
            }
            return _Answer(200, current)
        if method == "POST" and path == "/_fake/reset":
            registry.reset()
            return _Answer(200, {"reset": True})
        if method == "POST" and path == "/_fake/behaviour":
            provider, behaviour, fail_next = _behaviour_from_json(body)
            registry.configure(provider, behaviour, fail_next)
            payload = {"provider": provider, **behaviour.as_dict(), "fail_next": fail_next}
            return _Answer(200, payload)
    except ValueError as exc:
        return _Answer(400, {"error": str(exc)})
    return _Answer(404, {"error": f"no control endpoint {method} {path}"})


# --- HTTP plumbing ------------------------------------------------------------------


def _form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """Twilio and the Vonage SDK post forms; Vonage's API also takes a JSON object."""
    if content_type.split(";")[0].strip().lower() == "application/json":
        data = json.loads(body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("JSON body must be an object")
        return {str(k): str(v) for k, v in data.items()}
    parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    return {key: values[0] for key, values in parsed.items()}


def _redacted(fields: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if k in _SECRET_FIELDS else v) for k, v in fields.items()}


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive so SDK connection pools reuse it."""

    protocol_version = "HTTP/1.1"
    server_version = "FlashSendFakeProvider/1.0"
    sys_version = ""
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK would add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True

    @property
    def fake(self) -> _HttpServer:
        return cast(_HttpServer, self.server)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.fake.idle_timeout)  # idle keep-alive ends

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib writes every request to stderr; at benchmark rates that is noise.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        url = urlsplit(self.path)
        if url.path.startswith("/_fake/"):
            registry = self.fake.registry
            self._send(_control_exchange(registry, self.command, url.path, url.query, body))
            return
        twilio = _TWILIO_PATH.fullmatch(url.path)
        if self.command == "POST" and twilio is not None:
            self._provider("twilio", body, url.path, twilio.group("sid"))
        elif self.command == "POST" and url.path == _VONAGE_PATH:
            self._provider("vonage", body, url.path, "")
        else:
            self._send(_Answer(404, {"error": f"no route {self.command} {url.path}"}))

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(_Answer(411, {"error": "send a Content-Length"}))
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the unread body would poison the connection
            self._send(_Answer(413, {"error": "bad or too large Content-Length"}))
            return None
        return self.rfile.read(length)

    def _provider(self, provider: Provider, body: bytes, path: str, sid: str) -> None:
        registry, expected = self.fake.registry, self.fake.credentials
        delay = registry.behaviour(provider).delay_ms / 1000
        authorization = self.headers.get("Authorization")
        try:
            fields = _form_fields(body, self.headers.get("Content-Type", ""))
        except (ValueError, UnicodeDecodeError):
            fields = {}
            answer = _Answer(400, {"error": "unreadable request body"}, "invalid")
        else:
            if provider == "twilio":
                answer = _twilio_exchange(registry, expected, sid, fields, authorization)
            else:
                answer = _vonage_exchange(registry, expected, fields, authorization)
        registry.add_request(
            FakeRequest(
                provider=provider,
                method=self.command,
                path=path,
                params=_redacted(fields),
                outcome=answer.outcome,
                status=None if answer.status == HANG else answer.status,
                response=answer.payload,
                received_at=_now(),
            )
        )
        self._pause(delay)
        if answer.status == HANG:
            # Hold the request like a stuck upstream, then drop it unanswered.
            self._pause(answer.hang_seconds)
            self.close_connection = True
            return
        self._send(answer)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self.fake.stopping.wait(seconds)  # returns early when the server stops

    def _send(self, answer: _Answer) -> None:
        data = json.dumps(answer.payload).encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


class _HttpServer(ThreadingHTTPServer):
    """Thread per connection, TLS handshakes off the accept loop, every thread joinable."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        port: int,
        registry: _Registry,
        credentials: _Credentials,
        idle_timeout: float,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.idle_timeout = idle_timeout
        self.ssl_context: ssl.SSLContext | None = None
        self.stopping = threading.Event()
        self.connections_opened = 0
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._open: set[socket.socket] = set()
        super().__init__((LOOPBACK, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = cast(socket.socket, request)
        with self._lock:
            self.connections_opened += 1
            if self.stopping.is_set():
                self.shutdown_request(conn)
                return
            worker = threading.Thread(
                target=self._serve_connection,
                args=(conn, client_address),
                name=f"fake-provider-conn-{self.server_address[1]}",
                daemon=True,
            )
            self._workers.add(worker)
            self._open.add(conn)
        worker.start()

    def _serve_connection(self, conn: socket.socket, client_address: Any) -> None:
        current = conn
        try:
            current = self._secure(conn)
            if not self.stopping.is_set():
                self.finish_request(current, client_address)
        except Exception:
            self.handle_error(current, client_address)
        finally:
            with self._lock:
                # Forget the socket before closing it, so stop() never touches a
                # descriptor number the OS may already have handed out again.
                self._open.discard(current)
                self._open.discard(conn)
                self._workers.discard(threading.current_thread())
            self.shutdown_request(current)

    def _secure(self, conn: socket.socket) -> socket.socket:
        if self.ssl_context is None:
            return conn
        conn.settimeout(TLS_HANDSHAKE_SECONDS)
        secured = self.ssl_context.wrap_socket(conn, server_side=True)
        with self._lock:
            self._open.discard(conn)
            self._open.add(secured)
        return secured

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer (their timeout fired) are routine here.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def reset_connection_count(self) -> None:
        with self._lock:
            self.connections_opened = 0

    def close_connections(self) -> None:
        """Wake every worker blocked on a keep-alive read by shutting its socket down."""
        with self._lock:
            for conn in self._open:
                # The plain-socket call, also for TLS sockets: SSLSocket.shutdown
                # would drop its TLS state under a worker that is still writing.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def join_workers(self, deadline: float) -> list[threading.Thread]:
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return [w for w in workers if w.is_alive()]


def _write_self_signed(cert_path: Path) -> ssl.SSLContext:
    """A self-signed CA-capable certificate for 127.0.0.1 and localhost.

    The certificate file doubles as the trust anchor the client is pointed at
    (``ca_file``); the private key lives in a private temporary file only while the
    context loads it.
    """
    key = ec.generate_private_key(ec.SECP256R1())  # fast to generate, unlike RSA
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FlashSend fake provider")])
    now = _now()
    key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address(LOOPBACK))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(key_id, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(key_id),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="flashsend-fake-key-") as key_dir:
        key_path = Path(key_dir) / "key.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_path, key_path)
    return context


# --- Public server ------------------------------------------------------------------


@dataclass
class _Running:
    httpd: _HttpServer
    thread: threading.Thread
    ca_file: str | None
    temp_dir: Path | None = None


class FakeProviderServer(StartStop):
    """Twilio's and Vonage's SMS APIs on one loopback server.

    Routes: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (Twilio),
    ``POST /sms/json`` (Vonage), and control endpoints ``GET /_fake/messages``,
    ``GET /_fake/requests``, ``GET /_fake/behaviour`` (``?provider=`` filters),
    ``POST /_fake/reset`` and ``POST /_fake/behaviour`` (JSON with ``provider`` plus the
    ``set_behaviour`` arguments).

    Credentials: any are accepted, but some must be sent, unless ``account_sid``/
    ``auth_token`` (Twilio) or ``api_key``/``api_secret`` (Vonage) are given; given
    ones are enforced (Twilio: 401 code 20003; Vonage: status "4" Bad Credentials).

    See the module docstring for pointing each SDK here.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        tls: bool = False,
        cert_dir: str | Path | None = None,
        account_sid: str | None = None,
        auth_token: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        idle_timeout: float = 60.0,
        max_records: int = 100_000,
    ) -> None:
        self.tls = tls
        self._port = port
        self._cert_dir = Path(cert_dir) if cert_dir is not None else None
        self._credentials = _Credentials(account_sid, auth_token, api_key, api_secret)
        self._idle_timeout = idle_timeout
        self._registry = _Registry(max_records)
        self._lifecycle = threading.Lock()
        self._running: _Running | None = None

    # Lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeProviderServer:
        """Bind 127.0.0.1, create the certificate when ``tls``, serve in a thread."""
        with self._lifecycle:
            if self._running is not None:
                raise RuntimeError("the fake provider server is already running")
            httpd = _HttpServer(self._port, self._registry, self._credentials, self._idle_timeout)
            try:
                ca_file, temp_dir = self._prepare_tls(httpd)
            except BaseException:
                httpd.server_close()
                raise
            port = httpd.server_address[1]
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},  # stop() waits at most this long
                name=f"fake-provider-{port}",
                daemon=True,
            )
            thread.start()
            self._running = _Running(httpd, thread, ca_file, temp_dir)
        return self

    def _prepare_tls(self, httpd: _HttpServer) -> tuple[str | None, Path | None]:
        if not self.tls:
            return None, None
        temp_dir = None
        cert_dir = self._cert_dir
        if cert_dir is None:
            temp_dir = cert_dir = Path(tempfile.mkdtemp(prefix="flashsend-fake-cert-"))
        cert_dir.mkdir(parents=True, exist_ok=True)
        cert_path = cert_dir / f"fake-provider-{httpd.server_address[1]}.pem"
        httpd.ssl_context = _write_self_signed(cert_path)
        return str(cert_path), temp_dir

    def stop(self) -> None:
        """Stop serving, wake held requests, close connections and join every thread."""
        with self._lifecycle:
            running, self._running = self._running, None
        if running is None:
            return
        httpd = running.httpd
        httpd.shutdown()  # the accept loop; returns within poll_interval
        httpd.stopping.set()
        httpd.close_connections()
        left = httpd.join_workers(time.monotonic() + STOP_JOIN_SECONDS)
        httpd.server_close()
        running.thread.join(STOP_JOIN_SECONDS)
        if left:
            logger.warning("%d fake provider connection threads did not stop", len(left))
        if running.temp_dir is not None:
            shutil.rmtree(running.temp_dir, ignore_errors=True)

    # Addresses ----------------------------------------------------------------------

    def _require_running(self) -> _Running:
        running = self._running
        if running is None:
            raise RuntimeError("the fake provider server is not running; call start()")
        return running

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return int(self._require_running().httpd.server_address[1])

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``: what Vonage's ``HttpClientOptions(rest_host=...)`` takes."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with tls): Twilio's ``api.base_url``."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host_port}"

    @property
    def ca_file(self) -> str:
        """PEM certificate to trust (``requests`` ``verify=``); only with ``tls=True``."""
        ca_file = self._require_running().ca_file
        if ca_file is None:
            raise RuntimeError("ca_file exists only for FakeProviderServer(tls=True)")
        return ca_file

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since start (or the last reset)."""
        running = self._running
        return 0 if running is None else running.httpd.connections_opened

    # Behaviour and records ----------------------------------------------------------

    def set_behaviour(
        self,
        provider: Provider,
        mode: Mode = "ok",
        *,
        delay_ms: int = 0,
        reject_numbers: Iterable[str] = (),
        fail_next: int = 0,
        status: int = 500,
        hang_seconds: float = 30.0,
        accepted_parts: int = 1,
    ) -> None:
        """Replace how ``provider`` answers from the next request on.

        Modes:
          ok         accept; ``reject_numbers`` are still answered as invalid recipients.
          error      outage: HTTP ``status`` (5xx, default 500). Twilio code 20500
                     (20503 for 503); Vonage an HTTP 5xx problem body.
          timeout    hold the request ``hang_seconds`` (early on stop), then close
                     the connection unanswered, so the client's timeout fires.
          ratelimit  Twilio 429 code 20429; Vonage 200 with status "1" Throttled.
          reject     every recipient invalid: Twilio 400 code 21211; Vonage status "3".
          internal   Twilio 500 code 20500; Vonage 200 with status "5" Internal Error.
          partial    Vonage only: a text of N parts gets its first ``accepted_parts``
                     (default 1) parts accepted (status "0") and every later part
                     refused with status "1" Throttled, in one 200 answer whose
                     "message-count" is N (the SDK raises PartialFailureError). A
                     text of no more parts than ``accepted_parts`` is just accepted;
                     ``accepted_parts=0`` refuses every part. The message is recorded
                     when a part went out, with ``failed_segments`` set.
        ``fail_next=N``: the next N valid requests answer as ``error``, then ``mode``
        resumes. ``delay_ms`` is added before every answer.
        """
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}")
        behaviour = build_behaviour(
            mode,
            delay_ms,
            reject_numbers,
            status,
            hang_seconds,
            accepted_parts=accepted_parts,
            provider=provider,
        )
        self._registry.configure(provider, behaviour, fail_next)

    def behaviour(self, provider: Provider) -> Behaviour:
        return self._registry.behaviour(provider)

    def reset(self) -> None:
        """Forget records, behaviours and the connection count."""
        self._registry.reset()
        running = self._running
        if running is not None:
            running.httpd.reset_connection_count()

    def messages(self, provider: Provider | None = None) -> list[FakeMessage]:
        """Accepted messages, oldest first."""
        return self._registry.messages(provider)

    def requests(self, provider: Provider | None = None) -> list[FakeRequest]:
        """Every provider request, failed ones included, with the answer given."""
        return self._registry.requests(provider)

    def wait_for_messages(
        self, count: int, provider: Provider | None = None, timeout: float = 5.0
    ) -> list[FakeMessage]:
        """Poll until ``count`` messages arrived (for senders on other threads)."""
        deadline = time.monotonic() + timeout
        found = self.messages(provider)
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            found = self.messages(provider)
        return found


__all__ = [
    "MODES",
    "PROVIDERS",
    "Behaviour",
    "FakeMessage",
    "FakeProviderServer",
    "FakeRequest",
    "Mode",
    "Provider",
    "build_behaviour",
    "normalise_number",
    "sms_segments",
]
