"""Account writes: registration and token issue."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from rest_framework import exceptions
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import User, normalize_email_address
from flashsend.api.errors import DomainError

# One message for an unknown address and a wrong password, so that the login
# endpoint cannot be used to find out who has an account.
INVALID_CREDENTIALS = "Invalid email or password."


class EmailTaken(DomainError):
    default_detail = "An account with this email address already exists."
    default_code = "email_taken"


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str | None
    expires_in: int


def user_register(*, email: str, password: str) -> User:
    email = normalize_email_address(email)
    candidate = User(email=email)
    try:
        validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        raise exceptions.ValidationError({"password": list(exc.messages)}) from None
    if User.objects.filter(email=email).exists():
        raise EmailTaken()
    try:
        with transaction.atomic():
            return User.objects.create_user(email=email, password=password)
    except IntegrityError:
        # Two sign-ups with the same address raced; the constraint decided.
        raise EmailTaken() from None


def user_login(*, email: str, password: str) -> TokenPair:
    # authenticate() runs the password hasher even for unknown addresses, so the
    # response time does not reveal whether the account exists either.
    user = authenticate(username=normalize_email_address(email), password=password)
    if user is None:
        raise exceptions.AuthenticationFailed(INVALID_CREDENTIALS, code="invalid_credentials")
    refresh = RefreshToken.for_user(user)
    return TokenPair(
        access=str(refresh.access_token), refresh=str(refresh), expires_in=_access_lifetime()
    )


def token_refresh(*, refresh: str) -> TokenPair:
    try:
        token = RefreshToken(refresh)  # type: ignore[arg-type]
    except TokenError:
        raise exceptions.AuthenticationFailed(
            "The refresh token is invalid or expired.", code="token_not_valid"
        ) from None
    user_id = token.get(settings.SIMPLE_JWT["USER_ID_CLAIM"])
    if not User.objects.filter(id=user_id, is_active=True).exists():
        raise exceptions.AuthenticationFailed(
            "The account for this token no longer exists or is disabled.", code="user_inactive"
        )
    return TokenPair(access=str(token.access_token), refresh=None, expires_in=_access_lifetime())


def _access_lifetime() -> int:
    return int(settings.SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds())
