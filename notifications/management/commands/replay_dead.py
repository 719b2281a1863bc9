"""manage.py replay_dead: replay dead notifications from the command line."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from notifications.models import Channel
from notifications.replay import dead_matching, notification_replay


class Command(BaseCommand):
    help = (
        "Replay dead notifications: back to queued and through the pipeline again, paced, "
        "never sending one twice. Use --dry-run first to see how many would go."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--channel", choices=[c.value for c in Channel])
        parser.add_argument(
            "--since", help="only those that died at or after this date or ISO date-time (UTC)"
        )
        parser.add_argument("--provider", help="only those whose last provider was this one")
        parser.add_argument(
            "--rate", type=float, help="notifications per second (default: setting)"
        )
        parser.add_argument("--dry-run", action="store_true", help="count, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        rows = dead_matching(
            channel=options["channel"],
            since=_since(options["since"]),
            provider=options["provider"],
        )
        ids = list(rows.values_list("id", flat=True))
        if options["dry_run"]:
            self.stdout.write(f"Dry run: {len(ids)} dead notification(s) would be replayed.")
            return
        if not ids:
            self.stdout.write("No dead notifications match.")
            return
        if options["rate"] is not None and options["rate"] <= 0:
            raise CommandError("--rate must be positive.")
        report = notification_replay(
            notification_ids=ids,
            rate_per_second=options["rate"],
            progress=lambda done, total: self.stdout.write(f"  {done}/{total}"),
        )
        drained = (
            "no dead-letter queue on this broker"
            if report.dead_letters_drained is None
            else f"{report.dead_letters_drained} dead letter(s) acknowledged"
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Replayed {report.requeued} of {report.matched} (published {report.published}); "
                f"{drained}."
            )
        )


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--since {value!r} is not a date (2026-01-31) or ISO date-time.")
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
