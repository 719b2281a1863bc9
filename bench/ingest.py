"""Ingest: POST /api/notify/send with an API key, against a bare DRF insert endpoint.

    .venv/bin/python -m bench.ingest --seconds 10 --connections 32 --repeat 3

Serves FlashSend with gunicorn as the README says to serve production (sync workers,
two per core) on 127.0.0.1, and drives it with wrk (Debian's package) and a Lua POST
script. The baseline is a bare DRF endpoint on the same server that inserts one row
(bench/urls.py). No Celery worker runs: the published tasks wait in RabbitMQ and are
purged afterwards. Needs PostgreSQL, RabbitMQ and wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.pipeline import BROKER_URL, DATABASE_URL, RESULTS, ROOT, _prepare_services

PORT = 8765
BODY = '{"channel": "sms", "to": "+14155552671", "body": "Your code is 123456"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    _prepare_services()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATABASE_URL": DATABASE_URL,
        "CELERY_BROKER_URL": BROKER_URL,
        "FLASHSEND_BIND": f"127.0.0.1:{PORT}",
        "WEB_ACCESS_LOG": "0",
        "LOG_LEVEL": "WARNING",
    }
    key = _setup(env)
    server = subprocess.Popen(  # noqa: S603
        [str(ROOT / ".venv/bin/gunicorn"), "flashsend.wsgi", "--config", "deploy/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
    )
    try:
        _wait_up()
        runs = []
        for _ in range(args.repeat):
            ours = _wrk("/api/notify/send", {"X-API-Key": key}, args)
            base = _wrk("/bench/insert", {}, args)
            runs.append({"flashsend": ours, "baseline": base})
            print(f"flashsend {_line(ours)} | baseline {_line(base)}", end="", flush=True)
            print(f" | ratio {ours['rps'] / base['rps']:.2f}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        _purge(env)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


def _line(run: dict[str, float]) -> str:
    return f"{run['rps']:.0f} req/s (p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms)"


def _setup(env: dict[str, str]) -> str:
    script = (
        "from django.core.management import call_command; call_command('migrate', verbosity=0); "
        "call_command('flashsend_setup', verbosity=0); "
        "from accounts.models import User; from apikeys.services import apikey_create; "
        "u, _ = User.objects.get_or_create(email='bench@example.com'); "
        "print(apikey_create(user=u, name='bench')[1])"
    )
    out = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _wait_up() -> None:
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/ping", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not start")


def _wrk(path: str, headers: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = '{BODY}'",
        'wrk.headers["Content-Type"] = "application/json"',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    command = [
        "wrk",
        "-t2",
        f"-c{args.connections}",
        f"-d{args.seconds}s",
        "--latency",
        "-s",
        script.name,
        f"http://127.0.0.1:{PORT}{path}",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603
    Path(script.name).unlink()
    if "Non-2xx" in output:
        raise RuntimeError(f"non-2xx answers from {path}:\n{output}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": _percentile(output, "50%"),
        "p99_ms": _percentile(output, "99%"),
    }


def _percentile(output: str, label: str) -> float:
    match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)


def _purge(env: dict[str, str]) -> None:
    script = "from tests.pipeline import purge_queues; purge_queues()"
    subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "flashsend.settings"},
        check=False,
    )


if __name__ == "__main__":
    main()
