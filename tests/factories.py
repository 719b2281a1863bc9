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
