"""Peer benchmark: FlashSend's email pipeline against django-post_office.

    flock /tmp/flashsend-bench.lock .venv/bin/python -m bench.peer --n 2000 --slow-n 500 --repeat 3

The same N emails go to the same local SMTP sink (`flashsend.fakes.FakeSmtpServer`, in
this process), once answering at once and once after 50 ms per message as a real relay
does (N = ``--n`` and ``--slow-n``; the same N for every system against one sink):

- **flashsend**: N email notifications stored in ``flashsend_bench`` and published to
  ``email.medium``, drained by ``celery -A flashsend worker --pool threads`` sending
  through its SMTP provider (default ``--workers``: one process per core of 32 threads
  each, the README's setting for email workers; ``1x16`` = one process of 16 threads);
- **post_office-defaults**: N emails queued with ``post_office.mail.send_many`` in their
  own database (``flashsend_peer``), sent by ``manage.py send_queued_mail`` with no options
  and post_office's default settings (BATCH_SIZE 100, THREADS_PER_PROCESS 5, 1 process);
- **post_office-tuned**: the same with the best ``--processes`` / THREADS_PER_PROCESS /
  BATCH_SIZE of a small sweep run first against each sink (all sweep runs are kept in the
  results as ``post_office-sweep``), or ``--tuned P,T,B``;
- **raw-celery** (`bench/peer_rawsmtp.py`): a bare Celery task per email on threads -c16
  sending over an SMTP connection kept per thread, as a same-run ceiling.

Each rate is measured at the sink: (messages - 1) / (last - first arrival); the wall time
of the sending command (post_office: process start to exit; FlashSend: worker start to the
Nth message at the sink) is kept beside it. django-post_office is not a FlashSend
dependency: it is installed on first run with ``pip --no-deps --target var/bench-peer``
and is on PYTHONPATH of the post_office processes only. Needs PostgreSQL and RabbitMQ
(databases ``flashsend_bench`` and ``flashsend_peer`` and vhost ``flashsend_peer`` are
created). Every process started here is stopped by its pid; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bench.pipeline import DATABASE_URL, PG_ADMIN, RESULTS, ROOT, _environment, _rate, _stop
from bench.sink import SINK_KINDS

if TYPE_CHECKING:
    from bench.sink import Sink

PO_VERSION = "3.12.0"
PO_REQUIREMENTS = (f"django-post_office=={PO_VERSION}", "nh3==0.3.7")  # nh3: its sanitizer
PEER_DIR = ROOT / "var" / "bench-peer"
PEER_DATABASE_URL = os.environ.get(
    "BENCH_PEER_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flashsend_peer"
)
# A vhost of its own, so that another benchmark purging flashsend_bench's queues
# never empties this one's backlog.
PEER_BROKER_URL = os.environ.get(
    "BENCH_PEER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/flashsend_peer"
)
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CELERY = str(ROOT / ".venv" / "bin" / "celery")
GOALS = {0: 2.0, 50: 5.0}  # FlashSend / post_office-defaults, by sink delay (issue text)

# (processes, THREADS_PER_PROCESS, BATCH_SIZE) tried for post_office-tuned, by sink delay.
SWEEPS: dict[int, list[tuple[int, int, int]]] = {
    0: [(p, t, b) for p in (1, 2) for t in (5, 16) for b in (100, 1000)],
    50: [(p, t, b) for p in (1, 2) for t in (16, 50) for b in (100, 500)],
}


@dataclass
class Run:
    sink_delay_ms: int
    system: str
    n: int
    seconds: float  # first to last arrival at the sink
    per_second: float  # (n - 1) / seconds
    wall_seconds: float
    # CPU of the sending processes (user + system, start-up and shut-down included).
    cpu_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    repeat: int | None = None


def main() -> None:
    args = _arguments()
    _install_post_office()
    _prepare_services()
    from bench.sink import open_sink

    runs: list[Run] = []
    tuned: dict[int, tuple[int, int, int]] = {}
    with open_sink(args.sink, pipelining=not args.no_pipelining, parse=args.parse) as sink:
        env = _environment("http://127.0.0.1:9")  # SMS is not used here
        env.update(CELERY_BROKER_URL=PEER_BROKER_URL, SMS_PROVIDERS="twilio", **sink_settings(sink))
        os.environ.update(env)
        _django_setup()
        _peer_helper("migrate", sink)
        for delay in args.sinks:
            n = args.n if delay == 0 else args.slow_n
            sink_delay = 0 if delay == 0 else args.delay_ms
            tuned[delay] = args.tuned or _sweep(sink, sink_delay, n, runs)
            for repeat in range(args.repeat):
                batch = _round(sink, sink_delay, n, env, tuned[delay], args)
                for run in batch:
                    run.repeat = repeat
                runs.extend(batch)
    summary = _summary(runs)
    for line in summary["lines"]:
        print(line, flush=True)
    _save(runs, tuned, summary, args)


def _round(
    sink: Sink,
    delay_ms: int,
    n: int,
    env: dict[str, str],
    tuned: tuple[int, int, int],
    args: argparse.Namespace,
) -> list[Run]:
    """Every system once against this sink, back to back: the ratios are taken within it.

    A round that fails (the machine is shared: a fault-injection test may stop the
    broker) is run again whole, up to twice, so that no ratio mixes two rounds.
    """
    for attempt in range(1, 4):
        try:
            batch = [
                *(
                    _flashsend_run(sink, delay_ms, n, env, spec, args.timeout)
                    for spec in args.workers
                ),
                _post_office_run(sink, delay_ms, n, None, "post_office-defaults"),
                _post_office_run(sink, delay_ms, n, tuned, "post_office-tuned"),
            ]
            if not args.no_raw:
                batch.append(_raw_run(sink, delay_ms, n, env, args.timeout))
        except Exception as exc:
            if attempt == 3:
                raise
            print(f"round failed ({type(exc).__name__}: {exc}); again in 15 s", flush=True)
            time.sleep(15)
        else:
            return batch
    raise AssertionError("unreachable")  # the loop returns or raises


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="emails per run, instant sink")
    parser.add_argument("--slow-n", type=int, default=500, help="emails per run, slow sink")
    parser.add_argument("--delay-ms", type=int, default=50, help="the slow sink's delay")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per sink")
    parser.add_argument(
        "--sinks",
        type=int,
        nargs="+",
        default=[0, 50],
        choices=[0, 50],
        help="0 = the instant sink, 50 = the slow one (--delay-ms)",
    )
    parser.add_argument(
        "--workers",
        type=_worker_spec,
        nargs="+",
        # One worker process per core, 64 threads each: the README's setting for email
        # workers (their threads mostly wait on the relay's replies); then 128.
        default=[(max(1, os.cpu_count() or 1), 64), (max(1, os.cpu_count() or 1), 128)],
        help="FlashSend worker settings as PROCESSESxTHREADS, e.g. 1x16 2x32 (default: one "
        "process per core x 64, then x 128)",
    )
    parser.add_argument(
        "--tuned",
        type=_tuned_spec,
        default=None,
        help="post_office-tuned as PROCESSES,THREADS,BATCH (skips the sweep)",
    )
    parser.add_argument("--no-raw", action="store_true", help="skip the bare Celery task")
    parser.add_argument(
        "--sink",
        choices=SINK_KINDS,
        default="aiosmtpd",
        help="aiosmtpd: flashsend.fakes' relay, 0.6-0.8 ms of CPU per message (post_office's "
        "figures against it match the issue's); lean: bench/sink.py, about 0.25 ms",
    )
    parser.add_argument(
        "--no-pipelining",
        action="store_true",
        help="the sink does not advertise PIPELINING (RFC 2920), which real relays do",
    )
    parser.add_argument(
        "--parse",
        action="store_true",
        help="the aiosmtpd sink parses each message (about 1 ms of CPU each, in this process)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    return parser.parse_args()


def _worker_spec(text: str) -> tuple[int, int]:
    processes, threads = text.lower().split("x")
    return int(processes), int(threads)


def _tuned_spec(text: str) -> tuple[int, int, int]:
    processes, threads, batch = (int(part) for part in text.split(","))
    return processes, threads, batch


def _install_post_office() -> None:
    """pip install --no-deps --target var/bench-peer, once: never into the venv."""
    marker = PEER_DIR / f"django_post_office-{PO_VERSION}.dist-info"
    if marker.is_dir() and (PEER_DIR / "nh3").is_dir():
        return
    print(f"installing {', '.join(PO_REQUIREMENTS)} into {PEER_DIR.relative_to(ROOT)}")
    pip = [PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target"]
    subprocess.run(  # noqa: S603 - fixed arguments
        [*pip, str(PEER_DIR), *PO_REQUIREMENTS],
        check=True,
        timeout=300,
    )


def sink_settings(sink: Sink) -> dict[str, str]:
    """FlashSend's email settings for sending to the benchmark's SMTP sink."""
    return {
        "EMAIL_PROVIDERS": "smtp",
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        "SMTP_SECURITY": "none",
        "SMTP_EMAIL": "",
        "SMTP_FROM": "FlashSend <noreply@localhost>",
    }


def _prepare_services() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for url in (DATABASE_URL, PEER_DATABASE_URL):
            name = url.rsplit("/", 1)[1]
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not exists.fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    vhost = PEER_BROKER_URL.rsplit("/", 1)[1]
    subprocess.run(  # noqa: S603 - fixed arguments to the local broker's CLI
        ["rabbitmqctl", "--quiet", "add_vhost", vhost],  # noqa: S607
        capture_output=True,
        check=False,
        timeout=60,
    )
    subprocess.run(  # noqa: S603
        ["rabbitmqctl", "--quiet", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],  # noqa: S607
        capture_output=True,
        check=True,
        timeout=60,
    )


def _django_setup() -> None:
    """FlashSend's Django in this process, on flashsend_bench and the peer vhost."""
    os.environ["DATABASE_URL"] = DATABASE_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flashsend.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flashsend_setup", verbosity=0)


