"""Notification writes: accept, sweep."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from apikeys.models import ApiKey
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
    with transaction.atomic():
        notification = Notification.objects.create(
            owner=owner,
            api_key=api_key,
            channel=channel,
            recipient=to,
            subject=subject,
            body=body,
            priority=priority,
            metadata=metadata or {},
            status=Status.QUEUED,
        )
        # on_commit: a worker must never receive an id whose row it cannot see yet.
        transaction.on_commit(partial(publishing.publish_after_commit, notification))
    return notification


@dataclass(frozen=True)
class SweepReport:
    released: int
    republished: int
    retries_republished: int


def notification_sweep() -> SweepReport:
    """Re-publish what the broker never got, or lost with a dead worker.

    - processing rows whose claim outlived the lease (the worker died) go back to
      queued and unpublished;
    - queued rows never published (broker down at accept time) are published;
    - retrying rows long past their next attempt (the retry message was lost) are
      published again.
    A duplicate message is harmless: the claim lets only one through.
    """
    now = timezone.now()
    lease = timedelta(seconds=settings.DELIVERY_CLAIM_LEASE_SECONDS)
    released = lifecycle.release_stale_claims(lease=lease)
    grace = now - timedelta(seconds=settings.SWEEPER_GRACE_SECONDS)
    batch = settings.SWEEPER_BATCH_SIZE
    unpublished = Notification.objects.filter(
        status=Status.QUEUED, published_at__isnull=True, created_at__lt=grace
    ).order_by("created_at")[:batch]
    republished = publishing.publish_many(_targets(unpublished))
    overdue = Notification.objects.filter(
        Q(status=Status.RETRYING) & Q(next_attempt_at__lt=now - lease)
    ).order_by("next_attempt_at")[:batch]
    retried = publishing.publish_many(_targets(overdue))
    lifecycle.postpone_overdue_retries(retried)
    report = SweepReport(len(released), len(republished), len(retried))
    if any((report.released, report.republished, report.retries_republished)):
        logger.warning("sweeper: %s", report)
    return report


def _targets(rows: Any) -> list[tuple[int, str]]:
    return [(row.pk, row.queue_name) for row in rows.only("id", "channel", "priority")]
