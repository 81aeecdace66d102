"""Camera RAW files (CR2, NEF, ARW, DNG, RAF, ORF) through ``rawpy`` (LibRaw), the optional extra ``clipindex[raw]``.

What :mod:`clipindex.images.decode` uses for a file with a RAW extension (:data:`RAW_EXTENSIONS`):

* the embedded preview (JPEG, or a bitmap) when its short side is at least the model's crop size and its shape
  is the sensor's (a letterboxed thumbnail is not used): no demosaic at all, the camera's own rendering;
* otherwise a half-size demosaic, ``postprocess(half_size=True, use_camera_wb=True, output_bps=8)``: a quarter of
  the pixels (each 2x2 Bayer block becomes one pixel), far more than CLIP's 224 pixels need.

Orientation: LibRaw's demosaic applies the RAW's flip itself; a preview is turned by its own EXIF orientation when
that says to turn, else by the RAW's flip (:func:`flip_to_orientation`). Without ``rawpy`` every RAW file fails with
:data:`MISSING_EXTRA` as its reason. Nothing here imports ``rawpy`` at module import.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image

from clipindex.errors import ImageError
from clipindex.images.formats import RAW_EXTENSIONS, has_image_extension

__all__ = [
    "MISSING_EXTRA",
    "RawFile",
    "exif_of_raw",
    "flip_to_orientation",
    "is_raw_name",
    "looks_raw",
    "open_raw",
    "raw_available",
    "raw_exif",
]

#: the reason every RAW file fails with when ``rawpy`` is not installed
MISSING_EXTRA = "a camera RAW file: decoding it needs the optional rawpy (LibRaw): pip install 'clipindex[raw]'"

#: a preview whose long/short side ratio differs from the sensor's by more than this is not the whole picture
_ASPECT_TOLERANCE = 0.03

#: LibRaw's ``sizes.flip`` -> the EXIF orientation that means the same turn (dcraw: bit 4 transpose, 2 flip rows,
#: 1 flip columns; it reads EXIF orientation through ``"50132467"[orientation & 7]``)
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def is_raw_name(name: str) -> bool:
    """``name`` has a camera RAW extension (:data:`RAW_EXTENSIONS`), case-insensitively."""
    return has_image_extension(name, RAW_EXTENSIONS)


#: IFD0's NewSubfileType value of a reduced-resolution image: what a TIFF-based RAW (NEF, ARW, PEF) shows first
_REDUCED = 1
_DNG_VERSION = 50706


def looks_raw(data: bytes | memoryview) -> bool:
    """Whether bytes that came without a file name (an upload) are a camera RAW file: the magic of RAF, ORF,
    RW2, CR3 or CR2, or a TIFF whose IFD0 carries ``DNGVersion`` or is a camera's reduced-resolution preview
    (``Make`` set, ``NewSubfileType`` 1: NEF, ARW, PEF). A plain TIFF is not; nothing is decoded."""
    head = bytes(data[:16])
    if head.startswith(b"FUJIFILMCCD-RAW") or head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00"):
        return True
    if head[4:12] == b"ftypcrx ":
        return True
    if head[:4] not in (b"II*\x00", b"MM\x00*"):
        return False
    if head[8:10] == b"CR":
        return True
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():  # Pillow warns of a damaged header; it only means "not a RAW file"
            warnings.simplefilter("ignore")
            exif.load(bytes(data))
    except Exception:  # a damaged header: not ours to judge
        return False
    return _DNG_VERSION in exif or (bool(exif.get(0x010F)) and exif.get(0x00FE) == _REDUCED)


def raw_available() -> bool:
    """Whether ``rawpy`` (the ``clipindex[raw]`` extra) can be imported."""
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def _rawpy(name: str) -> Any:
    try:
        import rawpy
    except ImportError as exc:
        raise ImageError(name, MISSING_EXTRA) from exc
    return rawpy


def flip_to_orientation(flip: int) -> int:
    """LibRaw's ``sizes.flip`` as an EXIF orientation (1: as stored)."""
    return _FLIP_TO_ORIENTATION.get(int(flip) & 7, 1)


def _exif_orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # a corrupt EXIF block is no orientation
        return None
    return None if value is None else int(value)