# --- post_office ----------------------------------------------------------------------


def _peer_env(sink: Sink, setting: tuple[int, int, int] | None) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PEER_", "DJANGO_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="bench.peer_settings",
        PYTHONPATH=os.pathsep.join([str(PEER_DIR), str(ROOT)]),
        PEER_DATABASE_URL=PEER_DATABASE_URL,
        PEER_SMTP_PORT=str(sink.port),
    )
    if setting is not None:
        env["PEER_THREADS_PER_PROCESS"] = str(setting[1])
        env["PEER_BATCH_SIZE"] = str(setting[2])
    return env


def _peer_helper(action: str, sink: Sink, n: int = 0) -> str:
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [PYTHON, "-m", "bench.peer_queue", action, "--n", str(n)],
        cwd=ROOT,
        env=_peer_env(sink, None),
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout


def _post_office_run(
    sink: Sink,
    delay_ms: int,
    n: int,
    setting: tuple[int, int, int] | None,
    system: str,
) -> Run:
    """Queue N emails, then time `send_queued_mail` until it exits."""
    _peer_helper("queue", sink, n)
    sink.reset()
    sink.set_behaviour(delay_ms=delay_ms)
    command = [PYTHON, "-m", "django", "send_queued_mail"]
    settings: dict[str, Any] = {"processes": 1, "threads_per_process": 5, "batch_size": 100}
    if setting is not None:
        command += ["--processes", str(setting[0])]
        settings = {
            "processes": setting[0],
            "threads_per_process": setting[1],
            "batch_size": setting[2],
        }
    # Its own lock file, so a stale /tmp/post_office.lock can never make it skip the run.
    command += ["--lockfile", str(PEER_DIR / "send_queued_mail")]
    log = (PEER_DIR / "send_queued_mail.log").open("ab")
    cpu, started = _children_cpu(), time.monotonic()
    # A session of its own: with --processes its pool's children are in the same
    # process group, which is killed by the leader's pid if the run overstays.
    # Its INFO lines (post_office logs every batch) go to var/bench-peer, not the report.
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        command,
        cwd=ROOT,
        env=_peer_env(sink, setting),
        start_new_session=True,
        stdout=log,
        stderr=log,
    )
    try:
        process.wait(timeout=max(120.0, n / 10))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
    wall = time.monotonic() - started
    cpu = _children_cpu() - cpu
    if process.returncode != 0:
        raise RuntimeError(f"send_queued_mail exited with {process.returncode}; see {log.name}")
    messages = sink.wait_for_messages(n, timeout=10)
    if len(messages) != n:
        counts = _peer_helper("count", sink)
        raise RuntimeError(f"post_office: {len(messages)} of {n} at the sink; statuses {counts}")
    seconds, rate = _rate([m.received_at for m in messages])
    return _measured(delay_ms, system, n, (seconds, rate, wall, cpu), settings)


