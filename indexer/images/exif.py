"""When and with what a photo was taken, from the EXIF block of an image Pillow has opened (its header only).

:func:`read_photo_facts` never raises: an absent, unreadable or nonsensical field is simply absent.

* ``taken_at``: DateTimeOriginal (Exif IFD 0x9003) as ISO 8601; with OffsetTimeOriginal (0x9011) when that is a
  valid ``±HH:MM``, the ISO text carries the offset, else it is naive local time. A date Python's ``datetime``
  rejects (``0000:00:00 00:00:00``, month 13, garbage) counts as absent.
* ``make`` / ``model`` (IFD0 0x010F, 0x0110): stripped of NULs and whitespace; empty counts as absent.
* ``gps``: ``(lat, lon)`` in decimal degrees from the GPS IFD (0x8825), when both are complete and in range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["PhotoFacts", "facts_of_exif", "read_photo_facts"]

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011
_MAKE = 0x010F
_MODEL = 0x0110
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class PhotoFacts:
    """What the EXIF block says; every field ``None`` when it does not say it."""

    taken_at: datetime | None = None
    make: str | None = None
    model: str | None = None
    gps: tuple[float, float] | None = None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\x00", "").strip()
    return cleaned or None


def _taken_at(exif_ifd: Any) -> datetime | None:
    raw = _text(exif_ifd.get(_DATETIME_ORIGINAL))
    if raw is None:
        return None
    try:
        taken = datetime.strptime(raw[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    offset = _text(exif_ifd.get(_OFFSET_TIME_ORIGINAL))
    found = _OFFSET.match(offset) if offset else None
    if found:
        hours, minutes = int(found.group(2)), int(found.group(3))
        if hours <= 14 and minutes < 60:
            delta = timedelta(hours=hours, minutes=minutes)
            taken = taken.replace(tzinfo=timezone(-delta if found.group(1) == "-" else delta))
    return taken


def _degrees(value: Any, ref: Any, negative: str) -> float | None:
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60.0 + s / 3600.0
    if _text(ref) == negative:
        degrees = -degrees
    return degrees


def _gps(exif: Image.Exif) -> tuple[float, float] | None:
    ifd = exif.get_ifd(_GPS_IFD)
    if not ifd:
        return None
    lat = _degrees(ifd.get(2), ifd.get(1), "S")
    lon = _degrees(ifd.get(4), ifd.get(3), "W")
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return round(lat, 7), round(lon, 7)


def read_photo_facts(image: Image.Image, *, gps: bool = False) -> PhotoFacts:
    """The EXIF facts of an opened image (reads only the header's EXIF block); GPS only when ``gps``."""
    try:
        exif = image.getexif()
    except Exception:  # a corrupt EXIF block costs only its facts
        return PhotoFacts()
    return facts_of_exif(exif, gps=gps)


def facts_of_exif(exif: Image.Exif, *, gps: bool = False) -> PhotoFacts:
    """The facts an EXIF block holds (a camera RAW's, say); GPS only when ``gps``."""
    facts: dict[str, Any] = {}
    for name, reader in (
        ("make", lambda: _text(exif.get(_MAKE))),
        ("model", lambda: _text(exif.get(_MODEL))),
        # the EXIF IFD's, else IFD0's, where TIFF/EP (some camera RAW files) puts it
        ("taken_at", lambda: _taken_at(exif.get_ifd(_EXIF_IFD)) or _taken_at(exif)),
        ("gps", lambda: _gps(exif) if gps else None),
    ):
        try:
            facts[name] = reader()
        except Exception:  # hostile input: one broken field costs only that field
            facts[name] = None
    return PhotoFacts(**facts)
