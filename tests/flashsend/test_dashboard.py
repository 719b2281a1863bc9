"""The operators' dashboard on the admin index page: its figures and who sees them."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from kombu import Exchange, Producer

from accounts.models import User
from flashsend import dashboard, topology
from flashsend.celery import app as celery_app
from flashsend.templatetags.flashsend_dashboard import bar_chart
from notifications.models import (
    AttemptOutcome,
    Channel,
    DeliveryAttempt,
    Notification,
    Status,
)
from tests.factories import UserFactory
from tests.pipeline import purge_queues, wait_for

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 12, 30, 30, tzinfo=UTC)
ALL_QUEUES = (*topology.WORK_QUEUES, topology.DEFAULT_QUEUE, topology.DEAD_QUEUE)
# Connection refused at once: nothing listens on port 1.
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def owner() -> User:
    return UserFactory.create()


@pytest.fixture
def superuser() -> User:
    return UserFactory.create(is_staff=True, is_superuser=True)


@pytest.fixture
def embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery reads this before its configured URL, so the dashboard sees the embedded
    # broker even in a run against RabbitMQ.
    monkeypatch.setenv("CELERY_BROKER_WRITE_URL", "filesystem://")


def _notification(
    owner: User,
    *,
    status: str = Status.QUEUED,
    created_at: datetime = NOW,
    sent_at: datetime | None = None,
) -> Notification:
    row = Notification.objects.create(
        owner=owner,
        channel=Channel.SMS,
        recipient="+15005550006",
        body="hello",
        status=status,
        sent_at=sent_at,
    )
    # created_at is auto_now_add: the row is placed in time afterwards.
    Notification.objects.filter(pk=row.pk).update(created_at=created_at)
    return row


def _attempt(
    notification: Notification, provider: str, outcome: str, *, started_at: datetime = NOW
) -> None:
    DeliveryAttempt.objects.create(
        notification=notification,
        round=1,
        provider=provider,
        outcome=outcome,
        latency_ms=50,
        started_at=started_at,
    )


def _login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _dashboard_fragment(html: str) -> str:
    match = re.search(r'<section id="flashsend-dashboard".*?</section>', html, re.DOTALL)
    assert match is not None, "the dashboard is not on the page"
    return match.group(0)


def _absolute_urls(html: str) -> set[str]:
    return set(re.findall(r"""(?:src|href)=["'](https?://[^"']*)""", html))


# --- Selectors -------------------------------------------------------------------


def test_status_counts_list_every_status_for_the_last_24_hours(owner: User) -> None:
    _notification(owner, status=Status.QUEUED, created_at=NOW - timedelta(hours=1))
    _notification(owner, status=Status.QUEUED, created_at=NOW - timedelta(minutes=5))
    _notification(owner, status=Status.DEAD, created_at=NOW - timedelta(hours=23, minutes=59))
    _notification(owner, status=Status.FAILED, created_at=NOW - timedelta(hours=24))
    _notification(owner, status=Status.SENT, created_at=NOW - timedelta(hours=25))  # too old

    counts = {row.status: row.count for row in dashboard.status_counts(now=NOW)}

    assert counts == {status.value: 0 for status in Status} | {
        Status.QUEUED: 2,
        Status.DEAD: 1,
        Status.FAILED: 1,
    }
    assert [row.status for row in dashboard.status_counts(now=NOW)] == list(Status.values)


def test_sent_per_minute_has_sixty_buckets_ending_with_the_current_minute(owner: User) -> None:
    for sent_at in (
        NOW,  # 12:30:30, the current minute
        NOW.replace(second=0),  # 12:30:00
        datetime(2026, 3, 2, 12, 0, 59, tzinfo=UTC),
        datetime(2026, 3, 2, 11, 31, 0, tzinfo=UTC),  # the first bucket
        datetime(2026, 3, 2, 11, 30, 59, tzinfo=UTC),  # just before the window
        datetime(2026, 3, 2, 12, 31, 0, tzinfo=UTC),  # after now
        None,  # never sent
    ):
        _notification(owner, status=Status.SENT, sent_at=sent_at)

    buckets = dashboard.sent_per_minute(now=NOW)

    assert len(buckets) == 60
    assert buckets[0].minute == datetime(2026, 3, 2, 11, 31, tzinfo=UTC)
    assert buckets[-1].minute == datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    assert all(b.minute - a.minute == timedelta(minutes=1) for a, b in pairwise(buckets))
    nonzero = {bucket.minute.strftime("%H:%M"): bucket.count for bucket in buckets if bucket.count}
    assert nonzero == {"11:31": 1, "12:00": 1, "12:30": 2}


def test_provider_success_rates_over_the_last_24_hours(owner: User) -> None:
    row = _notification(owner)
    for outcome in (AttemptOutcome.SUCCESS, AttemptOutcome.SUCCESS, AttemptOutcome.SUCCESS):
        _attempt(row, "twilio", outcome)
    _attempt(row, "twilio", AttemptOutcome.TRANSIENT)
    _attempt(row, "vonage", AttemptOutcome.PERMANENT)
    _attempt(row, "smtp", AttemptOutcome.SUCCESS, started_at=NOW - timedelta(hours=23))
    _attempt(row, "twilio", AttemptOutcome.TRANSIENT, started_at=NOW - timedelta(hours=25))

    rates = dashboard.provider_success_rates(now=NOW)

    assert [(r.provider, r.attempts, r.successes, r.rate) for r in rates] == [
        ("smtp", 1, 1, 100.0),
        ("twilio", 4, 3, 75.0),
        ("vonage", 1, 0, 0.0),
    ]


def test_dead_notifications_are_counted_whatever_their_age(owner: User) -> None:
    _notification(owner, status=Status.DEAD, created_at=NOW - timedelta(days=30))
    _notification(owner, status=Status.DEAD)
    _notification(owner, status=Status.FAILED)

    assert dashboard.dead_notification_count() == 2


def test_the_context_is_cached(owner: User, django_assert_num_queries: Any) -> None:
    first = dashboard.dashboard_context()
    _notification(owner, created_at=datetime.now(UTC))

    with django_assert_num_queries(0):
        second = dashboard.dashboard_context()

    assert second["status_total"] == first["status_total"]


def test_the_chart_scales_to_the_busiest_minute() -> None:
    start = datetime(2026, 3, 2, 11, 31, tzinfo=UTC)
    counts = [0] * 60
    counts[10], counts[20] = 1000, 1
    buckets = [
        dashboard.MinuteBucket(start + timedelta(minutes=i), count)
        for i, count in enumerate(counts)
    ]

    chart = bar_chart(buckets)

    assert chart.peak == 1000
    assert len(chart.bars) == 60
    assert chart.bars[10].height == chart.plot_height
    assert chart.bars[10].y == chart.plot_top
    assert chart.bars[20].height == 1.0  # one message stays visible next to 1000
    assert chart.bars[0].height == 0
    # Labels on round clock minutes: 11:40, 11:50 ... 12:30.
    assert [label.minute.strftime("%H:%M") for label in chart.x_labels] == [
        "11:40",
        "11:50",
        "12:00",
        "12:10",
        "12:20",
        "12:30",
    ]


# --- Broker ---------------------------------------------------------------------


def test_embedded_broker_depths_are_unknown(embedded_broker: None) -> None:
    depths = dashboard.queue_depths(ALL_QUEUES)

    assert [(q.name, q.depth) for q in depths] == [(name, None) for name in ALL_QUEUES]


def test_unreachable_rabbitmq_depths_are_unknown_quickly() -> None:
    started = time.monotonic()
    depths = dashboard.queue_depths(ALL_QUEUES, broker_url=UNREACHABLE_BROKER)

    assert time.monotonic() - started < dashboard.BROKER_BUDGET_SECONDS
    assert {q.depth for q in depths} == {None}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word, like a hung broker."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_hung_broker_costs_at_most_the_time_budget(silent_server: int) -> None:
    started = time.monotonic()
    depths = dashboard.queue_depths(
        ALL_QUEUES, broker_url=f"amqp://guest:guest@127.0.0.1:{silent_server}//"
    )

    assert time.monotonic() - started <= dashboard.BROKER_BUDGET_SECONDS
    assert {q.depth for q in depths} == {None}


# --- Page -----------------------------------------------------------------------


def test_superuser_sees_the_dashboard_above_the_app_list(owner: User, superuser: User) -> None:
    _notification(owner, status=Status.DEAD, created_at=datetime.now(UTC))

    response = _login(superuser).get("/admin/")

    assert response.status_code == 200
    html = response.content.decode()
    fragment = _dashboard_fragment(html)
    assert html.index('id="flashsend-dashboard"') < html.index('id="content-main"')
    assert "Created in the last 24 hours" in fragment
    for status in Status:
        assert f'<th scope="row">{status.label}</th>' in fragment
    assert "<svg" in fragment
    assert fragment.count('class="fs-bar"') == 60
    for name in ALL_QUEUES:
        assert f"<code>{name}</code>" in fragment
    assert "Notifications in status dead" in fragment
    assert 'id="content-main"' in html  # the app list is still there
    assert "/admin/notifications/notification/" in html


def test_the_dashboard_loads_nothing_from_elsewhere(superuser: User) -> None:
    staff = UserFactory.create(is_staff=True)
    with_dashboard = _login(superuser).get("/admin/").content.decode()
    without_dashboard = _login(staff).get("/admin/").content.decode()

    fragment = _dashboard_fragment(with_dashboard)
    assert "http://" not in fragment
    assert "https://" not in fragment
    assert "<script" not in fragment
    # Whatever absolute asset URLs the page has are Django admin's own.
    assert _absolute_urls(with_dashboard) <= _absolute_urls(without_dashboard)


def test_the_page_renders_with_unknown_depths_on_the_embedded_broker(
    superuser: User, embedded_broker: None
) -> None:
    response = _login(superuser).get("/admin/")

    assert response.status_code == 200
    fragment = _dashboard_fragment(response.content.decode())
    # Every work queue plus the dead-letter queue.
    assert fragment.count('<span class="fs-unknown">unknown</span>') == len(ALL_QUEUES)


def test_the_page_renders_when_rabbitmq_is_down(
    superuser: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_BROKER_WRITE_URL", UNREACHABLE_BROKER)

    response = _login(superuser).get("/admin/")

    assert response.status_code == 200
    assert _dashboard_fragment(response.content.decode()).count("unknown</span>") == len(ALL_QUEUES)


def test_staff_without_view_notification_gets_the_plain_index() -> None:
    staff = UserFactory.create(is_staff=True)

    response = _login(staff).get("/admin/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="content-main"' in html
    assert "flashsend-dashboard" not in html.split("</head>", 1)[1]


def test_staff_with_view_notification_sees_the_dashboard() -> None:
    staff = UserFactory.create(is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(
            content_type__app_label="notifications", codename="view_notification"
        )
    )

    response = _login(staff).get("/admin/")

    assert response.status_code == 200
    _dashboard_fragment(response.content.decode())


# --- Real RabbitMQ ----------------------------------------------------------------


@pytest.mark.services
def test_depths_are_read_from_rabbitmq(superuser: User) -> None:
    purge_queues()
    try:
        with celery_app.connection_for_write() as connection:
            producer = Producer(connection.default_channel)
            for n in range(3):
                producer.publish(
                    {"n": n},
                    exchange=Exchange(topology.EXCHANGE_NAME, type="topic", durable=True),
                    routing_key="sms.low",
                )

        # The broker may count a publish a moment after accepting it.
        wait_for(lambda: dashboard.queue_depths(["sms.low"])[0].depth == 3, timeout=10)

        names = ("sms.low", "flashsend.no-such-queue", "email.high", topology.DEAD_QUEUE)
        depths = {q.name: q.depth for q in dashboard.queue_depths(names)}
        # A missing queue is unknown and does not stop the queues after it.
        assert depths == {
            "sms.low": 3,
            "flashsend.no-such-queue": None,
            "email.high": 0,
            "flashsend.dead": 0,
        }

        html = _login(superuser).get("/admin/").content.decode()
        fragment = _dashboard_fragment(html)
        assert '<code>sms.low</code></th><td class="fs-num">3</td>' in fragment
        assert "unknown</span>" not in fragment
    finally:
        purge_queues()