def _sweep(sink: Sink, delay_ms: int, n: int, runs: list[Run]) -> tuple[int, int, int]:
    """Try each post_office setting once against this sink; the fastest at the sink wins."""
    best: tuple[float, tuple[int, int, int]] | None = None
    for setting in SWEEPS[0 if delay_ms == 0 else 50]:
        run = _post_office_run(sink, delay_ms, n, setting, "post_office-sweep")
        runs.append(run)
        if best is None or run.per_second > best[0]:
            best = (run.per_second, setting)
    assert best is not None  # noqa: S101 - the sweeps are never empty
    print(f"sink {delay_ms} ms: post_office-tuned = processes, threads, batch {best[1]}")
    return best[1]


# --- FlashSend and the bare task ------------------------------------------------------


def email_rows(n: int) -> list[Any]:
    """N stored email notifications, the same for every FlashSend email benchmark."""
    from accounts.models import User
    from notifications.models import Notification

    owner, _ = User.objects.get_or_create(email="bench@example.com")
    return Notification.objects.bulk_create(
        Notification(
            owner=owner,
            channel="email",
            recipient=f"peer{i}@example.com",
            subject=f"peer {i}",
            body=f"bench {i}",
        )
        for i in range(n)
    )


def _flashsend_run(
    sink: Sink,
    delay_ms: int,
    n: int,
    env: dict[str, str],
    spec: tuple[int, int],
    timeout: float,
) -> Run:
    from notifications.publishing import publish_many
    from tests.pipeline import purge_queues

    purge_queues()
    rows = email_rows(n)
    published = publish_many((row.pk, row.queue_name) for row in rows)
    if len(published) != n:
        raise RuntimeError(f"published {len(published)} of {n}")
    command = [CELERY, "-A", "flashsend", "worker", "-Q", "email.medium"]
    seconds, rate, wall, cpu = _drain(command, env, spec, sink, delay_ms, n, timeout)
    settings = {"processes": spec[0], "pool": "threads", "concurrency": spec[1]}
    return _measured(delay_ms, "flashsend", n, (seconds, rate, wall, cpu), settings)


