"""Fault injection on the real services: deliveries are counted at the fake
providers and every row's final state is checked. Nothing accepted is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from accounts.models import User
from notifications.models import Notification, Status
from notifications.replay import notification_replay
from notifications.services import notification_sweep
from tests.pipeline import (
    purge_queues,
    queue_sms,
    running_worker,
    statuses,
    subprocess_database_url,
    wait_for,
    worker_environment,
)

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def _sweep_until_sent(ids: list[int], timeout: float) -> None:
    """Run the sweeper as celery-beat would until every one of ``ids`` is sent."""

    def all_sent() -> bool:
        notification_sweep()
        return statuses(ids)[Status.SENT] == len(ids)

    wait_for(all_sent, timeout=timeout, interval=1.0)


def _worker_process(settings: Any, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = worker_environment(
        settings,
        tmp_path,
        DELIVERY_TASK_TIME_LIMIT_SECONDS="5",
        DELIVERY_CLAIM_LEASE_SECONDS="6",
    )
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "flashsend",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        "16",
        "-Q",
        "sms.medium",
        "--loglevel",
        "WARNING",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env)  # noqa: S603 - the project's own worker


def _stop(process: subprocess.Popen[bytes]) -> None:
    """A warm shutdown; a process that ignores it (a hung worker) is killed."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_kill_9_worker_with_work_in_flight_loses_nothing(
    user: User, providers: Any, settings: Any, tmp_path: Path
) -> None:
    """SIGKILL a worker mid-backlog. Its in-flight messages come back by redelivery,
    and rows it had claimed come back through the sweeper once their lease is over.
    Only calls in flight at the kill may be repeated."""
    purge_queues()
    settings.DELIVERY_CLAIM_LEASE_SECONDS = 6
    settings.SWEEPER_GRACE_SECONDS = 0
    fake = providers["twilio"]
    fake.set_behaviour("twilio", delay_ms=50)
    total = 1500
    ids = queue_sms(user, total)
    first = _worker_process(settings, tmp_path)
    try:
        wait_for(lambda: statuses(ids)[Status.SENT] >= 300, timeout=120)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        in_flight = statuses(ids)[Status.PROCESSING]
    finally:
        if first.poll() is None:
            first.kill()
    second = _worker_process(settings, tmp_path)
    try:
        _sweep_until_sent(ids, timeout=240)
    finally:
        _stop(second)
    deliveries = Counter(m.body for m in fake.messages("twilio"))
    repeated = sum(count - 1 for count in deliveries.values() if count > 1)
    print(f"\nkill -9: {total} sent, {in_flight} processing at the kill, {repeated} repeated calls")
    assert len(deliveries) == total  # every notification reached the provider
    assert repeated <= max(in_flight, 16)  # only what was in flight may repeat


def test_worker_resumes_at_once_after_rabbitmq_restarts_mid_backlog(
    user: User, providers: Any, settings: Any, tmp_path: Path, rabbitmq_control: Any
) -> None:
    """RabbitMQ stopped and started under a worker draining a backlog: the worker
    reconnects and the backlog is delivered, without a stall and without a loss."""
    purge_queues()
    settings.SWEEPER_GRACE_SECONDS = 0
    fake = providers["twilio"]
    fake.set_behaviour("twilio", delay_ms=50)
    total = 600
    ids = queue_sms(user, total)
    worker = _worker_process(settings, tmp_path)
    try:
        wait_for(lambda: statuses(ids)[Status.SENT] >= 100, timeout=120)
        rabbitmq_control.stop()
        try:
            time.sleep(3)  # the broker stays away for a moment, tasks in flight
        finally:
            rabbitmq_control.start()
        sent_at_restart = statuses(ids)[Status.SENT]
        # The rest takes a few seconds at this worker's rate; a stalled worker
        # (threads hung on a prefetch update) sat idle for minutes.
        _sweep_until_sent(ids, timeout=60)
    finally:
        _stop(worker)
    deliveries = Counter(m.body for m in fake.messages("twilio"))
    print(f"\nRabbitMQ restart: {sent_at_restart} sent before, {total} after")
    assert len(deliveries) == total


def test_twilio_5xx_window_is_covered_by_vonage(user: User, providers: Any) -> None:
    purge_queues()
    twilio, vonage = providers["twilio"], providers["vonage"]
    ids = queue_sms(user, 60)
    with running_worker():
        wait_for(lambda: statuses(ids)[Status.SENT] >= 15)
        twilio.set_behaviour("twilio", mode="error", status=503)
        more = queue_sms(user, 60)
        wait_for(lambda: statuses(more)[Status.SENT] == 60, timeout=60)
        twilio.set_behaviour("twilio", mode="ok")
        wait_for(lambda: statuses(ids)[Status.SENT] == 60, timeout=60)
    # Every one of the 60 sent during the outage went through Vonage, in its first round.
    during = Notification.objects.filter(id__in=more)
    assert set(during.values_list("provider", flat=True)) == {"vonage"}
    assert set(during.values_list("attempt_count", flat=True)) == {1}
    assert len(vonage.messages("vonage")) >= 60


