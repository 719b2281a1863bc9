"""Liveness and readiness endpoints for load balancers and orchestrators."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from flashsend.celery import app as celery_app

logger = logging.getLogger(__name__)


class PingView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses=inline_serializer("Pong", {"message": serializers.CharField()}),
        summary="Liveness check",
    )
    def get(self, request: Request) -> Response:
        return Response({"message": "pong"})


class ReadyView(APIView):
    """200 when the database, cache and broker answer; 503 naming what does not."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: inline_serializer(
                "Readiness",
                {"status": serializers.CharField(), "checks": serializers.DictField()},
            ),
            503: inline_serializer(
                "NotReady",
                {"status": serializers.CharField(), "checks": serializers.DictField()},
            ),
        },
        summary="Readiness check (database, cache, broker)",
    )
    def get(self, request: Request) -> Response:
        checks = {
            "database": _check(_database),
            "cache": _check(_cache),
            "broker": _check(_broker),
        }
        ready = all(value == "ok" for value in checks.values())
        return Response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )


def _check(probe: Any) -> str:
    try:
        probe()
    except Exception as exc:  # a readiness probe reports every failure, whatever its type
        logger.warning("readiness check %s failed: %s", probe.__name__, exc)
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache() -> None:
    cache.set("flashsend:ready", "1", timeout=5)
    if cache.get("flashsend:ready") != "1":
        raise RuntimeError("cache did not return the value just written")


def _broker() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
