"""Every status transition of a notification, and nothing else.

Each transition is one conditional UPDATE that names the states it may leave. The
row count says whether this process won the row: 0 means another worker, a cancel
or the sweeper got there first, and the caller must not act as if it had.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import AutoField, F
from django.db.models.sql import InsertQuery
from django.utils import timezone

from notifications.models import DeliveryAttempt, Notification, Status

# A retrying row is claimed once its next attempt is due: an early copy of its message
# (one redelivered after its retry was already published) is refused, not sent ahead
# of the backoff. The slack covers clocks of different hosts that differ a little.
RETRY_CLOCK_SLACK = timedelta(seconds=2)


def _now() -> datetime:
    return timezone.now()


def claim(notification_id: int, *, lease: timedelta) -> Notification | None:
    """queued/retrying -> processing, or take over a claim whose worker died.

    Returns the claimed row, or None when another worker, a cancel or an earlier
    delivery got there first. A processing row whose claim is older than the lease
    belongs to a worker that was killed mid-task (its message comes back through
    redelivery or the sweeper); the lease is longer than the task's hard time limit,
    so a live worker never loses its row this way.
    """
    rows = claim_many([notification_id], lease=lease)
    return rows[0] if rows else None


def claim_many(notification_ids: Sequence[int], *, lease: timedelta) -> list[Notification]:
    """``claim`` for many rows in one statement; returns the rows won, in any order.

    queued rows, retrying rows whose next attempt is due, and processing rows whose
    claim is older than the lease (their worker died) are claimable.

    One UPDATE ... RETURNING (PostgreSQL and SQLite alike) both wins the rows and
    reads them: a worker claims what it has in hand together, not row by row.
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return []
    now = _now()
    ops = connection.ops
    table = ops.quote_name(Notification._meta.db_table)
    stamp = ops.adapt_datetimefield_value(now)
    cutoff = ops.adapt_datetimefield_value(now - lease)
    due = ops.adapt_datetimefield_value(now + RETRY_CLOCK_SLACK)
    placeholders = ", ".join(["%s"] * len(ids))
    sql = (
        f"UPDATE {table} SET status = %s, claimed_at = %s, attempt_count = attempt_count + 1, "  # noqa: S608 - only the quoted table name and placeholders are interpolated
        "next_attempt_at = NULL, updated_at = %s "
        f"WHERE id IN ({placeholders}) AND (status = %s "
        "OR (status = %s AND (next_attempt_at IS NULL OR next_attempt_at <= %s)) "
        "OR (status = %s AND claimed_at < %s)) "
        "RETURNING *"
    )
    params = [
        Status.PROCESSING.value,
        stamp,
        stamp,
        *ids,
        Status.QUEUED.value,
        Status.RETRYING.value,
        due,
        Status.PROCESSING.value,
        cutoff,
    ]
    return list(Notification.objects.raw(sql, params))


@dataclass(frozen=True)
class RowVerdict:
    """How one claimed row leaves processing. None in a field means: left as it is."""

    notification_id: int
    status: Status
    last_error: str
    provider: str | None = None
    provider_message_id: str | None = None
    sent_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None  # the claim cleared it
    attempts: Sequence[DeliveryAttempt] = ()


