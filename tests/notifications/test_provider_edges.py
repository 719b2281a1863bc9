"""Provider edge cases that only the fakes' special modes produce.

* Vonage answers a long SMS part by part; when a later part is refused after earlier
  ones went out, sending again would repeat those parts, so the notification fails
  for good instead of being retried or failed over.
* An SMTP relay refusing our login or our sender address is our account's problem,
  not the recipient's: the notification waits and retries instead of failing.

Delivery rounds are called directly (no broker), as in test_delivery.py; the last
test runs the partial failure through a real worker and RabbitMQ.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from flashsend.fakes import FakeProviderServer, FakeSmtpServer
from notifications.delivery import Verdict, notification_deliver
from notifications.models import AttemptOutcome, Notification, Status
from tests.pipeline import wait_for

LONG_SMS = "Your order has shipped. " * 16  # 384 GSM-7 characters: 3 parts
SMTP_USER = "mailer@example.com"
SMTP_PASSWORD = "app-password"


def _queued(user: User, **fields: Any) -> Notification:
    values: dict[str, Any] = {"channel": "sms", "recipient": "+14155552671", "body": LONG_SMS}
    values.update(fields)
    return Notification.objects.create(owner=user, **values)


def _email(user: User) -> Notification:
    return _queued(
        user, channel="email", recipient="ann@example.com", subject="Hi", body="Hello Ann"
    )


def _attempts(row: Notification) -> list[tuple[str, str, str]]:
    return list(row.attempts.order_by("id").values_list("provider", "outcome", "error_code"))


# --- Vonage: a long SMS refused part-way ---------------------------------------------


@pytest.mark.django_db
def test_vonage_partial_failure_is_permanent_and_not_resent(
    user: User, providers: dict[str, Any], settings: Any
) -> None:
    settings.SMS_PROVIDERS = ["vonage", "twilio"]
    vonage: FakeProviderServer = providers["vonage"]
    vonage.set_behaviour("vonage", "partial")
    row = _queued(user)

    result = notification_deliver(notification_id=row.id)

    assert result.verdict is Verdict.FAILED
    assert "delivered 1 of 3 parts" in result.error
    row.refresh_from_db()
    assert (row.status, row.provider, row.attempt_count) == (Status.FAILED, "vonage", 1)
    assert row.next_attempt_at is None
    assert row.finished_at is not None
    assert "vonage: Vonage delivered 1 of 3 parts" in row.last_error
    assert "part statuses: 0, 1, 1" in row.last_error
    [attempt] = row.attempts.all()
    assert (attempt.provider, attempt.outcome, attempt.error_code) == (
        "vonage",
        AttemptOutcome.PERMANENT,
        "partial",
    )
    assert attempt.error_message.startswith("Vonage delivered 1 of 3 parts")
    # The recipient has the first part; no other provider was asked to send it all again.
    [message] = vonage.messages("vonage")
    assert (message.segments, message.failed_segments) == (3, 2)
    assert [r.outcome for r in vonage.requests("vonage")] == ["partial"]
    assert providers["twilio"].requests() == []

    # A redelivered task message finds the row final and calls no provider.
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SKIPPED
    assert len(vonage.requests()) == 1
    assert row.attempts.count() == 1


@pytest.mark.django_db
def test_vonage_multi_part_refused_entirely_fails_over(
    user: User, providers: dict[str, Any], settings: Any
) -> None:
    """Every part refused: nothing reached the recipient, so nothing can be duplicated.

    The SDK raises PartialFailureError for this too; a throttle is transient, so the
    next provider sends the message.
    """
    settings.SMS_PROVIDERS = ["vonage", "twilio"]
    providers["vonage"].set_behaviour("vonage", "partial", accepted_parts=0)
    row = _queued(user)

    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT

    row.refresh_from_db()
    assert (row.status, row.provider) == (Status.SENT, "twilio")
    assert _attempts(row) == [("vonage", "transient", "1"), ("twilio", "success", "")]
    assert "Throttled" in row.attempts.get(provider="vonage").error_message
    assert providers["vonage"].messages() == []
    assert [m.body for m in providers["twilio"].messages()] == [LONG_SMS]


@pytest.mark.django_db
def test_vonage_short_sms_in_partial_mode_is_sent(user: User, providers: dict[str, Any]) -> None:
    providers["twilio"].set_behaviour("twilio", "error")
    providers["vonage"].set_behaviour("vonage", "partial")
    row = _queued(user, body="Your code is 123456")
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    row.refresh_from_db()
    assert row.provider == "vonage"
    assert row.provider_message_id == providers["vonage"].messages()[0].message_id


# --- SMTP: our login or sender refused ----------------------------------------------


@pytest.fixture
def smtp_login(settings: Any) -> Iterator[FakeSmtpServer]:
    """A relay that requires AUTH, with FlashSend configured to log in to it."""
    with FakeSmtpServer(username=SMTP_USER, password=SMTP_PASSWORD) as server:
        settings.SMTP_HOST = server.host
        settings.SMTP_PORT = server.port
        settings.SMTP_USE_TLS = False
        settings.SMTP_USE_SSL = False
        settings.SMTP_USERNAME = SMTP_USER
        settings.SMTP_PASSWORD = SMTP_PASSWORD
        settings.SMTP_FROM = "FlashSend <noreply@example.com>"
        settings.EMAIL_PROVIDERS = ["smtp"]
        settings.PROVIDER_TIMEOUT_SECONDS = 2.0
        yield server


@pytest.mark.django_db
def test_smtp_logs_in_with_the_configured_credentials(
    user: User, smtp_login: FakeSmtpServer
) -> None:
    row = _email(user)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    [message] = smtp_login.messages()
    assert message.login == SMTP_USER
    assert message.subject == "Hi"
    assert [(a.login, a.accepted) for a in smtp_login.auth_attempts()] == [(SMTP_USER, True)]
    row.refresh_from_db()
    assert (row.status, row.provider) == (Status.SENT, "smtp")


@pytest.mark.django_db
def test_smtp_wrong_password_retries_then_delivers_once_fixed(
    user: User, smtp_login: FakeSmtpServer, settings: Any
) -> None:
    settings.SMTP_PASSWORD = "revoked"
    row = _email(user)

    result = notification_deliver(notification_id=row.id)

    assert result.verdict is Verdict.RETRY
    row.refresh_from_db()
    assert row.status == Status.RETRYING
    assert row.next_attempt_at is not None
    assert row.finished_at is None
    assert "smtp: SMTP 535: our login was refused" in row.last_error
    assert _attempts(row) == [("smtp", "transient", "account")]
    assert smtp_login.messages() == []
    assert smtp_login.auth_attempts()
    assert not any(a.accepted for a in smtp_login.auth_attempts())

    # The operator fixes the password; the retry round logs in on a new connection.
    settings.SMTP_PASSWORD = SMTP_PASSWORD
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    row.refresh_from_db()
    assert (row.status, row.attempt_count) == (Status.SENT, 2)
    assert [m.login for m in smtp_login.messages()] == [SMTP_USER]


@pytest.mark.django_db
def test_smtp_login_refused_by_the_relay_is_transient(
    user: User, smtp_login: FakeSmtpServer
) -> None:
    smtp_login.set_behaviour("auth_fail")  # e.g. the account was locked
    row = _email(user)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.RETRY
    row.refresh_from_db()
    assert row.status == Status.RETRYING
    [attempt] = row.attempts.all()
    assert (attempt.outcome, attempt.error_code) == (AttemptOutcome.TRANSIENT, "account")
    assert "535" in attempt.error_message


@pytest.mark.django_db
def test_smtp_missing_login_is_transient(
    user: User, smtp_login: FakeSmtpServer, settings: Any
) -> None:
    """No credentials configured for a relay that requires them: 530 at MAIL FROM."""
    settings.SMTP_USERNAME = ""
    settings.SMTP_PASSWORD = ""
    row = _email(user)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.RETRY
    assert _attempts(row) == [("smtp", "transient", "account")]
    assert "SMTP 530" in row.attempts.get().error_message
    assert smtp_login.auth_attempts() == []


@pytest.mark.django_db
def test_smtp_sender_refused_is_transient(
    user: User, smtp_login: FakeSmtpServer, fast_retries: None
) -> None:
    smtp_login.set_behaviour("reject_sender")
    row = _email(user)
    verdicts = []
    for _ in range(3):
        verdicts.append(notification_deliver(notification_id=row.id).verdict)
    # Retried until the retry budget is spent (never FAILED: the recipient is fine).
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.DEAD]
    row.refresh_from_db()
    assert row.status == Status.DEAD
    assert _attempts(row) == [("smtp", "transient", "account")] * 3
    assert "SMTP 553" in row.last_error
    assert "Sender address rejected" in row.last_error
    assert smtp_login.messages() == []


# --- Through a real worker ---------------------------------------------------------------


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_partial_failure_through_the_worker_is_not_retried(
    jwt_client: APIClient, worker: Any, providers: dict[str, Any], settings: Any
) -> None:
    settings.SMS_PROVIDERS = ["vonage", "twilio"]
    vonage: FakeProviderServer = providers["vonage"]
    vonage.set_behaviour("vonage", "partial")
    payload = {"channel": "sms", "to": "+14155552671", "body": LONG_SMS}
    response = jwt_client.post("/api/notify/send", payload, format="json")
    assert response.status_code == 202, response.content
    notification_id = int(response.json()["id"])

    def failed() -> Notification | None:
        row = Notification.objects.get(id=notification_id)
        return row if row.status == Status.FAILED else None

    row = wait_for(failed)
    assert row is not None
    assert row.attempt_count == 1
    assert "delivered 1 of 3 parts" in row.last_error
    time.sleep(1.0)  # room for a retry, were one scheduled
    row.refresh_from_db()
    assert (row.status, row.attempt_count) == (Status.FAILED, 1)
    assert [r.outcome for r in vonage.requests()] == ["partial"]
    assert providers["twilio"].requests() == []
