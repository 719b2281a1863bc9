"""The scan that turns due scheduled rows into queued, published ones."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from notifications.models import Notification, Status
from notifications.services import notification_dispatch_due

pytestmark = pytest.mark.django_db


def _scheduled(owner: User, count: int, delta: timedelta) -> list[int]:
    when = timezone.now() + delta
    rows = Notification.objects.bulk_create(
        Notification(
            owner=owner,
            channel="sms",
            recipient="+14155552671",
            body=f"r{i}",
            status=Status.SCHEDULED,
            scheduled_at=when,
        )
        for i in range(count)
    )
    return [row.pk for row in rows]


def test_due_rows_are_queued_and_published_in_batches(
    user: User, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.SCHEDULER_BATCH_SIZE = 3
    due = _scheduled(user, 7, -timedelta(seconds=1))
    future = _scheduled(user, 4, timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        dispatched = notification_dispatch_due()
    assert sorted(dispatched) == sorted(due)
    assert len(callbacks) == 3  # one publish per batch, after its commit
    for row in Notification.objects.filter(id__in=due):
        assert row.status == Status.QUEUED
        assert row.dispatched_at is not None
        assert row.published_at is not None
    assert set(Notification.objects.filter(id__in=future).values_list("status", flat=True)) == {
        Status.SCHEDULED
    }
    assert notification_dispatch_due() == []  # nothing twice


def test_canceled_and_moved_rows_are_not_dispatched(user: User) -> None:
    canceled, moved = _scheduled(user, 2, -timedelta(seconds=1))
    Notification.objects.filter(id=canceled).update(status=Status.CANCELED)
    Notification.objects.filter(id=moved).update(scheduled_at=timezone.now() + timedelta(days=1))
    assert notification_dispatch_due() == []


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_two_scanners_at_once_never_dispatch_a_row_twice(user: User, settings: Any) -> None:
    from tests.pipeline import purge_queues, queue_depth

    purge_queues()
    settings.SCHEDULER_BATCH_SIZE = 25
    due = _scheduled(user, 600, -timedelta(seconds=1))
    results: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def scan(index: int) -> None:
        start.wait()
        try:
            results[index] = notification_dispatch_due()
        finally:
            connection.close()

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    first, second = (set(r) for r in results)
    assert first
    assert second, "both scanners should have found work (SKIP LOCKED, not waiting)"
    assert not first & second
    assert first | second == set(due)
    assert len(results[0]) + len(results[1]) == 600
    assert queue_depth("sms.medium") == 600  # one message per row
    purge_queues()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_scan_uses_the_index_and_dispatches_10000_among_1000000_future(
    user: User, settings: Any, record_property: Any
) -> None:
    from tests.pipeline import insert_scheduled, purge_queues, queue_depth

    purge_queues()
    insert_scheduled(user.id, "86400", 1_000_000)  # future: 1 to 1000 days
    insert_scheduled(user.id, "-1", 10_000)  # due: in the past
    now = timezone.now()
    plan = (
        Notification.objects.filter(status=Status.SCHEDULED, scheduled_at__lte=now)
        .order_by("scheduled_at")
        .values_list("id", "channel", "priority")[: settings.SCHEDULER_BATCH_SIZE]
        .explain()
    )
    assert "notif_due" in plan, plan
    assert "Seq Scan" not in plan, plan
    started = time.monotonic()
    dispatched = notification_dispatch_due()
    elapsed = time.monotonic() - started
    record_property("dispatch_10000_seconds", round(elapsed, 2))
    print(f"\ndispatched {len(dispatched)} due among 1,000,000 future in {elapsed:.2f} s")
    assert len(dispatched) == 10_000
    assert Notification.objects.filter(status=Status.SCHEDULED).count() == 1_000_000
    assert (
        Notification.objects.filter(status=Status.QUEUED, published_at__isnull=False).count()
        == 10_000
    )
    assert queue_depth("sms.medium") == 10_000
    purge_queues()
