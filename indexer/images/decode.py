"""Decode image files safely into 8-bit RGB ``PIL`` images: what ingest, search and classify read pixels with.

Promises, per file (:func:`load_image`, :func:`decode_file`, :func:`load_image_bytes`):

* only a non-empty regular file is read, opened without blocking (no FIFO, device, socket or folder);
* an image declaring more than ``max_pixels`` pixels is refused before any pixel is decoded
  (:class:`~clipindex.errors.ImageTooLargeError`; ``None``: :data:`~clipindex.settings.DEFAULT_MAX_PIXELS`, ``0``:
  no limit); one declaring no pixels is refused;
* a truncated or corrupt file raises :class:`~clipindex.errors.ImageError` (never padded with grey); so does any
  decoder failure; the first frame of an animation or multi-page file is used;
* EXIF orientation is applied like ``ImageOps.exif_transpose`` (an unreadable EXIF block is ignored);
* :func:`to_rgb` follows transformers' ``convert_to_rgb``: transparency composited onto white, other modes
  converted; high-depth grey (16-bit, 32-bit, float) is scaled to 8 bits rather than clipped;
* a camera RAW file (by its extension: CR2, NEF, ARW, DNG, RAF, ORF) is decoded by ``rawpy`` (LibRaw), the
  ``clipindex[raw]`` extra: its embedded preview when that is large enough, else a half-size demosaic
  (:mod:`clipindex.images.raw`); without the extra it raises :class:`~clipindex.errors.ImageError` naming it;
* ``draft`` (JPEG only, :data:`~clipindex.settings.DEFAULT_DRAFT`): a DCT-scaled decode keeping both sides
  >= :data:`DRAFT_OVERSAMPLE` times the model's shortest edge, resized straight to the size preprocessing
  would resize to; ``draft=False`` is bit-exact with transformers.

:func:`decode_file` reads a file once: the header is checked first, then the bytes are hashed (sha256) and the
same bytes decoded. docs/design.md has the reasons and the measurements.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

from clipindex.errors import ImageError, ImageTooLargeError
from clipindex.images.config import CLIP_DEFAULT, DecodeSettings, PreprocessConfig, resolve_draft
from clipindex.images.crop_resize import resample_filter, resize_size
from clipindex.images.exif import PhotoFacts, facts_of_exif, read_photo_facts
from clipindex.images.formats import file_kind, register_optional_plugins
from clipindex.images.raw import MISSING_EXTRA, exif_of_raw, is_raw_name, looks_raw, open_raw, raw_available
from clipindex.settings import DEFAULT_MAX_PIXELS

__all__ = [
    "DRAFT_OVERSAMPLE",
    "IN_MEMORY_LIMIT",
    "DecodedFile",
    "apply_exif_orientation",
    "decode_file",
    "load_image",
    "load_image_bytes",
    "prepare_decoded_image",
    "resolve_max_pixels",
    "to_rgb",
]

#: Draft mode keeps the decoded short side >= this many times the model's ``shortest_edge``, so the exact resize
#: that follows still downsamples by at least this factor (docs/design.md: the choice of 1.5 and what it costs).
DRAFT_OVERSAMPLE: float = 1.5

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH = _SIXTEEN_BIT | {"I", "F"}
_DRAFTABLE = frozenset({"JPEG", "MPO"})


def _raw_min_side(config: PreprocessConfig | None) -> int:
    """The short side a RAW file's preview needs to be used instead of a demosaic: the model's crop size."""
    config = CLIP_DEFAULT if config is None else config
    return max(config.shortest_edge, config.crop_height, config.crop_width)


def _draft_target(config: PreprocessConfig | None, draft: bool | None) -> PreprocessConfig | None:
    """The model settings a draft decode resizes for (``None``: no draft); by default OpenAI's."""
    if not resolve_draft(draft):
        return None
    return CLIP_DEFAULT if config is None else config


def resolve_max_pixels(max_pixels: int | None) -> int:
    """The pixel limit in force: ``None`` -> :data:`DEFAULT_MAX_PIXELS`; ``0`` (or less) -> ``0``, no limit.

    ``None`` deliberately means *the default*, never *unlimited*: an option left unset must not turn
    the decompression-bomb guard off.
    """
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    return max(0, int(max_pixels))


