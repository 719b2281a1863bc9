"""Notifications and their delivery attempts.

Status changes never happen through ``save()``: ``notifications.lifecycle`` owns every
transition, each a conditional UPDATE that says whether it won the row.
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models


class Channel(models.TextChoices):
    SMS = "sms", "SMS"
    EMAIL = "email", "Email"


class Priority(models.TextChoices):
    HIGH = "high", "High"
    MEDIUM = "medium", "Medium"
    LOW = "low", "Low"


class Status(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    RETRYING = "retrying", "Retrying"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    UNDELIVERED = "undelivered", "Undelivered"
    FAILED = "failed", "Failed"
    DEAD = "dead", "Dead"
    CANCELED = "canceled", "Canceled"


# A message for a row in one of these states is acknowledged without any provider call.
FINAL_STATUSES = frozenset(
    {
        Status.SENT,
        Status.DELIVERED,
        Status.UNDELIVERED,
        Status.FAILED,
        Status.DEAD,
        Status.CANCELED,
    }
)


class Notification(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    api_key = models.ForeignKey(
        "apikeys.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="notifications",
    )
    channel = models.CharField(max_length=8, choices=Channel.choices)
    recipient = models.CharField(max_length=254)
    subject = models.CharField(max_length=998, blank=True, default="")
    body = models.TextField()
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.MEDIUM)
    metadata = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    # Provider rounds tried so far (each round may call several providers).
    attempt_count = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The provider that delivered it; for failed and dead rows, the last one tried.
    provider = models.CharField(max_length=32, blank=True, default="")
    provider_message_id = models.CharField(max_length=128, blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Set once the broker has confirmed the task; NULL on a queued row means the
    # publish never happened and the sweeper must do it.
    published_at = models.DateTimeField(null=True, blank=True)
    # When the current worker claimed the row: a claim older than the lease is
    # taken to belong to a worker that died.
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-id"]
        permissions: ClassVar = [
            ("retry_notification", "Can retry failed and dead notifications (and replay them)"),
            ("cancel_notification", "Can cancel scheduled and queued notifications"),
        ]
        indexes: ClassVar = [
            models.Index(fields=["owner", "-created_at", "-id"], name="notif_owner_created"),
            # The admin's newest-first list, whole and by status.
            models.Index(fields=["-created_at", "-id"], name="notif_created"),
            models.Index(fields=["status", "-created_at", "-id"], name="notif_status_created"),
            # The dashboard's sent-per-minute chart reads the last hour only.
            models.Index(
                fields=["sent_at"], name="notif_sent", condition=models.Q(sent_at__isnull=False)
            ),
            # The scheduler's scan: due rows come first, future rows are never read.
            models.Index(
                fields=["scheduled_at"],
                name="notif_due",
                condition=models.Q(status="scheduled"),
            ),
            models.Index(
                fields=["created_at"],
                name="notif_unpublished",
                condition=models.Q(status="queued", published_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.channel} to {self.recipient} ({self.status})"

    @property
    def queue_name(self) -> str:
        return f"{self.channel}.{self.priority}"


class AttemptOutcome(models.TextChoices):
    SUCCESS = "success", "Success"
    TRANSIENT = "transient", "Transient error"
    PERMANENT = "permanent", "Permanent error"


class DeliveryAttempt(models.Model):
    """One call to one provider."""

    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, related_name="attempts"
    )
    round = models.PositiveIntegerField(help_text="Which delivery round (1 = first try).")
    provider = models.CharField(max_length=32)
    outcome = models.CharField(max_length=10, choices=AttemptOutcome.choices)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    provider_message_id = models.CharField(max_length=128, blank=True, default="")
    latency_ms = models.PositiveIntegerField()
    started_at = models.DateTimeField()

    class Meta:
        ordering: ClassVar = ["started_at", "id"]
        indexes: ClassVar = [
            models.Index(fields=["notification", "started_at"]),
            # Provider success rates over the last 24 hours.
            models.Index(fields=["started_at"], name="attempt_started"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.outcome} for #{self.notification_id}"


class DeadLetter(Notification):
    """The admin's dead-letter page: notifications whose retries ran out."""

    class Meta:
        proxy = True
        verbose_name = "dead letter"
        verbose_name_plural = "dead letters"
