from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from rest_framework import exceptions

from accounts.models import User
from notifications.models import Notification


def notification_list(
    *,
    owner: User,
    status: str | None = None,
    channel: str | None = None,
    priority: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[Notification]:
    rows = Notification.objects.filter(owner=owner)
    if status:
        rows = rows.filter(status=status)
    if channel:
        rows = rows.filter(channel=channel)
    if priority:
        rows = rows.filter(priority=priority)
    if created_after:
        rows = rows.filter(created_at__gte=created_after)
    if created_before:
        rows = rows.filter(created_at__lt=created_before)
    return rows


def notification_get(*, owner: User, notification_id: int) -> Notification:
    try:
        return Notification.objects.prefetch_related("attempts").get(
            id=notification_id, owner=owner
        )
    except Notification.DoesNotExist:
        # Another tenant's notification and no notification look the same.
        raise exceptions.NotFound("No notification with this id.") from None
