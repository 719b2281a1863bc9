"""Helpers for tests that run the real pipeline: a Celery worker consuming from
RabbitMQ in a thread of the test process, and polling for outcomes."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from celery import bootsteps
from celery.contrib.testing.worker import start_worker
from celery.worker import state
from kombu import Connection

from flashsend import topology
from flashsend.celery import app

T = TypeVar("T")
# The blueprint state of a worker that has finished stopping (not in celery-types).
_TERMINATED: int = bootsteps.TERMINATE  # type: ignore[attr-defined]


def wait_for(predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll until ``predicate`` returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")
        time.sleep(interval)
        value = predicate()
    return value


def purge_queues() -> None:
    """Empty every FlashSend queue so one test's messages never reach another's worker."""
    with app.connection_for_write() as connection:
        topology.declare_all(connection, quorum=False)
        with connection.channel() as channel:  # type: Any
            for name in (*topology.WORK_QUEUES, topology.DEFAULT_QUEUE, topology.DEAD_QUEUE):
                channel.queue_purge(name)


def subprocess_database_url() -> str:
    """The URL of the database this test run uses, for processes the test starts."""
    from django.db import connection

    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER']}{password}@{host}:{port}/{db['NAME']}"


def queue_sms(owner: Any, count: int, *, publish: bool = True) -> list[int]:
    """COUNT queued SMS rows of OWNER, published to their queue unless told not to."""
    from notifications.models import Notification
    from notifications.publishing import publish_many

    rows = Notification.objects.bulk_create(
        Notification(owner=owner, channel="sms", recipient="+14155552671", body=f"n{i}")
        for i in range(count)
    )
    if publish:
        publish_many((row.pk, row.queue_name) for row in rows)
    return [row.pk for row in rows]


def statuses(ids: list[int]) -> Counter[str]:
    from notifications.models import Notification

    return Counter(Notification.objects.filter(id__in=ids).values_list("status", flat=True))


def worker_environment(settings: Any, var_dir: Any, **extra: str) -> dict[str, str]:
    """The environment of a worker process the test starts: this run's database and
    the fake Twilio."""
    return {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "FLASHSEND_VAR_DIR": str(var_dir),
        "SMS_PROVIDERS": "twilio",
        "TWILIO_BASE_URL": settings.TWILIO_BASE_URL,
        "TWILIO_ACCOUNT_SID": settings.TWILIO_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": settings.TWILIO_AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": settings.TWILIO_PHONE_NUMBER,
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def queue_depth(name: str) -> int:
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        return int(channel.queue_declare(name, passive=True).message_count)


def dead_letters() -> list[dict[str, Any]]:
    """Read (and acknowledge) everything in flashsend.dead."""
    found: list[dict[str, Any]] = []
    with Connection(app.conf.broker_url) as connection:
        channel: Any = connection.channel()
        for _ in range(10_000):
            message = channel.basic_get(topology.DEAD_QUEUE, no_ack=True)
            if message is None:
                break
            found.append(
                {
                    "headers": dict(message.headers or {}),
                    "routing_key": message.delivery_info.get("routing_key"),
                    "properties": dict(message.properties or {}),
                }
            )
    return found


@contextmanager
def running_worker(
    *,
    queues: tuple[str, ...] = (*topology.WORK_QUEUES, topology.DEFAULT_QUEUE),
    concurrency: int = 4,
) -> Iterator[Any]:
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            queues=list(queues),
            loglevel="WARNING",
            shutdown_timeout=30.0,
        ) as worker:
            try:
                yield worker
            finally:
                _warm_shutdown(worker)
    finally:
        state.should_stop = None


def _warm_shutdown(worker: Any, timeout: float = 30.0) -> None:
    """Stop the worker the way SIGTERM does: finish the tasks in hand, then exit.

    The embedded worker's own exit is a cold shutdown, which leaves thread-pool tasks
    running into the next test. The event loop is woken because it otherwise sleeps
    in poll() for up to ten seconds before it sees the request.
    """
    state.should_stop = 0  # type: ignore[assignment]
    hub = getattr(worker, "hub", None)
    if hub is not None:
        hub.call_soon(lambda: None)
    deadline = time.monotonic() + timeout
    while worker.blueprint.state != _TERMINATED and time.monotonic() < deadline:
        time.sleep(0.02)


def insert_scheduled(owner_id: int, seconds_apart: str, count: int) -> None:
    """COUNT scheduled SMS rows in one statement, 1 to 1,000 steps of SECONDS_APART
    from now (a negative step makes them due), then ANALYZE: for the scheduler's
    million-row test and benchmark."""
    from django.db import connection

    from notifications.models import Notification

    table = Notification._meta.db_table
    sql = (
        f"INSERT INTO {table} (owner_id, channel, recipient, subject, body, priority, metadata, "  # noqa: S608 - only the table name is interpolated
        "status, attempt_count, last_error, provider, provider_message_id, created_at, "
        "updated_at, scheduled_at) "
        "SELECT %s, 'sms', '+14155552671', '', 'b', 'medium', '{}', 'scheduled', 0, '', '', '', "
        "now(), now(), now() + (%s || ' seconds')::interval * (1 + g %% 1000) "
        "FROM generate_series(1, %s) AS g"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [owner_id, seconds_apart, count])
        cursor.execute(f"ANALYZE {table}")
