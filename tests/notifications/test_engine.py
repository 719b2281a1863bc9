"""The worker's delivery engine on the real services: claims and verdicts in groups,
a dead notification dead-lettered alone, retries that wait without holding the
prefetch window, malformed messages, and pools the engine does not drive."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from flashsend.celery import app
from notifications import engine, lifecycle
from notifications.models import DeliveryAttempt, Notification, Status
from tests.pipeline import (
    dead_letters,
    purge_queues,
    queue_depth,
    queue_sms,
    running_worker,
    statuses,
    wait_for,
    worker_environment,
)

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def test_a_backlog_is_claimed_and_recorded_in_groups(user: User, providers: Any) -> None:
    """A claim statement stamps every row it wins with the same claimed_at, and a
    verdict statement the same updated_at: fewer distinct stamps than rows means
    fewer statements than deliveries.

    How many verdicts meet in the recorder's queue by themselves depends on the
    machine (a statement's time against a send's CPU), so the test makes them meet:
    it holds the recorder's first statement back with a lock on the attempts table
    until the claimed rows are all sent. Claims are not held back."""
    purge_queues()
    providers["twilio"].set_behaviour("twilio", delay_ms=20)
    ids = queue_sms(user, 200)
    threads = 4
    in_hand = threads * engine.CLAIMED_PER_THREAD
    with running_worker(concurrency=threads):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {DeliveryAttempt._meta.db_table} IN SHARE MODE")
            wait_for(lambda: len(providers["twilio"].messages("twilio")) >= in_hand)
            time.sleep(0.5)  # their verdicts reach the recorder's queue
            # No more sends than rows in hand while no verdict can be stored.
            assert len(providers["twilio"].messages("twilio")) == in_hand
        wait_for(lambda: statuses(ids)[Status.SENT] == 200, timeout=60)
    rows = Notification.objects.filter(id__in=ids)
    claims = Counter(rows.values_list("claimed_at", flat=True))
    verdicts = Counter(rows.values_list("updated_at", flat=True))
    print(f"\n200 sent: {len(claims)} claim statements, {len(verdicts)} verdict statements")
    # One statement per row would give 200 of each.
    assert max(claims.values()) >= threads
    assert len(claims) <= 100
    # The first group was held back; the rows sent meanwhile went in one statement.
    assert max(verdicts.values()) >= in_hand - threads
    assert len(verdicts) <= 200 - (in_hand - threads - 1)
    assert len(providers["twilio"].messages("twilio")) == 200  # each sent once


def test_one_dead_notification_of_a_group_is_dead_lettered_alone(
    user: User, providers: Any, settings: Any
) -> None:
    settings.DELIVERY_MAX_RETRIES = 0
    purge_queues()
    providers["twilio"].set_behaviour("twilio", mode="error")
    # Vonage refuses its first request only: one notification dies, the rest are
    # sent by Vonage, all claimed and recorded together.
    providers["vonage"].set_behaviour("vonage", fail_next=1)
    ids = queue_sms(user, 6)
    with running_worker(concurrency=4):
        wait_for(lambda: statuses(ids)[Status.SENT] == 5 and statuses(ids)[Status.DEAD] == 1)
        letters = wait_for(dead_letters)
    dead = Notification.objects.get(id__in=ids, status=Status.DEAD)
    assert len(letters) == 1
    assert letters[0]["properties"]["correlation_id"] == str(dead.pk)
    assert queue_depth("sms.medium") == 0  # the others were acknowledged


def test_waiting_retries_do_not_hold_the_prefetch_window(
    user: User, providers: Any, settings: Any
) -> None:
    """Six retries wait 2.5 to 5 s in a worker that may hold three messages unacked
    (one thread): new notifications are still sent at once, and the retries later."""
    settings.DELIVERY_RETRY_BACKOFF_SECONDS = 5.0
    purge_queues()
    providers["twilio"].set_behaviour("twilio", mode="error")
    providers["vonage"].set_behaviour("vonage", fail_next=6)
    first = queue_sms(user, 6)
    with running_worker(concurrency=1):
        wait_for(lambda: statuses(first)[Status.RETRYING] == 6)
        retrying_since = time.monotonic()
        later = queue_sms(user, 10)
        wait_for(lambda: statuses(later)[Status.SENT] == 10, timeout=30)
        waited = time.monotonic() - retrying_since
        still_retrying = statuses(first)[Status.RETRYING]
        wait_for(lambda: statuses(first)[Status.SENT] == 6, timeout=30)
    assert waited < 2.5, waited  # before the earliest retry was due
    assert still_retrying == 6
    assert set(
        Notification.objects.filter(id__in=first).values_list("attempt_count", flat=True)
    ) == {2}


@pytest.mark.parametrize("body", ["not an id", "{not json"])
def test_malformed_delivery_message_is_dead_lettered(
    providers: Any, transactional_db: Any, body: str
) -> None:
    purge_queues()
    with running_worker(concurrency=2):
        with app.producer_or_acquire() as producer:
            if body == "not an id":
                app.send_task(
                    "notifications.deliver",
                    args=(body,),
                    queue="sms.medium",
                    routing_key="sms.medium",
                    producer=producer,
                )
            else:  # a body that is not JSON at all, though it says it is
                producer.publish(
                    body,
                    exchange=app.amqp.queues["sms.medium"].exchange.name,
                    routing_key="sms.medium",
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers={"lang": "py", "task": "notifications.deliver", "id": "x"},
                )
        letters = wait_for(dead_letters)
        assert queue_depth("sms.medium") == 0
    assert letters[0]["routing_key"] == "sms.medium"


def test_unclaim_hands_a_claimed_row_back_uncounted(user: User) -> None:
    [row_id] = queue_sms(user, 1, publish=False)
    Notification.objects.filter(id=row_id).update(published_at=timezone.now())
    assert lifecycle.claim(row_id, lease=timedelta(minutes=5)) is not None
    assert lifecycle.unclaim([row_id]) == 1
    row = Notification.objects.get(id=row_id)
    assert (row.status, row.attempt_count, row.claimed_at, row.published_at) == (
        Status.QUEUED,
        0,
        None,
        None,
    )
    assert lifecycle.unclaim([row_id]) == 0  # only processing rows


def test_prefork_worker_runs_the_task_per_message(
    user: User, providers: Any, settings: Any, tmp_path: Path
) -> None:
    """The engine drives thread and solo pools; a prefork worker delivers through the
    task's own body, one message at a time."""
    purge_queues()
    ids = queue_sms(user, 3)
    env = worker_environment(settings, tmp_path)
    command = [sys.executable, "-m", "celery", "-A", "flashsend", "worker", "--pool", "prefork"]
    command += ["--concurrency", "1", "-Q", "sms.medium", "--loglevel", "WARNING"]
    worker = subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 - the project's own worker
    try:
        wait_for(lambda: statuses(ids)[Status.SENT] == 3, timeout=60)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    rows = Notification.objects.filter(id__in=ids)
    # One claim statement per message: every row has a claimed_at of its own.
    assert len(set(rows.values_list("claimed_at", flat=True))) == 3


