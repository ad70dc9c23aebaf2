"""One reader of durations for every setting that takes one (check ages, database lookbacks,
schedule SLAs): ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"``, ``"2 hours"``, ``"250ms"``."""

from __future__ import annotations

import re

UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "week", "weeks"), 7 * 86400),
):
    for _name in _names:
        UNITS[_name] = _seconds
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?", re.IGNORECASE)


def duration_seconds(text: str) -> float | None:
    """Seconds in ``text``, or None when it is not a duration (callers raise their own error).

    >>> duration_seconds("1h30m")
    5400.0
    """
    pos, total, parts = 0, 0.0, 0
    text = text.strip()
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match or match.group(2).lower() not in UNITS:
            return None
        total += float(match.group(1)) * UNITS[match.group(2).lower()]
        parts += 1
        pos = match.end()
    return total if parts else None
