from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from apikeys.models import ApiKey
from notifications import selectors, services
from notifications.serializers import (
    HistoryFilterInput,
    NotificationDetailOutput,
    NotificationOutput,
    QueuedOutput,
    RescheduleInput,
    ScheduledOutput,
    ScheduleInput,
    SendInput,
)


def _user(request: Request) -> User:
    return request.user  # type: ignore[return-value]


class SendView(APIView):
    @extend_schema(
        request=SendInput,
        responses={202: QueuedOutput},
        summary="Send an SMS or email now",
        description="Stores the notification and queues it on `<channel>.<priority>`.",
    )
    def post(self, request: Request) -> Response:
        data = SendInput(data=request.data)
        data.is_valid(raise_exception=True)
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        notification = services.notification_send(
            owner=_user(request), api_key=api_key, **data.validated_data
        )
        return Response(
            {
                "message": "Notification queued",
                "id": notification.pk,
                "status": notification.status,
            },
            status=status.HTTP_202_ACCEPTED,
        )


class ScheduleView(APIView):
    @extend_schema(
        request=ScheduleInput,
        responses={201: ScheduledOutput},
        summary="Schedule an SMS or email for later",
        description=(
            "`scheduleAt` (or `scheduled_at`): `2025-02-20 18:30` (24-hour, seconds optional) "
            "with an optional `UTC`/`GMT`/`Z` or offset such as `+05:30`, or ISO 8601. "
            "`timezone` (IANA, e.g. `Asia/Kolkata`) applies to a time written without a zone; "
            "the default is UTC."
        ),
    )
    def post(self, request: Request) -> Response:
        data = ScheduleInput(data=request.data)
        data.is_valid(raise_exception=True)
        api_key = request.auth if isinstance(request.auth, ApiKey) else None
        notification = services.notification_schedule(
            owner=_user(request), api_key=api_key, **data.validated_data
        )
        return Response(
            {
                "message": "Scheduled notification created",
                "id": notification.pk,
                "status": notification.status,
                "scheduled_at": _iso(notification.scheduled_at),
            },
            status=status.HTTP_201_CREATED,
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


class HistoryPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class NotificationListView(APIView):
    @extend_schema(
        parameters=[HistoryFilterInput],
        responses={
            200: inline_serializer(
                "NotificationPage",
                {
                    "next": serializers.URLField(allow_null=True),
                    "previous": serializers.URLField(allow_null=True),
                    "results": NotificationOutput(many=True),
                },
            )
        },
        summary="Your notifications, newest first (cursor-paginated)",
    )
    def get(self, request: Request) -> Response:
        filters = HistoryFilterInput(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        criteria: dict[str, Any] = {
            k: v for k, v in filters.validated_data.items() if k not in ("cursor", "page_size")
        }
        rows = selectors.notification_list(owner=_user(request), **criteria)
        paginator = HistoryPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(NotificationOutput(page, many=True).data)


class NotificationDetailView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("notification_id", int, OpenApiParameter.PATH)],
        responses={200: NotificationDetailOutput},
        summary="One notification with its delivery attempts",
    )
    def get(self, request: Request, notification_id: int) -> Response:
        notification = selectors.notification_get(
            owner=_user(request), notification_id=int(notification_id)
        )
        return Response(NotificationDetailOutput(notification).data)

    @extend_schema(
        parameters=[OpenApiParameter("notification_id", int, OpenApiParameter.PATH)],
        request=RescheduleInput,
        responses={200: NotificationDetailOutput},
        summary="Move a scheduled notification to another time",
    )
    def patch(self, request: Request, notification_id: int) -> Response:
        notification = selectors.notification_get(
            owner=_user(request), notification_id=int(notification_id)
        )
        data = RescheduleInput(data=request.data)
        data.is_valid(raise_exception=True)
        notification = services.notification_reschedule(
            notification=notification, **data.validated_data
        )
        return Response(NotificationDetailOutput(notification).data)


class NotificationCancelView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("notification_id", int, OpenApiParameter.PATH)],
        request=None,
        responses={200: NotificationDetailOutput},
        summary="Cancel a scheduled notification, or a queued one no worker has claimed",
    )
    def post(self, request: Request, notification_id: int) -> Response:
        notification = selectors.notification_get(
            owner=_user(request), notification_id=int(notification_id)
        )
        notification = services.notification_cancel(notification=notification)
        return Response(NotificationDetailOutput(notification).data)
