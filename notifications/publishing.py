"""Publishing delivery tasks to the broker.

The row is the source of truth and the broker only triggers work, so a failed
publish is never an error for the client: the row stays queued with no
``published_at`` and the sweeper publishes it later. After a failure the publisher
stays quiet for a short while instead of making every request wait on a broker
that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings

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
        lifecycle.mark_published([notification.pk])


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
