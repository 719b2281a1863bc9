"""RabbitMQ stopped during sustained ingest: the API keeps answering, nothing is lost.

    flock /tmp/flashsend-bench.lock .venv/bin/python -m bench.outage \\
        --rate 100 --seconds 60 --stop-at 20 --stop-for 20

Serves FlashSend with gunicorn as bench/ingest.py does (database and vhost
``flashsend_bench``), with one ``celery worker --pool threads -c16`` delivering into a
fake Twilio answering after 50 ms and ``celery beat`` running the sweeper as in
production. bench/loadgen.py posts one SMS with a unique body per request at a fixed
rate; ``--stop-at`` seconds in, ``rabbitmqctl stop_app`` stops the broker, and
``--stop-for`` seconds later (at most 20) ``rabbitmqctl start_app`` brings it back (in
a ``finally``: the broker is always started again). Before stopping it, the run waits
for any ``pytest`` on the machine to finish, since every test that needs the broker
would fail meanwhile.

Then it waits (bounded) until every row the run created is in a final state and
counts: answers during and outside the outage (all must be 2xx) and their latency,
rows and their final states, messages at the fake (by body), duplicates (messages
beyond one per notification) and lost (accepted, never delivered). SMS rows left
over from earlier benchmark runs (still queued or retrying, and older than 10 minutes
or bench.ingest's, which leaves thousands queued with no worker) are cancelled first, so the
sweeper does not spend the run re-publishing them; their number is reported.
Process logs go next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from bench.ingest import _wait_up
from bench.loadgen import Record, percentile, summarise
from bench.pipeline import RESULTS, ROOT, SID, TOKEN, _environment, _prepare_services, _stop

PORT = 8766
MAX_STOP_SECONDS = 20.0
# bench.ingest's rows (every one has this body) are never delivered: always leftovers.
INGEST_BODY = "Your code is 123456"
BODY = '{"channel": "sms", "to": "+14155552671", "body": "outage TOKEN {n}"}'


def main() -> None:
    args = _arguments()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    _prepare_services()
    from flashsend.fakes import FakeProviderServer

    with FakeProviderServer(account_sid=SID, auth_token=TOKEN) as fake:
        fake.set_behaviour("twilio", delay_ms=args.delay_ms)
        env = {
            **os.environ,
            **_environment(fake.url),
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "FLASHSEND_BIND": f"127.0.0.1:{PORT}",
            "WEB_ACCESS_LOG": "0",
        }
        os.environ.update(env)
        key, cancelled = _django_setup()
        from django.conf import settings

        env["APIKEY_HMAC_SECRET"] = settings.APIKEY_HMAC_SECRET  # the key's own secret
        outcome = _run(args, env, key, fake, stamp)
        outcome["leftovers_cancelled"] = cancelled
    path = RESULTS / f"outage-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), **outcome}, indent=2))
    _print(outcome)
    print(f"results: {path.relative_to(ROOT)}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    parser.add_argument("--stop-at", type=float, default=20.0, help="seconds into the load")
    parser.add_argument("--stop-for", type=float, default=20.0, help="at most 20")
    parser.add_argument("--delay-ms", type=int, default=50, help="fake Twilio latency")
    parser.add_argument("--concurrency", type=int, default=16, help="worker threads")
    parser.add_argument(
        "--settle-timeout", type=float, default=300.0, help="wait for final states at most"
    )
    parser.add_argument(
        "--pytest-wait", type=float, default=600.0, help="wait for pytest to finish at most"
    )
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument(
        "--no-stop",
        dest="stop",
        action="store_false",
        help="control run: the same load and counts, the broker left running",
    )
    args = parser.parse_args()
    if not 0 < args.stop_for <= MAX_STOP_SECONDS:
        parser.error(f"--stop-for must be in (0, {MAX_STOP_SECONDS:.0f}]")
    if args.stop_at + args.stop_for > args.seconds:
        parser.error("the outage must end before the load does")
    return args


def _django_setup() -> tuple[str, int]:
    """Migrate, register the periodic tasks, cancel stale rows; an API key."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Q
    from django.utils import timezone

    from accounts.models import User
    from apikeys.services import apikey_create
    from notifications.models import Notification, Status

    call_command("migrate", verbosity=0)
    call_command("flashsend_setup", verbosity=0)
    owner, _ = User.objects.get_or_create(email="bench@example.com")
    # SMS only and old only: another benchmark's email backlog, or one of its own
    # minutes, is never touched (the run itself holds the benchmark lock).
    cancelled = (
        Notification.objects.filter(channel="sms", status__in=[Status.QUEUED, Status.RETRYING])
        .filter(
            Q(created_at__lt=timezone.now() - timedelta(minutes=10))
            | Q(body=INGEST_BODY, created_at__lt=timezone.now())
        )
        .update(status=Status.CANCELED)
    )
    return apikey_create(user=owner, name="outage bench")[1], cancelled


