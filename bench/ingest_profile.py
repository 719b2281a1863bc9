"""Where the CPU of one `POST /api/notify/send` goes: N requests in one process.

    flock /tmp/flashsend-bench.lock .venv/bin/python -m bench.ingest_profile --n 400

Runs N requests through Django's WSGI handler (no network server) against the
``flashsend_bench`` database and vhost, alternating FlashSend's send endpoint and the
baseline (bench/urls.py: a bare DRF insert) in rounds, and prints the CPU time per
request of each (``time.process_time``: this process only; PostgreSQL's and
RabbitMQ's CPU is not counted) and their ratio. With ``--profile`` it then profiles
FlashSend's requests on CPU time and prints the stages named in STAGES and the
functions with the most cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from typing import Any

from bench.pipeline import BROKER_URL, DATABASE_URL, ROOT, _prepare_services

# (file, function) of each stage of a send request, as cProfile names them.
STAGES = {
    "authentication (API key)": ("apikeys/authentication.py", "authenticate"),
    "validation (SendInput)": ("rest_framework/serializers.py", "is_valid"),
    "insert": ("notifications/services.py", "notification_send"),
    "publish (on commit)": ("notifications/publishing.py", "publish_after_commit"),
    "middleware + DRF dispatch": ("rest_framework/views.py", "dispatch"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400, help="requests per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--compare-inline",
        action="store_true",
        help="also measure FlashSend publishing in the request (API_PUBLISH_IN_BACKGROUND=0)",
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    _prepare_services()
    os.environ.update(DATABASE_URL=DATABASE_URL, CELERY_BROKER_URL=BROKER_URL)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    send, insert = _clients()
    for _ in range(30):  # warm-up: connections, imports, caches
        send(), insert()
    from django.conf import settings

    ratios = []
    for round_ in range(1, args.rounds + 1):
        ours, base = _cpu_per_request(send, args.n), _cpu_per_request(insert, args.n)
        ratios.append(base / ours)
        line = (
            f"round {round_}: FlashSend {ours * 1000:.2f} ms CPU/request, "
            f"baseline {base * 1000:.2f} ms, ratio {base / ours:.2f}"
        )
        if args.compare_inline:
            settings.API_PUBLISH_IN_BACKGROUND = False
            inline = _cpu_per_request(send, args.n)
            settings.API_PUBLISH_IN_BACKGROUND = True
            line += f"; publishing in the request {inline * 1000:.2f} ms"
        print(line)
    print(f"median ratio (baseline CPU / FlashSend CPU): {statistics.median(ratios):.2f}")
    if args.profile:
        _profile(send, args.n, args.top)


def _clients() -> tuple[Any, Any]:
    from django.test import Client

    from accounts.models import User
    from apikeys.services import apikey_create

    user, _ = User.objects.get_or_create(email="bench@example.com")
    _, key = apikey_create(user=user, name="bench-profile")
    client = Client(HTTP_HOST="127.0.0.1")
    payload = json.dumps({"channel": "sms", "to": "+14155550100", "body": "bench"})

    def send() -> None:
        response = client.post(
            "/api/notify/send", payload, content_type="application/json", HTTP_X_API_KEY=key
        )
        if response.status_code != 202:
            raise RuntimeError(f"send answered {response.status_code}: {response.content!r}")

    def insert() -> None:
        response = client.post("/bench/insert", payload, content_type="application/json")
        if response.status_code != 202:
            raise RuntimeError(f"insert answered {response.status_code}: {response.content!r}")

    return send, insert


def _cpu_per_request(call: Any, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) / n


def _profile(call: Any, n: int, top: int) -> None:
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for _ in range(n):
        call()
    profile.disable()
    stats = pstats.Stats(profile)
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\nprofiled CPU per request: {total / n * 1000:.2f} ms (profiler overhead included)")
    for label, (filename, function) in STAGES.items():
        cumulative = sum(
            entry[3]
            for (file, _, name), entry in stats.stats.items()  # type: ignore[attr-defined]
            if file.endswith(filename) and name == function
        )
        print(f"  {label:<28} {cumulative / n * 1000:6.2f} ms  {cumulative / total:5.0%}")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