def _raw_run(sink: Sink, delay_ms: int, n: int, env: dict[str, str], timeout: float) -> Run:
    from bench.peer_rawsmtp import QUEUE, app, raw_send

    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        channel.queue_declare(QUEUE, durable=True, auto_delete=False)
        channel.queue_purge(QUEUE)
    with app.producer_or_acquire() as producer:
        for i in range(n):
            raw_send.apply_async((i,), producer=producer)
    command = [CELERY, "-A", "bench.peer_rawsmtp", "worker", "-Q", QUEUE]
    seconds, rate, wall, cpu = _drain(command, env, (1, 16), sink, delay_ms, n, timeout)
    settings = {"processes": 1, "pool": "threads", "concurrency": 16}
    return _measured(delay_ms, "raw-celery", n, (seconds, rate, wall, cpu), settings)


def _drain(
    command: list[str],
    env: dict[str, str],
    spec: tuple[int, int],
    sink: Sink,
    delay_ms: int,
    n: int,
    timeout: float,
) -> tuple[float, float, float, float]:
    """Start the workers on the queued backlog, wait for all N at the sink, stop them."""
    sink.reset()
    sink.set_behaviour(delay_ms=delay_ms)
    processes, threads = spec
    cpu, started = _children_cpu(), time.monotonic()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(processes):
            full = [
                *command,
                "--pool",
                "threads",
                "--concurrency",
                str(threads),
                "--loglevel",
                "WARNING",
                "--hostname",
                f"peer{index}@%h",
            ]
            # The worker's banner goes to stdout; warnings and errors still reach stderr.
            worker = subprocess.Popen(  # noqa: S603 - fixed arguments
                full, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL
            )
            workers.append(worker)
        messages = sink.wait_for_messages(n, timeout=timeout)
        wall = time.monotonic() - started
    finally:
        _stop(workers)
    cpu = _children_cpu() - cpu
    if len(messages) < n:
        raise RuntimeError(f"{command[2]}: {len(messages)} of {n} at the sink in {timeout} s")
    seconds, rate = _rate([m.received_at for m in messages])
    return seconds, rate, wall, cpu


