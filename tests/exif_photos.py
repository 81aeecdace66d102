"""Photos with EXIF dates, offsets and cameras, written by Pillow: one recipe for the tests that need them."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

from PIL import Image

MTIME_C = datetime(2015, 6, 1, 12, 0, tzinfo=timezone.utc).timestamp()
MTIME_D = datetime(2016, 7, 1, 12, 0, tzinfo=timezone.utc).timestamp()
MTIME_E = datetime(2017, 8, 1, 12, 0, tzinfo=timezone.utc).timestamp()


def _rational(value: float) -> Fraction:
    return Fraction(value).limit_denominator(10_000)


def write_jpeg(
    path: Path,
    image: Image.Image,
    *,
    date: str | None = None,
    offset: str | None = None,
    make: str | None = None,
    model: str | None = None,
    gps: tuple[float, float] | None = None,
    mtime: float | None = None,
) -> None:
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if date is not None or offset is not None:
        ifd = exif.get_ifd(0x8769)
        if date is not None:
            ifd[0x9003] = date
        if offset is not None:
            ifd[0x9011] = offset
    if gps is not None:
        lat, lon = gps
        gps_ifd = exif.get_ifd(0x8825)
        gps_ifd[1] = "N" if lat >= 0 else "S"
        gps_ifd[2] = (_rational(abs(lat)), Fraction(0), Fraction(0))
        gps_ifd[3] = "E" if lon >= 0 else "W"
        gps_ifd[4] = (_rational(abs(lon)), Fraction(0), Fraction(0))
    image.convert("RGB").save(path, "JPEG", exif=exif.tobytes() if len(exif) or date or gps else b"")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def make_photos(folder: Path, photos: dict[str, Any]) -> None:
    folder.mkdir()
    write_jpeg(
        folder / "a.jpg",
        photos["astronaut"],
        date="2021:05:06 10:00:00",
        offset="+02:00",
        make="Canon",
        model="Canon EOS R5",
        gps=(48.8584, -2.2945),
    )
    write_jpeg(
        folder / "b.jpg",
        photos["chelsea"],
        date="2019:01:02 03:04:05",
        make="NIKON CORPORATION\x00",
        model="NIKON D750 ",
    )
    write_jpeg(folder / "c.jpg", photos["coffee"], mtime=MTIME_C)  # no EXIF at all
    write_jpeg(folder / "d.jpg", photos["rocket"], date="0000:00:00 00:00:00", mtime=MTIME_D)  # broken date
    write_jpeg(
        folder / "e.jpg", photos["china"], date="garbage\x00", offset="+99:99", make="  Canon\x00", mtime=MTIME_E
    )
