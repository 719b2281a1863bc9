from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone as django_timezone
from rest_framework import serializers

from flashsend.api.serializers import StrictSerializer
from notifications.models import Channel, DeliveryAttempt, Notification, Priority, Status
from notifications.schedule_time import FORMATS_HELP, ScheduleTimeError, parse_schedule_time
from notifications.validation import normalize_email, normalize_phone


class SendInput(StrictSerializer):
    channel = serializers.ChoiceField(choices=Channel.choices)
    to = serializers.CharField(max_length=254)
    subject = serializers.CharField(max_length=998, required=False, allow_blank=True, default="")
    body = serializers.CharField(trim_whitespace=False)
    priority = serializers.ChoiceField(choices=Priority.choices, default=Priority.MEDIUM)
    metadata = serializers.JSONField(required=False, default=dict)

    def validate_body(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The body cannot be blank.")
        return value

    def validate_metadata(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > settings.METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"Is {size} bytes as JSON; the limit is {settings.METADATA_MAX_BYTES}."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, str] = {}
        channel, body = attrs["channel"], attrs["body"]
        try:
            attrs["to"] = (
                normalize_phone(attrs["to"])
                if channel == Channel.SMS
                else normalize_email(attrs["to"])
            )
        except serializers.ValidationError as exc:
            errors["to"] = " ".join(str(d) for d in exc.detail)
        limit = (
            settings.SMS_MAX_LENGTH if channel == Channel.SMS else settings.EMAIL_BODY_MAX_LENGTH
        )
        if len(body) > limit:
            errors["body"] = f"Is {len(body)} characters; the {channel} limit is {limit}."
        if channel == Channel.EMAIL and not attrs.get("subject", "").strip():
            errors["subject"] = "Email needs a subject."
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class RescheduleInput(StrictSerializer):
    """``scheduleAt`` (the seed's name) or ``scheduled_at``, plus ``timezone``, read
    into one aware UTC ``scheduled_at``."""

    scheduleAt = serializers.CharField(required=False, max_length=64)  # noqa: N815 - the seed's name
    scheduled_at = serializers.CharField(required=False, max_length=64)
    timezone = serializers.CharField(required=False, max_length=64, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {"scheduled_at": self._scheduled_at(attrs)}

    def _scheduled_at(self, attrs: dict[str, Any]) -> datetime:
        camel, snake = attrs.pop("scheduleAt", None), attrs.pop("scheduled_at", None)
        zone = attrs.pop("timezone", None)
        if camel is not None and snake is not None:
            raise serializers.ValidationError(
                {"scheduleAt": f"Send scheduleAt or scheduled_at, not both. {FORMATS_HELP}"}
            )
        raw = camel if camel is not None else snake
        if raw is None:
            raise serializers.ValidationError(
                {"scheduleAt": f"This field is required. {FORMATS_HELP}"}
            )
        try:
            when = parse_schedule_time(raw, zone_name=zone)
        except ScheduleTimeError as exc:
            raise serializers.ValidationError({exc.field: str(exc)}) from None
        now = django_timezone.now()
        if when <= now:
            raise serializers.ValidationError(
                {
                    "scheduleAt": f"{raw!r} is {when:%Y-%m-%d %H:%M:%S} UTC: must be in the "
                    f"future. {FORMATS_HELP}"
                }
            )
        limit = now + timedelta(days=settings.SCHEDULE_MAX_AHEAD_DAYS)
        if when > limit:
            raise serializers.ValidationError(
                {
                    "scheduleAt": f"Is more than {settings.SCHEDULE_MAX_AHEAD_DAYS} days ahead "
                    f"(the latest accepted now is {limit:%Y-%m-%d %H:%M} UTC). {FORMATS_HELP}"
                }
            )
        return when


class ScheduleInput(SendInput, RescheduleInput):
    """Everything ``send`` takes, plus when."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = SendInput.validate(self, attrs)
        attrs["scheduled_at"] = self._scheduled_at(attrs)
        return attrs


class ScheduledOutput(serializers.Serializer[Any]):
    message = serializers.CharField()
    id = serializers.IntegerField()
    status = serializers.CharField()
    scheduled_at = serializers.DateTimeField()


class AttemptOutput(serializers.ModelSerializer[DeliveryAttempt]):
    class Meta:
        model = DeliveryAttempt
        fields: Any = [
            "round",
            "provider",
            "outcome",
            "error_code",
            "error_message",
            "provider_message_id",
            "latency_ms",
            "started_at",
        ]


class NotificationOutput(serializers.ModelSerializer[Notification]):
    to = serializers.CharField(source="recipient")

    class Meta:
        model = Notification
        fields: Any = [
            "id",
            "channel",
            "to",
            "subject",
            "body",
            "priority",
            "metadata",
            "status",
            "attempt_count",
            "last_error",
            "next_attempt_at",
            "provider",
            "provider_message_id",
            "created_at",
            "updated_at",
            "scheduled_at",
            "dispatched_at",
            "sent_at",
            "finished_at",
        ]


class NotificationDetailOutput(NotificationOutput):
    attempts = AttemptOutput(many=True, read_only=True)

    class Meta(NotificationOutput.Meta):
        fields: Any = [*NotificationOutput.Meta.fields, "attempts"]


class HistoryFilterInput(StrictSerializer):
    status = serializers.ChoiceField(choices=Status.choices, required=False)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    priority = serializers.ChoiceField(choices=Priority.choices, required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    cursor = serializers.CharField(required=False, max_length=1000)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=200)


class QueuedOutput(serializers.Serializer[Any]):
    message = serializers.CharField()
    id = serializers.IntegerField()
    status = serializers.CharField()
