from __future__ import annotations

from typing import Any

import factory

from accounts.models import User
from apikeys import services as apikey_services


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct-horse-battery-9")

    @factory.post_generation
    def _save(obj: User, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        if create:
            obj.save()


def make_api_key(user: User, name: str = "test") -> tuple[Any, str]:
    """A key created through the real service, with its clear text."""
    return apikey_services.apikey_create(user=user, name=name)


def make_notification(owner: User, **fields: Any) -> Any:
    """An SMS notification row with sensible defaults; ``fields`` override them."""
    from notifications.models import Notification

    values: dict[str, Any] = {"channel": "sms", "recipient": "+14155552671", "body": "hi"}
    values.update(fields)
    return Notification.objects.create(owner=owner, **values)


def make_dead_notification(
    owner: User, error: str = "twilio: Twilio 500 | vonage: Vonage HTTP error 500", **fields: Any
) -> Any:
    """A notification whose retries ran out, with its last failed provider call."""
    from django.utils import timezone

    from notifications.models import AttemptOutcome, DeliveryAttempt, Status

    row = make_notification(
        owner,
        status=Status.DEAD,
        provider="vonage",
        last_error=error,
        attempt_count=6,
        finished_at=timezone.now(),
        **fields,
    )
    DeliveryAttempt.objects.create(
        notification=row,
        round=6,
        provider="vonage",
        outcome=AttemptOutcome.TRANSIENT,
        error_code="500",
        error_message="Vonage HTTP error 500",
        latency_ms=40,
        started_at=timezone.now(),
    )
    return row
