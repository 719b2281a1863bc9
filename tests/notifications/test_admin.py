"""The operators' console: history, dead letters, retry and replay, API keys, permissions."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from apikeys.models import ApiKey
from notifications.models import Notification, Status
from notifications.replay import notification_replay
from tests.factories import UserFactory, make_api_key, make_dead_notification, make_notification

pytestmark = pytest.mark.django_db

LIST = "/admin/notifications/notification/"
DEAD = "/admin/notifications/deadletter/"


@pytest.fixture
def superuser() -> User:
    return UserFactory.create(is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(superuser: User) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


_row = make_notification


def _dead(owner: User, error: str = "twilio: 503 | vonage: 503", **fields: Any) -> Notification:
    return make_dead_notification(owner, error, **fields)  # type: ignore[no-any-return]


def _ids(response: Any) -> set[int]:
    return {row.pk for row in response.context["cl"].result_list}


# --- history ---------------------------------------------------------------------


def test_history_filters_and_search(admin_client: Client, user: User) -> None:
    sent = _row(user, status=Status.SENT, provider="twilio", provider_message_id="SMabc")
    email = _row(user, channel="email", recipient="ann@example.com", priority="high")
    dead = _dead(user)
    other = _row(UserFactory.create(), status=Status.SENT, provider="smtp")
    assert _ids(admin_client.get(LIST)) == {sent.pk, email.pk, dead.pk, other.pk}
    assert _ids(admin_client.get(LIST, {"status__exact": "sent"})) == {sent.pk, other.pk}
    assert _ids(admin_client.get(LIST, {"channel__exact": "email"})) == {email.pk}
    assert _ids(admin_client.get(LIST, {"priority__exact": "high"})) == {email.pk}
    assert _ids(admin_client.get(LIST, {"provider": "twilio"})) == {sent.pk}
    assert _ids(admin_client.get(LIST, {"owner__id__exact": str(user.pk)})) == {
        sent.pk,
        email.pk,
        dead.pk,
    }
    now = timezone.now()
    since = {
        "created_at__gte": (now - timedelta(days=1)).isoformat(),
        "created_at__lt": (now + timedelta(days=1)).isoformat(),
    }
    assert len(_ids(admin_client.get(LIST, since))) == 4
    assert _ids(admin_client.get(LIST, {"q": str(sent.pk)})) == {sent.pk}
    assert _ids(admin_client.get(LIST, {"q": "ann@example"})) == {email.pk}
    assert _ids(admin_client.get(LIST, {"q": "SMabc"})) == {sent.pk}


def test_detail_shows_the_attempt_timeline_read_only(admin_client: Client, user: User) -> None:
    row = _dead(user)
    page = admin_client.get(f"{LIST}{row.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "delivery timeline" in html.lower()
    assert "Vonage HTTP error 500" in html
    assert re.search(r"<li><code>[0-9-]+ [0-9:.]+ UTC</code> — finished</li>", html)
    assert 'name="_save"' not in html  # nothing to save: changes go through actions
    assert admin_client.get(f"{LIST}add/").status_code == 403
    assert admin_client.get(f"{LIST}{row.pk}/delete/").status_code == 403


def test_cancel_action(admin_client: Client, user: User) -> None:
    scheduled = _row(user, status=Status.SCHEDULED, scheduled_at=timezone.now() + timedelta(days=1))
    sent = _row(user, status=Status.SENT)
    response = admin_client.post(
        LIST,
        {"action": "cancel_action", "_selected_action": [scheduled.pk, sent.pk]},
        follow=True,
    )
    assert "1 canceled; 1 could not be" in response.content.decode()
    assert Notification.objects.get(pk=scheduled.pk).status == Status.CANCELED
    assert Notification.objects.get(pk=sent.pk).status == Status.SENT


def test_list_queries_stay_few_and_counts_are_capped(admin_client: Client, user: User) -> None:
    for _ in range(30):
        _row(user)
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(LIST).status_code == 200
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) <= 12, sql
    counts = [s for s in sql if "COUNT(" in s.upper()]
    assert counts
    assert all("LIMIT" in s.upper() for s in counts), counts


# --- dead letters and replay --------------------------------------------------------


def test_dead_letters_are_grouped_by_provider_and_error(admin_client: Client, user: User) -> None:
    for _ in range(3):
        _dead(user)
    _dead(user, error="smtp: 451 try later", channel="email", recipient="a@example.com")
    _row(user, status=Status.SENT)
    page = admin_client.get(DEAD)
    assert page.status_code == 200
    groups = list(page.context["groups"])
    assert [(g["count"], g["channel"], g["last_error"]) for g in groups] == [
        (3, "sms", "twilio: 503 | vonage: 503"),
        (1, "email", "smtp: 451 try later"),
    ]
    assert len(_ids(page)) == 4


def test_replay_dry_run_counts_and_changes_nothing(admin_client: Client, user: User) -> None:
    for _ in range(3):
        _dead(user)
    _dead(user, error="other", channel="email", recipient="a@example.com")
    page = admin_client.get(f"{DEAD}replay/", {"channel": "sms"})
    assert page.status_code == 200
    assert "3 dead notifications would be replayed" in page.content.decode()
    assert Notification.objects.filter(status=Status.DEAD).count() == 4
    # The list's own filters carry over to "replay every dead notification matching".
    listing = admin_client.get(DEAD, {"channel__exact": "email"}).content.decode()
    assert "replay/?channel__exact=email" in listing
    page = admin_client.get(f"{DEAD}replay/", {"channel__exact": "email"})
    assert "1 dead notification would be replayed" in page.content.decode()


def test_replay_requeues_only_failed_and_dead_and_never_twice(user: User, settings: Any) -> None:
    dead, failed = _dead(user), _row(user, status=Status.FAILED)
    sent = _row(user, status=Status.SENT)
    report = notification_replay(notification_ids=[dead.pk, failed.pk, sent.pk])
    assert (report.matched, report.requeued) == (3, 2)
    for row in (dead, failed):
        row.refresh_from_db()
        assert (row.status, row.attempt_count, row.finished_at) == (Status.QUEUED, 0, None)
    assert Notification.objects.get(pk=sent.pk).status == Status.SENT
    again = notification_replay(notification_ids=[dead.pk, failed.pk])
    assert again.requeued == 0


def test_replay_is_paced(user: User, settings: Any) -> None:
    ids = [_dead(user).pk for _ in range(30)]
    started = time.monotonic()
    notification_replay(notification_ids=ids, rate_per_second=20)
    # 20 now, 10 a second later: a flood of thousands would be spread the same way.
    assert time.monotonic() - started >= 0.9
    assert Notification.objects.filter(pk__in=ids, status=Status.QUEUED).count() == 30


def test_replay_dead_command(user: User) -> None:
    from io import StringIO

    old = _dead(user)
    Notification.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=10))
    recent_sms = _dead(user)
    _dead(user, channel="email", recipient="a@example.com")
    out = StringIO()
    since = (timezone.now() - timedelta(days=1)).date().isoformat()
    call_command("replay_dead", "--channel", "sms", "--since", since, "--dry-run", stdout=out)
    assert "1 dead notification(s) would be replayed" in out.getvalue()
    assert Notification.objects.filter(status=Status.DEAD).count() == 3
    out = StringIO()
    call_command("replay_dead", "--channel", "sms", "--since", since, stdout=out)
    assert "Replayed 1 of 1" in out.getvalue()
    assert Notification.objects.get(pk=recent_sms.pk).status == Status.QUEUED
    assert Notification.objects.get(pk=old.pk).status == Status.DEAD
    with pytest.raises(CommandError, match="not a date"):
        call_command("replay_dead", "--since", "last week")


# --- API keys ----------------------------------------------------------------------


def test_create_api_key_for_a_user_shows_it_once(admin_client: Client, user: User) -> None:
    page = admin_client.post("/admin/apikeys/apikey/add/", {"user": user.pk, "name": "ops"})
    assert page.status_code == 200
    raw = page.context["raw_key"]
    assert raw.startswith("fs_")
    assert raw in page.content.decode()
    key = ApiKey.objects.get(user=user, name="ops")
    secret = django_settings.APIKEY_HMAC_SECRET.encode()
    assert key.key_hash == hmac.new(secret, raw.encode(), hashlib.sha256).hexdigest()
    listing = admin_client.get("/admin/apikeys/apikey/").content.decode()
    detail = admin_client.get(f"/admin/apikeys/apikey/{key.pk}/change/").content.decode()
    for html in (listing, detail):
        assert key.prefix in html
        assert raw not in html
        assert key.key_hash not in html


def test_revoke_action(admin_client: Client, user: User) -> None:
    key, _ = make_api_key(user)
    admin_client.post(
        "/admin/apikeys/apikey/", {"action": "revoke_action", "_selected_action": [key.pk]}
    )
    key.refresh_from_db()
    assert key.revoked_at is not None


# --- permissions -------------------------------------------------------------------


def _staff(*codenames: str) -> Client:
    staff = UserFactory.create(is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(staff)
    return client


def test_staff_without_permissions_sees_nothing(user: User) -> None:
    client = _staff()
    assert client.get(LIST).status_code == 403
    assert client.get(DEAD).status_code == 403
    assert client.get("/admin/apikeys/apikey/").status_code == 403
    assert client.get("/admin/apikeys/apikey/add/").status_code == 403


def test_non_staff_is_sent_to_the_login_page(user: User) -> None:
    client = Client()
    client.force_login(user)
    response = client.get(LIST)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_viewer_cannot_retry_or_cancel(user: User) -> None:
    dead = _dead(user)
    client = _staff("view_notification")
    page = client.get(LIST)
    assert page.status_code == 200
    form = page.context["action_form"]
    actions = [choice[0] for choice in form.fields["action"].choices] if form else []
    assert "retry_action" not in actions
    assert "cancel_action" not in actions
    client.post(LIST, {"action": "retry_action", "_selected_action": [dead.pk]})
    assert Notification.objects.get(pk=dead.pk).status == Status.DEAD
    assert client.get(f"{DEAD}replay/").status_code == 403


def test_operator_with_retry_permission_can_replay(user: User) -> None:
    client = _staff("view_notification", "retry_notification")
    actions = client.get(DEAD).context["action_form"].fields["action"].choices
    assert "retry_action" in [choice[0] for choice in actions]
    assert client.get(f"{DEAD}replay/").status_code == 200


def test_api_key_creator_needs_the_add_permission(user: User) -> None:
    client = _staff("view_apikey")
    assert client.get("/admin/apikeys/apikey/").status_code == 200
    assert client.get("/admin/apikeys/apikey/add/").status_code == 403
    assert _staff("add_apikey", "view_apikey").get("/admin/apikeys/apikey/add/").status_code == 200


# --- on the real services ---------------------------------------------------------


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_retry_of_a_dead_notification_sends_it_and_drains_its_dead_letter(
    jwt_client: Any, providers: Any, fast_retries: None, superuser: User
) -> None:
    """Dead for real (both providers down), then retried from the admin once they are
    back: sent, with new attempt rows, and its message gone from flashsend.dead."""
    from tests.pipeline import purge_queues, queue_depth, running_worker, wait_for

    purge_queues()
    providers["twilio"].set_behaviour("twilio", mode="error")
    providers["vonage"].set_behaviour("vonage", mode="error")
    response = jwt_client.post(
        "/api/notify/send", {"channel": "sms", "to": "+14155552671", "body": "x"}, format="json"
    )
    notification_id = response.json()["id"]
    with running_worker():
        wait_for(lambda: Notification.objects.get(pk=notification_id).status == Status.DEAD)
        wait_for(lambda: queue_depth("flashsend.dead") == 1)
        providers["twilio"].set_behaviour("twilio", mode="ok")
        client = Client()
        client.force_login(superuser)
        client.post(
            DEAD, {"action": "retry_action", "_selected_action": [notification_id]}, follow=True
        )
        row = wait_for(
            lambda: Notification.objects.filter(pk=notification_id, status=Status.SENT).first()
        )
        wait_for(lambda: queue_depth("flashsend.dead") == 0)
    assert row is not None
    assert row.provider == "twilio"
    outcomes = list(row.attempts.values_list("provider", "outcome"))
    assert outcomes[-1] == ("twilio", "success")
    assert len(outcomes) == 7  # six failed calls over three rounds, then the success
    assert len(providers["twilio"].messages("twilio")) == 1


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_reconcile_keeps_letters_of_rows_still_dead(user: User) -> None:
    from kombu import Exchange, Producer

    from flashsend.celery import app
    from notifications.replay import reconcile_dead_letters
    from tests.pipeline import purge_queues, queue_depth

    purge_queues()
    still_dead, replayed = _dead(user), _row(user, status=Status.QUEUED)
    with app.connection_for_write() as conn:
        producer = Producer(conn.default_channel, exchange=Exchange("flashsend.dlx", "topic"))
        for row in (still_dead, replayed):
            producer.publish({"id": row.pk}, routing_key="sms.medium", correlation_id=str(row.pk))
    assert queue_depth("flashsend.dead") == 2
    assert reconcile_dead_letters() == 1
    assert queue_depth("flashsend.dead") == 1
    assert reconcile_dead_letters() == 0  # the kept one is kept, every time
    purge_queues()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_history_list_on_a_million_rows(
    admin_client: Client, user: User, record_property: Any
) -> None:
    table = Notification._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (owner_id, channel, recipient, subject, body, priority, "  # noqa: S608
            "metadata, status, attempt_count, last_error, provider, provider_message_id, "
            "created_at, updated_at) "
            "SELECT %s, 'sms', '+14155552671', '', 'b', 'medium', '{}', "
            "(ARRAY['sent','sent','sent','dead','failed'])[1 + g %% 5], 1, '', 'twilio', '', "
            "now() - (g || ' seconds')::interval, now() FROM generate_series(1, 1000000) AS g",
            [user.pk],
        )
        cursor.execute(f"ANALYZE {table}")
    timings = {}
    for name, params in (
        ("unfiltered", {}),
        ("status=dead", {"status__exact": "dead"}),
        ("search by id", {"q": "500000"}),
        ("page 50", {"p": "50"}),
    ):
        admin_client.get(LIST, params)  # warm
        started = time.monotonic()
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(LIST, params)
        timings[name] = (len(queries.captured_queries), round((time.monotonic() - started) * 1000))
        assert response.status_code == 200
        assert len(queries.captured_queries) <= 12
        for query in queries.captured_queries:
            assert "COUNT(" not in query["sql"].upper() or "LIMIT" in query["sql"].upper()
    assert "more than 10,000 notifications" in response.content.decode()
    dead_page = admin_client.get(DEAD)
    assert dead_page.status_code == 200
    record_property("admin_million", timings)
    print(f"\nadmin list on 1,000,000 rows (queries, ms): {timings}")
