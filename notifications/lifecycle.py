"""Every status transition of a notification, and nothing else.

Each transition is one conditional UPDATE that names the states it may leave. The
row count says whether this process won the row: 0 means another worker, a cancel
or the sweeper got there first, and the caller must not act as if it had.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import AutoField
from django.db.models.sql import InsertQuery, UpdateQuery
from django.utils import timezone

from notifications.models import DeliveryAttempt, Notification, Status

CLAIMABLE = (Status.QUEUED, Status.RETRYING)


def _now() -> datetime:
    return timezone.now()


def claim(notification_id: int, *, lease: timedelta) -> Notification | None:
    """queued/retrying -> processing, or take over a claim whose worker died.

    Returns the claimed row, or None when another worker, a cancel or an earlier
    delivery got there first. A processing row whose claim is older than the lease
    belongs to a worker that was killed mid-task (its message comes back through
    redelivery or the sweeper); the lease is longer than the task's hard time limit,
    so a live worker never loses its row this way.

    One statement (UPDATE ... RETURNING, on PostgreSQL and SQLite alike) both wins
    the row and reads it: this runs once per delivery, on the hot path.
    """
    now = _now()
    ops = connection.ops
    table = ops.quote_name(Notification._meta.db_table)
    stamp = ops.adapt_datetimefield_value(now)
    cutoff = ops.adapt_datetimefield_value(now - lease)
    sql = (
        f"UPDATE {table} SET status = %s, claimed_at = %s, attempt_count = attempt_count + 1, "  # noqa: S608 - only the quoted table name is interpolated
        "next_attempt_at = NULL, updated_at = %s "
        "WHERE id = %s AND (status IN (%s, %s) OR (status = %s AND claimed_at < %s)) "
        "RETURNING *"
    )
    params = [
        Status.PROCESSING.value,
        stamp,
        stamp,
        notification_id,
        *(status.value for status in CLAIMABLE),
        Status.PROCESSING.value,
        cutoff,
    ]
    rows = list(Notification.objects.raw(sql, params))
    return rows[0] if rows else None


def mark_sent(
    notification_id: int,
    *,
    provider: str,
    provider_message_id: str,
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    now = _now()
    return _leave_processing(
        notification_id,
        attempts,
        status=Status.SENT,
        provider=provider,
        provider_message_id=provider_message_id,
        last_error="",
        sent_at=now,
        finished_at=now,
    )


def mark_retrying(
    notification_id: int,
    *,
    error: str,
    next_attempt_at: datetime,
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    return _leave_processing(
        notification_id,
        attempts,
        status=Status.RETRYING,
        last_error=error,
        next_attempt_at=next_attempt_at,
    )


def mark_failed(
    notification_id: int,
    *,
    error: str,
    provider: str = "",
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    """processing -> failed; ``provider`` is the one that refused the message."""
    return _leave_processing(
        notification_id,
        attempts,
        status=Status.FAILED,
        last_error=error,
        provider=provider,
        finished_at=_now(),
    )


def mark_dead(
    notification_id: int,
    *,
    error: str,
    provider: str = "",
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    """processing -> dead; ``provider`` is the last one tried."""
    return _leave_processing(
        notification_id,
        attempts,
        status=Status.DEAD,
        last_error=error,
        provider=provider,
        finished_at=_now(),
    )


def _leave_processing(
    notification_id: int, attempts: Sequence[DeliveryAttempt], **changes: object
) -> bool:
    """The verdict and the attempts that led to it, written together or not at all.

    The attempts are stored whether or not the row is still ours: the provider calls
    happened either way. On PostgreSQL both go in one statement (the INSERT in a
    WITH clause of the UPDATE), which is atomic by itself: one round trip instead of
    BEGIN, INSERT, UPDATE and COMMIT, once per delivery on the workers' hot path.
    """
    changes["updated_at"] = _now()
    leaving = Notification.objects.filter(id=notification_id, status=Status.PROCESSING)
    if attempts and connection.vendor == "postgresql":
        update_sql, update_params = _update_sql(leaving, changes)
        insert_sql, insert_params = _insert_sql(attempts)
        # Inside a caller's transaction a savepoint keeps a failed statement from
        # aborting it (the worker calls this in autocommit: no extra round trips).
        with (
            transaction.atomic(savepoint=True) if connection.in_atomic_block else nullcontext(),
            connection.cursor() as cursor,
        ):
            cursor.execute(
                f"WITH attempts AS ({insert_sql}) {update_sql}", (*insert_params, *update_params)
            )
            return bool(cursor.rowcount == 1)
    with transaction.atomic():
        DeliveryAttempt.objects.bulk_create(attempts)
        return leaving.update(**changes) == 1


def _update_sql(rows: object, changes: dict[str, object]) -> tuple[str, tuple[Any, ...]]:
    """The UPDATE that ``rows.update(**changes)`` would run, compiled by Django."""
    query = rows.query.chain(UpdateQuery)  # type: ignore[attr-defined]
    query.add_update_values(changes)
    sql, params = query.get_compiler(connection=connection).as_sql()
    return sql, tuple(params)


def _insert_sql(attempts: Sequence[DeliveryAttempt]) -> tuple[str, tuple[Any, ...]]:
    """The INSERT that ``bulk_create(attempts)`` would run, compiled by Django."""
    fields = [f for f in DeliveryAttempt._meta.concrete_fields if not isinstance(f, AutoField)]
    query = InsertQuery(DeliveryAttempt)
    query.insert_values(fields, list(attempts))
    [(sql, params)] = query.get_compiler(connection=connection).as_sql()
    return sql, tuple(params)


def mark_published(notification_ids: Iterable[int]) -> int:
    """Record that the broker accepted these rows' tasks."""
    ids = list(notification_ids)
    if not ids:
        return 0
    return Notification.objects.filter(id__in=ids, published_at__isnull=True).update(
        published_at=_now()
    )


