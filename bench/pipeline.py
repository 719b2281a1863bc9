"""End-to-end delivery throughput: FlashSend's pipeline against a raw Celery task.

    .venv/bin/python -m bench.pipeline --n 2000 --pool threads --concurrency 32 64 128

For each pool and concurrency: N notifications are stored and queued on sms.medium
(a backlog, so the broker never waits on the producer), a real `celery worker`
process drains them through the twilio SDK into a local fake Twilio that answers
after 50 ms, and the rate is measured at the fake from the first to the last message
it received. The raw task (bench/rawtask.py) is run the same way right after, so each
FlashSend figure stands next to its own baseline. Needs PostgreSQL and RabbitMQ
(database and vhost "flashsend_bench" are created); results go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flashsend_bench"
)
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/flashsend_bench")
SID, TOKEN = "AC" + "be" * 16, "bench-token"


@dataclass
class Run:
    kind: str
    pool: str
    processes: int
    concurrency: int
    n: int
    seconds: float
    per_second: float
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None


def main() -> None:
    args = _arguments()
    _prepare_services()
    from flashsend.fakes import FakeProviderServer

    with FakeProviderServer(account_sid=SID, auth_token=TOKEN) as fake:
        fake.set_behaviour("twilio", delay_ms=args.delay_ms)
        env = _environment(fake.url)
        os.environ.update(env)
        _django_setup()
        runs: list[Run] = []
        for concurrency in args.concurrency:
            for _ in range(args.repeat):
                runs.append(_flashsend_run(fake, env, args, concurrency))
                runs.append(_raw_run(fake, env, args, concurrency))
                _report(runs[-2:])
    _save(runs, args)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="notifications per run")
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "gevent"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting")
    parser.add_argument("--processes", type=int, default=1, help="worker processes per run")
    parser.add_argument("--delay-ms", type=int, default=50, help="fake provider latency")
    return parser.parse_args()


def _prepare_services() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = 'flashsend_bench'"
        ).fetchone()
        if not exists:
            conn.execute("CREATE DATABASE flashsend_bench")
    vhost = BROKER_URL.rsplit("/", 1)[1]
    subprocess.run(  # noqa: S603 - fixed arguments to the local broker's CLI
        ["rabbitmqctl", "--quiet", "add_vhost", vhost],  # noqa: S607
        capture_output=True,
        check=False,
    )
    subprocess.run(  # noqa: S603
        ["rabbitmqctl", "--quiet", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],  # noqa: S607
        capture_output=True,
        check=True,
    )


def _environment(fake_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "TWILIO_BASE_URL": fake_url,
        "TWILIO_ACCOUNT_SID": SID,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_PHONE_NUMBER": "+15005550006",
        "SMS_PROVIDERS": "twilio",
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MAX_SIZE": os.environ.get("DB_POOL_MAX_SIZE", "16"),
    }


def _django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flashsend.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flashsend_setup", verbosity=0)


def _flashsend_run(
    fake: Any, env: dict[str, str], args: argparse.Namespace, concurrency: int
) -> Run:
    from accounts.models import User
    from notifications.models import Notification
    from notifications.publishing import publish_many
    from tests.pipeline import purge_queues

    n = args.n
    purge_queues()
    fake.reset()
    fake.set_behaviour("twilio", delay_ms=args.delay_ms)
    owner, _ = User.objects.get_or_create(email="bench@example.com")
    rows = Notification.objects.bulk_create(
        Notification(owner=owner, channel="sms", recipient="+14155552671", body=f"bench {i}")
        for i in range(n)
    )
    publish_many((row.pk, row.queue_name) for row in rows)
    command = ["celery", "-A", "flashsend", "worker", "-Q", "sms.medium"]
    seconds, rate = _drain(command, env, args, concurrency, fake)
    latencies = _latencies([row.pk for row in rows])
    return Run("flashsend", args.pool, args.processes, concurrency, n, seconds, rate, *latencies)


def _raw_run(fake: Any, env: dict[str, str], args: argparse.Namespace, concurrency: int) -> Run:
    from bench.rawtask import app, raw_send

    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.queue_declare("bench.raw", durable=True, auto_delete=False)
        channel.queue_purge("bench.raw")
    n = args.n
    fake.reset()
    fake.set_behaviour("twilio", delay_ms=args.delay_ms)
    with app.producer_or_acquire() as producer:
        for i in range(n):
            raw_send.apply_async((i,), producer=producer)
    command = ["celery", "-A", "bench.rawtask", "worker", "-Q", "bench.raw"]
    seconds, rate = _drain(command, env, args, concurrency, fake)
    return Run("raw-celery", args.pool, args.processes, concurrency, n, seconds, rate)


def _drain(
    command: list[str],
    env: dict[str, str],
    args: argparse.Namespace,
    concurrency: int,
    fake: Any,
) -> tuple[float, float]:
    """Start the workers on the queued backlog, wait for all N at the fake, stop them."""
    workers = _start_workers(command, env, args, concurrency)
    try:
        messages = fake.wait_for_messages(args.n, provider="twilio", timeout=max(120.0, args.n / 5))
    finally:
        _stop(workers)
    return _rate([m.received_at for m in messages])


def _start_workers(
    command: list[str], env: dict[str, str], args: argparse.Namespace, concurrency: int
) -> list[subprocess.Popen[bytes]]:
    executable = str(ROOT / ".venv" / "bin" / command[0])
    env = {**os.environ, **env}
    if args.pool == "gevent":
        env["CELERY_BROKER_HEARTBEAT"] = "0"
    workers = []
    for index in range(args.processes):
        full = [
            executable,
            *command[1:],
            "--pool",
            args.pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "--hostname",
            f"bench{index}@%h",
        ]
        workers.append(subprocess.Popen(full, cwd=ROOT, env=env))  # noqa: S603
    return workers


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL for what has not gone after 30 s."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _rate(times: list[datetime]) -> tuple[float, float]:
    ordered = sorted(times)
    seconds = (ordered[-1] - ordered[0]).total_seconds()
    return seconds, (len(ordered) - 1) / seconds if seconds > 0 else float("inf")


def _latencies(ids: list[int]) -> tuple[float | None, float | None]:
    """created -> sent for a backlog run measures queueing, so only p50/p99 of the
    per-message handling are reported here: claim -> sent."""
    from notifications.models import Notification

    pairs = Notification.objects.filter(id__in=ids).values_list("claimed_at", "sent_at")
    spans = sorted(
        (sent - claimed).total_seconds() * 1000 for claimed, sent in pairs if claimed and sent
    )
    if not spans:
        return None, None
    return round(statistics.median(spans), 1), round(spans[int(len(spans) * 0.99) - 1], 1)


def _report(pair: list[Run]) -> None:
    ours, raw = pair
    print(
        f"{ours.processes}x {ours.pool} -c{ours.concurrency}: flashsend {ours.per_second:.0f}/s, "
        f"raw {raw.per_second:.0f}/s, ratio {ours.per_second / raw.per_second:.2f} "
        f"(claim->sent p50 {ours.latency_p50_ms} ms, "
        f"p99 {ours.latency_p99_ms} ms)",
        flush=True,
    )


def _save(runs: list[Run], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"pipeline-{args.pool}-{args.processes}p-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": [asdict(r) for r in runs]}, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