def test_both_providers_down_then_back_loses_nothing(
    user: User, providers: Any, fast_retries: None
) -> None:
    """Some notifications recover through their own retries, those whose retries ran
    out are dead and then replayed: in the end every one is sent exactly once."""
    purge_queues()
    twilio, vonage = providers["twilio"], providers["vonage"]
    twilio.set_behaviour("twilio", mode="error")
    vonage.set_behaviour("vonage", mode="error")
    ids = queue_sms(user, 40)
    with running_worker():
        wait_for(lambda: statuses(ids)[Status.DEAD] >= 10, timeout=60)
        twilio.set_behaviour("twilio", mode="ok")
        vonage.set_behaviour("vonage", mode="ok")
        wait_for(lambda: statuses(ids)[Status.SENT] + statuses(ids)[Status.DEAD] == 40, timeout=60)
        dead = list(
            Notification.objects.filter(id__in=ids, status=Status.DEAD).values_list("id", flat=True)
        )
        notification_replay(notification_ids=dead, rate_per_second=100)
        wait_for(lambda: statuses(ids)[Status.SENT] == 40, timeout=60)
    sent_bodies = Counter(m.body for m in twilio.messages("twilio") + vonage.messages("vonage"))
    assert len(sent_bodies) == 40
    assert max(sent_bodies.values()) == 1  # nobody got it twice


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, key: str, body: str) -> int | None:
    """The notification id of a 202, or None for any other answer or no answer."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - loopback only
        url,
        data=json.dumps({"channel": "sms", "to": "+14155552671", "body": body}).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(json.loads(response.read())["id"]) if response.status == 202 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def test_postgresql_restart_mid_run_api_and_worker_recover(
    user: User, providers: Any, settings: Any, tmp_path: Path
) -> None:
    """PostgreSQL restarts while the API (gunicorn) and a worker run. Neither is
    restarted: both reconnect, and every notification the API accepted is sent."""
    import shutil

    from django.db import OperationalError, connection

    from tests.factories import make_api_key

    ctl = shutil.which("pg_ctlcluster")
    clusters = sorted(Path("/etc/postgresql").glob("*/main")) if ctl else []
    if not clusters:
        pytest.skip("pg_ctlcluster and a local cluster are needed to restart PostgreSQL")
    version = clusters[-1].parent.name
    purge_queues()
    settings.SWEEPER_GRACE_SECONDS = 0
    _, key = make_api_key(user)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "FLASHSEND_VAR_DIR": str(tmp_path),
        "FLASHSEND_BIND": f"127.0.0.1:{port}",
        # The key was made under this process's secret; the API must check it with the same.
        "APIKEY_HMAC_SECRET": settings.APIKEY_HMAC_SECRET,
        "WEB_CONCURRENCY": "2",
        "WEB_ACCESS_LOG": "0",
        "LOG_LEVEL": "WARNING",
    }
    api = subprocess.Popen(  # noqa: S603 - the project's own gunicorn
        [str(ROOT / ".venv/bin/gunicorn"), "flashsend.wsgi", "--config", "deploy/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
    )
    worker = _worker_process(settings, tmp_path)
    url = f"http://127.0.0.1:{port}/api/notify/send"
    accepted: list[int] = []
    try:
        wait_for(lambda: _post(url, key, "warm-up"), timeout=60, interval=0.5)
        accepted += [i for i in (_post(url, key, f"before {n}") for n in range(20)) if i]
        subprocess.run(  # noqa: S603 - the local cluster's own control script
            [ctl or "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
            check=True,
            timeout=120,
            capture_output=True,
        )
        connection.close()  # this test's own connection died with the server
        # The first request after the restart may still meet a dead pooled connection
        # in some gunicorn worker; within seconds every answer is a 202 again.
        wait_for(lambda: _post(url, key, "probe"), timeout=60, interval=0.5)
        after = [_post(url, key, f"after {n}") for n in range(20)]
        assert all(after), "every request after recovery is accepted"
        accepted += [i for i in after if i]

        def all_sent() -> bool:
            # This process stands in for celery-beat: a sweep that meets the pool
            # still reconnecting fails, and the next tick tries again.
            try:
                notification_sweep()
                return statuses(accepted)[Status.SENT] == len(accepted)
            except OperationalError:
                connection.close()
                return False

        wait_for(all_sent, timeout=120, interval=1.0)
        assert api.poll() is None, "the API was not restarted"
        assert worker.poll() is None, "the worker was not restarted"
    finally:
        for process in (api, worker):
            process.send_signal(signal.SIGTERM)
        for process in (api, worker):
            process.wait(timeout=60)
    print(f"\nPostgreSQL restart: {len(accepted)} accepted, all sent")
