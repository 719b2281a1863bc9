from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import User
from apikeys.models import ApiKey
from tests.factories import UserFactory, make_api_key

pytestmark = pytest.mark.django_db

KEYS = "/api/apikeys"
ME = "/api/auth/me"


def _hmac(raw: str) -> str:
    return hmac.new(settings.APIKEY_HMAC_SECRET.encode(), raw.encode(), hashlib.sha256).hexdigest()


def test_create_shows_the_key_once_and_stores_only_its_hmac(
    jwt_client: APIClient, user: User
) -> None:
    response = jwt_client.post(KEYS, {"name": "billing"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    raw = body["key"]
    assert raw.startswith("fs_")
    # 32 random bytes in URL-safe base64 are 43 characters.
    assert len(raw) >= 3 + 43
    assert body["name"] == "billing"
    assert body["prefix"] == raw[:11]
    assert "once" in body["message"]
    row = ApiKey.objects.get(id=body["id"])
    assert row.user == user
    assert row.key_hash == _hmac(raw)
    assert row.key_hash != hashlib.sha256(raw.encode()).hexdigest()
    # The clear key is nowhere in the row.
    assert all(raw not in str(getattr(row, f.attname)) for f in ApiKey._meta.fields)


def test_two_keys_differ(jwt_client: APIClient) -> None:
    first = jwt_client.post(KEYS, {"name": "a"}, format="json").json()["key"]
    second = jwt_client.post(KEYS, {"name": "a"}, format="json").json()["key"]
    assert first != second


def test_create_without_a_body_uses_a_default_name(jwt_client: APIClient) -> None:
    response = jwt_client.post(KEYS)
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "default"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"name": "   "}, "name"),
        ({"name": ["a"]}, "name"),
        ({"name": "ok", "scopes": ["all"]}, "scopes"),
    ],
)
def test_create_bad_input_is_400(
    jwt_client: APIClient, payload: dict[str, Any], field: str
) -> None:
    response = jwt_client.post(KEYS, payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert not ApiKey.objects.exists()


def test_list_never_shows_key_or_hash_and_only_own_keys(jwt_client: APIClient, user: User) -> None:
    _, raw = make_api_key(user, "mine")
    other_key, _ = make_api_key(UserFactory.create(), "theirs")
    response = jwt_client.get(KEYS)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["name"] for r in results] == ["mine"]
    assert set(results[0]) == {
        "id",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked",
        "revoked_at",
    }
    assert raw not in response.content.decode()
    assert other_key.key_hash not in response.content.decode()


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_key_authenticates_with_either_header(api: APIClient, user: User, header: str) -> None:
    _, raw = make_api_key(user)
    if header == "authorization":
        api.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    else:
        api.credentials(HTTP_X_API_KEY=raw)
    response = api.get(ME)
    assert response.status_code == 200
    assert response.json()["email"] == user.email


@pytest.mark.parametrize(
    "credentials",
    [
        {"HTTP_AUTHORIZATION": "Api-Key fs_" + "A" * 43},
        {"HTTP_X_API_KEY": "fs_nope"},
        {"HTTP_X_API_KEY": "sk_" + "A" * 43},
        {"HTTP_AUTHORIZATION": "Api-Key"},
        {"HTTP_AUTHORIZATION": "Api-Key a b"},
    ],
)
def test_bad_keys_are_401_with_challenge(api: APIClient, credentials: dict[str, str]) -> None:
    api.credentials(**credentials)
    response = api.get(ME)
    assert response.status_code == 401
    assert response["WWW-Authenticate"]
    assert response.json()["error"]


def test_key_with_right_prefix_but_wrong_secret_is_401(api: APIClient, user: User) -> None:
    _, raw = make_api_key(user)
    forged = raw[:11] + ("B" if raw[11] != "B" else "C") + raw[12:]
    api.credentials(HTTP_X_API_KEY=forged)
    assert api.get(ME).status_code == 401


def test_revoke_keeps_the_row_and_the_key_stops_working(jwt_client: APIClient, user: User) -> None:
    api_key, raw = make_api_key(user)
    response = jwt_client.delete(f"{KEYS}/{api_key.id}")
    assert response.status_code == 200
    assert response.json()["revoked"] is True
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert jwt_client.get(KEYS).json()["results"][0]["revoked"] is True
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    response = client.get(ME)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]


