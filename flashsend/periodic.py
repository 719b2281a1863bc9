"""Periodic tasks run by celery-beat's database scheduler, registered in code.

They are rows in django-celery-beat's tables, so operators can see and change their
intervals in the admin; registering again keeps an interval an operator changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask


@dataclass(frozen=True)
class Periodic:
    name: str
    task: str
    seconds: float
    queue: str = "flashsend.default"


def periodic_tasks() -> list[Periodic]:
    return [
        Periodic(
            name="Dispatch due scheduled notifications",
            task="notifications.dispatch_due",
            seconds=settings.SCHEDULER_INTERVAL_SECONDS,
        ),
        Periodic(
            name="Re-publish notifications the broker never got",
            task="notifications.sweep",
            seconds=settings.SWEEPER_INTERVAL_SECONDS,
        ),
    ]


def register_periodic_tasks() -> list[str]:
    lines = []
    for item in periodic_tasks():
        existing = PeriodicTask.objects.filter(name=item.name).first()
        if existing is not None:
            lines.append(f"Periodic task kept: {item.name} ({existing.interval})")
            continue
        # IntervalSchedule counts whole units; sub-second intervals round up to 1 s.
        every = max(1, round(item.seconds))
        schedule, _ = IntervalSchedule.objects.get_or_create(
            every=every, period=IntervalSchedule.SECONDS
        )
        PeriodicTask.objects.create(
            name=item.name, task=item.task, interval=schedule, queue=item.queue
        )
        lines.append(f"Periodic task registered: {item.name} (every {every} s)")
    return lines
