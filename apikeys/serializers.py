from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apikeys.models import ApiKey
from flashsend.api.serializers import StrictSerializer


class ApiKeyCreateInput(StrictSerializer):
    name = serializers.CharField(max_length=100, required=False, default="default")

    def validate_name(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("The name cannot be blank.")
        return value


class ApiKeyOutput(serializers.ModelSerializer[ApiKey]):
    revoked = serializers.BooleanField(source="is_revoked")

    class Meta:
        model = ApiKey
        fields: Any = [
            "id",
            "name",
            "prefix",
            "created_at",
            "last_used_at",
            "revoked",
            "revoked_at",
        ]


class ApiKeyCreatedOutput(ApiKeyOutput):
    key = serializers.CharField(help_text="The key itself. It is shown only this once.")
    message = serializers.CharField()

    class Meta(ApiKeyOutput.Meta):
        fields: Any = [*ApiKeyOutput.Meta.fields, "key", "message"]
