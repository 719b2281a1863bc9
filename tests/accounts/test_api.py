from __future__ import annotations

from datetime import timedelta
from typing import Any

import jwt
import pytest
from django.conf import settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

REGISTER = "/api/auth/register"
LOGIN = "/api/auth/login"
REFRESH = "/api/auth/refresh"
ME = "/api/auth/me"
STRONG = "correct-horse-battery-9"


def _error(response: Any) -> dict[str, Any]:
    assert response["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str)
    assert body["error"]
    return body


# --- register -------------------------------------------------------------------


def test_register_creates_user_with_lowercased_email(api: APIClient) -> None:
    response = api.post(
        REGISTER, {"email": "  Alice@Example.COM ", "password": STRONG}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["message"] == "User registered successfully"
    assert body["user"]["email"] == "alice@example.com"
    assert "password" not in body["user"]
    user = User.objects.get()
    assert user.email == "alice@example.com"
    assert user.check_password(STRONG)


def test_register_accepts_trailing_slash(api: APIClient) -> None:
    response = api.post(
        REGISTER + "/", {"email": "b@example.com", "password": STRONG}, format="json"
    )
    assert response.status_code == 201


@pytest.mark.parametrize("email", ["dup@example.com", "DUP@example.com", "Dup@Example.Com"])
def test_register_duplicate_email_is_400_whatever_the_case(api: APIClient, email: str) -> None:
    UserFactory.create(email="dup@example.com")
    response = api.post(REGISTER, {"email": email, "password": STRONG}, format="json")
    assert response.status_code == 400
    assert _error(response)["code"] == "email_taken"
    assert User.objects.count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": STRONG}, "email"),
        ({"email": "x@example.com"}, "password"),
        ({"email": "not-an-email", "password": STRONG}, "email"),
        ({"email": 12, "password": STRONG}, "email"),
        ({"email": ["x@example.com"], "password": STRONG}, "email"),
        ({"email": "x@example.com", "password": None}, "password"),
        ({"email": "x@example.com", "password": "short1"}, "password"),
        ({"email": "x@example.com", "password": "password123"}, "password"),
        ({"email": "x@example.com", "password": "8412345678901"}, "password"),
        ({"email": "averylongname@example.com", "password": "averylongname"}, "password"),
        ({"email": "x@example.com", "password": STRONG, "role": "admin"}, "role"),
    ],
)
def test_register_bad_input_is_400_naming_the_field(
    api: APIClient, payload: dict[str, Any], field: str
) -> None:
    response = api.post(REGISTER, payload, format="json")
    assert response.status_code == 400, response.content
    body = _error(response)
    assert field in body["fields"], body
    assert field in body["error"]
    assert not User.objects.exists()


