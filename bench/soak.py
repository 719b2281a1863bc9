"""Worker memory over a soak at a steady rate: RSS at the start and at the end.

    .venv/bin/python -m bench.soak --minutes 10 --rate 50

One `celery worker` (threads -c16) delivers through the fake Twilio (50 ms) while this
process stores and queues `--rate` notifications a second. The worker's resident
memory is read from /proc after a one-minute warm-up and at the end. Bounded by
--minutes; the worker is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.pipeline import RESULTS, ROOT, SID, TOKEN, _django_setup, _environment, _prepare_services


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=50)
    args = parser.parse_args()
    _prepare_services()
    from flashsend.fakes import FakeProviderServer

    with FakeProviderServer(account_sid=SID, auth_token=TOKEN, max_records=1000) as fake:
        fake.set_behaviour("twilio", delay_ms=50)
        env = _environment(fake.url)
        os.environ.update(env)
        _django_setup()
        from accounts.models import User
        from notifications.models import Notification
        from notifications.publishing import publish_many
        from tests.pipeline import purge_queues

        purge_queues()
        owner, _ = User.objects.get_or_create(email="bench@example.com")
        worker = subprocess.Popen(  # noqa: S603
            [
                str(ROOT / ".venv/bin/celery"),
                "-A",
                "flashsend",
                "worker",
                "-Q",
                "sms.medium",
                "--pool",
                "threads",
                "--concurrency",
                "16",
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
        )
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        deadline = started + args.minutes * 60
        first_id = None
        try:
            while time.monotonic() < deadline:
                tick = time.monotonic()
                rows = Notification.objects.bulk_create(
                    Notification(owner=owner, channel="sms", recipient="+14155552671", body="soak")
                    for _ in range(args.rate)
                )
                first_id = first_id or rows[0].pk
                publish_many((row.pk, row.queue_name) for row in rows)
                elapsed = time.monotonic() - started
                if int(elapsed) % 30 == 0:
                    samples.append((round(elapsed), round(_rss_mib(worker.pid), 1)))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        sent = Notification.objects.filter(id__gte=first_id or 0, status="sent").count()
        warm = [rss for at, rss in samples if at >= 60]
        result = {
            "minutes": args.minutes,
            "rate": args.rate,
            "sent": sent,
            "rss_mib_after_warmup": warm[0] if warm else None,
            "rss_mib_end": samples[-1][1] if samples else None,
            "samples": samples,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
