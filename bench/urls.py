"""FlashSend's URLs plus the ingest baseline: a bare DRF endpoint inserting one row."""

from __future__ import annotations

from typing import Any

from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from flashsend.urls import handler400, handler404, handler500  # noqa: F401 - JSON errors here too
from flashsend.urls import urlpatterns as flashsend_urlpatterns
from notifications.models import Notification


class BareInsertView(APIView):
    """No authentication, no validation, no publish: parse JSON, insert, answer."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> Response:
        owner = User.objects.only("id").get(email="bench@example.com")
        row = Notification.objects.create(
            owner=owner,
            channel="sms",
            recipient=str(request.data.get("to", "")),
            body=str(request.data.get("body", "")),
        )
        return Response({"id": row.pk}, status=202)


urlpatterns = [path("bench/insert", BareInsertView.as_view()), *flashsend_urlpatterns]
