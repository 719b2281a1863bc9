"""Notification writes: accept, sweep."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, ClassVar

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.db.models.sql import InsertQuery
from django.utils import timezone

from accounts.models import User
from apikeys.models import ApiKey
from flashsend.api.errors import Conflict
from notifications import lifecycle, publishing
from notifications.models import Notification, Status

logger = logging.getLogger(__name__)


def notification_send(
    *,
    owner: User,
    api_key: ApiKey | None,
    channel: str,
    to: str,
    body: str,
    subject: str = "",
    priority: str = "medium",
    metadata: dict[str, Any] | None = None,
) -> Notification:
    """Store the notification and publish its task once the row is committed."""
    # One INSERT in autocommit: the row is committed by the statement itself, with
    # no BEGIN/COMMIT round trips. Called inside a caller's transaction, the publish
    # waits for that transaction's commit instead: a worker must never receive an
    # id whose row it cannot see yet.
    notification = Notification(
        owner=owner, api_key=api_key, status=Status.QUEUED, **_content(locals())
    )
    _NotificationInsert.for_connection(connection).insert(connection, notification)
    transaction.on_commit(partial(publishing.publish_after_commit, notification))
    return notification


class _NotificationInsert:
    """``Notification.objects.create`` for the send endpoint, its INSERT compiled once.

    Through ``Model.save`` the ORM builds and compiles the INSERT on every request: a
    fifth of a send request's CPU. The statement does not change, so it is compiled
    once per database alias, and each request only prepares the values the way the
    compiler does (``pre_save``, then ``get_db_prep_save``) and executes it on its own
    thread's connection. Notification has no save signals or overridden ``save`` for
    this to skip (a test checks the row matches one made by ``create``).

    The compiler is shared by the threads of a process. It was built with Django's
    ``connection`` proxy, which gives each thread its own connection, and it is used
    here only to prepare values, never to execute.
    """

    _by_alias: ClassVar[dict[str, _NotificationInsert]] = {}

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        meta = Notification._meta
        self.fields = [f for f in meta.local_concrete_fields if f is not meta.pk]
        query = InsertQuery(Notification)
        query.insert_values(self.fields, [Notification()])
        self.compiler = query.get_compiler(connection=connection)
        self.compiler.returning_fields = [meta.pk]
        [(self.sql, _)] = self.compiler.as_sql()

    @classmethod
    def for_connection(cls, connection: BaseDatabaseWrapper) -> _NotificationInsert:
        insert = cls._by_alias.get(connection.alias)
        if insert is None:
            insert = cls._by_alias[connection.alias] = cls(connection)
        return insert

    def insert(self, connection: BaseDatabaseWrapper, notification: Notification) -> None:
        compiler = self.compiler
        params = [
            compiler.prepare_value(field, compiler.pre_save_val(field, notification))
            for field in self.fields
        ]
        # As Model.save: inside a caller's atomic block, a failed INSERT marks the
        # block for rollback instead of leaving the transaction aborted underneath it.
        with (
            transaction.mark_for_rollback_on_error(using=connection.alias),
            connection.cursor() as cursor,
        ):
            cursor.execute(self.sql, params)
            row = cursor.fetchone()
        if row is None:  # pragma: no cover - an INSERT ... RETURNING returns its row
            raise RuntimeError("the notification insert returned no id")
        notification.pk = row[0]
        notification._state.adding = False
        notification._state.db = connection.alias


def notification_schedule(
    *,
    owner: User,
    api_key: ApiKey | None,
    scheduled_at: datetime,
    channel: str,
    to: str,
    body: str,
    subject: str = "",
    priority: str = "medium",
    metadata: dict[str, Any] | None = None,
) -> Notification:
    """Store a notification for later; the scheduler dispatches it when it is due."""
    return Notification.objects.create(
        owner=owner,
        api_key=api_key,
        status=Status.SCHEDULED,
        scheduled_at=scheduled_at,
        **_content(locals()),
    )


def _content(arguments: dict[str, Any]) -> dict[str, Any]:
    """The message fields of a send/schedule call, as model fields."""
    return {
        "channel": arguments["channel"],
        "recipient": arguments["to"],
        "subject": arguments["subject"],
        "body": arguments["body"],
        "priority": arguments["priority"],
        "metadata": arguments["metadata"] or {},
    }


def notification_dispatch_due() -> list[int]:
    """Queue every due scheduled notification, a batch per transaction.

    Each batch is published after its transaction commits; a publish that fails
    leaves the rows queued and unpublished, for the sweeper. Stops after a time
    budget so one run never overlaps the next by much; what is left is due next run.
    """
    dispatched: list[int] = []
    deadline = time.monotonic() + settings.SCHEDULER_RUN_BUDGET_SECONDS
    while time.monotonic() < deadline:
        with transaction.atomic():
            batch = lifecycle.dispatch_due(batch_size=settings.SCHEDULER_BATCH_SIZE)
            transaction.on_commit(partial(publishing.publish_many, batch))
        dispatched.extend(notification_id for notification_id, _ in batch)
        if len(batch) < settings.SCHEDULER_BATCH_SIZE:
            break
    if dispatched:
        logger.info("scheduler: dispatched %d due notifications", len(dispatched))
    return dispatched


def notification_cancel(*, notification: Notification) -> Notification:
    if not lifecycle.cancel(notification.pk):
        notification.refresh_from_db()
        raise NotificationStateError(notification, "canceled")
    notification.refresh_from_db()
    return notification


def notification_reschedule(*, notification: Notification, scheduled_at: datetime) -> Notification:
    if not lifecycle.reschedule(notification.pk, scheduled_at=scheduled_at):
        notification.refresh_from_db()
        raise NotificationStateError(notification, "rescheduled")
    notification.refresh_from_db()
    return notification


class NotificationStateError(Conflict):
    default_code = "invalid_state"

    def __init__(self, notification: Notification, action: str) -> None:
        allowed = "scheduled or queued" if action == "canceled" else "scheduled"
        super().__init__(
            f"Notification {notification.pk} is {notification.status}; only a {allowed} "
            f"notification can be {action}."
        )
        self.current_status = notification.status


@dataclass(frozen=True)
class SweepReport:
    released: int
    republished: int
    retries_republished: int
    stale_republished: int = 0


def notification_sweep() -> SweepReport:
    """Re-publish what the broker never got, or lost with a dead worker.

    - processing rows whose claim outlived the lease (the worker died) go back to
      queued and unpublished;
    - queued rows never published (broker down at accept time) are published;
    - retrying rows long past their next attempt (the retry message was lost) are
      published again;
    - queued rows published long ago and still unclaimed (the message was lost after
      the broker took it: an unconfirmed publish, a worker killed between fetching
      and claiming on a broker without acknowledgements, a dead-lettered retry) are
      published again.
    A duplicate message is harmless: the claim lets only one through.
    """
    now = timezone.now()
    lease = timedelta(seconds=settings.DELIVERY_CLAIM_LEASE_SECONDS)
    released = lifecycle.release_stale_claims(lease=lease)
    deadline = time.monotonic() + settings.SWEEPER_RUN_BUDGET_SECONDS
    grace = now - timedelta(seconds=settings.SWEEPER_GRACE_SECONDS)
    republished = _in_batches(
        lambda: Notification.objects.filter(
            status=Status.QUEUED, published_at__isnull=True, created_at__lt=grace
        ).order_by("created_at"),
        deadline,
    )
    retried = _in_batches(
        lambda: Notification.objects.filter(
            Q(status=Status.RETRYING) & Q(next_attempt_at__lt=now - lease)
        ).order_by("next_attempt_at"),
        deadline,
        then=lifecycle.postpone_overdue_retries,
    )
    stale_before = now - timedelta(seconds=settings.SWEEPER_STALE_QUEUED_SECONDS)
    stale_republished = _in_batches(
        lambda: Notification.objects.filter(
            status=Status.QUEUED, published_at__lt=stale_before
        ).order_by("published_at"),
        deadline,
        then=lifecycle.restamp_published,
    )
    report = SweepReport(len(released), len(republished), len(retried), len(stale_republished))
    if any((report.released, report.republished, report.retries_republished, stale_republished)):
        logger.warning("sweeper: %s", report)
    return report


def _in_batches(
    select: Callable[[], Any], deadline: float, then: Callable[[list[int]], Any] | None = None
) -> list[int]:
    """Publish the selected rows a batch at a time until none is left, the broker
    stops taking them, or the sweep's time budget is spent. Each batch's rows stop
    matching once handled (marked published, restamped, postponed), so the next
    query returns the next batch."""
    done: list[int] = []
    size = settings.SWEEPER_BATCH_SIZE
    while True:
        targets = _targets(select()[:size])
        published = publishing.publish_many(targets)
        if then is not None:
            then(published)
        done.extend(published)
        if len(targets) < size or len(published) < len(targets):
            return done
        if time.monotonic() >= deadline:
            return done


def _targets(rows: Any) -> list[tuple[int, str]]:
    return [(row.pk, row.queue_name) for row in rows.only("id", "channel", "priority")]
