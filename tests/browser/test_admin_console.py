"""An operator's session in a real browser."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from accounts.models import User
from apikeys.models import ApiKey
from notifications.models import Notification, Status
from tests.browser.conftest import shot
from tests.factories import UserFactory, make_dead_notification

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "operator-passphrase-7"


@pytest.fixture
def operator() -> User:
    return UserFactory.create(
        email="ops@example.com", password=PASSWORD, is_staff=True, is_superuser=True
    )


def _log_in(page: Any) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", "ops@example.com")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def _dead(owner: User) -> Notification:
    return make_dead_notification(owner, body="Your code is 123456")  # type: ignore[no-any-return]


def test_log_in_filter_and_open_a_notification(page: Any, operator: User) -> None:
    customer = UserFactory.create()
    dead = _dead(customer)
    Notification.objects.create(
        owner=customer,
        channel="email",
        recipient="ann@example.com",
        subject="Hi",
        body="x",
        status=Status.SENT,
        provider="smtp",
    )
    _log_in(page)
    page.goto("/admin/notifications/notification/")
    assert page.locator("#result_list tbody tr").count() == 2
    page.click("#changelist-filter a:has-text('Dead')")
    page.wait_for_url("**status__exact=dead**")
    assert page.locator("#result_list tbody tr").count() == 1
    shot(page, "admin-history-filtered")
    page.click(f"#result_list a:has-text('{dead.pk}')")
    page.wait_for_selector("text=Delivery timeline")
    assert page.locator("text=Vonage HTTP error 500").first.is_visible()
    shot(page, "admin-notification-detail")


def test_create_an_api_key_and_see_it_once(page: Any, operator: User) -> None:
    customer = UserFactory.create(email="customer@example.com")
    _log_in(page)
    page.goto("/admin/apikeys/apikey/add/")
    page.select_option("#id_user", label="customer@example.com")
    page.fill("#id_name", "billing")
    page.click("input[type=submit]")
    raw = page.inner_text("#raw-key").strip()
    assert raw.startswith("fs_")
    shot(page, "admin-apikey-created")
    key = ApiKey.objects.get(user=customer, name="billing")
    page.goto("/admin/apikeys/apikey/")
    assert key.prefix in page.content()
    assert raw not in page.content()
    page.goto(f"/admin/apikeys/apikey/{key.pk}/change/")
    assert raw not in page.content()
    assert key.key_hash not in page.content()
    shot(page, "admin-apikey-list")


def test_dashboard(page: Any, operator: User) -> None:
    customer = UserFactory.create()
    Notification.objects.create(
        owner=customer,
        channel="sms",
        recipient="+14155552671",
        body="x",
        status=Status.SENT,
        provider="twilio",
        sent_at=timezone.now(),
    )
    _log_in(page)
    page.goto("/admin/")
    content = page.content()
    assert "<svg" in content
    for queue in ("sms.high", "email.low", "flashsend.dead"):
        assert queue in content
    shot(page, "admin-dashboard")


@pytest.mark.services
def test_retry_a_dead_notification_and_see_it_sent(
    page: Any, operator: User, providers: Any
) -> None:
    from tests.pipeline import purge_queues, running_worker, wait_for

    purge_queues()
    dead = _dead(UserFactory.create())
    with running_worker():
        _log_in(page)
        page.goto("/admin/notifications/deadletter/")
        assert page.locator("#dead-letter-groups").is_visible()
        shot(page, "admin-dead-letters")
        page.check(f"input[name=_selected_action][value='{dead.pk}']")
        page.select_option("select[name=action]", "retry_action")
        page.click("button[name=index]")
        page.wait_for_selector("text=going back through the pipeline")
        wait_for(lambda: Notification.objects.get(pk=dead.pk).status == Status.SENT)
        page.goto(f"/admin/notifications/notification/{dead.pk}/change/")
        page.wait_for_selector("text=success")
        assert "sent" in page.inner_text("body")
        shot(page, "admin-retried-and-sent")
    assert len(providers["twilio"].messages("twilio")) == 1