def _allow_pil_limit(limit: int) -> None:
    """Make sure Pillow's global bomb check never refuses (or warns about) an image we accept.

    Only ever raises Pillow's limit; our own check in :func:`load_image` is the one that applies.
    """
    current = Image.MAX_IMAGE_PIXELS
    if limit == 0:
        Image.MAX_IMAGE_PIXELS = None
    elif current is not None and limit > current:
        Image.MAX_IMAGE_PIXELS = limit


def _too_large(name: str, width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    pixels = width * height
    return ImageTooLargeError(
        name,
        f"image is {width}x{height} = {pixels:,} pixels, over the limit of {max_pixels:,} pixels "
        f"(a guard against decompression bombs); if the file is genuine, raise it with "
        f"max_pixels={pixels} (--max-pixels {pixels} on the command line)",
    )


def _pil_bomb(name: str, exc: Image.DecompressionBombError, limit: int) -> ImageTooLargeError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    needed = found.group(1) if found else "N"
    shown = f"{limit:,}" if limit else f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,}"
    return ImageTooLargeError(
        name,
        f"image declares {pixels}, over the limit of {shown} pixels (a guard against decompression "
        f"bombs); if the file is genuine, raise it with max_pixels={needed} (--max-pixels {needed} on the command "
        "line)",
    )


def _open_regular(name: str) -> IO[bytes]:
    """Open ``name`` for reading, refusing (without blocking) anything but a non-empty regular file."""
    flags = os.O_RDONLY
    for extra in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC"):  # POSIX only; never block on a FIFO
        flags |= getattr(os, extra, 0)
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        raise ImageError(name, f"cannot open: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(name, f"not a regular file ({file_kind(st.st_mode)})")
        if st.st_size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value)
    except Exception:  # a corrupt EXIF block must not cost the image
        return 1


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip ``image`` as its EXIF orientation says (same pixels as ``ImageOps.exif_transpose``)."""
    method = _TRANSPOSE.get(_exif_orientation(image))
    return image if method is None else image.transpose(method)


def _decode_reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read (unknown format, or a corrupt header)"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    return f"corrupt or unreadable image ({type(exc).__name__}: {text})"


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    draft: bool | None = None,
    config: PreprocessConfig | None = None,
) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB ``PIL.Image`` (see the module doc for what it promises).

    ``max_pixels``: refuse images declaring more pixels; ``None``: :data:`DEFAULT_MAX_PIXELS`,
    ``0``: no limit. ``draft``: ``None`` means :data:`DEFAULT_DRAFT`.
    ``draft``: JPEG only; decode at 1/2, 1/4 or 1/8 scale (see the module doc) and return the image
    already resized to ``config``'s resize size (default :data:`~clipindex.images.config.CLIP_DEFAULT`), so that
    :func:`preprocess` only crops. Without draft, or when the JPEG is too small to be scaled down,
    the full-size image is returned and ``config`` is not used.
    Raises :class:`~clipindex.errors.ImageError` (or its subclass
    :class:`~clipindex.errors.ImageTooLargeError`) for anything that is not a decodable image.
    """
    name = os.fspath(path)
    raw = _raw_min_side(config) if is_raw_name(name) else None
    with _open_regular(name) as fp:
        draft_config = _draft_target(config, draft)
        image = _decode_guarded(fp, name, resolve_max_pixels(max_pixels), draft_config, raw=raw).image
    assert image is not None
    return image


