"""The fakes driven by the real SDKs over loopback: twilio, vonage and Django's SMTP backend.

Nothing here mocks an SDK: every test sends through the vendor's own client code, so a
fake that drifts from what the SDK sends or expects fails here.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import vonage  # type: ignore[import-untyped, unused-ignore]
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped, unused-ignore]
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped, unused-ignore]
from twilio.rest import Client  # type: ignore[import-untyped, unused-ignore]
from vonage_http_client.errors import (  # type: ignore[import-untyped, unused-ignore]
    HttpRequestError,
    ServerError,
)
from vonage_sms import SmsError, SmsMessage  # type: ignore[import-untyped, unused-ignore]
from vonage_sms.errors import (  # type: ignore[import-untyped, unused-ignore]
    PartialFailureError,
)

from flashsend.fakes import FakeProviderServer, FakeSmtpServer

ROOT = Path(__file__).resolve().parents[2]
SID = "AC" + "0123456789abcdef" * 2
TOKEN = "test-auth-token"
SENDER = "+15005550006"
RECIPIENT = "+15551230001"
VONAGE_TO = "447700900001"
VONAGE_KEY = "key"
VONAGE_SECRET = "secret"
THREE_PARTS = "x" * 400  # GSM-7: 153 characters a part once split
SMTP_USER = "mailer@example.com"
SMTP_PASSWORD = "app-password"


# --- Fixtures and clients -------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def tls_fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(tls=True) as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[FakeSmtpServer]:
    with FakeSmtpServer() as server:
        yield server


@pytest.fixture
def control() -> Iterator[requests.Session]:
    """A plain HTTP client for the control endpoints, immune to proxy settings."""
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def twilio_client(server: FakeProviderServer, *, timeout: float = 2, token: str = TOKEN) -> Any:
    client = Client(SID, token, http_client=TwilioHttpClient(timeout=timeout))
    client.api.base_url = server.url
    return client


def send_sms(client: Any, to: str = RECIPIENT, body: str = "Your code is 123456") -> Any:
    return client.messages.create(to=to, from_=SENDER, body=body)


def vonage_client(
    server: FakeProviderServer, *, secret: str = VONAGE_SECRET, timeout: int = 2
) -> Any:
    client = vonage.Vonage(
        vonage.Auth(api_key=VONAGE_KEY, api_secret=secret),
        http_client_options=vonage.HttpClientOptions(rest_host=server.host_port, timeout=timeout),
    )
    session = client.http_client._session
    session.verify = server.ca_file
    # Without this, REQUESTS_CA_BUNDLE in the environment wins over session.verify.
    session.trust_env = False
    return client


def send_vonage(client: Any, to: str = VONAGE_TO, text: str = "Your code is 123456") -> Any:
    return client.sms.send(SmsMessage(to=to, from_="FlashSend", text=text))


def smtp_backend(server: FakeSmtpServer, username: str = "", password: str = "") -> EmailBackend:
    return EmailBackend(
        host=server.host,
        port=server.port,
        username=username,
        password=password,
        use_tls=False,
        use_ssl=False,
        timeout=2,
    )


def email(n: int = 1, to: str = "ada@example.com") -> EmailMessage:
    return EmailMessage(
        f"Subject {n}",
        f"Body {n}",
        "FlashSend <noreply@example.com>",
        [to],
        headers={"Message-ID": f"<msg-{n}@flashsend.test>"},
    )


# --- Twilio -------------------------------------------------------------------------


def test_twilio_send_is_answered_like_twilio_and_recorded(fake: FakeProviderServer) -> None:
    message = send_sms(twilio_client(fake))

    assert message.sid.startswith("SM")
    assert len(message.sid) == 34
    assert message.status == "queued"
    assert message.account_sid == SID
    assert (message.to, message.from_, message.body) == (RECIPIENT, SENDER, "Your code is 123456")
    assert message.direction == "outbound-api"
    assert message.num_segments == "1"
    assert message.date_created is not None
    [recorded] = fake.messages("twilio")
    assert (recorded.to, recorded.from_, recorded.message_id) == (RECIPIENT, SENDER, message.sid)
    assert fake.messages("vonage") == []
    [request] = fake.requests()
    assert (request.provider, request.status, request.outcome) == ("twilio", 201, "ok")


def test_twilio_messaging_service_sender_is_accepted(fake: FakeProviderServer) -> None:
    service = "MG" + "1" * 32
    message = twilio_client(fake).messages.create(
        to=RECIPIENT, messaging_service_sid=service, body="hi"
    )
    assert message.status == "accepted"
    assert fake.messages()[0].from_ == service


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (503, 20503)])
def test_twilio_error_mode_is_an_outage(fake: FakeProviderServer, status: int, code: int) -> None:
    fake.set_behaviour("twilio", "error", status=status)
    with pytest.raises(TwilioRestException) as caught:
        send_sms(twilio_client(fake))
    assert (caught.value.status, caught.value.code) == (status, code)
    assert fake.messages() == []


@pytest.mark.parametrize(
    "behaviour",
    [{"mode": "reject"}, {"mode": "ok", "reject_numbers": ["+1 (555) 123-0001"]}],
    ids=["mode", "reject_numbers"],
)
def test_twilio_invalid_recipient(fake: FakeProviderServer, behaviour: dict[str, Any]) -> None:
    fake.set_behaviour("twilio", **behaviour)
    client = twilio_client(fake)
    with pytest.raises(TwilioRestException) as caught:
        send_sms(client)
    assert (caught.value.status, caught.value.code) == (400, 21211)
    assert RECIPIENT in caught.value.msg
    if behaviour["mode"] == "ok":
        send_sms(client, to="+15551230002")  # other numbers still go through
        assert len(fake.messages()) == 1


def test_twilio_ratelimit(fake: FakeProviderServer) -> None:
    fake.set_behaviour("twilio", "ratelimit")
    with pytest.raises(TwilioRestException) as caught:
        send_sms(twilio_client(fake))
    assert (caught.value.status, caught.value.code) == (429, 20429)


def test_twilio_timeout_fires_the_client_timeout(fake: FakeProviderServer) -> None:
    fake.set_behaviour("twilio", "timeout")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        send_sms(twilio_client(fake, timeout=1))
    assert 0.9 <= time.monotonic() - started < 3
    assert fake.requests()[0].status is None


def test_twilio_fail_next_then_configured_mode(fake: FakeProviderServer) -> None:
    fake.set_behaviour("twilio", fail_next=2)
    client = twilio_client(fake)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as caught:
            send_sms(client)
        assert caught.value.status == 500
    assert send_sms(client).status == "queued"
    assert [r.status for r in fake.requests()] == [500, 500, 201]


def test_twilio_keeps_one_connection_alive(fake: FakeProviderServer) -> None:
    client = twilio_client(fake)
    for n in range(20):
        send_sms(client, body=f"message {n}")
    assert len(fake.messages()) == 20
    assert fake.connections_opened <= 2


def test_twilio_credentials_are_enforced_when_given() -> None:
    with FakeProviderServer(account_sid=SID, auth_token=TOKEN) as server:
        with pytest.raises(TwilioRestException) as caught:
            send_sms(twilio_client(server, token="wrong"))
        assert (caught.value.status, caught.value.code) == (401, 20003)
        assert send_sms(twilio_client(server)).status == "queued"


def test_twilio_delay_is_added_to_every_answer(fake: FakeProviderServer) -> None:
    fake.set_behaviour("twilio", delay_ms=50)
    client = twilio_client(fake)
    for _ in range(2):
        started = time.monotonic()
        send_sms(client)
        assert time.monotonic() - started >= 0.05


# --- Vonage (HTTPS) -----------------------------------------------------------------


def test_vonage_send_over_tls_is_recorded(tls_fake: FakeProviderServer) -> None:
    response = send_vonage(vonage_client(tls_fake))

    [part] = response.messages
    assert (response.message_count, part.status, part.to) == ("1", "0", VONAGE_TO)
    assert part.remaining_balance == "10.0"
    assert part.message_price == "0.03"
    [recorded] = tls_fake.messages("vonage")
    assert (recorded.to, recorded.from_, recorded.body) == (
        VONAGE_TO,
        "FlashSend",
        "Your code is 123456",
    )
    assert recorded.message_id == part.message_id
    assert tls_fake.url.startswith("https://127.0.0.1:")


def test_vonage_long_text_is_answered_per_part(tls_fake: FakeProviderServer) -> None:
    response = send_vonage(vonage_client(tls_fake), text="x" * 200)
    assert response.message_count == "2"
    assert len({m.message_id for m in response.messages}) == 2
    assert tls_fake.messages()[0].segments == 2


@pytest.mark.parametrize(
    "behaviour",
    [{"mode": "reject"}, {"mode": "ok", "reject_numbers": ["+44 7700 900001"]}],
    ids=["mode", "reject_numbers"],
)
def test_vonage_invalid_recipient_is_status_3(
    tls_fake: FakeProviderServer, behaviour: dict[str, Any]
) -> None:
    tls_fake.set_behaviour("vonage", **behaviour)
    with pytest.raises(SmsError, match=rf"error code 3: .*{VONAGE_TO}"):
        send_vonage(vonage_client(tls_fake))
    assert tls_fake.messages() == []
    assert tls_fake.requests()[0].outcome == "reject"


@pytest.mark.parametrize(("mode", "code"), [("ratelimit", "1"), ("internal", "5")])
def test_vonage_in_band_failures(tls_fake: FakeProviderServer, mode: Any, code: str) -> None:
    tls_fake.set_behaviour("vonage", mode)
    with pytest.raises(SmsError, match=f"error code {code}:"):
        send_vonage(vonage_client(tls_fake))
    assert tls_fake.requests()[0].status == 200  # Vonage reports these inside a 200


def test_vonage_outage_is_a_real_http_5xx(tls_fake: FakeProviderServer) -> None:
    client = vonage_client(tls_fake)
    tls_fake.set_behaviour("vonage", "error")
    with pytest.raises(ServerError) as server_error:
        send_vonage(client)
    assert server_error.value.response.status_code == 500
    tls_fake.set_behaviour("vonage", "error", status=503)
    with pytest.raises(HttpRequestError) as unavailable:
        send_vonage(client)
    # The SDK has a subclass for 500 only; other 5xx arrive as the base class.
    assert not isinstance(unavailable.value, ServerError)
    assert unavailable.value.response.status_code == 503


def test_vonage_bad_credentials_are_status_4() -> None:
    with FakeProviderServer(tls=True, api_key=VONAGE_KEY, api_secret=VONAGE_SECRET) as server:
        with pytest.raises(SmsError, match="error code 4: Bad Credentials"):
            send_vonage(vonage_client(server, secret="wrong"))
        assert send_vonage(vonage_client(server)).messages[0].status == "0"


def test_vonage_timeout_and_fail_next(tls_fake: FakeProviderServer) -> None:
    tls_fake.set_behaviour("vonage", "timeout", fail_next=1)
    client = vonage_client(tls_fake, timeout=1)
    with pytest.raises(ServerError):
        send_vonage(client)  # fail_next comes first
    started = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout):
        send_vonage(client)
    assert 0.9 <= time.monotonic() - started < 3


def test_vonage_keeps_one_tls_connection_alive(tls_fake: FakeProviderServer) -> None:
    client = vonage_client(tls_fake)
    for _ in range(10):
        send_vonage(client)
    assert tls_fake.connections_opened == 1


def test_vonage_untrusted_certificate_is_refused(tls_fake: FakeProviderServer) -> None:
    client = vonage_client(tls_fake)
    session = client.http_client._session
    session.verify = True
    with pytest.raises(requests.exceptions.SSLError):
        send_vonage(client)


def test_environment_ca_bundle_overrides_session_verify(
    tls_fake: FakeProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the provider class must also set trust_env = False."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.utils.DEFAULT_CA_BUNDLE_PATH)
    client = vonage_client(tls_fake)
    client.http_client._session.trust_env = True
    with pytest.raises(requests.exceptions.SSLError):
        send_vonage(client)
    client.http_client._session.trust_env = False
    assert send_vonage(client).messages[0].status == "0"


# --- Vonage: a long text refused part-way ---------------------------------------------


def test_vonage_partial_mode_accepts_the_first_part_only(tls_fake: FakeProviderServer) -> None:
    tls_fake.set_behaviour("vonage", "partial")
    with pytest.raises(PartialFailureError) as caught:
        send_vonage(vonage_client(tls_fake), text=THREE_PARTS)

    answer = caught.value.response  # the SDK hands over the parsed JSON body
    assert answer["message-count"] == "3"
    first, *rest = answer["messages"]
    assert (first["status"], first["to"]) == ("0", VONAGE_TO)
    assert first["message-id"]
    assert [(m["status"], m["error-text"], m["to"]) for m in rest] == [
        ("1", "Throttled", VONAGE_TO),
        ("1", "Throttled", VONAGE_TO),
    ]
    assert all("message-id" not in m for m in rest)
    [recorded] = tls_fake.messages("vonage")
    assert (recorded.segments, recorded.failed_segments) == (3, 2)
    assert recorded.message_id == first["message-id"]
    assert recorded.body == THREE_PARTS
    [request] = tls_fake.requests()
    assert (request.status, request.outcome) == (200, "partial")
    assert request.response == answer


def test_vonage_partial_mode_accepted_parts(tls_fake: FakeProviderServer) -> None:
    client = vonage_client(tls_fake)
    tls_fake.set_behaviour("vonage", "partial", accepted_parts=2)
    with pytest.raises(PartialFailureError) as caught:
        send_vonage(client, text=THREE_PARTS)
    assert [m["status"] for m in caught.value.response["messages"]] == ["0", "0", "1"]

    # A text that fits in the accepted parts is simply accepted.
    assert send_vonage(client, text="short").messages[0].status == "0"
    assert [r.outcome for r in tls_fake.requests()] == ["partial", "ok"]
    assert [m.failed_segments for m in tls_fake.messages()] == [1, 0]

    # Nothing accepted: every part refused, nothing delivered, nothing recorded.
    tls_fake.reset()
    tls_fake.set_behaviour("vonage", "partial", accepted_parts=0)
    with pytest.raises(PartialFailureError) as refused:
        send_vonage(client, text=THREE_PARTS)
    assert [m["status"] for m in refused.value.response["messages"]] == ["1", "1", "1"]
    with pytest.raises(SmsError, match="error code 1: Throttled") as single:
        send_vonage(client, text="short")
    assert not isinstance(single.value, PartialFailureError)
    assert tls_fake.messages() == []


def test_vonage_partial_mode_still_rejects_invalid_numbers(tls_fake: FakeProviderServer) -> None:
    tls_fake.set_behaviour("vonage", "partial", reject_numbers=[VONAGE_TO])
    with pytest.raises(SmsError, match="error code 3"):
        send_vonage(vonage_client(tls_fake), text=THREE_PARTS)
    assert tls_fake.requests()[0].outcome == "reject"


def test_vonage_partial_mode_after_fail_next(tls_fake: FakeProviderServer) -> None:
    tls_fake.set_behaviour("vonage", "partial", fail_next=1)
    client = vonage_client(tls_fake)
    with pytest.raises(ServerError):
        send_vonage(client, text=THREE_PARTS)
    with pytest.raises(PartialFailureError):
        send_vonage(client, text=THREE_PARTS)


def test_partial_mode_is_vonage_only_and_validated(
    fake: FakeProviderServer, control: requests.Session
) -> None:
    with pytest.raises(ValueError, match="vonage only"):
        fake.set_behaviour("twilio", "partial")
    with pytest.raises(ValueError, match="accepted_parts"):
        fake.set_behaviour("vonage", "partial", accepted_parts=-1)
    assert fake.behaviour("twilio").mode == "ok"

    base = fake.url + "/_fake/behaviour"
    refused = control.post(base, json={"provider": "twilio", "mode": "partial"})
    assert refused.status_code == 400
    assert "vonage only" in refused.json()["error"]
    body = {"provider": "vonage", "mode": "partial", "accepted_parts": 2}
    answer = control.post(base, json=body)
    assert answer.status_code == 200
    assert (answer.json()["mode"], answer.json()["accepted_parts"]) == ("partial", 2)
    assert fake.behaviour("vonage").accepted_parts == 2
    assert control.get(base).json()["vonage"]["accepted_parts"] == 2


# --- Control endpoints and lifecycle -------------------------------------------------


def test_http_control_endpoints(fake: FakeProviderServer, control: requests.Session) -> None:
    base = fake.url + "/_fake"
    answer = control.post(f"{base}/behaviour", json={"provider": "twilio", "mode": "ratelimit"})
    assert answer.status_code == 200
    assert answer.json()["mode"] == "ratelimit"
    client = twilio_client(fake)
    with pytest.raises(TwilioRestException):
        send_sms(client)

    control.post(f"{base}/behaviour", json={"provider": "twilio", "delay_ms": 1}).raise_for_status()
    sid = send_sms(client).sid
    messages = control.get(f"{base}/messages", params={"provider": "twilio"}).json()["messages"]
    assert [(m["message_id"], m["to"], m["from"]) for m in messages] == [(sid, RECIPIENT, SENDER)]
    seen = control.get(f"{base}/requests").json()["requests"]
    assert [r["status"] for r in seen] == [429, 201]
    assert control.get(f"{base}/behaviour").json()["twilio"]["delay_ms"] == 1

    bad = control.post(f"{base}/behaviour", json={"provider": "twilio", "mode": "explode"})
    assert bad.status_code == 400
    assert "mode" in bad.json()["error"]
    assert control.post(f"{base}/reset").json() == {"reset": True}
    assert control.get(f"{base}/messages").json() == {"messages": []}
    assert fake.behaviour("twilio").delay_ms == 0


def test_control_endpoints_over_tls(
    tls_fake: FakeProviderServer, control: requests.Session
) -> None:
    base = tls_fake.url + "/_fake"
    body = {"provider": "vonage", "mode": "reject"}
    control.post(f"{base}/behaviour", json=body, verify=tls_fake.ca_file).raise_for_status()
    assert tls_fake.behaviour("vonage").mode == "reject"


def test_set_behaviour_validates() -> None:
    server = FakeProviderServer()
    with pytest.raises(ValueError, match="mode"):
        server.set_behaviour("twilio", "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        server.set_behaviour("twilio", "error", status=404)
    with pytest.raises(ValueError, match="provider"):
        server.set_behaviour("sinch", "ok")  # type: ignore[arg-type]


def test_stop_releases_held_requests_and_threads() -> None:
    before = set(threading.enumerate())
    server = FakeProviderServer().start()
    server.set_behaviour("twilio", "timeout", hang_seconds=30)
    outcome: list[Exception] = []

    def sender() -> None:
        try:
            send_sms(twilio_client(server, timeout=10))
        except Exception as exc:
            outcome.append(exc)

    client_thread = threading.Thread(target=sender)
    client_thread.start()
    try:
        deadline = time.monotonic() + 5
        while not server.requests() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.requests()[0].outcome == "timeout"
    finally:
        started = time.monotonic()
        server.stop()
        stop_took = time.monotonic() - started
        client_thread.join(5)
    assert stop_took < 2
    assert isinstance(outcome[0], requests.exceptions.ConnectionError)
    assert set(threading.enumerate()) - before == set()


# --- SMTP ---------------------------------------------------------------------------


def test_smtp_backend_reuses_one_connection(smtp: FakeSmtpServer) -> None:
    backend = smtp_backend(smtp)
    backend.open()
    try:
        sent = [email(n) for n in range(5)]
        for message in sent:
            assert backend.send_messages([message]) == 1
    finally:
        backend.close()

    recorded = smtp.messages()
    assert [m.subject for m in recorded] == [f"Subject {n}" for n in range(5)]
    assert recorded[0].body.strip() == "Body 0"
    assert recorded[0].mail_from == "noreply@example.com"
    assert recorded[0].rcpt_tos == ("ada@example.com",)
    assert [m.message_id for m in recorded] == [f"<msg-{n}@flashsend.test>" for n in range(5)]
    assert smtp.connections_opened == 1


def test_smtp_rejected_recipient(smtp: FakeSmtpServer) -> None:
    smtp.set_behaviour(reject_recipients=["Nobody@Example.com"])
    with smtp_backend(smtp) as backend, pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        backend.send_messages([email(to="nobody@example.com")])
    [(code, reply)] = caught.value.recipients.values()
    assert code == 550
    assert reply.startswith(b"5.1.1")
    assert smtp.messages() == []


def test_smtp_reject_mode_refuses_everyone(smtp: FakeSmtpServer) -> None:
    smtp.set_behaviour("reject")
    with smtp_backend(smtp) as backend, pytest.raises(smtplib.SMTPRecipientsRefused):
        backend.send_messages([email()])


def test_smtp_error_is_a_temporary_failure_at_data(smtp: FakeSmtpServer) -> None:
    smtp.set_behaviour("error")
    with smtp_backend(smtp) as backend:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            backend.send_messages([email()])
        assert caught.value.smtp_code == 451
        reply: object = caught.value.smtp_error  # typeshed says str; smtplib gives bytes
        assert isinstance(reply, bytes)
        assert reply.startswith(b"4.3.0")
        smtp.set_behaviour(fail_next=1)
        with pytest.raises(smtplib.SMTPDataError):
            backend.send_messages([email(1)])
        assert backend.send_messages([email(2)]) == 1  # the same connection recovers
    assert [m.subject for m in smtp.messages()] == ["Subject 2"]


def test_smtp_delay_per_message(smtp: FakeSmtpServer) -> None:
    smtp.set_behaviour(delay_ms=50)
    with smtp_backend(smtp) as backend:
        for n in range(3):
            started = time.monotonic()
            backend.send_messages([email(n)])
            assert time.monotonic() - started >= 0.05


def test_smtp_stop_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    with FakeSmtpServer() as server, smtp_backend(server) as backend:
        backend.send_messages([email()])
    assert set(threading.enumerate()) - before == set()


# --- SMTP: AUTH and sender refusals ---------------------------------------------------


@pytest.fixture
def smtp_auth() -> Iterator[FakeSmtpServer]:
    with FakeSmtpServer(username=SMTP_USER, password=SMTP_PASSWORD) as server:
        yield server


def test_smtp_right_credentials_deliver(smtp_auth: FakeSmtpServer) -> None:
    with smtp_backend(smtp_auth, SMTP_USER, SMTP_PASSWORD) as backend:
        assert backend.send_messages([email(1), email(2)]) == 2
    assert [m.login for m in smtp_auth.messages()] == [SMTP_USER, SMTP_USER]
    [attempt] = smtp_auth.auth_attempts()  # one login for the whole session
    assert (attempt.login, attempt.mechanism, attempt.accepted) == (SMTP_USER, "PLAIN", True)


def test_smtp_auth_login_mechanism(smtp_auth: FakeSmtpServer) -> None:
    with smtplib.SMTP(smtp_auth.host, smtp_auth.port, timeout=2) as relay:
        relay.ehlo()
        assert "LOGIN" in relay.esmtp_features["auth"].split()
        relay.user, relay.password = SMTP_USER, SMTP_PASSWORD
        code, _ = relay.auth("LOGIN", relay.auth_login)
        assert code == 235
        relay.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
    [message] = smtp_auth.messages()
    assert message.login == SMTP_USER
    assert [(a.mechanism, a.accepted) for a in smtp_auth.auth_attempts()] == [("LOGIN", True)]


@pytest.mark.parametrize(
    ("username", "password"),
    [(SMTP_USER, "wrong"), ("someone@example.com", SMTP_PASSWORD)],
    ids=["password", "username"],
)
def test_smtp_wrong_credentials_are_535(
    smtp_auth: FakeSmtpServer, username: str, password: str
) -> None:
    backend = smtp_backend(smtp_auth, username, password)
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        backend.send_messages([email()])
    backend.close()
    assert caught.value.smtp_code == 535
    reply: object = caught.value.smtp_error
    assert isinstance(reply, bytes)
    assert reply.startswith(b"5.7.8")
    assert smtp_auth.messages() == []
    attempts = smtp_auth.auth_attempts()
    assert attempts  # smtplib tries PLAIN, then LOGIN
    assert {(a.login, a.accepted) for a in attempts} == {(username, False)}


def test_smtp_credentials_given_make_auth_required(smtp_auth: FakeSmtpServer) -> None:
    with smtp_backend(smtp_auth) as backend, pytest.raises(smtplib.SMTPSenderRefused) as caught:
        backend.send_messages([email()])
    assert caught.value.smtp_code == 530
    assert smtp_auth.messages() == []
    assert smtp_auth.auth_attempts() == []


def test_smtp_without_credentials_any_login_or_none_is_accepted(smtp: FakeSmtpServer) -> None:
    with smtp_backend(smtp, "anyone", "anything") as backend:
        backend.send_messages([email(1)])
    with smtp_backend(smtp) as backend:
        backend.send_messages([email(2)])
    assert [m.login for m in smtp.messages()] == ["anyone", None]
    assert [(a.login, a.accepted) for a in smtp.auth_attempts()] == [("anyone", True)]


def test_smtp_auth_fail_mode_refuses_every_login(smtp_auth: FakeSmtpServer) -> None:
    smtp_auth.set_behaviour("auth_fail")
    backend = smtp_backend(smtp_auth, SMTP_USER, SMTP_PASSWORD)
    with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        backend.send_messages([email()])
    backend.close()
    assert caught.value.smtp_code == 535
    assert not any(a.accepted for a in smtp_auth.auth_attempts())

    smtp_auth.set_behaviour("ok")
    with smtp_backend(smtp_auth, SMTP_USER, SMTP_PASSWORD) as again:
        assert again.send_messages([email()]) == 1
    assert smtp_auth.auth_attempts()[-1].accepted


def test_smtp_reject_sender_mode_refuses_mail_from(smtp: FakeSmtpServer) -> None:
    smtp.set_behaviour("reject_sender")
    with smtp_backend(smtp, "anyone", "anything") as backend:
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            backend.send_messages([email()])
        assert caught.value.smtp_code == 553
        assert "noreply@example.com" in caught.value.sender
        reply: object = caught.value.smtp_error
        assert isinstance(reply, bytes)
        assert reply.startswith(b"5.7.1 <noreply@example.com>: Sender address rejected")
        assert b"anyone" in reply
        smtp.set_behaviour("ok")
        assert backend.send_messages([email()]) == 1  # the same session recovers
    assert len(smtp.messages()) == 1


def test_smtp_reset_forgets_auth_attempts(smtp: FakeSmtpServer) -> None:
    smtp.set_behaviour("auth_fail")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp_backend(smtp, "anyone", "anything").open()
    assert smtp.auth_attempts()
    smtp.reset()
    assert smtp.auth_attempts() == []
    assert smtp.behaviour().mode == "ok"


def test_smtp_set_behaviour_validates(smtp: FakeSmtpServer) -> None:
    with pytest.raises(ValueError, match="mode"):
        smtp.set_behaviour("explode")  # type: ignore[arg-type]


# --- python -m flashsend.fakes --------------------------------------------------------


def test_command_line_runs_all_three_fakes(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "flashsend.fakes", "--enforce-credentials"]
    ports = ["--twilio-port", "0", "--vonage-port", "0", "--smtp-port", "0"]
    process = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
        [*command, *ports, "--cert-dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watchdog = threading.Timer(20, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        settings: dict[str, str] = {}
        for line in process.stdout:
            name, _, value = line.strip().partition("=")
            settings[name] = value
            if name == "SMTP_PASSWORD":
                break
        client = Client(settings["TWILIO_ACCOUNT_SID"], settings["TWILIO_AUTH_TOKEN"])
        client.api.base_url = settings["TWILIO_BASE_URL"]
        assert send_sms(client).status == "queued"

        vonage_fake = vonage.Vonage(
            vonage.Auth(
                api_key=settings["VONAGE_API_KEY"], api_secret=settings["VONAGE_API_SECRET"]
            ),
            http_client_options=vonage.HttpClientOptions(
                rest_host=settings["VONAGE_REST_HOST"], timeout=2
            ),
        )
        vonage_fake.http_client._session.verify = settings["VONAGE_CA_BUNDLE"]
        vonage_fake.http_client._session.trust_env = False
        assert send_vonage(vonage_fake).messages[0].status == "0"

        with smtplib.SMTP(settings["SMTP_HOST"], int(settings["SMTP_PORT"]), timeout=2) as relay:
            with pytest.raises(smtplib.SMTPSenderRefused):  # enforced: login first
                relay.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nhi\r\n")
            relay.login(settings["SMTP_USERNAME"], settings["SMTP_PASSWORD"])
            relay.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
