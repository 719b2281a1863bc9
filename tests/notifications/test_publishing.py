"""Batch publishing on RabbitMQ counts only what the broker confirmed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from accounts.models import User
from flashsend.celery import app
from notifications import publishing
from notifications.models import Notification
from notifications.publishing import BackgroundPublisher, publish_batch, publish_many
from tests.pipeline import purge_queues, queue_depth, wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.services]
POLICY = "flashsend-test-full-queue"


def _rows(user: User, count: int, priority: str = "medium") -> list[Notification]:
    return Notification.objects.bulk_create(
        Notification(
            owner=user, channel="sms", recipient="+14155552671", body=f"b {i}", priority=priority
        )
        for i in range(count)
    )


@pytest.fixture
def rabbitmq_only() -> None:
    if not app.conf.broker_transport_options.get("confirm_publish"):
        pytest.skip("publisher confirms exist on RabbitMQ only; the broker here is another")


@pytest.fixture
def full_low_queue(rabbitmq_only: None) -> Iterator[None]:
    """sms.low holds 5 messages and refuses more: RabbitMQ nacks the publishes.

    Set by a policy, so the queue keeps the arguments every publisher declares.
    """
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not installed here; no policy can be set")
    vhost = urlsplit(app.conf.broker_url).path.lstrip("/") or "/"
    limit = json.dumps({"max-length": 5, "overflow": "reject-publish"})
    command = [ctl, "--quiet", "set_policy", "-p", vhost, "--apply-to", "queues"]
    purge_queues()
    subprocess.run([*command, POLICY, r"^sms\.low$", limit], check=True)  # noqa: S603
    try:
        yield
    finally:
        subprocess.run([ctl, "--quiet", "clear_policy", "-p", vhost, POLICY], check=True)  # noqa: S603
        purge_queues()


def test_a_large_batch_is_published_and_marked(user: User, rabbitmq_only: None) -> None:
    purge_queues()
    rows = _rows(user, 2000)
    published = publish_many((row.pk, row.queue_name) for row in rows)
    assert published == [row.pk for row in rows]
    assert queue_depth("sms.medium") == 2000
    assert not Notification.objects.filter(published_at__isnull=True).exists()
    purge_queues()


def test_only_confirmed_publishes_count(user: User, full_low_queue: None) -> None:
    rows = _rows(user, 12, priority="low")
    published = publish_many((row.pk, row.queue_name) for row in rows)
    assert published == [row.pk for row in rows[:5]]
    assert queue_depth("sms.low") == 5
    unpublished = Notification.objects.filter(published_at__isnull=True)
    assert sorted(unpublished.values_list("id", flat=True)) == [row.pk for row in rows[5:]]


def test_batches_publish_again_once_rabbitmq_is_back(
    user: User, rabbitmq_only: None, rabbitmq_control: Any
) -> None:
    purge_queues()
    assert len(publish_batch([(1, "sms.low")])) == 1
    rabbitmq_control.stop()
    try:
        assert publish_batch([(2, "sms.low")]) == []  # refused, left to the sweeper
    finally:
        rabbitmq_control.start()
    # A connection broken by the restart must not stay in use.
    assert publish_batch([(3, "sms.low"), (4, "sms.low")]) == [3, 4]
    purge_queues()


@pytest.mark.django_db(transaction=True)
def test_the_background_publisher_publishes_and_marks_a_batch_at_once(
    user: User, rabbitmq_only: None
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    purge_queues()
    rows = _rows(user, 5)
    publisher = BackgroundPublisher()
    with publisher._lock:  # queued as requests would, with no thread started to take them
        publisher._pending.extend((row.pk, row.queue_name) for row in rows)
    with CaptureQueriesContext(connection) as queries:
        assert publisher.flush() == 5
    updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    assert queue_depth("sms.medium") == 5
    assert not Notification.objects.filter(published_at__isnull=True).exists()
    assert publisher.flush() == 0
    purge_queues()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("background", [True, False])
def test_accepted_notifications_are_published_and_marked(
    jwt_client: Any, rabbitmq_only: None, settings: Any, background: bool
) -> None:
    """In the background mode no request publishes or marks: the thread does both."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.API_PUBLISH_IN_BACKGROUND = background
    purge_queues()
    with CaptureQueriesContext(connection) as queries:
        ids = [
            jwt_client.post(
                "/api/notify/send",
                {"channel": "sms", "to": "+14155552671", "body": f"b {i}"},
                format="json",
            ).json()["id"]
            for i in range(40)
        ]
    marks_in_requests = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(marks_in_requests) == (0 if background else 40)
    wait_for(
        lambda: not Notification.objects.filter(id__in=ids, published_at__isnull=True).exists(),
        timeout=10,
    )
    assert queue_depth("sms.medium") == 40
    purge_queues()


