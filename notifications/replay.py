"""Operators' retry and replay of failed and dead notifications.

The database row is the source of truth: a replay flips rows back to queued with a
conditional UPDATE and publishes them, so running it twice, or while a worker
delivers, sends nothing twice. ``flashsend.dead`` is then reconciled with the rows:
a dead letter whose row is no longer dead is acknowledged (drained).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from flashsend import topology
from flashsend.celery import app as celery_app
from notifications import lifecycle, publishing
from notifications.models import Notification, Status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayReport:
    matched: int
    requeued: int
    published: int
    dead_letters_drained: int | None  # None: the broker has no dead-letter queue to read


def dead_matching(
    *,
    channel: str | None = None,
    since: datetime | None = None,
    provider: str | None = None,
    statuses: tuple[str, ...] = (Status.DEAD,),
) -> QuerySet[Notification]:
    rows = Notification.objects.filter(status__in=statuses)
    if channel:
        rows = rows.filter(channel=channel)
    if since:
        rows = rows.filter(finished_at__gte=since)
    if provider:
        rows = rows.filter(provider=provider)
    return rows.order_by("id")


def notification_replay(
    *,
    notification_ids: list[int],
    rate_per_second: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Requeue and publish, at most ``rate_per_second`` notifications a second.

    The rate keeps a replay of thousands from hitting a provider that has just
    recovered with all of them at once.
    """
    rate = rate_per_second or settings.REPLAY_RATE_PER_SECOND
    chunk = max(1, int(rate))
    requeued = published = 0
    for start in range(0, len(notification_ids), chunk):
        began = time.monotonic()
        batch = lifecycle.requeue(notification_ids[start : start + chunk])
        requeued += len(batch)
        rows = Notification.objects.filter(id__in=batch).only("id", "channel", "priority")
        published += len(publishing.publish_many((row.pk, row.queue_name) for row in rows))
        if progress is not None:
            progress(min(start + chunk, len(notification_ids)), len(notification_ids))
        if start + chunk < len(notification_ids):
            time.sleep(max(0.0, chunk / rate - (time.monotonic() - began)))
    drained = reconcile_dead_letters()
    report = ReplayReport(len(notification_ids), requeued, published, drained)
    logger.warning("replay: %s", report)
    return report


def reconcile_dead_letters(*, limit: int = 100_000) -> int | None:
    """Acknowledge the dead letters whose notification is no longer dead.

    Reads at most the messages present when it starts; the ones whose row is still
    dead are held unacknowledged while reading and then returned to the queue, so
    the loop never sees a message twice. Returns how many were drained, or None on
    a broker without the dead-letter queue (the embedded one).
    """
    if not str(settings.CELERY_BROKER_URL).startswith("amqp"):
        return None
    with celery_app.connection_for_write() as connection:
        channel: Any = connection.channel()
        try:
            depth = int(channel.queue_declare(topology.DEAD_QUEUE, passive=True).message_count)
            keep: list[Any] = []
            drained = 0
            for _ in range(min(depth, limit)):
                message = channel.basic_get(topology.DEAD_QUEUE, no_ack=False)
                if message is None:
                    break
                if _still_dead(message):
                    keep.append(message)
                else:
                    channel.basic_ack(message.delivery_tag)
                    drained += 1
            for message in keep:
                channel.basic_reject(message.delivery_tag, requeue=True)
        finally:
            channel.close()
    return drained


def _still_dead(message: Any) -> bool:
    task_id = (message.properties or {}).get("correlation_id") or (message.headers or {}).get("id")
    try:
        notification_id = int(str(task_id))
    except ValueError:
        return True  # not one of ours: leave it for a person to look at
    return Notification.objects.filter(id=notification_id, status=Status.DEAD).exists()
