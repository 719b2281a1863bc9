from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from notifications.models import Notification, Status
from tests.factories import UserFactory, make_api_key

pytestmark = pytest.mark.django_db

SCHEDULE = "/api/notify/schedule"
SMS = {"channel": "sms", "to": "+14155552671", "body": "Reminder"}


def _day(days: int = 30) -> str:
    return (timezone.now() + timedelta(days=days)).strftime("%Y-%m-%d")


def _transitions(zone: ZoneInfo) -> Iterator[tuple[datetime, timedelta, timedelta]]:
    """(UTC instant, offset before, offset after) of the zone's coming offset changes."""
    start = timezone.now().astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start += timedelta(days=1)
    before = start.astimezone(zone).utcoffset()
    for hour in range(24 * 360):
        moment = start + timedelta(hours=hour)
        after = moment.astimezone(zone).utcoffset()
        if after != before:
            assert before is not None
            assert after is not None
            yield moment, before, after
            before = after


def _wall(kind: str, zone_name: str = "Europe/Paris") -> str:
    """A local wall time the next DST change skips ("gap") or repeats ("fold")."""
    for moment, before, after in _transitions(ZoneInfo(zone_name)):
        if kind == "gap" and after > before:
            local = (moment + before).replace(tzinfo=None) + timedelta(minutes=30)
            return local.strftime("%Y-%m-%d %H:%M")
        if kind == "fold" and after < before:
            local = (moment + after).replace(tzinfo=None) + timedelta(minutes=30)
            return local.strftime("%Y-%m-%d %H:%M")
    raise AssertionError("no DST change within a year")


