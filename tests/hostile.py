"""Broken and hostile files with image extensions, for decoder and ingest tests.

``make_hostile_files(folder)`` writes them all into ``folder`` (which must exist and be empty of these
names) and returns ``{file name: expected outcome}``: ``"error"`` when decoding must raise
:class:`clipindex.errors.ImageError`, ``"ok"`` when the file is a valid image despite looking odd (a PNG
named ``.webp``, a 1x1 image, a JPEG with a corrupt EXIF block...). Every entry is at the top level of
``folder``; some are not regular files (a FIFO, a folder, symlinks to ``/dev/zero`` and
``/dev/urandom``, a dangling and a self-referencing symlink): reading those naively blocks or never
ends, which is the point. ``NOT_REGULAR`` lists them: a walk must report them, never yield them.

Everything is generated from real encoders (Pillow) and real sample photos, then damaged byte by byte;
nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

#: entries that are not regular files (after following symlinks)
NOT_REGULAR: frozenset[str] = frozenset(
    {"folder.jpg", "fifo.png", "dev_zero.jpg", "dev_urandom.jpg", "dangling_link.jpg", "self_loop.jpg"}
)


def _sample_image(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A small real photo (astronaut from scikit-image when available, else a gradient)."""
    try:
        from photos import photo  # tests/ is on sys.path when pytest imports test modules

        return photo("astronaut").resize(size, Image.Resampling.BICUBIC)
    except (ImportError, KeyError, OSError):
        x = bytes((i * 7 + j * 3) % 256 for j in range(size[1]) for i in range(size[0]) for _ in range(3))
        return Image.frombytes("RGB", size, x)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes, *, ihdr_crc: int | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr, crc=ihdr_crc) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame size in a baseline JPEG's SOF0 segment."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _tiff(compression: int) -> bytes:
    """A 4x4 8-bit grey little-endian TIFF with the given Compression tag value."""
    width = height = 4
    pixels = bytes(range(0, 256, 16))
    entries = [
        (256, 3, 1, width),  # ImageWidth
        (257, 3, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, compression),  # Compression
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 3, 1, height),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = data_offset
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + pixels


def _jpeg_with_exif(image: Image.Image, exif_payload: bytes) -> bytes:
    """A valid JPEG whose APP1 Exif segment carries ``exif_payload`` (after ``Exif\\0\\0``)."""
    plain = _encode(image, "JPEG", quality=90)
    segment = b"Exif\x00\x00" + exif_payload
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    return plain[:2] + app1 + plain[2:]


def _symlink(target: str, link: Path) -> None:
    os.symlink(target, link)


def make_hostile_files(folder: Path) -> dict[str, str]:
    """Write the hostile corpus into ``folder``; return ``{name: "error" | "ok"}`` (see module doc)."""
    folder = Path(folder)
    photo = _sample_image()
    jpeg = _encode(photo, "JPEG", quality=90)
    png = _encode(photo, "PNG")
    gif = _encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    webp = _encode(photo, "WEBP", quality=80)
    tiff = _encode(photo, "TIFF")  # uncompressed
    expected: dict[str, str] = {}

    def write(name: str, data: bytes, outcome: str) -> None:
        (folder / name).write_bytes(data)
        expected[name] = outcome

    # --- not images at all
    write("zero_bytes.jpg", b"", "error")
    write("random_bytes.png", bytes((i * 131 + 17) % 251 for i in range(4096)), "error")
    write(
        "html_page.jpg",
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n",
        "error",
    )
    write("text_notes.png", "Shopping list:\n- milk\n- pâte\n".encode(), "error")
    write(
        "svg_drawing.png",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "error",
    )
    write("riff_wave.webp", b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + bytes(28), "error")
    write("soi_only.jpg", b"\xff\xd8", "error")

    # --- truncated real images
    write("truncated.jpg", jpeg[: len(jpeg) // 2], "error")
    write("truncated.png", png[: len(png) // 2], "error")
    write("truncated.gif", gif[: len(gif) // 2], "error")
    write("truncated.webp", webp[: len(webp) // 2], "error")
    write("truncated.tif", tiff[: len(tiff) // 2], "error")
    write("header_only.jpg", jpeg[: jpeg.index(b"\xff\xda")], "error")  # everything up to the scan

    # --- corrupt structure
    write("bad_crc.png", _png(4, 4, zlib.compress(bytes(4 * 13)), ihdr_crc=0x12345678), "error")
    write("bad_zlib.png", _png(4, 4, b"\x78\x9c" + b"\xde\xad\xbe\xef" * 8), "error")
    write("zero_size.png", _png(0, 0, zlib.compress(b"")), "error")
    write("no_frames.gif", b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0) + b";", "error")
    write("unsupported_compression.tif", _tiff(compression=60000), "error")
    bmp_header = b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<I", 999)  # bogus DIB size
    write("bad_header.bmp", bmp_header + bytes(56), "error")

    # --- decompression bombs: tiny files declaring huge images
    write("bomb_header.png", _png(100_000, 100_000, zlib.compress(bytes(1000))), "error")
    write("bomb_screen.gif", b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + gif[13:], "error")
    write("bomb_frame.jpg", _patch_jpeg_size(jpeg, 65_000, 65_000), "error")

    # --- not regular files (must be refused without blocking or reading forever)
    (folder / "folder.jpg").mkdir()
    expected["folder.jpg"] = "error"
    os.mkfifo(folder / "fifo.png")
    expected["fifo.png"] = "error"
    _symlink("/dev/zero", folder / "dev_zero.jpg")
    expected["dev_zero.jpg"] = "error"
    _symlink("/dev/urandom", folder / "dev_urandom.jpg")
    expected["dev_urandom.jpg"] = "error"
    _symlink("does-not-exist.jpg", folder / "dangling_link.jpg")
    expected["dangling_link.jpg"] = "error"
    _symlink("self_loop.jpg", folder / "self_loop.jpg")
    expected["self_loop.jpg"] = "error"

    # --- odd but valid: these must load
    write("one_pixel.png", _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok")
    write("one_pixel.jpg", _encode(Image.new("L", (1, 1), 77), "JPEG"), "ok")
    write("png_named.webp", png, "ok")
    write("jpeg_named.png", jpeg, "ok")
    write("gif_named.tiff", gif, "ok")
    write("UPPER_CASE.JPG", jpeg, "ok")
    # 1 x 60000: a plain shortest-edge resize would be 224 x 13,440,000 pixels (12 GB)
    write("strip_1x60000.png", _encode(Image.new("RGB", (1, 60_000), (30, 160, 60)), "PNG"), "ok")
    write("corrupt_exif.jpg", _jpeg_with_exif(photo, b"II*\x00\xff\xff\xff\x7f" + b"\x00garbage" * 4), "ok")
    write("exif_bad_orientation.jpg", _jpeg_with_exif(photo, _exif_orientation_payload(99)), "ok")
    # unreadable (mode 000): only refused when not root (root reads anything)
    write("unreadable.jpg", jpeg, "error" if os.geteuid() != 0 else "ok")
    (folder / "unreadable.jpg").chmod(0)
    return expected


def _exif_orientation_payload(orientation: int) -> bytes:
    """A minimal little-endian TIFF/EXIF block holding only an Orientation tag (0x0112)."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
