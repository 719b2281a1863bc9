"""The suite's own promise: in CI it runs on PostgreSQL, RabbitMQ and Redis."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from kombu import Connection
from rest_framework.test import APIClient

pytestmark = [pytest.mark.services, pytest.mark.django_db]


def test_database_is_postgresql() -> None:
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        assert "PostgreSQL" in cursor.fetchone()[0]


def test_cache_is_redis() -> None:
    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    cache.set("flashsend:test", {"n": 1}, timeout=10)
    assert cache.get("flashsend:test") == {"n": 1}


def test_broker_is_rabbitmq() -> None:
    with Connection(str(settings.CELERY_BROKER_URL)) as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.transport_cls in ("amqp", "pyamqp") or "amqp" in conn.transport.driver_type


def test_ready_on_real_services(api: APIClient) -> None:
    response = api.get("/ready")
    assert response.status_code == 200, response.content
