"""Ingest: POST /api/notify/send with an API key, against a bare DRF insert endpoint.

    .venv/bin/python -m bench.ingest --seconds 10 --connections 32 --repeat 3

Serves FlashSend with gunicorn as the README says to serve production (sync workers,
two per core) on 127.0.0.1. Each repeat has two phases, FlashSend and the baseline
back to back in each:

1. saturation: wrk (Debian's package) and a Lua POST script, ``--connections``
   connections for ``--seconds``: requests/s and wrk's p50/p99;
2. fixed rate: bench/loadgen.py (open loop, latency from each request's scheduled
   time) at ``--fixed-rate-fraction`` of that repeat's FlashSend wrk rate, for
   ``--fixed-seconds``, against FlashSend and then the baseline at the same rate;
   and FlashSend at the same fraction of the goal's rate (half the baseline's wrk
   rate), unless ``--no-goal-phase``.

The baseline is a bare DRF endpoint on the same server that inserts one row
(bench/urls.py). No Celery worker runs: the published tasks wait in RabbitMQ and are
purged afterwards. gunicorn settings come from the environment as in production
(``WEB_CONCURRENCY=8 python -m bench.ingest`` ...). Needs PostgreSQL, RabbitMQ and wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.pipeline import BROKER_URL, DATABASE_URL, RESULTS, ROOT, _prepare_services

PORT = 8765
BODY = '{"channel": "sms", "to": "+14155552671", "body": "Your code is 123456"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--fixed-rate-fraction",
        type=float,
        default=0.8,
        help="fixed-rate phase at this fraction of the repeat's FlashSend wrk rate (0: skip)",
    )
    parser.add_argument("--fixed-seconds", type=float, default=15.0)
    parser.add_argument(
        "--fixed-rate", type=float, help="fixed-rate phase at this many req/s instead"
    )
    parser.add_argument(
        "--keep-queues",
        dest="purge_between_phases",
        action="store_false",
        help="do not empty the queues before each fixed-rate phase. By default they are "
        "emptied: no worker consumes them here, and the 100,000 or so messages earlier "
        "phases leave would cost RabbitMQ CPU that a deployment, whose workers keep its "
        "queues short, never spends",
    )
    parser.add_argument(
        "--purge-between-phases",
        dest="purge_between_phases",
        action="store_true",
        help="(the default) empty the queues before each fixed-rate phase",
    )
    parser.add_argument(
        "--no-goal-phase",
        dest="goal_phase",
        action="store_false",
        help="skip FlashSend at the fraction of half the baseline's rate",
    )
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
        runs: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            ours = _wrk("/api/notify/send", {"X-API-Key": key}, args)
            base = _wrk("/bench/insert", {}, args)
            run: dict[str, Any] = {"flashsend": ours, "baseline": base}
            print(f"flashsend {_line(ours)} | baseline {_line(base)}", end="", flush=True)
            print(f" | ratio {ours['rps'] / base['rps']:.2f}", flush=True)
            if args.fixed_rate or args.fixed_rate_fraction > 0:
                run.update(_fixed_phases(key, ours["rps"], base["rps"], args, env))
            runs.append(run)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        _purge(env)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    server_env = {k: os.environ[k] for k in SERVER_KNOBS if k in os.environ}
    summary = _summary(runs)
    data = {"args": vars(args), "server_env": server_env, "runs": runs, "summary": summary}
    path.write_text(json.dumps(data, indent=2))
    _print_summary(summary)
    print(f"results: {path.relative_to(ROOT)}")


# Environment variables that change how the server runs, recorded with the results.
SERVER_KNOBS = (
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "DB_POOL",
    "DB_POOL_MIN_SIZE",
    "DB_POOL_MAX_SIZE",
    "API_PUBLISH_IN_BACKGROUND",
)


def _fixed_phases(
    key: str, ours_rps: float, base_rps: float, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """FlashSend then the baseline at one fixed rate; FlashSend at the goal's fraction."""
    headers = {"X-API-Key": key}
    if args.purge_between_phases:
        _purge(env)
    rate = args.fixed_rate or args.fixed_rate_fraction * ours_rps
    phases: dict[str, Any] = {
        "fixed_rate": {
            "fraction": None if args.fixed_rate else args.fixed_rate_fraction,
            "of": "fixed" if args.fixed_rate else "flashsend wrk rate",
            "rate": round(rate, 1),
            "flashsend": _loadgen("/api/notify/send", headers, rate, args),
            "baseline": _loadgen("/bench/insert", {}, rate, args),
        }
    }
    fixed = phases["fixed_rate"]
    print(
        f"  fixed {rate:.0f}/s: flashsend {_fixed_line(fixed['flashsend'])}"
        f" | baseline {_fixed_line(fixed['baseline'])}",
        flush=True,
    )
    if args.goal_phase and not args.fixed_rate:
        # The goal: >= 50 % of the baseline's rate, p99 < 50 ms at 80 % of that rate.
        goal = args.fixed_rate_fraction * 0.5 * base_rps
        if args.purge_between_phases:
            _purge(env)
        phases["fixed_rate_goal"] = {
            "fraction": args.fixed_rate_fraction,
            "of": "half the baseline wrk rate",
            "rate": round(goal, 1),
            "flashsend": _loadgen("/api/notify/send", headers, goal, args),
        }
        print(
            f"  goal {goal:.0f}/s: flashsend {_fixed_line(phases['fixed_rate_goal']['flashsend'])}",
            flush=True,
        )
    return phases


