"""Reading the time a notification is scheduled for.

Accepted: the seed's human form ``2025-02-20 18:30`` (24-hour, seconds optional) with an
optional ``UTC``/``GMT``/``Z`` or numeric offset (``+05:30``, ``-0800``), and full ISO 8601
(``2025-02-20T18:30:00+05:30``). A time written without a zone is read in the IANA
``timezone`` given with it, else UTC. Zone abbreviations other than UTC/GMT are refused:
IST alone is India, Ireland or Israel, and guessing would deliver at the wrong hour.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

FORMATS_HELP = (
    'Accepted: "2025-02-20 18:30" or "2025-02-20 18:30:45" (24-hour), optionally followed by '
    'UTC, GMT, Z or an offset such as +05:30; or ISO 8601 such as "2025-02-20T18:30:00Z". '
    "A time without a zone is read in `timezone` (an IANA name such as Asia/Kolkata), else UTC."
)

_HUMAN = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"\s*(?P<zone>Z|UTC|GMT|[+-]\d{2}:?\d{2}|[A-Za-z]{2,5})?$",
    re.IGNORECASE,
)


class ScheduleTimeError(ValueError):
    """The time cannot be understood or used; the message says why and what to send."""

    def __init__(self, message: str, *, field: str = "scheduleAt") -> None:
        super().__init__(message)
        self.field = field


def parse_schedule_time(value: str, *, zone_name: str | None) -> datetime:
    """The moment ``value`` names, as an aware UTC datetime."""
    zone = _zone(zone_name)
    text = value.strip()
    match = _HUMAN.match(text)
    if match is None:
        raise ScheduleTimeError(f"{value!r} is not a date and time. {FORMATS_HELP}")
    naive = _naive(match.group("date"), match.group("time"), value)
    written_zone = match.group("zone")
    if written_zone is not None:
        return naive.replace(tzinfo=_written_zone(written_zone)).astimezone(UTC)
    return _localize(naive, zone).astimezone(UTC)


def _zone(name: str | None) -> ZoneInfo | timezone:
    if name is None or name.strip() == "":
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleTimeError(
            f"{name!r} is not an IANA time zone name (e.g. Europe/Paris, Asia/Kolkata, UTC). "
            f"{FORMATS_HELP}",
            field="timezone",
        ) from None


def _naive(date_part: str, time_part: str, original: str) -> datetime:
    hours, _, rest = time_part.partition(":")
    normalised = f"{date_part}T{int(hours):02d}:{rest}"
    try:
        parsed = datetime.fromisoformat(normalised)
    except ValueError:
        raise ScheduleTimeError(
            f"{original!r} is not a valid date and time (check the day, month, hour and "
            f"minute). {FORMATS_HELP}"
        ) from None
    return parsed


def _written_zone(zone: str) -> timezone:
    upper = zone.upper()
    if upper in ("Z", "UTC", "GMT"):
        return UTC
    if upper[0] in "+-" and upper[1:].replace(":", "").isdigit():
        digits = upper[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59:
            raise ScheduleTimeError(f"{zone!r} is not a UTC offset. {FORMATS_HELP}")
        offset = timedelta(hours=hours, minutes=minutes)
        return timezone(offset if upper[0] == "+" else -offset)
    raise ScheduleTimeError(
        f"The zone abbreviation {zone!r} is ambiguous (IST, CST and others each name several "
        "zones). Send a UTC offset such as +05:30 in the time, or an IANA name such as "
        f"Asia/Kolkata in `timezone`. {FORMATS_HELP}"
    )


def _localize(naive: datetime, zone: ZoneInfo | timezone) -> datetime:
    """Attach ``zone``, refusing wall times that a DST change skips or repeats."""
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    round_trip = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != naive:
        raise ScheduleTimeError(
            f"{naive:%Y-%m-%d %H:%M} does not exist in {zone}: the clocks skip that hour "
            f"(daylight saving time). Send a time outside the gap, or with a UTC offset. "
            f"{FORMATS_HELP}"
        )
    raise ScheduleTimeError(
        f"{naive:%Y-%m-%d %H:%M} occurs twice in {zone} (the clocks go back). Send it with "
        f"a UTC offset to say which one, e.g. +01:00 or +02:00. {FORMATS_HELP}"
    )