def load_image_bytes(
    data: bytes | bytearray | memoryview,
    *,
    name: str = "<bytes>",
    max_pixels: int | None = None,
    draft: bool | None = None,
    config: PreprocessConfig | None = None,
) -> Image.Image:
    """:func:`load_image` for an image held in memory (the bytes of a file): the same decoding, limits, draft
    rule and EXIF orientation, so the same bytes give the same pixels as the file would. ``name`` is what an
    :class:`~clipindex.errors.ImageError` names."""
    view = memoryview(data)
    if view.nbytes == 0:
        raise ImageError(name, "empty (0 bytes)")
    draft_config = _draft_target(config, draft)
    # BytesIO copies a memoryview/bytearray once; bytes are shared
    source = io.BytesIO(data if isinstance(data, bytes) else view.tobytes())
    limit = resolve_max_pixels(max_pixels)
    named = is_raw_name(name)
    if named or (raw_available() and looks_raw(view)):  # a RAW upload has no name: its bytes say so
        try:
            image = _decode_guarded(source, name, limit, draft_config, raw=_raw_min_side(config)).image
        except ImageTooLargeError:
            raise
        except ImageError:
            if named:
                raise
            image = None  # LibRaw could not read it after all: a TIFF Pillow may read
        if image is not None:
            return image
        source.seek(0)
    image = _decode_guarded(source, name, limit, draft_config).image
    assert image is not None
    return image


