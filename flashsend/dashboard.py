"""Figures for the operators' dashboard on the admin index page.

Each selector answers one question with one aggregate query (or, for the queues, one
short-lived broker connection), so the page costs the same handful of queries however
large the tables grow. ``dashboard_context`` gathers them and caches the result for a
few seconds: during an incident several operators keep reloading the admin, and each
reload would otherwise repeat every query and every broker round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.core.cache import cache
from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone
from kombu import Connection

from flashsend import topology
from flashsend.celery import app as celery_app
from notifications.models import AttemptOutcome, DeliveryAttempt, Notification, Status

logger = logging.getLogger(__name__)

# Bump the version when the shape of the context changes: during a deploy old and new
# processes share the cache, and an old pickle would not fit the new template.
CACHE_KEY = "flashsend:admin-dashboard:v1"
CACHE_SECONDS = 5

RECENT_WINDOW = timedelta(hours=24)
CHART_MINUTES = 60

# The broker is asked with a hard time budget so that a RabbitMQ outage, the moment an
# operator most needs the admin, costs the page at most about two seconds. Each
# blocking step has its own socket timeout; no new queue is asked once the budget
# left is shorter than one read.
BROKER_BUDGET_SECONDS = 2.0
BROKER_CONNECT_TIMEOUT_SECONDS = 0.5
BROKER_IO_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class StatusCount:
    status: str
    label: str
    count: int


@dataclass(frozen=True)
class MinuteBucket:
    minute: datetime
    count: int


@dataclass(frozen=True)
class QueueDepth:
    name: str
    # None when the broker cannot tell: embedded broker, RabbitMQ down, no such queue.
    depth: int | None


@dataclass(frozen=True)
class DeadLetters:
    queue: QueueDepth
    # All time, not windowed: every dead row is one an operator may still have to act on.
    notifications: int


@dataclass(frozen=True)
class ProviderRate:
    provider: str
    attempts: int
    successes: int

    @property
    def rate(self) -> float:
        """Successful attempts, in percent."""
        return 100.0 * self.successes / self.attempts if self.attempts else 0.0


def status_counts(*, now: datetime | None = None) -> list[StatusCount]:
    """Notifications created in the last 24 hours per status, every status listed."""
    since = (now or timezone.now()) - RECENT_WINDOW
    rows = (
        Notification.objects.filter(created_at__gte=since)
        .values("status")
        .annotate(n=Count("id"))
        # The model's default ordering would otherwise join the GROUP BY.
        .order_by()
    )
    counts = {row["status"]: row["n"] for row in rows}
    return [
        StatusCount(status.value, status.label, counts.get(status.value, 0)) for status in Status
    ]


def sent_per_minute(*, now: datetime | None = None) -> list[MinuteBucket]:
    """Notifications sent per minute, oldest first: the current minute and the 59 before."""
    end = _minute_floor(now or timezone.now()) + timedelta(minutes=1)
    start = end - timedelta(minutes=CHART_MINUTES)
    rows = (
        # A plain range on sent_at (no function of the column) keeps the filter
        # usable by an index; the truncation only shapes the groups.
        Notification.objects.filter(sent_at__gte=start, sent_at__lt=end)
        .annotate(minute=TruncMinute("sent_at", tzinfo=UTC))
        .values("minute")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = {row["minute"]: row["n"] for row in rows}
    minutes = (start + timedelta(minutes=i) for i in range(CHART_MINUTES))
    return [MinuteBucket(minute, counts.get(minute, 0)) for minute in minutes]


def queue_depths(names: Sequence[str], *, broker_url: str | None = None) -> list[QueueDepth]:
    """Ready messages per queue, by passive declare; None wherever the broker cannot say.

    ``broker_url`` defaults to Celery's broker. Never raises: the admin index must
    render whatever state the broker is in.
    """
    depths: dict[str, int | None] = dict.fromkeys(names)
    connection = celery_app.connection_for_write(
        broker_url,
        connect_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        transport_options={
            "read_timeout": BROKER_IO_TIMEOUT_SECONDS,
            "write_timeout": BROKER_IO_TIMEOUT_SECONDS,
        },
    )
    with connection:
        # The embedded filesystem broker has no server to ask, and reading its folder
        # would say nothing about what RabbitMQ would hold.
        if connection.transport.driver_type != "amqp":
            return _as_list(depths)
        deadline = time.monotonic() + BROKER_BUDGET_SECONDS - BROKER_IO_TIMEOUT_SECONDS
        try:
            _read_depths(connection, depths, deadline)
        except Exception as exc:  # any broker failure leaves the rest unknown
            logger.warning("queue depths unavailable: %s: %s", type(exc).__name__, exc)
            # Drop the socket: a polite close would wait on the broker once more.
            connection.collect()
    return _as_list(depths)


def dead_notification_count() -> int:
    return Notification.objects.filter(status=Status.DEAD).count()


def provider_success_rates(*, now: datetime | None = None) -> list[ProviderRate]:
    """Provider calls in the last 24 hours and how many succeeded, one row per provider."""
    since = (now or timezone.now()) - RECENT_WINDOW
    rows = (
        DeliveryAttempt.objects.filter(started_at__gte=since)
        .values("provider")
        .annotate(
            attempts=Count("id"),
            successes=Count("id", filter=Q(outcome=AttemptOutcome.SUCCESS)),
        )
        .order_by("provider")
    )
    return [ProviderRate(row["provider"], row["attempts"], row["successes"]) for row in rows]


def dashboard_context() -> dict[str, Any]:
    """Every figure of the dashboard, cached for CACHE_SECONDS."""
    # Two requests that miss together both build it: rarer and cheaper than a lock.
    context = cache.get_or_set(CACHE_KEY, _build_context, CACHE_SECONDS)
    return cast("dict[str, Any]", context)


def _build_context() -> dict[str, Any]:
    now = timezone.now()
    work_queues = (*topology.WORK_QUEUES, topology.DEFAULT_QUEUE)
    # One connection for every queue, the dead-letter queue included, so the whole
    # page stays within a single broker time budget.
    depths = queue_depths((*work_queues, topology.DEAD_QUEUE))
    statuses = status_counts(now=now)
    minutes = sent_per_minute(now=now)
    return {
        "generated_at": now,
        "status_counts": statuses,
        "status_total": sum(row.count for row in statuses),
        "sent_per_minute": minutes,
        "sent_total": sum(bucket.count for bucket in minutes),
        "queues": depths[: len(work_queues)],
        "dead_letters": DeadLetters(queue=depths[-1], notifications=dead_notification_count()),
        "provider_rates": provider_success_rates(now=now),
    }


def _read_depths(connection: Connection, depths: dict[str, int | None], deadline: float) -> None:
    # One attempt only: kombu's default connect retries after sleeping two seconds.
    connection.ensure_connection(max_retries=0)
    channel: Any = connection.channel()
    for name in depths:
        if time.monotonic() >= deadline:
            logger.warning("queue depths: broker too slow, %s and later left unknown", name)
            return
        try:
            depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
        except connection.channel_errors as exc:
            # A missing queue (404) makes RabbitMQ close the channel; the others can
            # still be asked on a fresh one.
            logger.info("queue depth of %s unavailable: %s", name, exc)
            channel = connection.channel()


def _as_list(depths: dict[str, int | None]) -> list[QueueDepth]:
    return [QueueDepth(name, depth) for name, depth in depths.items()]


def _minute_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)
