"""`make bench`: the benchmark suite, quick or full, into JSON and docs/benchmarks.md.

    make bench              # quick: a few minutes
    make bench MODE=full    # longer runs, 20,000 notifications end to end

Each part runs as its own process (bench.pipeline, bench.ingest) and writes its JSON
under bench/results/; this collects them into one summary (median and spread of the
runs, each FlashSend figure as a ratio of its same-run baseline) and rewrites the
"Latest make bench" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- make-bench:start -->", "<!-- make-bench:end -->"

PLANS: dict[str, list[list[str]]] = {
    "quick": [
        [
            "bench.pipeline",
            "--n",
            "1000",
            "--pool",
            "threads",
            "--concurrency",
            "16",
            "--repeat",
            "3",
        ],
        ["bench.ingest", "--seconds", "5", "--repeat", "3"],
    ],
    "full": [
        [
            "bench.pipeline",
            "--n",
            "20000",
            "--pool",
            "threads",
            "--processes",
            "2",
            "--concurrency",
            "16",
            "--repeat",
            "3",
        ],
        ["bench.ingest", "--seconds", "20", "--repeat", "3"],
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(PLANS), default="quick")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    summaries = [_run(module) for module in PLANS[args.mode]]
    summary = {"mode": args.mode, "started": started, "machine": _machine(), "parts": summaries}
    path = ROOT / "bench" / "results" / f"summary-{args.mode}-{int(time.time())}.json"
    path.write_text(json.dumps(summary, indent=2))
    _write_doc(summary, " ".join(sys.argv[1:]) or "--mode quick")
    print(f"summary: {path.relative_to(ROOT)}; docs/benchmarks.md updated")


def _run(command: list[str]) -> dict[str, Any]:
    full = [sys.executable, "-m", *command]
    print("$", " ".join(["python", "-m", *command]), flush=True)
    output = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, check=True).stdout  # noqa: S603
    match = re.search(r"results: (\S+)", output)
    if match is None:
        raise RuntimeError(f"{command[0]} printed no results file:\n{output}")
    data = json.loads((ROOT / match.group(1)).read_text())
    return {"command": "python -m " + " ".join(command), **_digest(command[0], data)}


def _digest(module: str, data: dict[str, Any]) -> dict[str, Any]:
    if module == "bench.ingest":
        ours = [r["flashsend"]["rps"] for r in data["runs"]]
        base = [r["baseline"]["rps"] for r in data["runs"]]
        p99 = [r["flashsend"]["p99_ms"] for r in data["runs"]]
        name, unit = "ingest (POST /api/notify/send)", "req/s"
    else:
        ours = [r["per_second"] for r in data["runs"] if r["kind"] == "flashsend"]
        base = [r["per_second"] for r in data["runs"] if r["kind"] == "raw-celery"]
        p99 = [r["latency_p99_ms"] for r in data["runs"] if r["kind"] == "flashsend"]
        name, unit = "end-to-end delivery (fake Twilio, 50 ms)", "delivered/s"
    ratios = [o / b for o, b in zip(ours, base, strict=True)]
    return {
        "name": name,
        "unit": unit,
        "flashsend": _spread(ours),
        "baseline": _spread(base),
        "ratio": _spread(ratios),
        "p99_ms": _spread([p for p in p99 if p is not None]),
    }


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "runs": len(values),
    }


def _machine() -> dict[str, str]:
    import celery
    import django

    return {
        "python": platform.python_version(),
        "django": django.get_version(),
        "celery": celery.__version__,
        "cpus": str(__import__("os").cpu_count()),
        "platform": platform.platform(),
    }


def _write_doc(summary: dict[str, Any], arguments: str) -> None:
    machine = summary["machine"]
    lines = [
        START,
        f"## Latest `make bench` ({summary['mode']}, {summary['started']})",
        "",
        f"Python {machine['python']}, Django {machine['django']}, Celery {machine['celery']}, "
        f"{machine['cpus']} CPUs, {machine['platform']}. `python -m bench.run {arguments}`.",
        "",
        "| Figure | FlashSend (median, min-max) | Same-run baseline | Ratio | FlashSend p99 |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for part in summary["parts"]:
        ours, base, ratio = part["flashsend"], part["baseline"], part["ratio"]
        p99 = part["p99_ms"]
        lines.append(
            f"| {part['name']} | {ours['median']} {part['unit']} ({ours['min']}-{ours['max']}) "
            f"| {base['median']} ({base['min']}-{base['max']}) | {ratio['median']} "
            f"({ratio['min']}-{ratio['max']}) | {p99.get('median', '-')} ms |"
        )
    lines += ["", "Commands: " + "; ".join(f"`{p['command']}`" for p in summary["parts"]), END]
    block = "\n".join(lines)
    text = DOC.read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