def test_schedule_is_201_and_stored_without_publishing(
    jwt_client: APIClient, user: User, django_capture_on_commit_callbacks: Any
) -> None:
    day = _day()
    with django_capture_on_commit_callbacks() as callbacks:
        response = jwt_client.post(SCHEDULE, {**SMS, "scheduleAt": f"{day} 18:30"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["message"] == "Scheduled notification created"
    assert body["status"] == "scheduled"
    assert body["scheduled_at"] == f"{day}T18:30:00Z"
    row = Notification.objects.get(id=body["id"])
    assert (row.status, row.owner, row.dispatched_at) == (Status.SCHEDULED, user, None)
    assert row.scheduled_at == datetime.fromisoformat(f"{day}T18:30:00+00:00")
    assert callbacks == []  # nothing goes to the broker before it is due


@pytest.mark.parametrize(
    ("written", "zone", "expected"),
    [
        ("{d} 18:30", None, "{d}T18:30:00Z"),
        ("{d} 18:30:45", None, "{d}T18:30:45Z"),
        ("{d} 7:05", None, "{d}T07:05:00Z"),
        ("{d} 18:30 UTC", "Asia/Tokyo", "{d}T18:30:00Z"),
        ("{d} 18:30 GMT", None, "{d}T18:30:00Z"),
        ("{d} 18:30Z", None, "{d}T18:30:00Z"),
        ("{d} 18:30 +05:30", None, "{d}T13:00:00Z"),
        ("{d} 18:30 -0800", None, "{d}T02:30:00Z+1"),
        ("{d}T18:30:00+05:30", None, "{d}T13:00:00Z"),
        ("{d}T18:30:00.250Z", None, "{d}T18:30:00.250000Z"),
        ("{d} 09:00", "Asia/Kolkata", "{d}T03:30:00Z"),
        ("{d} 09:00 +00:00", "Asia/Kolkata", "{d}T09:00:00Z"),
        ("{d} 09:00", "", "{d}T09:00:00Z"),
    ],
)
def test_accepted_forms(
    jwt_client: APIClient, written: str, zone: str | None, expected: str
) -> None:
    day = _day()
    payload: dict[str, Any] = {**SMS, "scheduleAt": written.format(d=day)}
    if zone is not None:
        payload["timezone"] = zone
    response = jwt_client.post(SCHEDULE, payload, format="json")
    assert response.status_code == 201, response.content
    if expected.endswith("+1"):
        next_day = (datetime.fromisoformat(day) + timedelta(days=1)).strftime("%Y-%m-%d")
        expected = expected[:-2].replace("{d}", next_day)
    assert response.json()["scheduled_at"] == expected.format(d=day)


def test_scheduled_at_is_accepted_as_the_field_name(jwt_client: APIClient) -> None:
    response = jwt_client.post(SCHEDULE, {**SMS, "scheduled_at": f"{_day()} 10:00"}, format="json")
    assert response.status_code == 201, response.content


def test_api_key_can_schedule(api: APIClient, user: User) -> None:
    api_key, raw = make_api_key(user)
    api.credentials(HTTP_X_API_KEY=raw)
    response = api.post(SCHEDULE, {**SMS, "scheduleAt": f"{_day()} 10:00"}, format="json")
    assert response.status_code == 201
    assert Notification.objects.get().api_key == api_key


BAD = [
    ({"scheduleAt": "{d} 18:30 IST"}, "scheduleAt", "ambiguous"),
    ({"scheduleAt": "{d} 18:30 CST"}, "scheduleAt", "IANA"),
    ({"scheduleAt": "tomorrow at six"}, "scheduleAt", "not a date"),
    ({"scheduleAt": "{d} 25:30"}, "scheduleAt", "not a valid"),
    ({"scheduleAt": "2030-02-30 10:00"}, "scheduleAt", "not a valid"),
    ({"scheduleAt": "{d} 6pm"}, "scheduleAt", "not a date"),
    ({"scheduleAt": "{d} 18:30 +15:00"}, "scheduleAt", "offset"),
    ({"scheduleAt": "2001-01-01 10:00"}, "scheduleAt", "must be in the future"),
    ({"scheduleAt": "{far} 10:00"}, "scheduleAt", "365 days"),
    ({"scheduleAt": "{d} 10:00", "timezone": "Mars/Olympus"}, "timezone", "IANA"),
    ({"scheduleAt": "{d} 10:00", "scheduled_at": "{d} 11:00"}, "scheduleAt", "not both"),
    ({}, "scheduleAt", "required"),
    ({"scheduleAt": 1740000000}, "scheduleAt", ""),
]


@pytest.mark.parametrize(("extra", "field", "words"), BAD)
def test_bad_times_are_400_naming_the_accepted_formats(
    jwt_client: APIClient, extra: dict[str, Any], field: str, words: str
) -> None:
    payload = {
        key: value.format(d=_day(), far=_day(400)) if isinstance(value, str) else value
        for key, value in extra.items()
    }
    response = jwt_client.post(SCHEDULE, {**SMS, **payload}, format="json")
    assert response.status_code == 400, response.content
    message = " ".join(response.json()["fields"][field])
    assert words in message
    if field in ("scheduleAt", "timezone") and words:
        assert "Accepted:" in message
    assert not Notification.objects.exists()


@pytest.mark.parametrize(("kind", "words"), [("gap", "does not exist"), ("fold", "occurs twice")])
def test_dst_gaps_and_folds_are_refused(jwt_client: APIClient, kind: str, words: str) -> None:
    payload = {**SMS, "scheduleAt": _wall(kind), "timezone": "Europe/Paris"}
    response = jwt_client.post(SCHEDULE, payload, format="json")
    assert response.status_code == 400, response.content
    assert words in response.json()["fields"]["scheduleAt"][0]
    assert not Notification.objects.exists()


def test_a_fold_with_an_offset_is_accepted(jwt_client: APIClient) -> None:
    payload = {**SMS, "scheduleAt": _wall("fold") + " +01:00", "timezone": "Europe/Paris"}
    assert jwt_client.post(SCHEDULE, payload, format="json").status_code == 201


def test_send_fields_are_validated_too(jwt_client: APIClient) -> None:
    payload = {**SMS, "to": "nope", "priorty": "high", "scheduleAt": f"{_day()} 10:00"}
    response = jwt_client.post(SCHEDULE, payload, format="json")
    assert response.status_code == 400
    assert "priorty" in response.json()["fields"]
    assert not Notification.objects.exists()


# --- cancel and reschedule ------------------------------------------------------


def _row(owner: User, **fields: Any) -> Notification:
    values: dict[str, Any] = {
        "channel": "sms",
        "recipient": "+14155552671",
        "body": "hi",
        "status": Status.SCHEDULED,
        "scheduled_at": timezone.now() + timedelta(days=1),
    }
    values.update(fields)
    return Notification.objects.create(owner=owner, **values)


@pytest.mark.parametrize("start", [Status.SCHEDULED, Status.QUEUED])
def test_cancel(jwt_client: APIClient, user: User, start: str) -> None:
    row = _row(user, status=start)
    response = jwt_client.post(f"/api/notifications/{row.id}/cancel")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "canceled"
    row.refresh_from_db()
    assert row.status == Status.CANCELED
    assert row.finished_at is not None


@pytest.mark.parametrize(
    "start", [Status.PROCESSING, Status.SENT, Status.FAILED, Status.DEAD, Status.CANCELED]
)
def test_cancel_too_late_is_409_with_the_status(
    jwt_client: APIClient, user: User, start: str
) -> None:
    row = _row(user, status=start)
    response = jwt_client.post(f"/api/notifications/{row.id}/cancel")
    assert response.status_code == 409
    body = response.json()
    assert body["current_status"] == start
    assert start in body["error"]
    row.refresh_from_db()
    assert row.status == start


def test_cancel_and_reschedule_another_tenants_notification_are_404(
    jwt_client: APIClient,
) -> None:
    theirs = _row(UserFactory.create())
    assert jwt_client.post(f"/api/notifications/{theirs.id}/cancel").status_code == 404
    response = jwt_client.patch(
        f"/api/notifications/{theirs.id}", {"scheduleAt": f"{_day(3)} 10:00"}, format="json"
    )
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == Status.SCHEDULED


def test_reschedule(jwt_client: APIClient, user: User) -> None:
    row = _row(user)
    day = _day(3)
    response = jwt_client.patch(
        f"/api/notifications/{row.id}",
        {"scheduleAt": f"{day} 09:00", "timezone": "America/New_York"},
        format="json",
    )
    assert response.status_code == 200, response.content
    row.refresh_from_db()
    local = datetime.fromisoformat(f"{day}T09:00").replace(tzinfo=ZoneInfo("America/New_York"))
    assert row.scheduled_at == local
    assert response.json()["scheduled_at"].startswith(day)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"scheduleAt": "2001-01-01 10:00"}, "scheduleAt"),
        ({"scheduleAt": "soon"}, "scheduleAt"),
        ({"scheduleAt": "{d} 10:00", "body": "changed"}, "body"),
        ({}, "scheduleAt"),
    ],
)
def test_reschedule_bad_input_is_400_and_changes_nothing(
    jwt_client: APIClient, user: User, payload: dict[str, Any], field: str
) -> None:
    row = _row(user)
    data = {k: v.format(d=_day()) for k, v in payload.items()}
    response = jwt_client.patch(f"/api/notifications/{row.id}", data, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert Notification.objects.get(id=row.id).scheduled_at == row.scheduled_at


def test_reschedule_once_dispatched_is_409(jwt_client: APIClient, user: User) -> None:
    row = _row(user, status=Status.QUEUED)
    response = jwt_client.patch(
        f"/api/notifications/{row.id}", {"scheduleAt": f"{_day()} 10:00"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["current_status"] == "queued"


def test_history_shows_scheduled_and_dispatched_times(jwt_client: APIClient, user: User) -> None:
    when = timezone.now() - timedelta(minutes=1)
    row = _row(user, status=Status.QUEUED, scheduled_at=when, dispatched_at=timezone.now())
    body = jwt_client.get(f"/api/notifications/{row.id}").json()
    assert body["scheduled_at"] is not None
    assert body["dispatched_at"] is not None