def test_revoking_twice_is_harmless(jwt_client: APIClient, user: User) -> None:
    api_key, _ = make_api_key(user)
    first = jwt_client.delete(f"{KEYS}/{api_key.id}").json()["revoked_at"]
    second = jwt_client.delete(f"{KEYS}/{api_key.id}/")
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first


def test_another_users_key_is_404_and_untouched(jwt_client: APIClient) -> None:
    other_key, _raw = make_api_key(UserFactory.create())
    response = jwt_client.delete(f"{KEYS}/{other_key.id}")
    assert response.status_code == 404
    assert response.json()["error"]
    other_key.refresh_from_db()
    assert other_key.revoked_at is None


@pytest.mark.parametrize("key_id", ["999999", "abc", "-1", "1.5"])
def test_unknown_or_malformed_key_id_is_json_404(jwt_client: APIClient, key_id: str) -> None:
    response = jwt_client.delete(f"{KEYS}/{key_id}")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")


def test_api_key_cannot_manage_keys(api: APIClient, user: User) -> None:
    api_key, raw = make_api_key(user)
    api.credentials(HTTP_X_API_KEY=raw)
    assert api.get(KEYS).status_code == 403
    response = api.post(KEYS, {"name": "minted"}, format="json")
    assert response.status_code == 403
    assert "JWT" in response.json()["error"]
    assert api.delete(f"{KEYS}/{api_key.id}").status_code == 403
    assert ApiKey.objects.count() == 1


def test_key_management_without_credentials_is_401(api: APIClient) -> None:
    assert api.get(KEYS).status_code == 401
    assert api.post(KEYS, {"name": "x"}, format="json").status_code == 401


def test_key_of_an_inactive_user_is_401(api: APIClient, user: User) -> None:
    _, raw = make_api_key(user)
    User.objects.filter(id=user.id).update(is_active=False)
    api.credentials(HTTP_X_API_KEY=raw)
    assert api.get(ME).status_code == 401


def test_last_used_is_recorded_without_a_write_per_request(api: APIClient, user: User) -> None:
    api_key, raw = make_api_key(user)
    assert api_key.last_used_at is None
    api.credentials(HTTP_X_API_KEY=raw)
    assert api.get(ME).status_code == 200
    api_key.refresh_from_db()
    first_use = api_key.last_used_at
    assert first_use is not None
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert api.get(ME).status_code == 200
    writes = [
        q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")
    ]
    assert writes == []
    api_key.refresh_from_db()
    assert api_key.last_used_at == first_use


def test_last_used_moves_on_after_the_resolution_window(
    api: APIClient, user: User, settings: Any
) -> None:
    settings.APIKEY_LAST_USED_RESOLUTION_SECONDS = 0
    api_key, raw = make_api_key(user)
    api.credentials(HTTP_X_API_KEY=raw)
    api.get(ME)
    api_key.refresh_from_db()
    first = api_key.last_used_at
    api.get(ME)
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
    assert first is not None
    assert api_key.last_used_at > first


def test_a_key_is_looked_up_in_one_query_and_reads_as_a_full_row(user: User) -> None:
    from apikeys.services import apikey_authenticate

    api_key, raw = make_api_key(user, "billing")
    apikey_authenticate(raw=raw)  # the first use records last_used_at
    with CaptureQueriesContext(connection) as queries:
        found = apikey_authenticate(raw=raw)
    assert len(queries.captured_queries) == 1
    assert found is not None
    assert (found.pk, found.user_id, found.revoked_at) == (api_key.pk, user.pk, None)
    assert found.last_used_at is not None
    assert found.last_used_at.tzinfo is not None
    # The fields the lookup did not read load on first use, with their real values.
    assert (found.name, found.created_at) == ("billing", api_key.created_at)
    assert found.user.email == user.email


def test_a_revoked_key_is_refused_on_the_next_request(
    api: APIClient, jwt_client: APIClient, user: User
) -> None:
    api_key, raw = make_api_key(user)
    api.credentials(HTTP_X_API_KEY=raw)
    assert api.get(ME).status_code == 200
    assert jwt_client.delete(f"{KEYS}/{api_key.pk}").status_code in (200, 204)
    assert api.get(ME).status_code == 401
