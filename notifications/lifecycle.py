"""Every status transition of a notification, and nothing else.

Each transition is one conditional UPDATE that names the states it may leave. The
row count says whether this process won the row: 0 means another worker, a cancel
or the sweeper got there first, and the caller must not act as if it had.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import AutoField, F, Field
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
    reads them: a worker claims what it has in hand together, not row by row. It
    reads what a delivery needs (``CLAIM_COLUMNS``); the other fields are deferred
    and loaded if ever read.
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
    id_test, id_params = _ids_test(ids)
    sql = (
        f"UPDATE {table} SET status = %s, claimed_at = %s, attempt_count = attempt_count + 1, "  # noqa: S608 - only the quoted table name, fixed column names and placeholders are interpolated
        f"next_attempt_at = NULL, updated_at = %s WHERE {id_test} AND (status = %s "
        "OR (status = %s AND (next_attempt_at IS NULL OR next_attempt_at <= %s)) "
        f"OR (status = %s AND claimed_at < %s)) RETURNING {_claim_returning()}"
    )
    params = [
        Status.PROCESSING.value,
        stamp,
        stamp,
        *id_params,
        Status.QUEUED.value,
        Status.RETRYING.value,
        due,
        Status.PROCESSING.value,
        cutoff,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    return [_claimed(values) for values in found]


def _claimed(values: Sequence[Any]) -> Notification:
    """A claimed row as Django would load it (``RawQuerySet`` costs the worker several
    times more for the same result): converted values, the other fields deferred."""
    converted = list(values)
    for index, column, converters in _claim_converters(connection.vendor):
        for convert in converters:
            converted[index] = convert(converted[index], column, connection)
    return Notification.from_db(connection.alias, CLAIM_COLUMNS, converted)


@functools.cache
def _claim_returning() -> str:
    return ", ".join(connection.ops.quote_name(field.column) for field in _CLAIM_FIELDS)


@functools.cache
def _claim_converters(vendor: str) -> list[tuple[int, Any, list[Any]]]:
    """The converters a query applies to the claimed columns that have any (JSON;
    dates on SQLite), by position. Per vendor: they are the database's."""
    found = []
    for index, field in enumerate(_CLAIM_FIELDS):
        column = field.get_col(Notification._meta.db_table)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if converters:
            found.append((index, column, converters))
    return found


# What a delivery reads of a claimed row: its message, its queue, its round; in the
# model's field order, which Model.from_db relies on to place the values.
_CLAIM_NAMES = frozenset(
    {
        "id",
        "owner_id",
        "channel",
        "recipient",
        "subject",
        "body",
        "priority",
        "metadata",
        "status",
        "attempt_count",
        "claimed_at",
    }
)
_CLAIM_FIELDS = [f for f in Notification._meta.concrete_fields if f.attname in _CLAIM_NAMES]
CLAIM_COLUMNS = tuple(field.attname for field in _CLAIM_FIELDS)


def _ids_test(ids: list[int]) -> tuple[str, list[Any]]:
    """``id`` among these: on PostgreSQL one array parameter written as text, because
    quoting each of a few hundred parameters costs the worker more CPU than the
    statement costs the database."""
    if connection.vendor == "postgresql":
        return "id = ANY(%s::bigint[])", [_id_array(ids)]
    return f"id IN ({', '.join(['%s'] * len(ids))})", list(ids)


