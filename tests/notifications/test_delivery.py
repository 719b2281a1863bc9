"""One delivery round, called directly (no broker): claim, provider chain, verdict.

These run on any database, so the delivery logic is covered on SQLite too; the same
paths through a real worker and RabbitMQ are in test_pipeline.py.
"""

from __future__ import annotations

import email
import json
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings

from accounts.models import User
from flashsend.fakes import FakeSmtpServer
from notifications.delivery import Verdict, backoff_seconds, notification_deliver
from notifications.models import AttemptOutcome, Notification, Status

pytestmark = pytest.mark.django_db


def _queued(user: User, **fields: Any) -> Notification:
    values: dict[str, Any] = {"channel": "sms", "recipient": "+14155552671", "body": "hi"}
    values.update(fields)
    return Notification.objects.create(owner=user, **values)


def test_sms_through_twilio(user: User, providers: Any) -> None:
    row = _queued(user)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    row.refresh_from_db()
    assert (row.status, row.provider) == (Status.SENT, "twilio")
    assert len(providers["twilio"].messages("twilio")) == 1


def test_failover_to_vonage(user: User, providers: Any) -> None:
    providers["twilio"].set_behaviour("twilio", mode="ratelimit")
    row = _queued(user)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    row.refresh_from_db()
    assert row.provider == "vonage"
    outcomes = list(row.attempts.values_list("provider", "outcome", "error_code"))
    assert outcomes == [("twilio", "transient", "20429"), ("vonage", "success", "")]


def test_vonage_invalid_number_is_permanent(user: User, providers: Any, settings: Any) -> None:
    settings.SMS_PROVIDERS = ["vonage", "twilio"]
    providers["vonage"].set_behaviour("vonage", mode="reject")
    row = _queued(user)
    result = notification_deliver(notification_id=row.id)
    assert result.verdict is Verdict.FAILED
    assert providers["twilio"].requests() == []
    assert row.attempts.get().outcome == AttemptOutcome.PERMANENT


def test_all_down_retries_with_growing_backoff_then_dead(
    user: User, providers: Any, fast_retries: None
) -> None:
    providers["twilio"].set_behaviour("twilio", mode="error")
    providers["vonage"].set_behaviour("vonage", mode="error")
    row = _queued(user)
    verdicts = []
    for _ in range(3):
        result = notification_deliver(notification_id=row.id)
        verdicts.append(result.verdict)
        if result.verdict is Verdict.RETRY:
            assert result.retry_in is not None
            assert result.retry_in > 0
            Notification.objects.filter(id=row.id).update(status=Status.RETRYING)
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.DEAD]
    row.refresh_from_db()
    assert row.status == Status.DEAD
    assert row.attempt_count == 3
    assert row.attempts.count() == 6


def test_final_rows_are_skipped_without_calling_providers(user: User, providers: Any) -> None:
    row = _queued(user, status=Status.SENT)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SKIPPED
    assert providers["twilio"].requests() == []
    assert not row.attempts.exists()


def test_email_over_smtp(user: User, providers: Any) -> None:
    row = _queued(user, channel="email", recipient="ann@example.com", subject="Hi", body="Hello")
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    (message,) = providers["smtp"].messages()
    assert message.subject == "Hi"
    row.refresh_from_db()
    assert row.provider_message_id == message.message_id.strip("<>")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "without"])
def test_email_headers_and_envelope_from_the_provider(
    user: User, settings: Any, pipelining: bool
) -> None:
    with FakeSmtpServer(pipelining=pipelining) as relay:
        settings.EMAIL_PROVIDERS = ["smtp"]
        settings.SMTP_HOST, settings.SMTP_PORT = relay.host, relay.port
        settings.SMTP_USE_TLS = settings.SMTP_USE_SSL = False
        settings.SMTP_FROM = "FlashSend Alerts <alerts@example.com>"
        rows = [
            _queued(user, channel="email", recipient=f"ann{n}@example.com", subject=f"Hi {n}")
            for n in range(2)
        ]
        rows.append(_queued(user, channel="email", recipient="bo@example.com", subject="Grüße"))
        for row in rows:
            assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
        messages = relay.messages()
        assert relay.connections_opened == 1
    assert [(m.mail_from, m.rcpt_tos) for m in messages] == [
        ("alerts@example.com", ("ann0@example.com",)),
        ("alerts@example.com", ("ann1@example.com",)),
        ("alerts@example.com", ("bo@example.com",)),
    ]
    assert [m.subject for m in messages] == ["Hi 0", "Hi 1", "Grüße"]
    raw = email.message_from_bytes(messages[2].raw)
    assert raw["From"] == "FlashSend Alerts <alerts@example.com>"
    assert raw["To"] == "bo@example.com"
    assert raw["Subject"].startswith("=?utf-8?")  # encoded, as Django does
    assert raw["Date"]
    assert raw["Message-ID"]


def test_smtp_temporary_failure_is_transient(user: User, providers: Any) -> None:
    providers["smtp"].set_behaviour(mode="error")
    row = _queued(user, channel="email", recipient="ann@example.com", subject="Hi", body="Hello")
    assert notification_deliver(notification_id=row.id).verdict is Verdict.RETRY
    attempt = row.attempts.get()
    assert (attempt.outcome, attempt.error_code) == (AttemptOutcome.TRANSIENT, "451")


def test_console_provider_when_nothing_is_configured(
    user: User, settings: Any, tmp_path: Any
) -> None:
    settings.VAR_DIR = tmp_path
    settings.TWILIO_ACCOUNT_SID = settings.VONAGE_API_KEY = ""
    row = _queued(user)
    assert notification_deliver(notification_id=row.id).verdict is Verdict.SENT
    row.refresh_from_db()
    assert row.provider == "console"
    (line,) = (tmp_path / "outbox.jsonl").read_text().splitlines()
    assert json.loads(line)["to"] == "+14155552671"


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    base = django_settings.DELIVERY_RETRY_BACKOFF_SECONDS
    cap = django_settings.DELIVERY_RETRY_BACKOFF_MAX_SECONDS
    for rounds in range(1, 12):
        ceiling = min(cap, base * 2 ** (rounds - 1))
        samples = [backoff_seconds(rounds) for _ in range(50)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
    assert len({round(backoff_seconds(3), 6) for _ in range(20)}) > 1  # jittered


@pytest.mark.django_db(transaction=True)
def test_verdict_is_recorded_after_a_database_blip(user: User, providers: Any) -> None:
    """The provider was called; a failing database must not lose the verdict (a
    retry of the whole task would send again)."""
    import psycopg
    from django.db import connection

    from notifications import lifecycle
    from notifications.delivery import record_verdict
    from notifications.providers.base import OutboundMessage
    from notifications.providers.chain import send_with_failover
    from notifications.providers.registry import chain_for

    if connection.vendor != "postgresql":
        pytest.skip("terminates a PostgreSQL backend")
    row = _queued(user)
    claimed = lifecycle.claim(row.id, lease=timedelta(minutes=5))
    assert claimed is not None
    message = OutboundMessage(notification_id=row.id, channel="sms", to=row.recipient, body="hi")
    outcome = send_with_failover(chain_for("sms"), message)
    # The server drops this process's connection between the send and the verdict,
    # as a PostgreSQL restart or failover does.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [pid] = cursor.fetchone()
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    result = record_verdict(claimed, outcome, delays=(0.01,))
    assert result.verdict is Verdict.SENT
    row.refresh_from_db()
    assert row.status == Status.SENT
    assert row.attempts.count() == 1
    assert len(providers["twilio"].messages("twilio")) == 1