@pytest.mark.django_db(transaction=True)
def test_beyond_the_pending_limit_notifications_are_left_to_the_sweeper(
    user: User, settings: Any
) -> None:
    settings.API_PUBLISH_MAX_PENDING = 3
    publisher = BackgroundPublisher()
    rows = _rows(user, 5)
    busy = threading.Event()
    stand_in = threading.Thread(target=busy.wait)  # a live "thread" that takes nothing
    stand_in.start()
    publisher._owner_pid, publisher._thread = os.getpid(), stand_in
    try:
        for row in rows:
            publisher.add(row.pk, row.queue_name)
        assert [row_id for row_id, _ in publisher._pending] == [row.pk for row in rows[:3]]
    finally:
        busy.set()


@pytest.mark.django_db(transaction=True)
def test_the_publishing_thread_recovers_from_a_rabbitmq_restart(
    user: User, rabbitmq_only: None, rabbitmq_control: Any
) -> None:
    """Its kept connection dies with the broker; the thread opens a new one."""
    purge_queues()
    publisher = BackgroundPublisher()
    before, during, after = _rows(user, 1), _rows(user, 1), _rows(user, 3)
    publisher.add(before[0].pk, before[0].queue_name)
    wait_for(lambda: Notification.objects.filter(pk=before[0].pk, published_at__isnull=False))
    rabbitmq_control.stop()
    try:
        publisher.add(during[0].pk, during[0].queue_name)
        time.sleep(1)  # the thread tries and fails
    finally:
        rabbitmq_control.start()
    time.sleep(publishing.BROKER_BACKOFF_SECONDS)  # the backoff after a failure
    for row in after:
        publisher.add(row.pk, row.queue_name)
    ids = [row.pk for row in after]
    wait_for(
        lambda: Notification.objects.filter(pk__in=ids, published_at__isnull=False).count() == 3,
        timeout=15,
    )
    # Refused while the broker was away, it is left to the sweeper; or, when the dead
    # connection shows only once the broker is back, it goes out again on a new one.
    # Marked published means in the queue, beside the one before and the three after.
    during_marked = Notification.objects.get(pk=during[0].pk).published_at is not None
    assert queue_depth(during[0].queue_name) == 4 + during_marked
    assert publisher._thread is not None
    assert publisher._thread.is_alive()
    publisher.stop()
    assert not publisher._thread.is_alive()
    purge_queues()


@pytest.mark.django_db(transaction=True)
def test_a_publishing_thread_that_died_is_started_again(user: User, rabbitmq_only: None) -> None:
    purge_queues()
    publisher = BackgroundPublisher()
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    publisher._owner_pid, publisher._thread = os.getpid(), dead  # as if it had died
    (row,) = _rows(user, 1)
    publisher.add(row.pk, row.queue_name)
    wait_for(lambda: Notification.objects.filter(pk=row.pk, published_at__isnull=False))
    assert publisher._thread is not dead
    publisher.stop()
    purge_queues()


def test_the_lean_delivery_message_is_the_one_apply_async_sends(rabbitmq_only: None) -> None:
    """The API's publishing thread and the batch publishers build the delivery task's
    message themselves (for CPU); a worker must receive what apply_async would send."""
    purge_queues()
    with app.connection_for_write() as connection:
        channel: Any = connection.channel()
        producer = app.amqp.Producer(channel)
        publishing._send_task(4242, "email.high", producer, retry=False)
        publishing.publish_delivery(producer, 4242, "email.high")
        received = [channel.basic_get("email.high", no_ack=True) for _ in range(2)]
    celerys, ours = received
    assert celerys is not None
    assert ours is not None
    assert json.loads(ours.body) == json.loads(celerys.body)
    assert ours.headers == celerys.headers
    assert ours.delivery_info["routing_key"] == celerys.delivery_info["routing_key"]
    assert ours.delivery_info["exchange"] == celerys.delivery_info["exchange"] == "flashsend"
    # reply_to is Celery's per-thread result address: unused, the task keeps no result.
    for name in ("content_type", "content_encoding", "correlation_id", "delivery_mode"):
        assert ours.properties.get(name) == celerys.properties.get(name), name