def prepare_decoded_image(image: Image.Image, *, name: str = "<image>", max_pixels: int | None = None) -> Image.Image:
    """An image already decoded by the caller (a PIL image) -> 8-bit RGB, with the checks and corrections
    :func:`load_image` applies after decoding: the pixel limit, EXIF orientation (when the image still carries the
    tag; ``ImageOps.exif_transpose`` removes it) and :func:`to_rgb`. Draft decoding cannot apply: the pixels are
    decoded already. A lazily opened image (``Image.open`` without ``load()``) is loaded here."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"image has no pixels ({width}x{height})")
    limit = resolve_max_pixels(max_pixels)
    if limit and width * height > limit:
        raise _too_large(name, width, height, limit)
    try:
        image.load()
    except Exception as exc:  # a lazily opened file that turns out corrupt
        raise ImageError(name, _decode_reason(exc)) from exc
    method = _TRANSPOSE.get(_exif_orientation(image))
    if method is not None:
        image = image.transpose(method)
    return to_rgb(image, name=name)


def _decode_guarded(
    fp: IO[bytes] | None,
    name: str,
    limit: int,
    draft_config: PreprocessConfig | None,
    *,
    pixels: bool = True,
    raw: int | None = None,
) -> _Decoded:
    """:func:`_decode` with every failure turned into :class:`ImageError` (``limit`` 0: none). ``raw``: the file is a
    camera RAW (read from ``fp``, or LibRaw reads ``name`` itself when ``fp`` is ``None``), and this is the short
    side its preview needs."""
    register_optional_plugins()
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped it: truncated files would decode half grey
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    _allow_pil_limit(limit)
    try:
        if raw is not None:
            return _decode_raw(fp, name, limit, draft_config, raw, pixels=pixels)
        assert fp is not None
        return _decode(fp, name, limit, draft_config, pixels=pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check (a frame, or a lower global)
        raise _pil_bomb(name, exc, limit) from exc
    except Exception as exc:  # the decoders are fed hostile input: any failure is this image's
        raise ImageError(name, _decode_reason(exc)) from exc


#: files up to this size are read into memory once (hash and decode the same bytes); larger ones are
#: hashed while streaming, then decoded from the same open file
IN_MEMORY_LIMIT = 256 * 1024 * 1024


@dataclass
class DecodedFile:
    """What :func:`decode_file` read: content hash, header facts, and the image unless not wanted.

    ``width``/``height`` are the full-resolution size as displayed (after EXIF orientation), also in
    draft mode; ``format`` is Pillow's name for the format (``"JPEG"``, ``"PNG"``...); ``size`` the
    number of bytes hashed. ``image`` is the RGB image :func:`load_image` would return, or ``None``
    when ``decode_pixels`` declined (the header was still checked). It is mutable so that callers
    can drop the bitmap early. ``facts``: the header's EXIF date, camera and GPS
    (:func:`~clipindex.images.exif.read_photo_facts`), read in both cases.
    """

    path: str
    size: int
    sha256: str
    width: int
    height: int
    format: str
    image: Image.Image | None
    facts: PhotoFacts = field(default_factory=PhotoFacts)


def decode_file(
    path: str | os.PathLike[str],
    settings: DecodeSettings | None = None,
    *,
    decode_pixels: Callable[[str], bool] | None = None,
) -> DecodedFile:
    """Read ``path`` once: sha256 of its bytes, header checks, then (unless ``decode_pixels(sha256)``
    is false) decode those same bytes like :func:`load_image` with ``settings`` (draft, max_pixels, config: a
    :class:`~clipindex.images.preprocess.Preprocessor`; by default OpenAI's config and the default limits).
    Raises :class:`ImageError` like
    :func:`load_image`, also when only the header is read (not an image, too large...).
    """
    name = os.fspath(path)
    draft_config = _draft_target(settings.config, settings.draft) if settings else _draft_target(None, None)
    max_pixels = resolve_max_pixels(settings.max_pixels if settings else None)
    raw = _raw_min_side(settings.config if settings else None) if is_raw_name(name) else None
    if raw is not None and not raw_available():  # before reading a byte: the same reason for every RAW file
        raise ImageError(name, MISSING_EXTRA)
    with _open_regular(name) as fp:
        # The header first (Pillow reads only what it needs): a file that is no image, or one declaring too
        # many pixels, fails in milliseconds instead of being read and hashed in full (a 10 GB file named .jpg).
        # LibRaw reads a RAW file in full to parse it: its header is checked with the decode below.
        if raw is None:
            _decode_guarded(fp, name, max_pixels, None, pixels=False)
        try:
            fp.seek(0)
            size = os.fstat(fp.fileno()).st_size
            if size <= IN_MEMORY_LIMIT:
                data = fp.read()
                digest = hashlib.sha256(data).hexdigest()
                size = len(data)
            else:
                hasher = hashlib.sha256()
                size = 0
                while chunk := fp.read(1 << 20):
                    hasher.update(chunk)
                    size += len(chunk)
                digest = hasher.hexdigest()
        except OSError as exc:
            raise ImageError(name, f"read error: {exc.strerror or exc}") from exc
        wanted = decode_pixels is None or decode_pixels(digest)
        if size <= IN_MEMORY_LIMIT:
            source: IO[bytes] | None = io.BytesIO(data)
        elif raw is not None:
            source = None  # LibRaw reads the file itself
        else:
            fp.seek(0)
            source = fp
        decoded = _decode_guarded(source, name, max_pixels, draft_config, pixels=wanted, raw=raw)
    return DecodedFile(name, size, digest, decoded.width, decoded.height, decoded.format, decoded.image, decoded.facts)


class _Decoded(NamedTuple):
    image: Image.Image | None
    width: int  # as displayed (after EXIF orientation), full resolution
    height: int
    format: str
    facts: PhotoFacts = PhotoFacts()


def _decode(
    fp: IO[bytes],
    name: str,
    limit: int,
    draft_config: PreprocessConfig | None,
    *,
    pixels: bool = True,
) -> _Decoded:
    return _decode_opened(Image.open(fp), name, limit, draft_config, pixels=pixels)


def _decode_opened(
    source: Image.Image,
    name: str,
    limit: int,
    draft_config: PreprocessConfig | None,
    *,
    pixels: bool = True,
) -> _Decoded:
    width, height = source.size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"image has no pixels ({width}x{height})")
    if limit and width * height > limit:
        raise _too_large(name, width, height, limit)
    fmt = source.format or ""
    if not pixels:  # header only (EXIF that only a full decode reaches, as in PNG, is not seen)
        swap = _exif_orientation(source) >= 5
        facts = read_photo_facts(source, gps=True)
        return _Decoded(None, height if swap else width, width if swap else height, fmt, facts)
    box: tuple[float, float, float, float] | None = None
    if draft_config is not None and source.format in _DRAFTABLE:
        side = math.ceil(DRAFT_OVERSAMPLE * draft_config.shortest_edge)
        result = source.draft(None, (side, side))
        if result is not None and source.size != (width, height):
            box = result[1]
    source.load()
    orientation = _exif_orientation(source)
    facts = read_photo_facts(source, gps=True)  # after load: a PNG's getexif() would load it, hiding its errors
    image = to_rgb(source, name=name)
    if box is not None and draft_config is not None:
        # The DCT-scaled image covers the original exactly over ``box`` (its last row/column may be
        # partial): resize that region to the size the exact path would resize the original to.
        target = resize_size(width, height, draft_config.shortest_edge)
        image = image.resize(target, resample_filter(draft_config.resample), box=box)
    method = _TRANSPOSE.get(orientation)
    if orientation >= 5 and method is not None:
        width, height = height, width
    return _Decoded(image if method is None else image.transpose(method), width, height, fmt, facts)


def _decode_raw(
    fp: IO[bytes] | None,
    name: str,
    limit: int,
    draft_config: PreprocessConfig | None,
    min_side: int,
    *,
    pixels: bool = True,
) -> _Decoded:
    """A camera RAW file: the pixel limit on the sensor's size, then its preview or a half-size demosaic."""
    dot = name.rfind(".")
    fmt = name[dot + 1 :].upper() if dot > 0 else "RAW"
    with open_raw(name if fp is None else fp, name) as raw:
        width, height = raw.display_size
        if width <= 0 or height <= 0:
            raise ImageError(name, f"image has no pixels ({width}x{height})")
        if limit and width * height > limit:
            raise _too_large(name, width, height, limit)
        facts = facts_of_exif(exif_of_raw(_raw_bytes(fp, name), raw), gps=True)
        if not pixels:
            return _Decoded(None, width, height, fmt, facts)
        try:
            found = raw.preview(min_side)
            # the preview decodes as any JPEG (limits, draft, its own EXIF orientation); then the RAW's own turn
            image = None if found is None else _decode_opened(found[0], name, limit, draft_config).image
        except ImageError:  # a preview over the pixel limit
            raise
        except Exception:  # a damaged preview: the raw data may still be whole
            image = None
        if found is None or image is None:
            return _Decoded(raw.demosaic(), width, height, fmt, facts)
    method = _TRANSPOSE.get(found[1])
    return _Decoded(image if method is None else image.transpose(method), width, height, fmt, facts)


def _raw_bytes(fp: IO[bytes] | None, name: str) -> bytes | None:
    """A RAW file's bytes for its TIFF header's EXIF: ``fp``'s (in memory), else the file's first
    :data:`RAW_HEADER_BYTES` (a file too large to hold; its EXIF sits near the start), else None."""
    try:
        if fp is not None:
            fp.seek(0)
            data = fp.read()
            fp.seek(0)
            return data
        with open(name, "rb") as whole:
            return whole.read(RAW_HEADER_BYTES)
    except OSError:
        return None


#: bytes of a RAW file over :data:`IN_MEMORY_LIMIT` read for its header's EXIF
RAW_HEADER_BYTES = 16 * 1024 * 1024


def _to_uint8(values: npt.NDArray[np.floating], lo: float, hi: float) -> npt.NDArray[np.uint8]:
    """Map [lo, hi] linearly onto [0, 255], rounding; lo == hi gives 0."""
    span = hi - lo
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _high_depth_to_grey(image: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` or ``F`` -> ``L`` (or ``LA`` when a transparency value is set); see module doc."""
    arr = np.asarray(image)
    mode = image.mode
    if mode in _SIXTEEN_BIT or (mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535):
        grey = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535)
    elif mode == "I":
        grey = _to_uint8(arr.astype(np.float64), float(arr.min()), float(arr.max()))
    else:  # F
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        elif lo >= 0.0 and hi <= 255.0:
            lo, hi = 0.0, 255.0
        grey = _to_uint8(values, lo, hi)
    key = image.info.get("transparency")
    if isinstance(key, int) and mode != "F":
        alpha = np.where(arr == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey, alpha], axis=-1), "LA")
    return Image.fromarray(grey, "L")


def to_rgb(image: Image.Image, *, name: str = "<image>") -> Image.Image:
    """8-bit RGB like transformers' ``convert_to_rgb`` (transparency onto white); see the module doc.

    Returns ``image`` itself when it is already RGB without transparency.
    """
    try:
        if image.mode in _HIGH_DEPTH:
            image = _high_depth_to_grey(image)
        elif image.mode == "La":  # premultiplied; Pillow cannot convert it to RGB (transformers fails)
            image = image.convert("LA")
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        if image.mode == "RGB":
            return image
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(name, f"cannot convert mode {image.mode} to RGB ({exc})") from exc
