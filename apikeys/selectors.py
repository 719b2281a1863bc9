from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from apikeys.models import ApiKey


def apikey_list(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-id")
