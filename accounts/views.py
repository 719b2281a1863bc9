"""Thin views: input serializer -> one service -> output."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts import services
from accounts.models import User
from accounts.serializers import (
    LoginInput,
    RefreshInput,
    RegisterInput,
    TokenOutput,
    UserOutput,
)

RegisteredOutput = inline_serializer(
    "Registered", {"message": serializers.CharField(), "user": UserOutput()}
)


class _PublicAuthView(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    def get_authenticate_header(self, request: Request) -> str:
        # These views take no credentials, but a failed login is still a 401 (DRF
        # would turn it into a 403 when a view names no authentication scheme).
        return 'Bearer realm="flashsend"'


class RegisterView(_PublicAuthView):
    @extend_schema(
        request=RegisterInput, responses={201: RegisteredOutput}, summary="Create an account"
    )
    def post(self, request: Request) -> Response:
        data = RegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_register(**data.validated_data)
        return Response(
            {"message": "User registered successfully", "user": UserOutput(user).data},
            status=status.HTTP_201_CREATED,
        )


class LoginView(_PublicAuthView):
    @extend_schema(request=LoginInput, responses={200: TokenOutput}, summary="Log in for a JWT")
    def post(self, request: Request) -> Response:
        data = LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        pair = services.user_login(**data.validated_data)
        return Response(
            {
                "token": pair.access,
                "refresh": pair.refresh,
                "token_type": "Bearer",
                "expires_in": pair.expires_in,
            }
        )


class RefreshView(_PublicAuthView):
    @extend_schema(request=RefreshInput, responses={200: TokenOutput}, summary="New access token")
    def post(self, request: Request) -> Response:
        data = RefreshInput(data=request.data)
        data.is_valid(raise_exception=True)
        pair = services.token_refresh(**data.validated_data)
        return Response(
            {"token": pair.access, "token_type": "Bearer", "expires_in": pair.expires_in}
        )


class MeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: UserOutput}, summary="The authenticated user")
    def get(self, request: Request) -> Response:
        user: User = request.user  # type: ignore[assignment]
        return Response(UserOutput(user).data)
