"""The payload keys of dates and cameras, and dates as ``search --after/--before`` take them (light: the CLI parses
them before choosing where to search)."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["CAMERA_KEY", "DATED_KEY", "DATE_FORMATS", "TAKEN_TS_KEY", "parse_when"]

#: payload key saying where ``taken_at`` came from (``"exif"`` or ``"mtime"``); a point without it was written
#: before ingest recorded dates and cameras, and the next ingest fills those fields in from a header read
DATED_KEY = "taken_at_source"
#: payload key of ``taken_at`` as epoch seconds (float, range-indexed); a naive EXIF time is read as UTC
TAKEN_TS_KEY = "taken_ts"
#: payload key of the lowercase camera make, model and every run of consecutive words of them (keyword-indexed;
#: ``search --camera``)
CAMERA_KEY = "camera_lc"

#: the forms ``--after``/``--before`` take (and :func:`parse_when`)
DATE_FORMATS = "YYYY, YYYY-MM, YYYY-MM-DD or an ISO 8601 date-time (YYYY-MM-DDTHH:MM[:SS][+HH:MM])"


def parse_when(text: str) -> float:
    """The epoch seconds of the start of a date given as :data:`DATE_FORMATS` (no offset: UTC). Raises
    ValueError naming the formats for anything else."""
    value = text.strip()
    try:
        if len(value) == 4 and value.isdigit():
            moment = datetime(int(value), 1, 1)
        elif len(value) == 7 and value[4] == "-":
            moment = datetime.strptime(value, "%Y-%m")
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a date; give {DATE_FORMATS}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