def _run(
    args: argparse.Namespace, env: dict[str, str], key: str, fake: Any, stamp: str
) -> dict[str, Any]:
    from tests.pipeline import purge_queues

    purge_queues()
    token = uuid.uuid4().hex[:10]
    records_path = RESULTS / f"outage-{stamp}.records.jsonl"
    logs = {name: (RESULTS / f"outage-{stamp}.{name}.log").open("w") for name in LOGGED}
    processes: list[subprocess.Popen[bytes]] = []
    window: dict[str, float] = {}
    try:
        processes.append(_start(GUNICORN, env, logs["gunicorn"]))
        processes.append(_start([*WORKER, "-c", str(args.concurrency)], env, logs["worker"]))
        processes.append(_start(BEAT, env, logs["beat"]))
        _wait_up(PORT)
        if args.stop:
            _wait_no_pytest(args.pytest_wait)
        load = _start_load(args, key, token, records_path)
        processes.append(load)
        started = time.time()
        window = _outage(args, started)
        load.wait(timeout=args.seconds + args.request_timeout + 30)
        load_summary = json.loads((load.stdout.read() if load.stdout else b"").decode())
        records = _read_records(records_path)
        settle = _settle(token, args.settle_timeout)
    finally:
        for process in reversed(processes):
            _stop([process])
        for log in logs.values():
            log.close()
    return {
        "token": token,
        "outage": window,
        "load": load_summary,
        "answers": _answers(records, window),
        "timeline": _timeline(records, started),
        **settle,
        **_count(records, token, fake),
        "logs": {name: f"bench/results/outage-{stamp}.{name}.log" for name in LOGGED},
    }


LOGGED = ("gunicorn", "worker", "beat")
VENV = ROOT / ".venv" / "bin"
GUNICORN = [str(VENV / "gunicorn"), "flashsend.wsgi", "--config", "deploy/gunicorn.conf.py"]
WORKER = [
    str(VENV / "celery"),
    "-A",
    "flashsend",
    "worker",
    "--pool",
    "threads",
    "-Q",
    "sms.medium,flashsend.default",
    "--loglevel",
    "WARNING",
    "--hostname",
    "outage@%h",
]
BEAT = [str(VENV / "celery"), "-A", "flashsend", "beat", "--loglevel", "WARNING"]


