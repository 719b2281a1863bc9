"""Open-loop HTTP/1.1 load at a fixed rate: latency without coordinated omission.

    .venv/bin/python -m bench.loadgen --url http://127.0.0.1:8765/bench/insert \\
        --rate 200 --seconds 15 --header "Content-Type: application/json" \\
        --body '{"channel": "sms", "to": "+14155552671", "body": "n {n}"}'

wrk drives a server as fast as it answers (a closed loop: a slow answer delays the
next request, so the waiting it causes is never measured). This sends request i at
``start + i / rate`` whatever the server does, and measures each latency from that
scheduled time to the end of the answer, so time spent queued behind a slow answer
counts. Stdlib only (asyncio streams), one process, meant to be run as its own
process next to the server. A connection is reused when the server keeps it open;
gunicorn's sync workers answer ``Connection: close``, so each request then has a
connection of its own.

At most ``--max-outstanding`` requests are in flight; a request due while that many
are outstanding is not sent and is counted as ``skipped`` (a server that far behind
has failed the run anyway). ``send_lag`` is how late the client itself opened
requests: if its p99 is more than a few ms, the client, not the server, was short of
CPU and the run says little. ``{n}`` in the body is replaced by the request's
sequence number and ``{run}`` by a per-run token, for unique bodies.

Prints one JSON summary on stdout; ``--records FILE`` also writes one JSON line per
request (scheduled wall-clock time, latency, status, answer body) for later slicing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    method: str = "POST"


@dataclass
class Record:
    n: int
    scheduled: float  # wall-clock seconds (time.time()) the request was due
    latency_ms: float | None  # scheduled -> whole answer read; None when no answer
    status: int | None
    error: str | None
    body: str = ""


@dataclass
class Result:
    rate: float
    seconds: float
    records: list[Record] = field(default_factory=list)
    skipped: int = 0
    send_lag_ms: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    cpu_seconds: float = 0.0


class _Pool:
    """Idle keep-alive connections; a connection the server closes is never pooled."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        while self.idle:
            reader, writer = self.idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(self.target.host, self.target.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return reader, writer, False

    def put(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.idle.append((reader, writer))

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class _Closed(Exception):
    """The server closed a reused connection before answering (retry on a new one)."""


def _request_bytes(target: Target, body: bytes) -> bytes:
    lines = [
        f"{target.method} {target.path} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
        *(f"{name}: {value}" for name, value in target.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one HTTP/1.1 answer."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed from exc
        raise
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError("answer head too long")
    lines = head.decode("latin-1").split("\r\n")
    version, code = lines[0].split(" ", 2)[:2]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    if "content-length" in headers:
        body = await reader.readexactly(min(int(headers["content-length"]), MAX_BODY_BYTES))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.read(MAX_BODY_BYTES)
        keep_alive = False
    return int(code), body, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    for _ in range(100_000):
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    raise ValueError("too many chunks")


async def _exchange(pool: _Pool, payload: bytes) -> tuple[int, bytes]:
    for _ in range(2):  # a reused connection may have been closed: one retry on a new one
        reader, writer, reused = await pool.get()
        try:
            writer.write(payload)
            await writer.drain()
            status, body, keep_alive = await _read_answer(reader)
        except (_Closed, ConnectionResetError, BrokenPipeError):
            writer.close()
            if reused:
                continue
            raise
        except BaseException:
            writer.close()
            raise
        if keep_alive:
            pool.put(reader, writer)
        else:
            writer.close()
        return status, body
    raise ConnectionError("connection closed before an answer")


async def _one(
    pool: _Pool,
    target: Target,
    record: Record,
    due: float,
    timeout: float,
    keep_body: int,
    loop: asyncio.AbstractEventLoop,
    token: str,
) -> None:
    payload = _request_bytes(
        target, target.body.replace("{n}", str(record.n)).replace("{run}", token).encode()
    )
    try:
        status, body = await asyncio.wait_for(_exchange(pool, payload), timeout)
    except TimeoutError:
        record.error = "timeout"
        return
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        record.error = type(exc).__name__
        return
    record.latency_ms = (loop.time() - due) * 1000
    record.status = status
    if keep_body:
        record.body = body[:keep_body].decode("utf-8", "replace")


async def run(
    target: Target,
    rate: float,
    seconds: float,
    *,
    max_outstanding: int = 512,
    timeout: float = 10.0,
    keep_body: int = 0,
) -> Result:
    """Send ``rate * seconds`` requests at a fixed rate; wait for their answers."""
    if rate <= 0 or seconds <= 0:
        raise ValueError("rate and seconds must be positive")
    loop = asyncio.get_running_loop()
    pool = _Pool(target)
    token = uuid.uuid4().hex[:8]
    total = int(rate * seconds)
    result = Result(rate=rate, seconds=seconds)
    outstanding: set[asyncio.Task[None]] = set()
    cpu_start = time.process_time()
    start = loop.time() + 0.05
    wall_start = time.time() + (start - loop.time())
    i = 0
    try:
        while i < total:  # bounded: i grows by at least one per pass once due
            now = loop.time()
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < total and start + i / rate <= now:
                due = start + i / rate
                scheduled = wall_start + (due - start)
                record = Record(i, scheduled, latency_ms=None, status=None, error=None)
                result.records.append(record)
                if len(outstanding) >= max_outstanding:
                    result.skipped += 1
                    record.error = "skipped"
                else:
                    result.send_lag_ms.append((now - due) * 1000)
                    task = loop.create_task(
                        _one(pool, target, record, due, timeout, keep_body, loop, token)
                    )
                    outstanding.add(task)
                    task.add_done_callback(outstanding.discard)
                i += 1
        if outstanding:
            await asyncio.wait(outstanding, timeout=timeout + 5)
    finally:
        for task in outstanding:
            task.cancel()
        pool.close()
    result.elapsed = loop.time() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted or not)."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return round(ordered[index], 2)


def summarise(records: list[Record], elapsed: float | None = None) -> dict[str, Any]:
    """Rates, latency percentiles (ms, from the scheduled time), status and error counts."""
    answered = [r for r in records if r.status is not None]
    latencies = [r.latency_ms for r in answered if r.latency_ms is not None]
    ok = [r for r in answered if 200 <= (r.status or 0) < 300]
    statuses = Counter(str(r.status) for r in answered)
    errors = Counter(r.error for r in records if r.error is not None)
    summary: dict[str, Any] = {
        "requests": len(records),
        "answered": len(answered),
        "ok": len(ok),
        "statuses": dict(sorted(statuses.items())),
        "errors": dict(sorted(errors.items())),
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "p999_ms": percentile(latencies, 0.999),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else None,
    }
    if elapsed:
        summary["achieved_rps"] = round(len(answered) / elapsed, 1)
    return summary


def report(result: Result) -> dict[str, Any]:
    summary = summarise(result.records, result.elapsed)
    return {
        "offered_rps": result.rate,
        "seconds": result.seconds,
        **summary,
        "skipped": result.skipped,
        "send_lag_p99_ms": percentile(result.send_lag_ms, 0.99),
        "send_lag_max_ms": round(max(result.send_lag_ms), 2) if result.send_lag_ms else None,
        "sent_late_over_10ms": sum(1 for lag in result.send_lag_ms if lag > 10),
        "client_cpu_share": round(result.cpu_seconds / result.elapsed, 3)
        if result.elapsed
        else None,
    }


def parse_target(url: str, headers: list[str], body: str, method: str = "POST") -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs with a host: {url}")
    pairs = []
    for header in headers:
        name, _, value = header.partition(":")
        pairs.append((name.strip(), value.strip()))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.hostname, parts.port or 80, path, tuple(pairs), body, method)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--header", action="append", default=[], help='"Name: value"')
    parser.add_argument("--body", default="", help="{n}: sequence number, {run}: run token")
    parser.add_argument("--max-outstanding", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--records", type=Path, help="write one JSON line per request here")
    parser.add_argument("--keep-body", type=int, default=0, help="answer bytes kept per record")
    args = parser.parse_args(argv)
    target = parse_target(args.url, args.header, args.body, args.method)
    gc.collect()
    gc.freeze()  # the client's own GC pauses would show up as send lag
    result = asyncio.run(
        run(
            target,
            args.rate,
            args.seconds,
            max_outstanding=args.max_outstanding,
            timeout=args.timeout,
            keep_body=args.keep_body,
        )
    )
    if args.records is not None:
        with args.records.open("w") as out:
            for record in result.records:
                out.write(json.dumps(record.__dict__) + "\n")
    json.dump(report(result), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