@dataclass
class RawFile:
    """One opened RAW file: its full-resolution size as stored (before any turn) and the turn that shows it."""

    raw: Any  # rawpy.RawPy
    name: str
    width: int
    height: int
    #: EXIF-style orientation of the RAW (from LibRaw's flip)
    orientation: int

    @property
    def display_size(self) -> tuple[int, int]:
        """``(width, height)`` as displayed, full resolution."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)

    def preview(self, min_side: int) -> tuple[Image.Image, int] | None:
        """The embedded preview, and the EXIF orientation to apply after the preview's own (the RAW's flip when
        the preview's EXIF does not turn it; else 1), when its short side is at least ``min_side`` and its shape is
        the sensor's; else ``None``. A JPEG preview is opened, not yet loaded."""
        rawpy = _rawpy(self.name)
        try:
            thumb = self.raw.extract_thumb()
        except (rawpy.LibRawError, ValueError):  # no preview, or one in a format rawpy does not hand out
            return None
        image: Image.Image
        if thumb.format == rawpy.ThumbFormat.JPEG:
            image = Image.open(io.BytesIO(bytes(thumb.data)))
            own = _exif_orientation(image)
        elif thumb.format == rawpy.ThumbFormat.BITMAP:
            image = Image.fromarray(np.ascontiguousarray(thumb.data, dtype=np.uint8))
            own = None
        else:
            return None
        if min(image.size) < min_side or not _same_shape(image.size, (self.width, self.height)):
            return None
        # the preview's own EXIF wins when it says to turn (the decode applies it); else the RAW's flip (most
        # previews carry no turn)
        return image, self.orientation if own is None or own == 1 else 1

    def demosaic(self) -> Image.Image:
        """The half-size demosaic (camera white balance, 8 bits), already turned by LibRaw."""
        rgb = self.raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        return Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")


def _same_shape(a: tuple[int, int], b: tuple[int, int]) -> bool:
    ra = max(a) / min(a)
    rb = max(b) / max(1, min(b))
    return abs(ra - rb) <= _ASPECT_TOLERANCE * rb


@contextlib.contextmanager
def open_raw(source: IO[bytes] | str, name: str) -> Iterator[RawFile]:
    """Open a RAW file (an open binary file, read in full, or a path LibRaw reads itself) without decoding its
    pixels. Raises :class:`ImageError` when ``rawpy`` is missing (:data:`MISSING_EXTRA`) or LibRaw cannot read it."""
    rawpy = _rawpy(name)
    raw = rawpy.RawPy()
    try:
        try:
            if isinstance(source, str):
                raw.open_file(source)
            else:
                raw.open_buffer(source)
        except rawpy.LibRawError as exc:
            raise ImageError(name, f"not a RAW file LibRaw can read ({type(exc).__name__}: {exc})") from exc
        sizes = raw.sizes
        yield RawFile(raw, name, int(sizes.width), int(sizes.height), flip_to_orientation(sizes.flip))
    finally:
        raw.close()


_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 36867


def _dated(exif: Image.Exif) -> bool:
    try:
        return _DATE_TIME_ORIGINAL in exif.get_ifd(_EXIF_IFD) or _DATE_TIME_ORIGINAL in exif
    except Exception:  # a corrupt EXIF IFD
        return False


def exif_of_raw(data: bytes | None, raw: RawFile | None) -> Image.Exif:
    """The EXIF of a camera RAW file, for its date and camera (``DateTimeOriginal`` and ``OffsetTimeOriginal`` in
    the EXIF IFD, ``Make``, ``Model``): from its TIFF header (``data``, the file's bytes) when it has one (CR2, NEF,
    ARW, DNG) and that holds a ``DateTimeOriginal``, else from the embedded JPEG preview's (RAF, ORF; from the
    opened ``raw``). An empty ``Exif`` when neither can be read: never raises."""
    header = Image.Exif()
    # a TIFF-based RAW's IFD0 is an EXIF block as is (Pillow cannot open a CFA image itself); not one (RAF), or a
    # damaged header: no header EXIF
    with contextlib.suppress(Exception), warnings.catch_warnings():  # a damaged header's warning: no EXIF
        warnings.simplefilter("ignore")
        if data is not None and data[:4] in (b"II*\x00", b"MM\x00*"):
            header.load(data)
    if _dated(header) or raw is None:
        return header
    try:
        import rawpy

        thumb = raw.raw.extract_thumb()
        if thumb.format != rawpy.ThumbFormat.JPEG:
            return header
        with Image.open(io.BytesIO(bytes(thumb.data))) as preview:
            exif = preview.getexif()
    except Exception:  # no preview, or LibRaw cannot read it: what the header had
        return header
    return exif if _dated(exif) or not len(header) else header


def raw_exif(path: str | os.PathLike[str]) -> Image.Exif:
    """:func:`exif_of_raw` of the file at ``path`` (its preview only with ``rawpy``); never raises."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fp:
            data = fp.read()
    except OSError:
        return Image.Exif()
    header = exif_of_raw(data, None)
    if _dated(header) or not raw_available():
        return header
    try:
        with open_raw(io.BytesIO(data), name) as raw:
            return exif_of_raw(data, raw)
    except Exception:  # LibRaw cannot read the file: what the header had
        return header
