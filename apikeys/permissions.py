from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework_simplejwt.tokens import Token


class IsJWTAuthenticated(BasePermission):
    """Only a logged-in person (JWT) may manage keys; a key cannot mint keys."""

    message = "API keys are managed with a JWT from /api/auth/login, not with an API key."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(
            request.user and request.user.is_authenticated and isinstance(request.auth, Token)
        )
