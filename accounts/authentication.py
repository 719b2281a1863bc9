"""JWT authentication (Authorization: Bearer <access token>)."""

from __future__ import annotations

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt import authentication


class JWTAuthentication(authentication.JWTAuthentication):
    www_authenticate_realm = "flashsend"


class JWTScheme(SimpleJWTScheme):  # type: ignore[no-untyped-call]
    """Documents our subclass the way drf-spectacular documents simplejwt's own."""

    target_class = "accounts.authentication.JWTAuthentication"
