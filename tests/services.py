"""Reachability probes for the real services the suite can run against."""

from __future__ import annotations

import functools

from django.conf import settings
from django.db import connection


@functools.cache
def missing_services() -> tuple[str, ...]:
    missing: list[str] = []
    if connection.vendor != "postgresql":
        missing.append("PostgreSQL (DATABASE_URL is not a postgres:// URL)")
    if not str(settings.CELERY_BROKER_URL).startswith("amqp"):
        missing.append("RabbitMQ (CELERY_BROKER_URL is not an amqp:// URL)")
    elif (error := _broker_error()) is not None:
        missing.append(f"RabbitMQ at CELERY_BROKER_URL ({error})")
    if not settings.REDIS_URL:
        missing.append("Redis (REDIS_URL is not set)")
    elif (error := _redis_error()) is not None:
        missing.append(f"Redis at REDIS_URL ({error})")
    return tuple(missing)


def _broker_error() -> str | None:
    from kombu import Connection

    try:
        with Connection(str(settings.CELERY_BROKER_URL), connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None


def _redis_error() -> str | None:
    import redis

    try:
        redis.Redis.from_url(str(settings.REDIS_URL), socket_connect_timeout=3).ping()
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None
