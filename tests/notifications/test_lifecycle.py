"""Every transition is a conditional UPDATE that says whether it won the row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from notifications import lifecycle
from notifications.models import AttemptOutcome, DeliveryAttempt, Notification, Status

pytestmark = pytest.mark.django_db

LEASE = timedelta(minutes=5)


def _row(user: User, **fields: Any) -> Notification:
    values: dict[str, Any] = {"channel": "sms", "recipient": "+14155552671", "body": "hi"}
    values.update(fields)
    return Notification.objects.create(owner=user, **values)


@pytest.mark.parametrize("start", [Status.QUEUED, Status.RETRYING])
def test_claim_takes_a_claimable_row_once(user: User, start: str) -> None:
    row = _row(user, status=start, next_attempt_at=timezone.now())
    claimed = lifecycle.claim(row.id, lease=LEASE)
    assert claimed is not None
    assert claimed.id == row.id
    assert (claimed.status, claimed.attempt_count, claimed.next_attempt_at) == (
        Status.PROCESSING,
        1,
        None,
    )
    assert claimed.recipient == "+14155552671"
    assert claimed.claimed_at is not None
    assert lifecycle.claim(row.id, lease=LEASE) is None  # a second claimer loses


def test_a_claim_reads_what_a_delivery_needs_and_defers_the_rest(
    user: User, django_assert_num_queries: Any
) -> None:
    rows = [_row(user, metadata={"order": n}, subject=f"s{n}") for n in range(3)]
    with django_assert_num_queries(1):
        claimed = sorted(
            lifecycle.claim_many([r.id for r in rows], lease=LEASE), key=lambda r: r.id
        )
        read = [
            (r.recipient, r.subject, r.metadata, r.queue_name, r.attempt_count) for r in claimed
        ]
    assert read == [("+14155552671", f"s{n}", {"order": n}, "sms.medium", 1) for n in range(3)]
    with django_assert_num_queries(1):  # a deferred field is still there when read
        assert claimed[0].created_at == rows[0].created_at


@pytest.mark.parametrize(
    "final",
    [Status.SENT, Status.FAILED, Status.DEAD, Status.CANCELED, Status.SCHEDULED],
)
def test_claim_refuses_rows_not_waiting_for_delivery(user: User, final: str) -> None:
    row = _row(user, status=final)
    assert lifecycle.claim(row.id, lease=LEASE) is None
    row.refresh_from_db()
    assert row.status == final
    assert row.attempt_count == 0


def test_claim_takes_over_a_dead_workers_row_only_after_the_lease(user: User) -> None:
    fresh = _row(user, status=Status.PROCESSING, claimed_at=timezone.now())
    stale = _row(user, status=Status.PROCESSING, claimed_at=timezone.now() - 2 * LEASE)
    assert lifecycle.claim(fresh.id, lease=LEASE) is None
    taken = lifecycle.claim(stale.id, lease=LEASE)
    assert taken is not None
    assert taken.attempt_count == 1


def test_claim_of_a_missing_row_is_none(db: Any) -> None:
    assert lifecycle.claim(987654, lease=LEASE) is None


def test_transitions_leave_processing_only(user: User) -> None:
    row = _row(user, status=Status.QUEUED)
    # Not claimed yet: no transition out of processing can win.
    assert not lifecycle.mark_sent(row.id, provider="twilio", provider_message_id="SM1")
    assert not lifecycle.mark_failed(row.id, error="x")
    lifecycle.claim(row.id, lease=LEASE)
    assert lifecycle.mark_sent(row.id, provider="twilio", provider_message_id="SM1")
    assert not lifecycle.mark_dead(row.id, error="late")  # the first verdict stands
    row.refresh_from_db()
    assert (row.status, row.provider, row.provider_message_id) == (Status.SENT, "twilio", "SM1")
    assert row.sent_at is not None
    assert row.finished_at is not None


def _attempt(row: Notification, provider: str, latency_ms: int = 40) -> DeliveryAttempt:
    return DeliveryAttempt(
        notification=row,
        round=1,
        provider=provider,
        outcome=AttemptOutcome.TRANSIENT if provider == "twilio" else AttemptOutcome.SUCCESS,
        latency_ms=latency_ms,
        started_at=timezone.now(),
    )


@pytest.mark.django_db(transaction=True)  # autocommit, as in a worker
def test_verdict_and_attempts_are_written_in_one_statement(user: User) -> None:
    row = _row(user)
    lifecycle.claim(row.id, lease=LEASE)
    attempts = [_attempt(row, "twilio"), _attempt(row, "vonage")]
    with CaptureQueriesContext(connection) as queries:
        won = lifecycle.mark_sent(
            row.id, provider="vonage", provider_message_id="V1", attempts=attempts
        )
    assert won
    if connection.vendor == "postgresql":
        assert len(queries) == 1, [q["sql"] for q in queries]
    row.refresh_from_db()
    assert (row.status, row.provider) == (Status.SENT, "vonage")
    stored = list(row.attempts.order_by("id").values_list("provider", "outcome", "latency_ms"))
    assert stored == [("twilio", "transient", 40), ("vonage", "success", 40)]


@pytest.mark.django_db(transaction=True)
def test_verdicts_keep_every_character_and_instant(user: User) -> None:
    rows = [_row(user) for _ in range(2)]
    lifecycle.claim_many([r.id for r in rows], lease=LEASE)
    error = 'quote " backslash \\ newline\n tab\t unicode ✓ — {"json": [1]}'
    later = timezone.now().replace(microsecond=123456) + timedelta(hours=3)
    attempt = _attempt(rows[0], "twilio")
    attempt.error_message = error
    verdicts = [
        lifecycle.retrying(rows[0].id, error, later, [attempt]),
        lifecycle.sent(rows[1].id, "vonage", "V'1", [_attempt(rows[1], "vonage")]),
    ]
    assert lifecycle.leave_processing(verdicts) == {rows[0].id, rows[1].id}
    first, second = (Notification.objects.get(id=r.id) for r in rows)
    assert (first.status, first.last_error, first.next_attempt_at) == (
        Status.RETRYING,
        error,
        later,
    )
    assert first.attempts.get().error_message == error
    assert first.attempts.get().started_at == attempt.started_at
    assert (second.status, second.provider_message_id) == (Status.SENT, "V'1")


@pytest.mark.django_db(transaction=True)
def test_a_nul_in_an_error_text_does_not_stop_its_verdict(user: User) -> None:
    row = _row(user)
    lifecycle.claim(row.id, lease=LEASE)
    attempt = _attempt(row, "twilio")
    attempt.error_message = "before\x00after"
    later = timezone.now() + timedelta(minutes=1)
    verdict = lifecycle.retrying(row.id, "provider said \x00", later, [attempt])
    assert lifecycle.leave_processing([verdict]) == {row.id}
    row.refresh_from_db()
    assert (row.status, row.last_error) == (Status.RETRYING, "provider said \ufffd")
    assert row.attempts.get().error_message == "before\ufffdafter"


def test_attempts_are_kept_when_the_row_is_no_longer_ours(user: User) -> None:
    row = _row(user)
    lifecycle.claim(row.id, lease=LEASE)
    assert lifecycle.cancel(row.id) is False  # processing cannot be canceled...
    Notification.objects.filter(id=row.id).update(status=Status.QUEUED)  # ...but released
    won = lifecycle.mark_dead(row.id, error="late", attempts=[_attempt(row, "twilio")])
    assert not won
    row.refresh_from_db()
    assert row.status == Status.QUEUED
    assert row.attempts.count() == 1  # the provider was called: that stays on record


def test_a_failed_attempt_insert_leaves_the_verdict_unwritten(user: User) -> None:
    row = _row(user)
    lifecycle.claim(row.id, lease=LEASE)
    broken = _attempt(row, "twilio", latency_ms=-1)  # violates the positive check
    # Called inside a transaction (the test's own), the failed statement must not
    # abort it: the reads below still work.
    with pytest.raises(IntegrityError):
        lifecycle.mark_retrying(
            row.id, error="x", next_attempt_at=timezone.now(), attempts=[broken]
        )
    row.refresh_from_db()
    assert row.status == Status.PROCESSING
    assert row.attempts.count() == 0


def test_retrying_records_error_and_next_attempt(user: User) -> None:
    row = _row(user)
    lifecycle.claim(row.id, lease=LEASE)
    when = timezone.now() + timedelta(seconds=30)
    assert lifecycle.mark_retrying(row.id, error="twilio: 503", next_attempt_at=when)
    row.refresh_from_db()
    assert (row.status, row.last_error, row.next_attempt_at) == (
        Status.RETRYING,
        "twilio: 503",
        when,
    )


def test_mark_published_only_once(user: User) -> None:
    row = _row(user)
    assert lifecycle.mark_published([row.id]) == 1
    first = Notification.objects.get(id=row.id).published_at
    assert lifecycle.mark_published([row.id]) == 0
    assert Notification.objects.get(id=row.id).published_at == first


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stamp", [lifecycle.mark_published, lifecycle.restamp_published])
def test_published_stamps_skip_rows_another_transaction_holds(user: User, stamp: Any) -> None:
    """A worker's claim holding some of the rows must not make the publisher wait
    (two multi-row updates in different orders deadlock)."""
    held, free = _row(user), _row(user)
    worker = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        worker.set_autocommit(False)
        with worker.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM notifications_notification WHERE id = %s FOR UPDATE", [held.id]
            )
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")  # a wait fails the test, not hangs it
        assert stamp([held.id, free.id]) == 1
    finally:
        worker.rollback()
        worker.close()
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = 0")
    rows = dict(Notification.objects.values_list("id", "published_at"))
    assert rows[held.id] is None
    assert rows[free.id] is not None


def test_release_stale_claims(user: User) -> None:
    stale = _row(user, status=Status.PROCESSING, claimed_at=timezone.now() - 2 * LEASE)
    live = _row(user, status=Status.PROCESSING, claimed_at=timezone.now())
    assert lifecycle.release_stale_claims(lease=LEASE) == [stale.id]
    stale.refresh_from_db()
    assert (stale.status, stale.published_at, stale.claimed_at) == (Status.QUEUED, None, None)
    live.refresh_from_db()
    assert live.status == Status.PROCESSING