def _start(command: list[str], env: dict[str, str], log: IO[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)  # noqa: S603


def _pytest_running() -> bool:
    """A pytest process on the machine (this run's own command line names --pytest-wait)."""
    found = subprocess.run(
        ["pgrep", "-af", "pytest"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return any(
        "bench.outage" not in line and int(line.split()[0]) != os.getpid()
        for line in found.stdout.splitlines()
        if line.strip()
    )


def _wait_no_pytest(limit: float) -> None:
    deadline = time.monotonic() + limit
    while _pytest_running():
        if time.monotonic() > deadline:
            raise RuntimeError(f"pytest still running after {limit:.0f} s: broker not stopped")
        time.sleep(2)


def _start_load(
    args: argparse.Namespace, key: str, token: str, records: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"http://127.0.0.1:{PORT}/api/notify/send",
        "--rate",
        str(args.rate),
        "--seconds",
        str(args.seconds),
        "--timeout",
        str(args.request_timeout),
        "--body",
        BODY.replace("TOKEN", token),
        "--header",
        "Content-Type: application/json",
        "--header",
        f"X-API-Key: {key}",
        "--records",
        str(records),
        "--keep-body",
        "200",
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)  # noqa: S603


def _outage(args: argparse.Namespace, started: float) -> dict[str, float]:
    """Stop the broker at stop-at for stop-for seconds; always start it again."""
    time.sleep(max(0.0, started + args.stop_at - time.time()))
    if not args.stop:
        now = time.time() - started
        return dict.fromkeys(("stop_requested", "stopped", "start_requested", "started"), now) | {
            "load_started": started
        }
    if _pytest_running():  # one started meanwhile: let it finish (bounded), then stop
        _wait_no_pytest(min(args.pytest_wait, 60.0))
    window = {"stop_requested": time.time()}
    try:
        _rabbitmqctl("stop_app")
        window["stopped"] = time.time()
        time.sleep(max(0.0, window["stop_requested"] + args.stop_for - time.time()))
    finally:
        window["start_requested"] = time.time()
        _rabbitmqctl("start_app")
        window["started"] = time.time()
    return {k: round(v - started, 3) for k, v in window.items()} | {"load_started": started}


def _rabbitmqctl(command: str) -> None:
    subprocess.run(  # noqa: S603 - fixed arguments to the local broker's CLI
        ["rabbitmqctl", "--quiet", command],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=60,
    )


def _read_records(path: Path) -> list[Record]:
    with path.open() as lines:
        return [Record(**json.loads(line)) for line in lines]


def _phase(record: Record, window: dict[str, float]) -> str:
    offset = record.scheduled - window["load_started"]
    if offset < window["stop_requested"]:
        return "before"
    if offset < window["started"]:
        return "during"
    return "after"


def _answers(records: list[Record], window: dict[str, float]) -> dict[str, Any]:
    phases: dict[str, list[Record]] = {"before": [], "during": [], "after": []}
    for record in records:
        phases[_phase(record, window)].append(record)
    return {name: summarise(chosen) for name, chosen in phases.items()}


def _timeline(records: list[Record], started: float) -> list[dict[str, Any]]:
    """Per second of the load: requests, answers not 2xx or missing, p99 and max."""
    seconds: dict[int, list[Record]] = {}
    for record in records:
        seconds.setdefault(int(record.scheduled - started), []).append(record)
    lines = []
    for second in sorted(seconds):
        chosen = seconds[second]
        latencies = [r.latency_ms for r in chosen if r.latency_ms is not None]
        lines.append(
            {
                "second": second,
                "requests": len(chosen),
                "not_2xx": sum(1 for r in chosen if not 200 <= (r.status or 0) < 300),
                "p99_ms": percentile(latencies, 0.99),
                "max_ms": round(max(latencies), 1) if latencies else None,
            }
        )
    return lines


def _run_rows(token: str) -> Any:
    from notifications.models import Notification

    return Notification.objects.filter(body__startswith=f"outage {token} ")


def _settle(token: str, limit: float) -> dict[str, Any]:
    """Wait (bounded) until every row of the run is final; how long it took."""
    from notifications.models import FINAL_STATUSES

    began = time.monotonic()
    deadline = began + limit
    while True:
        statuses = Counter(_run_rows(token).values_list("status", flat=True))
        open_rows = sum(n for status, n in statuses.items() if status not in FINAL_STATUSES)
        if open_rows == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    return {
        "settle_seconds": round(time.monotonic() - began, 1),
        "rows": sum(statuses.values()),
        "rows_by_status": dict(statuses),
        "rows_not_final": open_rows,
    }


def _count(records: list[Record], token: str, fake: Any) -> dict[str, Any]:
    accepted: dict[str, int] = {}  # body -> notification id, for every 202
    for record in records:
        if record.status == 202:
            accepted[f"outage {token} {record.n}"] = int(json.loads(record.body)["id"])
    messages = Counter(
        m.body for m in fake.messages("twilio") if m.body.startswith(f"outage {token} ")
    )
    rows = dict(_run_rows(token).values_list("body", "id"))
    lost = sorted(body for body in accepted if body not in messages)
    return {
        "accepted": len(accepted),
        "not_accepted": len(records) - len(accepted),
        "rows_without_202": len(set(rows) - set(accepted)),
        "fake_messages": sum(messages.values()),
        "delivered_notifications": len(messages),
        "duplicates": sum(n - 1 for n in messages.values()),
        "delivered_without_202": len(set(messages) - set(accepted)),
        "lost": len(lost),
        "lost_ids": [accepted[body] for body in lost[:50]],
    }


def _print(outcome: dict[str, Any]) -> None:
    window = outcome["outage"]
    print(
        f"broker stopped at {window['stop_requested']:.1f} s (down at {window['stopped']:.1f} s),"
        f" started at {window['start_requested']:.1f} s (up at {window['started']:.1f} s)"
    )
    for name, answers in outcome["answers"].items():
        print(
            f"{name:>6}: {answers['requests']} requests, statuses {answers['statuses']}, "
            f"errors {answers['errors']}, p50 {answers['p50_ms']} / p99 {answers['p99_ms']} / "
            f"max {answers['max_ms']} ms"
        )
    print(
        f"rows {outcome['rows']} ({outcome['rows_by_status']}), not final "
        f"{outcome['rows_not_final']} after {outcome['settle_seconds']} s"
    )
    print(
        f"accepted {outcome['accepted']}, delivered {outcome['delivered_notifications']}, "
        f"messages at the fake {outcome['fake_messages']}, duplicates {outcome['duplicates']}, "
        f"lost {outcome['lost']}"
    )


if __name__ == "__main__":
    main()
