"""Shared fixtures.

Tests marked ``services`` need the real PostgreSQL, RabbitMQ and Redis. On a laptop
without them they are skipped with the reason; with FLASHSEND_REQUIRE_SERVICES=1
(set by .ci/run) an unreachable service fails the test instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tests import services as service_probe
from tests.factories import UserFactory

REQUIRE_SERVICES = os.environ.get("FLASHSEND_REQUIRE_SERVICES") == "1"

pytest_plugins = ["tests.provider_fixtures"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("services") is None:
        return
    missing = service_probe.missing_services()
    if not missing:
        return
    reason = "needs " + "; ".join(missing)
    if REQUIRE_SERVICES:
        pytest.fail(f"FLASHSEND_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason + " (set DATABASE_URL, CELERY_BROKER_URL and REDIS_URL to run it)")


@pytest.fixture(scope="session", autouse=True)
def _stop_the_publishing_thread(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """The API's publishing thread holds a database connection: end it before the
    test database is dropped."""
    yield
    from notifications.publishing import background_publisher

    with django_db_blocker.unblock():
        background_publisher.stop()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The production hasher is slow on purpose; tests log in hundreds of times.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    # Throttle counters and cached lookups must not leak from one test to the next.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def password() -> str:
    return "correct-horse-battery-9"


@pytest.fixture
def user(db: Any, password: str) -> Any:
    return UserFactory.create(password=password)


@pytest.fixture
def jwt_client(user: Any, password: str) -> APIClient:
    client = APIClient()
    response = client.post(
        "/api/auth/login", {"email": user.email, "password": password}, format="json"
    )
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    return client
