"""The sweeper re-publishes what the broker never got, and the beat entry for it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts.models import User
from notifications.models import Notification, Status
from notifications.services import notification_sweep
from tests.pipeline import wait_for

pytestmark = pytest.mark.django_db


def _row(user: User, age: timedelta, **fields: Any) -> Notification:
    values: dict[str, Any] = {"channel": "sms", "recipient": "+14155552671", "body": "hi"}
    values.update(fields)
    row = Notification.objects.create(owner=user, **values)
    Notification.objects.filter(id=row.id).update(created_at=timezone.now() - age)
    return row


def test_sweep_publishes_old_unpublished_rows_only(user: User, settings: Any) -> None:
    settings.SWEEPER_GRACE_SECONDS = 10
    old = _row(user, timedelta(minutes=1))
    young = _row(user, timedelta(seconds=1))
    done = _row(user, timedelta(minutes=1), published_at=timezone.now())
    report = notification_sweep()
    assert report.republished == 1
    assert Notification.objects.get(id=old.id).published_at is not None
    assert Notification.objects.get(id=young.id).published_at is None
    assert Notification.objects.get(id=done.id).published_at == done.published_at
    assert notification_sweep().republished == 0  # nothing twice


def test_one_sweep_publishes_batch_after_batch(user: User, settings: Any) -> None:
    # After a broker outage thousands of rows wait: one sweep must not stop at one batch.
    settings.SWEEPER_BATCH_SIZE = 2
    rows = [_row(user, timedelta(minutes=1)) for _ in range(5)]
    report = notification_sweep()
    assert report.republished == 5
    assert not Notification.objects.filter(
        id__in=[r.id for r in rows], published_at__isnull=True
    ).exists()


def test_sweep_recovers_a_dead_workers_claim(user: User, settings: Any) -> None:
    settings.DELIVERY_CLAIM_LEASE_SECONDS = 300
    stuck = _row(
        user,
        timedelta(minutes=20),
        status=Status.PROCESSING,
        published_at=timezone.now() - timedelta(minutes=20),
        claimed_at=timezone.now() - timedelta(minutes=10),
    )
    report = notification_sweep()
    assert report.released == 1
    assert report.republished == 1
    stuck.refresh_from_db()
    assert stuck.status == Status.QUEUED
    assert stuck.published_at is not None


def test_sweep_republishes_lost_retries_once(user: User, settings: Any) -> None:
    settings.DELIVERY_CLAIM_LEASE_SECONDS = 300
    lost = _row(
        user,
        timedelta(hours=1),
        status=Status.RETRYING,
        published_at=timezone.now() - timedelta(hours=1),
        next_attempt_at=timezone.now() - timedelta(minutes=30),
    )
    assert notification_sweep().retries_republished == 1
    assert notification_sweep().retries_republished == 0
    lost.refresh_from_db()
    assert lost.status == Status.RETRYING


def test_setup_registers_the_sweeper_on_beat_and_keeps_operator_changes(
    settings: Any,
) -> None:
    settings.SWEEPER_INTERVAL_SECONDS = 7
    call_command("flashsend_setup", "--skip-broker", verbosity=0)
    task = PeriodicTask.objects.get(task="notifications.sweep")
    assert (task.interval.every, task.interval.period) == (7, IntervalSchedule.SECONDS)
    assert task.queue == "flashsend.default"
    # An operator changes the interval in the admin; set-up runs again on deploy.
    slower, _ = IntervalSchedule.objects.get_or_create(every=30, period=IntervalSchedule.SECONDS)
    task.interval = slower
    task.save()
    call_command("flashsend_setup", "--skip-broker", verbosity=0)
    assert PeriodicTask.objects.filter(task="notifications.sweep").count() == 1
    assert PeriodicTask.objects.get(task="notifications.sweep").interval.every == 30


@pytest.mark.django_db(transaction=True)
def test_accepted_notification_is_published_after_commit(jwt_client: Any) -> None:
    response = jwt_client.post(
        "/api/notify/send",
        {"channel": "sms", "to": "+14155552671", "body": "hi"},
        format="json",
    )
    assert response.status_code == 202
    notification_id = response.json()["id"]
    # The broker (whichever is configured) took it from the API's publishing thread,
    # which then marked it.
    wait_for(lambda: Notification.objects.get(id=notification_id).published_at, timeout=5)


def test_periodic_tasks_are_visible_and_editable_in_the_admin(client: Any, settings: Any) -> None:
    from tests.factories import UserFactory

    call_command("flashsend_setup", "--skip-broker", verbosity=0)
    admin = UserFactory.create(is_staff=True, is_superuser=True)
    client.force_login(admin)
    listing = client.get("/admin/django_celery_beat/periodictask/")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "Dispatch due scheduled notifications" in page
    assert "Re-publish notifications the broker never got" in page
    task = PeriodicTask.objects.get(task="notifications.dispatch_due")
    edit = client.get(f"/admin/django_celery_beat/periodictask/{task.id}/change/")
    assert edit.status_code == 200
    assert b'name="interval"' in edit.content


def test_sweep_republishes_queued_rows_whose_message_was_lost(user: User, settings: Any) -> None:
    settings.SWEEPER_STALE_QUEUED_SECONDS = 900
    lost = _row(user, timedelta(hours=1), published_at=timezone.now() - timedelta(minutes=20))
    waiting = _row(user, timedelta(minutes=5), published_at=timezone.now() - timedelta(minutes=5))
    report = notification_sweep()
    assert report.stale_republished == 1
    lost.refresh_from_db()
    assert lost.published_at is not None
    assert lost.published_at > timezone.now() - timedelta(minutes=1)  # its clock restarted
    assert Notification.objects.get(id=waiting.id).published_at == waiting.published_at
    assert notification_sweep().stale_republished == 0