def _children_cpu() -> float:
    """User + system CPU of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- report ---------------------------------------------------------------------------


def _measured(
    delay_ms: int,
    system: str,
    n: int,
    figures: tuple[float, float, float, float],
    settings: dict[str, Any],
) -> Run:
    seconds, rate, wall, cpu = figures
    run = Run(delay_ms, system, n, round(seconds, 3), round(rate, 1), round(wall, 3), round(cpu, 2))
    run.settings = settings
    _print(run)
    return run


def _print(run: Run) -> None:
    settings = ", ".join(f"{key} {value}" for key, value in run.settings.items())
    print(
        f"sink {run.sink_delay_ms} ms, {run.system} ({settings}): {run.n} in {run.seconds:.2f} s "
        f"at the sink = {run.per_second:.0f}/s (wall {run.wall_seconds:.2f} s, "
        f"CPU {run.cpu_seconds / run.n * 1000:.1f} ms per email)",
        flush=True,
    )


def _key(run: Run) -> str:
    if run.system == "flashsend":
        return f"flashsend {run.settings['processes']}x{run.settings['concurrency']}"
    return run.system


def _summary(runs: list[Run]) -> dict[str, Any]:
    """Median and min-max per sink and system; FlashSend's ratios to post_office."""
    figures: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for delay in sorted({r.sink_delay_ms for r in runs}):
        measured = [r for r in runs if r.sink_delay_ms == delay and r.repeat is not None]
        by_key: dict[str, list[float]] = {}
        for run in measured:
            by_key.setdefault(_key(run), []).append(run.per_second)
        table: dict[str, dict[str, Any]] = {
            key: {
                "median": round(statistics.median(rates), 1),
                "min": min(rates),
                "max": max(rates),
                "runs": rates,
            }
            for key, rates in by_key.items()
        }
        goal = GOALS[0 if delay == 0 else 50]
        for key in [k for k in table if k.startswith("flashsend")]:
            for peer in ("post_office-defaults", "post_office-tuned", "raw-celery"):
                if peer not in table:
                    continue
                pairs = _pair_ratios(measured, key, peer)
                ratio = round(table[key]["median"] / table[peer]["median"], 2)
                table[key][f"ratio_to_{peer}"] = {
                    "of_medians": ratio,
                    "per_round": pairs,
                    **({"goal": goal, "met": ratio >= goal} if peer.endswith("defaults") else {}),
                }
                lines.append(
                    f"sink {delay} ms: {key} {table[key]['median']:.0f}/s / {peer} "
                    f"{table[peer]['median']:.0f}/s = {ratio:.2f}"
                    + (
                        f" (goal >= {goal:g}: {'met' if ratio >= goal else 'missed'})"
                        if peer.endswith("defaults")
                        else ""
                    )
                )
        figures[str(delay)] = table
    return {"figures": figures, "lines": lines}


def _pair_ratios(runs: list[Run], key: str, peer: str) -> list[float]:
    ratios = []
    for repeat in sorted({r.repeat for r in runs if r.repeat is not None}):
        ours = [r.per_second for r in runs if r.repeat == repeat and _key(r) == key]
        theirs = [r.per_second for r in runs if r.repeat == repeat and _key(r) == peer]
        if ours and theirs:
            ratios.append(round(ours[0] / theirs[0], 2))
    return ratios


def _save(
    runs: list[Run],
    tuned: dict[int, tuple[int, int, int]],
    summary: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"peer-{stamp}.json"
    document = {
        "args": {**vars(args), "sinks": args.sinks, "delay_ms": args.delay_ms},
        "post_office_version": PO_VERSION,
        "tuned": {
            str(delay): {"processes": p, "threads_per_process": t, "batch_size": b}
            for delay, (p, t, b) in tuned.items()
        },
        "summary": summary["figures"],
        "runs": [asdict(r) for r in runs],
    }
    path.write_text(json.dumps(document, indent=2))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