def test_a_stopping_worker_records_and_acknowledges_what_it_has_in_hand(
    user: User, providers: Any
) -> None:
    """Warm shutdown mid-backlog: the sends in hand finish, their verdicts are stored
    and their messages acknowledged before the connection closes; the rest of the
    backlog waits in the queue for the next worker."""
    purge_queues()
    providers["twilio"].set_behaviour("twilio", delay_ms=200)
    ids = queue_sms(user, 40)
    with running_worker(concurrency=4):
        wait_for(lambda: statuses(ids)[Status.SENT] >= 4)
    final = statuses(ids)
    sent = final[Status.SENT]
    assert final[Status.PROCESSING] == 0, final
    assert final[Status.QUEUED] == 40 - sent
    # An acknowledgement lost at shutdown would bring a sent row's message back.
    wait_for(lambda: queue_depth("sms.medium") == 40 - sent)
    assert len(providers["twilio"].messages("twilio")) == sent


def test_an_early_copy_of_a_retry_is_refused(user: User) -> None:
    """A retrying row is claimed when its next attempt is due, not before: a copy of
    its message redelivered early is acknowledged without a send."""
    [row_id] = queue_sms(user, 1, publish=False)
    lease = timedelta(minutes=5)
    Notification.objects.filter(id=row_id).update(
        status=Status.RETRYING, next_attempt_at=timezone.now() + timedelta(seconds=30)
    )
    assert lifecycle.claim(row_id, lease=lease) is None
    Notification.objects.filter(id=row_id).update(next_attempt_at=timezone.now())
    assert lifecycle.claim(row_id, lease=lease) is not None