def _loadgen(
    path: str, headers: dict[str, str], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One fixed-rate phase by bench/loadgen.py in its own process."""
    time.sleep(2)  # let the previous phase's backlog and the published-mark flushers settle
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"http://127.0.0.1:{PORT}{path}",
        "--rate",
        f"{rate:.2f}",
        "--seconds",
        str(args.fixed_seconds),
        "--body",
        BODY,
        "--header",
        "Content-Type: application/json",
        *(arg for k, v in headers.items() for arg in ("--header", f"{k}: {v}")),
    ]
    output = subprocess.run(  # noqa: S603 - our own load generator on loopback
        command, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def _fixed_line(run: dict[str, Any]) -> str:
    bad = run["requests"] - run["ok"]
    return (
        f"p50 {run['p50_ms']} / p90 {run['p90_ms']} / p99 {run['p99_ms']} / "
        f"max {run['max_ms']} ms ({run['achieved_rps']}/s, {bad} not 2xx, "
        f"client lag p99 {run['send_lag_p99_ms']} ms)"
    )


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and min-max over the repeats of every figure worth comparing."""
    figures: dict[str, list[float]] = {
        "flashsend_rps": [r["flashsend"]["rps"] for r in runs],
        "baseline_rps": [r["baseline"]["rps"] for r in runs],
        "ratio": [r["flashsend"]["rps"] / r["baseline"]["rps"] for r in runs],
    }
    for phase, kinds in (
        ("fixed_rate", ("flashsend", "baseline")),
        ("fixed_rate_goal", ("flashsend",)),
    ):
        chosen = [r[phase] for r in runs if phase in r]
        if not chosen:
            continue
        figures[f"{phase}_rate"] = [p["rate"] for p in chosen]
        for kind in kinds:
            for stat in ("p50_ms", "p99_ms"):
                values = [p[kind][stat] for p in chosen if p[kind][stat] is not None]
                figures[f"{phase}_{kind}_{stat}"] = values
    return {
        name: {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }
        for name, values in figures.items()
        if values
    }


def _print_summary(summary: dict[str, Any]) -> None:
    for name, spread in summary.items():
        print(f"{name}: {spread['median']} ({spread['min']}-{spread['max']})")


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


def _wait_up(port: int = PORT) -> None:
    for _ in range(150):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1):
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
