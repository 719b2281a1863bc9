from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from notifications.models import AttemptOutcome, DeliveryAttempt, Notification
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LIST = "/api/notifications"


def _make(owner: User, **fields: Any) -> Notification:
    values: dict[str, Any] = {
        "channel": "sms",
        "recipient": "+14155552671",
        "body": "hi",
        "priority": "medium",
        "status": "queued",
    }
    values.update(fields)
    return Notification.objects.create(owner=owner, **values)


def test_list_shows_only_own_rows_newest_first(jwt_client: APIClient, user: User) -> None:
    first = _make(user)
    second = _make(user, channel="email", recipient="a@example.com", subject="s")
    _make(UserFactory.create())
    response = jwt_client.get(LIST)
    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [second.id, first.id]


def test_cursor_pagination_walks_every_row_once(jwt_client: APIClient, user: User) -> None:
    ids = {_make(user).id for _ in range(7)}
    seen: list[int] = []
    url: str | None = f"{LIST}?page_size=3"
    while url:
        body = jwt_client.get(url).json()
        seen.extend(row["id"] for row in body["results"])
        url = body["next"]
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 7


def test_filters(jwt_client: APIClient, user: User) -> None:
    sent_sms = _make(user, status="sent", priority="high")
    _make(user, status="queued")
    email = _make(user, channel="email", recipient="a@example.com", status="sent")
    old = _make(user)
    Notification.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=3))

    def ids(query: str) -> set[int]:
        response = jwt_client.get(f"{LIST}?{query}")
        assert response.status_code == 200, response.content
        return {row["id"] for row in response.json()["results"]}

    assert ids("status=sent") == {sent_sms.id, email.id}
    assert ids("status=sent&channel=sms") == {sent_sms.id}
    assert ids("priority=high") == {sent_sms.id}
    cutoff = (timezone.now() - timedelta(days=1)).isoformat()
    assert old.id not in ids(f"created_after={cutoff.replace('+', '%2B')}")
    assert ids(f"created_before={cutoff.replace('+', '%2B')}") == {old.id}


@pytest.mark.parametrize(
    "query",
    [
        "status=lost",
        "channel=fax",
        "priority=0",
        "created_after=yesterday",
        "page_size=0",
        "colour=red",
    ],
)
def test_bad_filters_are_400(jwt_client: APIClient, query: str) -> None:
    response = jwt_client.get(f"{LIST}?{query}")
    assert response.status_code == 400
    assert response.json()["fields"]


def test_detail_includes_attempts(jwt_client: APIClient, user: User) -> None:
    row = _make(user, status="sent", provider="vonage", provider_message_id="m-1")
    for provider, outcome in (
        ("twilio", AttemptOutcome.TRANSIENT),
        ("vonage", AttemptOutcome.SUCCESS),
    ):
        DeliveryAttempt.objects.create(
            notification=row,
            round=1,
            provider=provider,
            outcome=outcome,
            latency_ms=12,
            started_at=timezone.now(),
        )
    response = jwt_client.get(f"{LIST}/{row.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["provider"] == "vonage"
    assert [(a["provider"], a["outcome"]) for a in body["attempts"]] == [
        ("twilio", "transient"),
        ("vonage", "success"),
    ]


def test_another_tenants_notification_is_404(jwt_client: APIClient) -> None:
    theirs = _make(UserFactory.create())
    response = jwt_client.get(f"{LIST}/{theirs.id}")
    assert response.status_code == 404
    assert response.json()["error"]


def test_history_needs_authentication(api: APIClient) -> None:
    assert api.get(LIST).status_code == 401
