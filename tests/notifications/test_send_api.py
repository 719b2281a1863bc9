from __future__ import annotations

from typing import Any

import pytest
from django.forms.models import model_to_dict
from rest_framework.test import APIClient

from accounts.models import User
from notifications import services
from notifications.models import Notification, Status
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db

SEND = "/api/notify/send"
SMS = {"channel": "sms", "to": "+14155552671", "body": "Hello from FlashSend"}
EMAIL = {"channel": "email", "to": "Ann@Example.COM", "subject": "Hi", "body": "Hello"}


def test_send_sms_with_jwt_is_202_and_stored(
    jwt_client: APIClient, user: User, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = jwt_client.post(SEND, SMS, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["message"] == "Notification queued"
    assert body["status"] == "queued"
    row = Notification.objects.get(id=body["id"])
    assert row.owner == user
    assert row.api_key is None
    assert (row.channel, row.recipient, row.priority, row.status) == (
        "sms",
        "+14155552671",
        "medium",
        "queued",
    )
    assert len(callbacks) == 1  # the publish waits for the commit


def test_send_with_api_key_records_the_key(api: APIClient, user: User) -> None:
    api_key, raw = make_api_key(user)
    api.credentials(HTTP_X_API_KEY=raw)
    response = api.post(
        SEND, {**EMAIL, "priority": "high", "metadata": {"order": 42}}, format="json"
    )
    assert response.status_code == 202, response.content
    row = Notification.objects.get(id=response.json()["id"])
    assert row.api_key == api_key
    assert row.owner == user
    assert row.recipient == "Ann@example.com"  # the domain is normalised, the local part kept
    assert row.priority == "high"
    assert row.metadata == {"order": 42}
    assert row.queue_name == "email.high"


@pytest.mark.parametrize(
    ("to", "normalised"),
    [("+1 (415) 555-2671", "+14155552671"), ("+44 20 7946 0958", "+442079460958")],
)
def test_phone_numbers_are_normalised_to_e164(
    jwt_client: APIClient, to: str, normalised: str
) -> None:
    response = jwt_client.post(SEND, {**SMS, "to": to}, format="json")
    assert response.status_code == 202, response.content
    assert Notification.objects.get().recipient == normalised


BAD_INPUTS = [
    ({**SMS, "channel": "push"}, "channel"),
    ({k: v for k, v in SMS.items() if k != "channel"}, "channel"),
    ({k: v for k, v in SMS.items() if k != "to"}, "to"),
    ({k: v for k, v in SMS.items() if k != "body"}, "body"),
    ({**SMS, "to": "4155552671"}, "to"),
    ({**SMS, "to": "+1415"}, "to"),
    ({**SMS, "to": "+999999999999"}, "to"),
    ({**SMS, "to": "not a number"}, "to"),
    ({**SMS, "to": 14155552671}, "to"),
    ({**SMS, "body": ""}, "body"),
    ({**SMS, "body": "   "}, "body"),
    ({**SMS, "body": "x" * 1601}, "body"),
    ({**SMS, "body": ["a"]}, "body"),
    ({**SMS, "priority": "urgent"}, "priority"),
    ({**SMS, "metadata": ["a"]}, "metadata"),
    ({**SMS, "metadata": "text"}, "metadata"),
    ({**SMS, "metadata": {"blob": "x" * 5000}}, "metadata"),
    ({**SMS, "priorty": "high"}, "priorty"),
    ({**SMS, "user_id": 3}, "user_id"),
    ({**EMAIL, "to": "not-an-email"}, "to"),
    ({**EMAIL, "to": "Bob <bob@example.com>"}, "to"),
    ({k: v for k, v in EMAIL.items() if k != "subject"}, "subject"),
    ({**EMAIL, "subject": "  "}, "subject"),
    ({**EMAIL, "subject": "s" * 999}, "subject"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_INPUTS)
def test_bad_input_is_400_naming_the_field_and_changes_nothing(
    jwt_client: APIClient,
    payload: dict[str, Any],
    field: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = jwt_client.post(SEND, payload, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["fields"], body
    assert field in body["error"]
    assert not Notification.objects.exists()
    assert callbacks == []  # nothing was published


@pytest.mark.parametrize("raw", ['{"channel": "sms",', "[]", '"sms"'])
def test_malformed_or_non_object_body_is_400(jwt_client: APIClient, raw: str) -> None:
    response = jwt_client.post(SEND, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]
    assert not Notification.objects.exists()


def test_send_needs_authentication(api: APIClient) -> None:
    response = api.post(SEND, SMS, format="json")
    assert response.status_code == 401
    assert not Notification.objects.exists()


def test_send_with_a_revoked_key_is_401(api: APIClient, user: User) -> None:
    from apikeys.services import apikey_revoke

    api_key, raw = make_api_key(user)
    apikey_revoke(user=user, key_id=api_key.id)
    api.credentials(HTTP_X_API_KEY=raw)
    assert api.post(SEND, SMS, format="json").status_code == 401
    assert not Notification.objects.exists()


def test_the_send_insert_writes_the_row_create_would(user: User) -> None:
    api_key, _ = make_api_key(user)
    content = {"channel": "email", "to": "ann@example.com", "subject": "Hi", "body": "Hello"}
    sent = services.notification_send(
        owner=user, api_key=api_key, priority="high", metadata={"order": [1, "two"]}, **content
    )
    assert sent.pk is not None
    assert not sent._state.adding
    made = Notification.objects.create(
        owner=user,
        api_key=api_key,
        status=Status.QUEUED,
        channel="email",
        recipient="ann@example.com",
        subject="Hi",
        body="Hello",
        priority="high",
        metadata={"order": [1, "two"]},
    )
    stored, created = Notification.objects.get(pk=sent.pk), Notification.objects.get(pk=made.pk)
    stamps = ("id", "created_at", "updated_at")
    assert {k: v for k, v in model_to_dict(stored).items() if k not in stamps} == {
        k: v for k, v in model_to_dict(created).items() if k not in stamps
    }
    # The instance carries the timestamps that were written.
    assert (stored.created_at, stored.updated_at) == (sent.created_at, sent.updated_at)
    assert stored.created_at is not None