def test_register_malformed_json_is_400(api: APIClient) -> None:
    response = api.post(
        REGISTER, data='{"email": "x@example.com",', content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON" in _error(response)["error"]
    assert not User.objects.exists()


@pytest.mark.parametrize("raw", ['["a", "b"]', '"text"', "42", "null"])
def test_register_non_object_body_is_400(api: APIClient, raw: str) -> None:
    response = api.post(REGISTER, data=raw, content_type="application/json")
    assert response.status_code == 400
    _error(response)
    assert not User.objects.exists()


def test_register_form_encoding_is_415(api: APIClient) -> None:
    response = api.post(REGISTER, {"email": "x@example.com", "password": STRONG})
    assert response.status_code == 415
    _error(response)


# --- login ----------------------------------------------------------------------


def test_login_returns_tokens_and_lifetime(api: APIClient, user: User, password: str) -> None:
    response = api.post(LOGIN, {"email": user.email.upper(), "password": password}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"token", "refresh", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == int(settings.JWT_EXPIRATION_HOURS * 3600)
    access = AccessToken(body["token"])
    assert access["user_id"] == str(user.id) or access["user_id"] == user.id


def test_wrong_password_and_unknown_email_get_the_same_401(api: APIClient, user: User) -> None:
    wrong = api.post(LOGIN, {"email": user.email, "password": "not-the-password"}, format="json")
    unknown = api.post(LOGIN, {"email": "nobody@example.com", "password": "x"}, format="json")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert _error(wrong)["error"] == "Invalid email or password."


def test_inactive_user_cannot_log_in(api: APIClient, user: User, password: str) -> None:
    user.is_active = False
    user.save()
    response = api.post(LOGIN, {"email": user.email, "password": password}, format="json")
    assert response.status_code == 401


@pytest.mark.parametrize("payload", [{}, {"email": "a@example.com"}, {"email": 5, "password": []}])
def test_login_bad_input_is_400(api: APIClient, payload: dict[str, Any]) -> None:
    response = api.post(LOGIN, payload, format="json")
    assert response.status_code == 400
    assert _error(response)["fields"]


def test_login_is_rate_limited_per_client(api: APIClient, user: User) -> None:
    statuses = [
        api.post(LOGIN, {"email": user.email, "password": "guess"}, format="json").status_code
        for _ in range(25)
    ]
    assert statuses[:20] == [401] * 20
    assert statuses[-1] == 429
    response = api.post(LOGIN, {"email": user.email, "password": "guess"}, format="json")
    body = _error(response)
    assert body["code"] == "throttled"
    assert body["retry_after"] > 0
    assert "Retry-After" in response


# --- refresh --------------------------------------------------------------------


def test_refresh_issues_a_new_access_token(api: APIClient, user: User, password: str) -> None:
    login = api.post(LOGIN, {"email": user.email, "password": password}, format="json").json()
    response = api.post(REFRESH, {"refresh": login["refresh"]}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get(ME).json()["email"] == user.email


def test_refresh_rejects_an_access_token_and_garbage(api: APIClient, user: User) -> None:
    access = str(AccessToken.for_user(user))
    for value in (access, "garbage", "a.b.c"):
        response = api.post(REFRESH, {"refresh": value}, format="json")
        assert response.status_code == 401, value
        _error(response)


def test_refresh_for_a_deactivated_user_is_401(api: APIClient, user: User) -> None:
    refresh = str(RefreshToken.for_user(user))
    User.objects.filter(id=user.id).update(is_active=False)
    response = api.post(REFRESH, {"refresh": refresh}, format="json")
    assert response.status_code == 401


# --- me and bad tokens ----------------------------------------------------------


def test_me_with_jwt(jwt_client: APIClient, user: User) -> None:
    response = jwt_client.get(ME)
    assert response.status_code == 200
    assert response.json() == {
        "id": user.id,
        "email": user.email,
        "date_joined": response.json()["date_joined"],
    }


def test_me_without_credentials_is_401_with_challenge(api: APIClient) -> None:
    response = api.get(ME)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    _error(response)


def _signed(payload: dict[str, Any], key: str, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def _claims(user: User, **overrides: Any) -> dict[str, Any]:
    token = AccessToken.for_user(user)
    claims = dict(token.payload)
    claims.update(overrides)
    return claims


def test_expired_token_is_401(api: APIClient, user: User) -> None:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=-timedelta(seconds=1))
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = api.get(ME)
    assert response.status_code == 401
    assert response.json()["code"] == "token_not_valid"


def test_token_signed_with_another_key_is_401(api: APIClient, user: User) -> None:
    forged = _signed(_claims(user), "another-secret-that-is-long-enough-to-sign")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert api.get(ME).status_code == 401


def test_alg_none_token_is_401(api: APIClient, user: User) -> None:
    unsigned = jwt.encode(_claims(user), key="", algorithm="none")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {unsigned}")
    assert api.get(ME).status_code == 401


def test_refresh_token_is_not_an_access_token(api: APIClient, user: User) -> None:
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user)}")
    assert api.get(ME).status_code == 401


def test_token_for_deleted_user_is_401(api: APIClient, user: User) -> None:
    token = str(AccessToken.for_user(user))
    user.delete()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get(ME).status_code == 401


def test_token_with_tampered_payload_is_401(api: APIClient, user: User) -> None:
    other = UserFactory.create()
    header, _, signature = str(AccessToken.for_user(user)).split(".")
    forged_payload = _signed(_claims(other), settings.JWT_SECRET).split(".")[1]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {header}.{forged_payload}.{signature}")
    assert api.get(ME).status_code == 401