def mark_sent(
    notification_id: int,
    *,
    provider: str,
    provider_message_id: str,
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    return _one(sent(notification_id, provider, provider_message_id, attempts))


def sent(
    notification_id: int,
    provider: str,
    provider_message_id: str,
    attempts: Sequence[DeliveryAttempt] = (),
) -> RowVerdict:
    now = _now()
    return RowVerdict(
        notification_id,
        Status.SENT,
        last_error="",
        provider=provider,
        provider_message_id=provider_message_id,
        sent_at=now,
        finished_at=now,
        attempts=attempts,
    )


def mark_retrying(
    notification_id: int,
    *,
    error: str,
    next_attempt_at: datetime,
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    return _one(retrying(notification_id, error, next_attempt_at, attempts))


def retrying(
    notification_id: int,
    error: str,
    next_attempt_at: datetime,
    attempts: Sequence[DeliveryAttempt] = (),
) -> RowVerdict:
    return RowVerdict(
        notification_id,
        Status.RETRYING,
        last_error=error,
        next_attempt_at=next_attempt_at,
        attempts=attempts,
    )


def mark_failed(
    notification_id: int,
    *,
    error: str,
    provider: str = "",
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    """processing -> failed; ``provider`` is the one that refused the message."""
    return _one(ended(notification_id, Status.FAILED, error, provider, attempts))


def mark_dead(
    notification_id: int,
    *,
    error: str,
    provider: str = "",
    attempts: Sequence[DeliveryAttempt] = (),
) -> bool:
    """processing -> dead; ``provider`` is the last one tried."""
    return _one(ended(notification_id, Status.DEAD, error, provider, attempts))


def ended(
    notification_id: int,
    status: Status,
    error: str,
    provider: str,
    attempts: Sequence[DeliveryAttempt] = (),
) -> RowVerdict:
    """processing -> failed or dead."""
    return RowVerdict(
        notification_id,
        status,
        last_error=error,
        provider=provider,
        finished_at=_now(),
        attempts=attempts,
    )


def _one(verdict: RowVerdict) -> bool:
    return verdict.notification_id in leave_processing([verdict])


def leave_processing(verdicts: Sequence[RowVerdict]) -> set[int]:
    """Write verdicts and the attempts that led to them, together or not at all.

    Returns the ids whose row was still processing (ours); the others were taken
    over meanwhile and keep their state. The attempts are stored either way: the
    provider calls happened. On PostgreSQL everything is one statement (the INSERT
    in a WITH clause of one UPDATE ... FROM unnest(...)), atomic by itself: a worker
    records a whole group of deliveries in one round trip.
    """
    if not verdicts:
        return set()
    attempts = [attempt for verdict in verdicts for attempt in verdict.attempts]
    if connection.vendor != "postgresql":
        return _leave_processing_each(verdicts, attempts)
    update_sql, update_params = _verdicts_update_sql(verdicts)
    if attempts:
        insert_sql, insert_params = _insert_sql(attempts)
        update_sql = f"WITH attempts AS ({insert_sql}) {update_sql}"
        update_params = (*insert_params, *update_params)
    # Inside a caller's transaction a savepoint keeps a failed statement from
    # aborting it (the worker calls this in autocommit: no extra round trips).
    with (
        transaction.atomic(savepoint=True) if connection.in_atomic_block else nullcontext(),
        connection.cursor() as cursor,
    ):
        cursor.execute(update_sql, update_params)
        return {row[0] for row in cursor.fetchall()}


def _leave_processing_each(
    verdicts: Sequence[RowVerdict], attempts: list[DeliveryAttempt]
) -> set[int]:
    won: set[int] = set()
    with transaction.atomic():
        DeliveryAttempt.objects.bulk_create(attempts)
        for verdict in verdicts:
            changes = {
                name: value
                for name in _VERDICT_FIELDS
                if (value := getattr(verdict, name)) is not None or name in _ALWAYS_SET
            }
            changes["updated_at"] = _now()
            leaving = Notification.objects.filter(
                id=verdict.notification_id, status=Status.PROCESSING
            )
            if leaving.update(status=verdict.status, **changes) == 1:
                won.add(verdict.notification_id)
    return won


# The verdict fields and their column types; the ones in _ALWAYS_SET are written even
# when None (the claim cleared next_attempt_at; a verdict sets it or leaves it empty).
_VERDICT_FIELDS = {
    "last_error": "text",
    "provider": "varchar",
    "provider_message_id": "varchar",
    "sent_at": "timestamptz",
    "finished_at": "timestamptz",
    "next_attempt_at": "timestamptz",
}
_ALWAYS_SET = frozenset({"last_error", "next_attempt_at"})


def _verdicts_update_sql(verdicts: Sequence[RowVerdict]) -> tuple[str, tuple[Any, ...]]:
    table = connection.ops.quote_name(Notification._meta.db_table)
    assignments = ", ".join(
        f"{name} = v.{name}" if name in _ALWAYS_SET else f"{name} = COALESCE(v.{name}, n.{name})"
        for name in _VERDICT_FIELDS
    )
    arrays = ", ".join(f"%s::{kind}[]" for kind in ("bigint", "varchar", *_VERDICT_FIELDS.values()))
    columns = ", ".join(("id", "status", *_VERDICT_FIELDS))
    sql = (
        f"UPDATE {table} AS n SET status = v.status, {assignments}, updated_at = %s "  # noqa: S608 - only the quoted table name and fixed column names are interpolated
        f"FROM unnest({arrays}) AS v({columns}) "
        "WHERE n.id = v.id AND n.status = %s RETURNING n.id"
    )
    params: list[Any] = [
        connection.ops.adapt_datetimefield_value(_now()),
        [v.notification_id for v in verdicts],
        [str(v.status.value) for v in verdicts],
        *([getattr(v, name) for v in verdicts] for name in _VERDICT_FIELDS),
        Status.PROCESSING.value,
    ]
    # updated_at's placeholder comes first in the text, before the arrays.
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


def unclaim(notification_ids: Iterable[int]) -> int:
    """processing -> queued for rows claimed but never sent (a worker stopping): the
    claim's round is not counted, and no ``published_at``, so the sweeper publishes
    them if their messages do not come back by themselves."""
    ids = list(notification_ids)
    if not ids:
        return 0
    return Notification.objects.filter(id__in=ids, status=Status.PROCESSING).update(
        status=Status.QUEUED,
        attempt_count=F("attempt_count") - 1,
        claimed_at=None,
        published_at=None,
        updated_at=_now(),
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
