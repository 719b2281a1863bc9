"""Created→sent latency at half of the maximum delivery rate, against a raw Celery task.

    .venv/bin/python -m bench.latency --seconds 30 --repeat 3

Each repeat first measures the maximum rate of both systems on a backlog (as
bench/pipeline.py does, fake Twilio answering after 50 ms, one worker, threads
-c16), then offers half of FlashSend's maximum as a steady stream (a slice every
20 ms, not bursts) for --seconds to a running worker of each system in turn:

- **FlashSend**: rows stored and published as the API does; latency = the row's
  ``created_at`` → ``sent_at`` (both written by FlashSend).
- **Baseline**: the raw task (bench/rawtask.py) at the same rate; latency =
  publish → the fake provider's answer (its receipt of the call + its delay).

The goal (issue): FlashSend's p99 < 250 ms at half its maximum rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.pipeline import (
    RESULTS,
    ROOT,
    SID,
    TOKEN,
    _django_setup,
    _environment,
    _flashsend_run,
    _prepare_services,
    _raw_run,
    _start_workers,
    _stop,
)

SLICE_SECONDS = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="backlog for the maximum rate")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady phase length")
    parser.add_argument("--fraction", type=float, default=0.5, help="of FlashSend's maximum")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-ms", type=int, default=50, help="fake provider latency")
    args = parser.parse_args()
    # bench.pipeline's helpers read these.
    args.pool, args.processes = "threads", 1
    _prepare_services()
    from flashsend.fakes import FakeProviderServer

    runs = []
    with FakeProviderServer(account_sid=SID, auth_token=TOKEN) as fake:
        env = _environment(fake.url)
        os.environ.update(env)
        _django_setup()
        for _ in range(args.repeat):
            ours_max = _flashsend_run(fake, env, args, args.concurrency).per_second
            raw_max = _raw_run(fake, env, args, args.concurrency).per_second
            rate = round(ours_max * args.fraction)
            ours = _steady_flashsend(fake, env, args, rate)
            raw = _steady_raw(fake, env, args, rate)
            runs.append(
                {"max_per_second": {"flashsend": ours_max, "raw-celery": raw_max}, "rate": rate}
                | {"flashsend": ours, "baseline": raw}
            )
            print(
                f"max {ours_max:.0f}/s (raw {raw_max:.0f}/s); at {rate}/s: flashsend "
                f"p50 {ours['p50_ms']} ms p99 {ours['p99_ms']} ms | raw p50 {raw['p50_ms']} ms "
                f"p99 {raw['p99_ms']} ms",
                flush=True,
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"latency-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


def _steady(produce: Any, rate: int, seconds: float) -> int:
    """Call produce(k) so that `rate` items a second go out, in 20 ms slices."""
    started = time.monotonic()
    produced = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) - produced
        if due > 0:
            produce(due)
            produced += due
        time.sleep(max(0.0, SLICE_SECONDS - (time.monotonic() - started - elapsed)))
    return produced


def _steady_flashsend(fake: Any, env: dict[str, str], args: Any, rate: int) -> dict[str, Any]:
    from accounts.models import User
    from notifications.models import Notification, Status
    from notifications.publishing import publish_many
    from tests.pipeline import purge_queues

    purge_queues()
    owner, _ = User.objects.get_or_create(email="bench@example.com")
    ids: list[int] = []

    def produce(count: int) -> None:
        rows = Notification.objects.bulk_create(
            Notification(owner=owner, channel="sms", recipient="+14155552671", body="latency")
            for _ in range(count)
        )
        publish_many((row.pk, row.queue_name) for row in rows)
        ids.extend(row.pk for row in rows)

    command = ["celery", "-A", "flashsend", "worker", "-Q", "sms.medium"]
    produced, _ = _steady_phase(fake, env, args, rate, command, produce, forget=ids.clear)
    pairs = Notification.objects.filter(id__in=ids, status=Status.SENT).values_list(
        "created_at", "sent_at"
    )
    return _summary([sent - created for created, sent in pairs if sent is not None], produced)


def _steady_raw(fake: Any, env: dict[str, str], args: Any, rate: int) -> dict[str, Any]:
    from bench.rawtask import app, raw_send

    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.queue_declare("bench.raw", durable=True, auto_delete=False)
        channel.queue_purge("bench.raw")
    published: dict[int, datetime] = {}

    def produce(count: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                n = len(published)
                published[n] = datetime.now(UTC)
                raw_send.apply_async((n,), producer=producer)

    command = ["celery", "-A", "bench.rawtask", "worker", "-Q", "bench.raw"]
    produced, messages = _steady_phase(
        fake, env, args, rate, command, produce, forget=published.clear
    )
    # The fake stamps a call when it arrives and answers delay_ms later: the task is
    # done at about arrival + delay, which is what FlashSend's sent_at stands for.
    answered = timedelta(milliseconds=args.delay_ms)
    spans = [m.received_at + answered - published[int(m.body.split()[-1])] for m in messages]
    return _summary(spans, produced)


def _steady_phase(
    fake: Any,
    env: dict[str, str],
    args: Any,
    rate: int,
    command: list[str],
    produce: Callable[[int], None],
    forget: Callable[[], None],
) -> tuple[int, list[Any]]:
    """Start a worker, warm it up, forget the warm-up, offer `rate` a second for
    --seconds and wait until the fake has every message; (produced, messages)."""
    workers = _start_workers(command, env, args, args.concurrency)
    try:
        _warm_up(fake, produce, args)
        _reset(fake, args)
        forget()
        produced = _steady(produce, rate, args.seconds)
        messages = fake.wait_for_messages(produced, provider="twilio", timeout=60 + args.seconds)
    finally:
        _stop(workers)
    return produced, list(messages)


def _warm_up(fake: Any, produce: Any, args: Any) -> None:
    """A few messages through a fresh worker, so start-up is not in the figures."""
    _reset(fake, args)
    produce(20)
    fake.wait_for_messages(20, provider="twilio", timeout=60)


def _reset(fake: Any, args: Any) -> None:
    """Forget the fake's records; reset() also forgets its latency, so set it again."""
    fake.reset()
    fake.set_behaviour("twilio", delay_ms=args.delay_ms)


def _summary(spans: list[timedelta], produced: int) -> dict[str, Any]:
    ms = sorted(span.total_seconds() * 1000 for span in spans)
    if not ms:
        return {"produced": produced, "measured": 0, "p50_ms": None, "p99_ms": None}
    return {
        "produced": produced,
        "measured": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 1),
        "max_ms": round(ms[-1], 1),
    }


if __name__ == "__main__":
    main()
