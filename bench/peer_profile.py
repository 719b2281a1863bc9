"""Where FlashSend's time per email goes: N serial deliveries under cProfile.

    .venv/bin/python -m bench.peer_profile --n 500

Stores N email notifications in ``flashsend_bench`` and calls
``notification_deliver`` for each, one after the other in this process, against an
instant fake SMTP sink (also in this process, on its own thread). Prints the wall and
CPU time per email and the functions with the most cumulative time, grouped into the
claim, the SMTP send and the recording of the verdict. No broker, no worker: this is
the task body alone, one email at a time (the path of pools the delivery engine does not
drive); a thread-pool worker claims and records in groups instead.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from typing import Any

from bench.pipeline import DATABASE_URL, ROOT

# (file, function) of each stage of one delivery, as cProfile names them.
STAGES = {
    "claim (UPDATE ... RETURNING)": ("notifications/lifecycle.py", "claim"),
    "SMTP send (the provider)": ("notifications/providers/email.py", "send"),
    "record attempts + verdict": ("notifications/delivery.py", "record_verdict"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    from bench.peer import sink_settings
    from bench.sink import open_sink

    with open_sink("aiosmtpd") as sink:  # as in bench/peer.py
        os.environ.update(DATABASE_URL=DATABASE_URL, LOG_LEVEL="WARNING", **sink_settings(sink))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flashsend.settings")
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from bench.peer import email_rows
        from notifications.delivery import Verdict, notification_deliver

        rows = email_rows(2 * args.n + 20)
        for row in rows[:20]:  # warm-up: connections, imports, caches
            notification_deliver(notification_id=row.pk)
        # First without the profiler (its own overhead doubles the time), then with it.
        cpu, wall = time.process_time(), time.perf_counter()
        verdicts = [
            notification_deliver(notification_id=r.pk).verdict for r in rows[20 : 20 + args.n]
        ]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sent = sum(v is Verdict.SENT for v in verdicts)
        print(
            f"{sent} of {args.n} sent; per email: {wall / args.n * 1000:.2f} ms wall, "
            f"{cpu / args.n * 1000:.2f} ms CPU (this process, the sink's thread included)"
        )
        profile = cProfile.Profile()
        profile.enable()
        for row in rows[20 + args.n :]:
            notification_deliver(notification_id=row.pk)
        profile.disable()
        print("under cProfile (times inflated by the profiler; the shares are what count):")
        stats = pstats.Stats(profile)
        entries: Any = stats.stats  # type: ignore[attr-defined]
        for label, (path, function) in STAGES.items():
            for (filename, _, name), (_, _, _, cumulative, _) in entries.items():
                if filename.endswith(path) and name == function:
                    print(f"  {label}: {cumulative / args.n * 1000:.2f} ms per email")
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
