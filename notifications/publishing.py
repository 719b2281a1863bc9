"""Publishing delivery tasks to the broker.

The row is the source of truth and the broker only triggers work, so a failed
publish is never an error for the client: the row stays queued with no
``published_at`` and the sweeper publishes it later. After a failure the publisher
stays quiet for a short while instead of making every request wait on a broker
that is down.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import connection

from flashsend.celery import app as celery_app
from notifications import lifecycle
from notifications.models import Notification

logger = logging.getLogger(__name__)

# Seconds to skip publishing from the request path after a broker failure.
BROKER_BACKOFF_SECONDS = 5.0


class _BrokerHealth:
    lock = threading.Lock()
    down_until = 0.0


def broker_recently_failed() -> bool:
    return time.monotonic() < _BrokerHealth.down_until


def _note_failure() -> None:
    with _BrokerHealth.lock:
        _BrokerHealth.down_until = time.monotonic() + BROKER_BACKOFF_SECONDS


def _note_success() -> None:
    _BrokerHealth.down_until = 0.0


def publish_one(notification_id: int, queue: str, producer: Any = None) -> bool:
    """Publish the delivery task; True when the broker accepted it."""
    from notifications.tasks import deliver_notification

    try:
        deliver_notification.apply_async(
            args=(notification_id,),
            task_id=str(notification_id),
            queue=queue,
            routing_key=queue,
            retry=True,
            retry_policy=settings.CELERY_TASK_PUBLISH_RETRY_POLICY,
            producer=producer,
        )
    except Exception as exc:  # any broker failure: the sweeper will publish it
        _note_failure()
        logger.warning("publish of notification %s failed: %s", notification_id, exc)
        return False
    _note_success()
    return True


def publish_after_commit(notification: Notification) -> None:
    """The on-commit hook of an accepted notification."""
    if broker_recently_failed():
        logger.info("broker recently failed; notification %s left to the sweeper", notification.pk)
        return
    if publish_one(notification.pk, notification.queue_name):
        published_marks.add(notification.pk)


class PublishedMarks:
    """Writes ``published_at`` for the request path in batches, off the request.

    One UPDATE for many rows instead of one UPDATE and commit per request. A mark
    that is lost (the process dies before the flush) only makes the row look
    unpublished: the sweeper publishes it again after its grace period, and the
    claim lets a single delivery through, so nothing is lost or sent twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._owner_pid: int | None = None
        self._wake = threading.Event()

    def add(self, notification_id: int) -> None:
        if settings.PUBLISHED_MARK_INTERVAL_SECONDS <= 0:
            lifecycle.mark_published([notification_id])
            return
        with self._lock:
            self._pending.append(notification_id)
            self._ensure_flusher()

    def flush(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return 0
        try:
            return lifecycle.mark_published(pending)
        except Exception:  # the marks are an optimisation; the sweeper covers a loss
            logger.exception("could not record %d published marks", len(pending))
            return 0
        finally:
            connection.close()  # this thread's connection goes back to the pool

    def _ensure_flusher(self) -> None:
        # Per process: gunicorn forks its workers after the app may have been loaded.
        if self._owner_pid == os.getpid():
            return
        self._owner_pid = os.getpid()
        threading.Thread(target=self._run, name="published-marks", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            self._wake.wait(settings.PUBLISHED_MARK_INTERVAL_SECONDS)
            self.flush()


published_marks = PublishedMarks()


def publish_many(rows: Iterable[tuple[int, str]]) -> list[int]:
    """Publish (id, queue) pairs, stopping at the first broker failure."""
    published: list[int] = []
    rows = list(rows)
    if not rows:
        return published
    try:
        # One producer (one channel) for the whole batch instead of a pool checkout
        # per message: the scheduler and the sweeper publish thousands at a time.
        with celery_app.producer_or_acquire() as producer:
            for notification_id, queue in rows:
                if not publish_one(notification_id, queue, producer):
                    break
                published.append(notification_id)
    except Exception as exc:  # acquiring the producer failed: the broker is away
        _note_failure()
        logger.warning("publishing %d notifications failed: %s", len(rows), exc)
    lifecycle.mark_published(published)
    return published
