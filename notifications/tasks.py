"""Celery tasks. They take an id, call one service, and translate its verdict."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from django.conf import settings
from django.db import InterfaceError, OperationalError

from notifications.delivery import Verdict, notification_deliver
from notifications.replay import notification_replay
from notifications.services import notification_dispatch_due, notification_sweep


class DeliveryTask(Task):  # type: ignore[type-arg]  # generic in the stubs only
    # Under the thread pool a worker's delivery engine takes these messages and
    # claims, sends and records many at once; the task's body runs under other pools.
    Strategy = "notifications.engine:strategy"


@shared_task(
    bind=True,
    name="notifications.deliver",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # Retries are counted on the row (attempt_count), not in the message, so a task
    # re-published by the sweeper does not start its count again.
    max_retries=None,
    # A database blip before the claim is Celery's to retry (the row is untouched);
    # after the provider call, record_verdict waits for the database itself.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    time_limit=settings.DELIVERY_TASK_TIME_LIMIT_SECONDS,
    soft_time_limit=settings.DELIVERY_TASK_TIME_LIMIT_SECONDS - 2,
    base=DeliveryTask,
)
def deliver_notification(self: Task[Any, Any], notification_id: int) -> str:
    result = notification_deliver(notification_id=int(notification_id))
    if result.verdict is Verdict.RETRY:
        raise self.retry(countdown=result.retry_in, max_retries=None)
    if result.verdict is Verdict.DEAD:
        # Rejected without requeue, so RabbitMQ dead-letters this message to
        # flashsend.dlx -> flashsend.dead, where operators find it.
        raise Reject(f"notification {notification_id} is dead: {result.error}", requeue=False)
    return str(result.verdict.value)


@shared_task(name="notifications.sweep", ignore_result=True, acks_late=False)
def sweep_notifications() -> dict[str, int]:
    report = notification_sweep()
    return {
        "released": report.released,
        "republished": report.republished,
        "retries_republished": report.retries_republished,
        "stale_republished": report.stale_republished,
    }


@shared_task(name="notifications.dispatch_due", ignore_result=True, acks_late=False)
def dispatch_due_notifications() -> int:
    return len(notification_dispatch_due())


@shared_task(name="notifications.replay", ignore_result=True, acks_late=True)
def replay_notifications(notification_ids: list[int]) -> dict[str, int | None]:
    """Operators' retry and replay, paced (REPLAY_RATE_PER_SECOND), off the web request."""
    report = notification_replay(notification_ids=[int(i) for i in notification_ids])
    return {
        "requeued": report.requeued,
        "published": report.published,
        "dead_letters_drained": report.dead_letters_drained,
    }
