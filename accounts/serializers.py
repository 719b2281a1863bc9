from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.models import User
from flashsend.api.serializers import StrictSerializer


class RegisterInput(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class LoginInput(StrictSerializer):
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=128, trim_whitespace=False)


class RefreshInput(StrictSerializer):
    refresh = serializers.CharField(max_length=4096)


class UserOutput(serializers.ModelSerializer[User]):
    class Meta:
        model = User
        fields: Any = ["id", "email", "date_joined"]


class TokenOutput(serializers.Serializer[Any]):
    token = serializers.CharField(help_text="Access JWT: send as `Authorization: Bearer <token>`.")
    refresh = serializers.CharField(
        required=False, help_text="Refresh token for /api/auth/refresh."
    )
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Seconds until the access token expires.")