def restamp_published(notification_ids: Iterable[int]) -> int:
    """Queued rows published again by the sweeper: their clock starts over, so the
    next sweep leaves them alone while they wait in a backlog."""
    ids = list(notification_ids)
    if not ids:
        return 0
    return Notification.objects.filter(id__in=ids, status=Status.QUEUED).update(published_at=_now())


def postpone_overdue_retries(notification_ids: Iterable[int]) -> int:
    """After the sweeper re-published lost retries, restart their overdue clock so
    the next sweep does not publish them again while they wait in a backlog."""
    ids = list(notification_ids)
    if not ids:
        return 0
    return Notification.objects.filter(id__in=ids, status=Status.RETRYING).update(
        next_attempt_at=_now()
    )


def release_stale_claims(*, lease: timedelta) -> list[int]:
    """processing rows whose worker died -> queued and unpublished, for the sweeper."""
    cutoff = _now() - lease
    stale = list(
        Notification.objects.filter(status=Status.PROCESSING, claimed_at__lt=cutoff).values_list(
            "id", flat=True
        )[:1000]
    )
    if not stale:
        return []
    Notification.objects.filter(
        id__in=stale, status=Status.PROCESSING, claimed_at__lt=cutoff
    ).update(status=Status.QUEUED, published_at=None, claimed_at=None, updated_at=_now())
    return stale


def dispatch_due(*, batch_size: int) -> list[tuple[int, str]]:
    """scheduled -> queued for up to ``batch_size`` due rows; returns (id, queue) pairs.

    Run inside a transaction. ``SKIP LOCKED`` lets several scanners share the work
    without waiting on each other, and the conditional UPDATE (status still
    scheduled) keeps a row from being dispatched twice even where the database
    has no row locks (SQLite serialises writers instead).
    """
    now = _now()
    due = list(
        Notification.objects.select_for_update(skip_locked=True)
        .filter(status=Status.SCHEDULED, scheduled_at__lte=now)
        .order_by("scheduled_at")
        .values_list("id", "channel", "priority")[:batch_size]
    )
    if not due:
        return []
    ids = [row[0] for row in due]
    Notification.objects.filter(id__in=ids, status=Status.SCHEDULED).update(
        status=Status.QUEUED, dispatched_at=now, updated_at=now
    )
    return [
        (notification_id, f"{channel}.{priority}") for notification_id, channel, priority in due
    ]


CANCELABLE = (Status.SCHEDULED, Status.QUEUED)


def cancel(notification_id: int) -> bool:
    """scheduled/queued -> canceled. A queued row's message may still be in a queue:
    the claim refuses canceled rows, so it is acknowledged without a send."""
    now = _now()
    updated = Notification.objects.filter(id=notification_id, status__in=CANCELABLE).update(
        status=Status.CANCELED, finished_at=now, updated_at=now
    )
    return updated == 1


def reschedule(notification_id: int, *, scheduled_at: datetime) -> bool:
    updated = Notification.objects.filter(id=notification_id, status=Status.SCHEDULED).update(
        scheduled_at=scheduled_at, updated_at=_now()
    )
    return updated == 1


RETRYABLE = (Status.FAILED, Status.DEAD)


def requeue(notification_ids: Iterable[int]) -> list[int]:
    """failed/dead -> queued, unpublished, with a fresh retry budget (operator retry).

    The conditional UPDATE is what makes a replay safe to run twice or from two
    places: a row that is already queued again, or sent, is not touched.
    """
    ids = list(notification_ids)
    if not ids:
        return []
    eligible = list(
        Notification.objects.filter(id__in=ids, status__in=RETRYABLE).values_list("id", flat=True)
    )
    now = _now()
    Notification.objects.filter(id__in=eligible, status__in=RETRYABLE).update(
        status=Status.QUEUED,
        attempt_count=0,
        next_attempt_at=None,
        claimed_at=None,
        published_at=None,
        finished_at=None,
        updated_at=now,
    )
    return list(
        Notification.objects.filter(id__in=eligible, status=Status.QUEUED).values_list(
            "id", flat=True
        )
    )