def _id_array(ids: Iterable[int]) -> str:
    """A PostgreSQL array literal of ids, e.g. ``{1,2,3}``."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


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
    in a WITH clause of one UPDATE ... FROM json_to_recordset(...)), atomic by itself:
    a worker records a whole group of deliveries in one round trip.
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
    kinds = {"id": "bigint", "status": "varchar", **_VERDICT_FIELDS}
    columns = ", ".join(f"{name} {kind}" for name, kind in kinds.items())
    sql = (
        f"UPDATE {table} AS n SET status = v.status, {assignments}, updated_at = %s "  # noqa: S608 - only the quoted table name and fixed column names are interpolated
        f"FROM json_to_recordset(%s::json) AS v({columns}) "
        # The ids again, as an array the planner can read: it cannot see how many rows
        # the JSON holds and would otherwise scan every processing row's index entry.
        "WHERE n.id = ANY(%s::bigint[]) AND n.id = v.id AND n.status = %s RETURNING n.id"
    )
    rows = [
        {
            "id": v.notification_id,
            "status": v.status.value,
            **{name: getattr(v, name) for name in _VERDICT_FIELDS},
        }
        for v in verdicts
    ]
    now = connection.ops.adapt_datetimefield_value(_now())
    # updated_at's placeholder comes first in the text, before the rows.
    ids = _id_array([v.notification_id for v in verdicts])
    return sql, (now, _json_rows(rows), ids, Status.PROCESSING.value)


def _insert_sql(attempts: Sequence[DeliveryAttempt]) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of ``bulk_create(attempts)``, its rows in one JSON parameter.

    Django's compiled INSERT has a placeholder per value, each quoted by the client:
    for a group of deliveries that was most of the verdict's CPU in the worker.
    """
    sql, fields = _attempt_insert()
    rows = [
        {
            column: field.pre_save(one, True) if stamped else getattr(one, field.attname)
            for column, field, stamped in fields
        }
        for one in attempts
    ]
    return sql, (_json_rows(rows),)


@functools.cache
def _attempt_insert() -> tuple[str, list[tuple[str, Field[Any, Any], bool]]]:
    """The INSERT's text, and per column its field and whether Django fills it in
    (an auto_now timestamp, taken from pre_save as bulk_create would)."""
    qn = connection.ops.quote_name
    fields = [f for f in DeliveryAttempt._meta.concrete_fields if not isinstance(f, AutoField)]
    names = ", ".join(qn(f.column) for f in fields)
    columns = ", ".join(f"{qn(f.column)} {f.db_type(connection)}" for f in fields)
    table = qn(DeliveryAttempt._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({names}) SELECT {names} "  # noqa: S608 - quoted names only
        f"FROM json_to_recordset(%s::json) AS a({columns})"
    )
    return sql, [(f.column, f, _filled_by_django(f)) for f in fields]


def _filled_by_django(field: Field[Any, Any]) -> bool:
    return bool(getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False))


def _json_rows(rows: list[dict[str, Any]]) -> str:
    for row in rows:
        for name, value in row.items():
            if isinstance(value, str) and "\x00" in value:
                # PostgreSQL text cannot hold NUL (a provider's error text might): a
                # verdict it refuses would fail its whole group.
                row[name] = value.replace("\x00", "\ufffd")
    return json.dumps(rows, default=_json_value, ensure_ascii=False, separators=(",", ":"))


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()  # timezone-aware: PostgreSQL reads the offset
    raise TypeError(f"{type(value).__name__} is not a column value here")


def mark_published(notification_ids: Iterable[int]) -> int:
    """Record that the broker accepted these rows' tasks (rows a worker holds skipped)."""
    return _stamp_unlocked(notification_ids, published_at__isnull=True)


def restamp_published(notification_ids: Iterable[int]) -> int:
    """Queued rows published again by the sweeper: their clock starts over, so the
    next sweep leaves them alone while they wait in a backlog."""
    return _stamp_unlocked(notification_ids, status=Status.QUEUED)


def _stamp_unlocked(notification_ids: Iterable[int], **conditions: Any) -> int:
    """Set published_at on the rows meeting ``conditions`` that no one else holds.

    A worker's claim updates the same rows as the publisher's mark, both many at a
    time: two multi-row UPDATEs meeting in different orders deadlock, and PostgreSQL
    aborts one (seen under load, as the publisher's). A row another transaction holds
    is being claimed or settled, so the broker evidently had its message: skipping it
    loses nothing, and the mark never waits on a worker.
    """
    ids = sorted(set(notification_ids))
    if not ids:
        return 0
    free = (
        Notification.objects.filter(id__in=ids, **conditions)
        .select_for_update(skip_locked=True)
        .values("id")
    )
    with transaction.atomic():
        return Notification.objects.filter(id__in=free).update(published_at=_now())


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
