"""DRF authentication by API key: ``Authorization: Api-Key fs_…`` or ``X-API-Key: fs_…``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from apikeys.models import ApiKey
from apikeys.services import apikey_authenticate

SCHEME = "Api-Key"


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        raw = self._presented_key(request)
        if raw is None:
            return None
        api_key = apikey_authenticate(raw=raw)
        if api_key is None:
            raise exceptions.AuthenticationFailed(
                "Invalid or revoked API key.", code="invalid_api_key"
            )
        return api_key.user, api_key

    def authenticate_header(self, request: Request) -> str:
        return f'{SCHEME} realm="flashsend"'

    @staticmethod
    def _presented_key(request: Request) -> str | None:
        header = get_authorization_header(request).split()
        if header and header[0].lower() == SCHEME.lower().encode():
            if len(header) != 2:
                raise exceptions.AuthenticationFailed(
                    "Malformed Authorization header: use 'Api-Key fs_…'.", code="invalid_api_key"
                )
            return header[1].decode("latin-1")
        value = request.META.get("HTTP_X_API_KEY")
        if value is not None:
            return str(value).strip()
        return None


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "apikeys.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "X-API-Key"}
