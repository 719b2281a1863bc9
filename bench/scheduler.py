"""Scheduler: dispatch 10,000 due notifications among 1,000,000 future ones.

    .venv/bin/python -m bench.scheduler --due 10000 --future 1000000 --repeat 3

In its own database (flashsend_bench_scheduler, so the million rows never slow the
other benchmarks), 1,000,000 scheduled rows 1 to 1,000 days ahead are created once
and kept between runs. Each run adds N rows that are due, then times one call of
the scheduler's task body (notification_dispatch_due: batches of SELECT … FOR
UPDATE SKIP LOCKED, flip to queued, publish on commit, mark published) until all N
are in RabbitMQ. The baseline is the raw publish rate on the same broker in the
same run: the same N delivery-task messages published in the same batches through
the same code (notifications.publishing.publish_batch), with no database at all.
Needs PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench.pipeline import BROKER_URL, PG_ADMIN, RESULTS, ROOT, _prepare_services

DATABASE = "flashsend_bench_scheduler"
DATABASE_URL = PG_ADMIN.rsplit("/", 1)[0] + "/" + DATABASE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--future", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    _prepare_services()
    _create_database()
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "flashsend.settings",
            "DATABASE_URL": DATABASE_URL,
            "CELERY_BROKER_URL": BROKER_URL,
            "LOG_LEVEL": "WARNING",
            # One call must dispatch every due row: no time budget cut-off.
            "SCHEDULER_RUN_BUDGET_SECONDS": "600",
        }
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flashsend_setup", verbosity=0)
    owner_id = _owner_id()
    _ensure_future_rows(owner_id, args.future)
    runs = []
    for _ in range(args.repeat):
        ours = _dispatch_run(owner_id, args.due)
        base = _publish_run(args.due)
        runs.append({"flashsend": ours, "baseline": base})
        print(
            f"dispatch {args.due} due among {args.future:,} future: {ours['seconds']:.2f} s "
            f"({ours['per_second']:.0f}/s) | raw publish {base['per_second']:.0f}/s | "
            f"ratio {ours['per_second'] / base['per_second']:.2f}",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"scheduler-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


def _create_database() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        if not conn.execute(query, [DATABASE]).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")


def _owner_id() -> int:
    from accounts.models import User

    owner, _ = User.objects.get_or_create(email="bench@example.com")
    return int(owner.pk)


def _ensure_future_rows(owner_id: int, future: int) -> None:
    from notifications.models import Notification, Status
    from tests.pipeline import insert_scheduled

    # Rows left by an interrupted run would be due now: they would inflate the count.
    Notification.objects.exclude(status=Status.SCHEDULED).delete()
    have = Notification.objects.filter(status=Status.SCHEDULED).count()
    if have < future:
        print(f"creating {future - have:,} future scheduled rows (once)", flush=True)
        insert_scheduled(owner_id, "86400", future - have)


def _dispatch_run(owner_id: int, due: int) -> dict[str, Any]:
    from notifications.models import Notification, Status
    from notifications.services import notification_dispatch_due
    from tests.pipeline import insert_scheduled, purge_queues, queue_depth

    purge_queues()
    insert_scheduled(owner_id, "-1", due)
    started = time.perf_counter()
    dispatched = notification_dispatch_due()
    seconds = time.perf_counter() - started
    in_queue = queue_depth("sms.medium")
    published = Notification.objects.filter(
        id__in=dispatched, status=Status.QUEUED, published_at__isnull=False
    ).count()
    if len(dispatched) != due or in_queue != due or published != due:
        raise RuntimeError(f"dispatched {len(dispatched)}, queued {in_queue}, marked {published}")
    Notification.objects.filter(id__in=dispatched).delete()
    purge_queues()
    return {"n": due, "seconds": round(seconds, 3), "per_second": round(due / seconds, 1)}


def _publish_run(n: int) -> dict[str, Any]:
    """The ceiling: the same publishes in the same batches, with no database."""
    from django.conf import settings

    from notifications.publishing import publish_batch
    from tests.pipeline import purge_queues

    purge_queues()
    size = settings.SCHEDULER_BATCH_SIZE
    started = time.perf_counter()
    for first in range(0, n, size):
        batch = [(i, "sms.medium") for i in range(first, min(n, first + size))]
        if len(publish_batch(batch)) != len(batch):
            raise RuntimeError("the broker refused a publish")
    seconds = time.perf_counter() - started
    purge_queues()
    return {"n": n, "seconds": round(seconds, 3), "per_second": round(n / seconds, 1)}


if __name__ == "__main__":
    main()
