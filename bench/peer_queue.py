"""The django-post_office side's helper for `bench/peer.py`, run as its own process.

    DJANGO_SETTINGS_MODULE=bench.peer_settings PYTHONPATH=var/bench-peer:. \\
        python -m bench.peer_queue queue --n 2000

``migrate`` creates post_office's tables; ``queue`` empties them and queues N emails with
post_office's bulk API (``mail.send_many``: one ``bulk_create``); ``count`` prints the
emails per status as JSON. post_office is imported only here and in the
``send_queued_mail`` process, never by FlashSend or by `bench/peer.py` itself.
"""

from __future__ import annotations

import argparse
import json
import os

SENDER = "FlashSend <noreply@localhost>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["migrate", "queue", "count"])
    parser.add_argument("--n", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peer_settings")
    import django

    django.setup()
    if args.action == "migrate":
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    elif args.action == "queue":
        _queue(args.n)
    else:
        _count()


def _queue(n: int) -> None:
    from django.db import connection
    from post_office import mail  # type: ignore[import-not-found]

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE post_office_email RESTART IDENTITY CASCADE")
    # The same message FlashSend sends: one recipient, a subject, a short text body.
    mail.send_many(
        [
            {
                "sender": SENDER,
                "recipients": [f"peer{i}@example.com"],
                "subject": f"peer {i}",
                "message": f"bench {i}",
            }
            for i in range(n)
        ]
    )


def _count() -> None:
    from django.db.models import Count
    from post_office.models import Email  # type: ignore[import-not-found]

    counts = Email.objects.values_list("status").annotate(n=Count("id"))
    print(json.dumps({str(status): n for status, n in counts}))


if __name__ == "__main__":
    main()
