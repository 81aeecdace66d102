"""Decode image files and turn them into CLIP ``pixel_values``, exactly like transformers does.

Decoding: :func:`load_image`
----------------------------
1. Refuse anything that is not a regular file *after* following symlinks (FIFO, device such as a
   link to ``/dev/zero``, socket, folder): the file is opened with ``O_NONBLOCK`` and checked with
   ``fstat`` on the open descriptor, so nothing can block or read forever, and the check cannot race.
   Empty files are refused.
2. ``PIL.Image.open`` reads the header only. An image declaring zero pixels is refused; one declaring
   more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`, Pillow's own refusal
   threshold ``2 * PIL.Image.MAX_IMAGE_PIXELS``) raises :class:`~indexer.errors.ImageTooLargeError`
   before any pixel is decoded; the CLI's ``--max-pixels`` raises the limit. ``max_pixels=None``
   means the default (never "unlimited"); ``0`` disables the check. Pillow's own global limit is
   raised when needed so that it never refuses an image this limit accepts.
3. ``draft=True`` (JPEG/MPO only): ``Image.draft`` asks libjpeg for a DCT-domain downscale by 1/2,
   1/4 or 1/8, the largest that keeps *both* sides >= ``DRAFT_OVERSAMPLE * shortest_edge`` (so the
   exact bicubic resize that follows still downsamples by at least that factor). Other formats, and
   JPEGs already small, decode at full size. The scaled image is then resized (with ``box=`` so
   that the geometry matches the original exactly) straight to the size step 1 of preprocessing
   would give, so :func:`preprocess` only crops. Draft approximates the exact path: on ~12 MP photos
   (JPEG q90, a 1/8 scale) it differs by at most 14 of 255 levels, 0.4-1 on average, and decode +
   preprocess take ~22 ms instead of ~125 ms per image (one core). ``draft=None`` means
   :data:`DEFAULT_DRAFT` (on: measured at the embedding, draft vs exact gives cosine >= 0.99999 on 12 MP
   real photos with the full-size ViT-B/32, well above the 0.999 bar; ``--no-draft`` restores bit-exact
   parity).
4. ``load()`` decodes the first frame fully (animated GIF/WebP/APNG, multi-page TIFF: frame 0).
   ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is kept ``False``, so a truncated or corrupt file raises
   instead of being padded with grey. Every decoder failure becomes :class:`~indexer.errors.ImageError`.
5. EXIF orientation (tag 0x0112, values 2..8) is applied like ``ImageOps.exif_transpose``. An
   unreadable EXIF block is ignored (the pixels are fine; the image keeps its stored orientation).
6. :func:`to_rgb` gives 8-bit RGB, following transformers' ``convert_to_rgb`` (PIL branch) wherever it
   defines the result: an image with an alpha band (``"A"`` in ``getbands()``: RGBA, LA, PA) or with a
   ``transparency`` entry in ``info`` (P/L/RGB with tRNS, GIF transparency) is converted to RGBA and
   alpha-composited onto opaque white; any other mode is ``convert("RGB")`` (L, 1, P, CMYK, YCbCr,
   RGBa, RGBX, HSV, LAB...). Deviations on purpose: ``La`` (premultiplied, which Pillow cannot
   convert to RGB) becomes ``LA`` first; Pillow's ``convert`` *clips* high-depth grey to 255, so
   ``I;16``/``I;16B``/``I;16L``/``I;16N`` are scaled ``round(v * 255 / 65535)``; ``I`` (32-bit) the
   same when all values lie in [0, 65535], else min-max stretched; ``F`` is taken as [0, 1] if it
   fits, else as [0, 255] if it fits, else min-max stretched (NaN/inf -> 0). A 16-bit grey image with
   a ``transparency`` value gets that value as fully transparent.

:func:`decode_file` (what ingest uses) checks the header first (format, size, pixel limit: a file that is no
image fails before it is read in full), then reads the file once, hashes the bytes (sha256), checks the header
of those bytes again and decodes them as above only when asked to.
:func:`load_image_bytes` decodes bytes held in memory exactly as a file with those bytes; :func:`prepare_decoded_image`
applies the pixel limit, EXIF orientation and :func:`to_rgb` to an image the caller decoded (a PIL image).
:class:`Preprocessor` bundles one model's settings: ``from_manifest(manifest, draft=, max_pixels=)``.

Preprocessing: :func:`preprocess` (``CLIPImageProcessorPil`` of transformers 5, bit for bit)
-----------------------------------------------------------------------------------------------
Parameters come from the model's manifest (:meth:`PreprocessConfig.from_manifest`). For an RGB image
of ``W x H`` with ``S = shortest_edge``, crop ``ch x cw``:

1. Resize size (``get_resize_output_image_size(default_to_square=False)``): the short side becomes
   ``S``, the long side ``int(S * long / short)`` (Python float division, then *truncation*); a square
   gives ``S x S``. Resize with ``PIL.Image.resize((w, h), resample)`` (``resample`` = bicubic for
   CLIP, ``reducing_gap=None``), skipped when the size is unchanged (PIL would copy).
2. Center crop: ``top = (h - ch) // 2``, ``left = (w - cw) // 2`` (floor division, also when
   negative); ``PIL.Image.crop((left, top, left + cw, top + ch))``. When the image is smaller than the
   crop, PIL fills outside pixels with 0, which is exactly transformers' zero padding
   (``ceil`` padding then the same offsets). When the resized image would exceed
   :data:`RESIZE_PIXEL_BUDGET` pixels (an aspect ratio beyond about 1:334), steps 1 and 2 run Pillow's two
   resampling passes, in its arithmetic, on only the rows and columns the crop keeps: the same pixels, so a
   1 x 60000 image costs a 224 x 224 resize, not 12 GB.
3. Rescale and normalize, per channel ``c`` and 8-bit value ``v``:
   ``x = float32(float64(v) * rescale_factor)``, then ``(x - float32(mean[c])) / float32(std[c])``
   in float32 — identical to transformers' ``rescale`` (float64 multiply, float32 cast) followed by
   ``normalize`` (float32). Both are applied at once through a 3 x 256 float32 lookup table, so the
   result is bit-identical and costs one gather per output value.
4. Layout ``float32 [3, ch, cw]`` (channels first), C-contiguous; :func:`preprocess_batch` stacks
   into ``[N, 3, ch, cw]`` without intermediate arrays.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

from indexer.errors import ImageError, ImageTooLargeError, ModelNotFoundError
from indexer.manifest import ModelManifest
from indexer.settings import DEFAULT_DRAFT, DEFAULT_MAX_PIXELS
from indexer.walk import file_kind, register_optional_plugins

#: Draft mode keeps the decoded short side >= this many times the model's ``shortest_edge``, so the bicubic
#: resize that follows still downsamples by at least 1.5x. For 12 MP photos (3000 px short side, 224 px
#: target) that is a 1/8 DCT scale (375 px): decode + preprocess take ~22 ms instead of ~36 ms at 2.0 (1/4,
#: 750 px), and ingest runs 10-12 % faster on 12 MP photos (benchmarks/results.md). The price, on 7 photos
#: upscaled to 12 MP with noise, JPEG q90: pixel_values differ from the exact path by 0.006-0.014 on average
#: (0.4-1 of 255 levels) and at most 0.21 (14 levels), vs 0.002-0.004 / 0.09 at 2.0; at the embedding, draft
#: vs exact stays at cosine >= 0.99999 with the full-size ViT-B/32 (tests/test_preprocess.py,
#: benchmarks/results.md). ``--no-draft`` is exact.
DRAFT_OVERSAMPLE: float = 1.5

#: A shortest-edge resize to more pixels than this (only very elongated images: an aspect ratio beyond about
#: 1:334 at 224 px, such as 1 x 60000, which would otherwise resize to 224 x 13,440,000 pixels, 12 GB) resizes
#: just the region the center crop keeps: the same pixels, bit for bit, in bounded memory.
RESIZE_PIXEL_BUDGET: int = 1 << 24

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH = _SIXTEEN_BIT | {"I", "F"}
_DRAFTABLE = frozenset({"JPEG", "MPO"})
_STREAM_LOCK = threading.Lock()


def resample_filter(name: str | int) -> Image.Resampling:
    """``"bicubic"`` (or a PIL number such as ``3``) -> ``PIL.Image.Resampling.BICUBIC``."""
    key = str(name).strip().lower()
    if key.isdigit():
        try:
            return Image.Resampling(int(key))
        except ValueError:
            pass
    elif key in _RESAMPLE:
        return _RESAMPLE[key]
    raise ModelNotFoundError(
        f"unknown resample filter {name!r} in the model manifest (expected one of {sorted(_RESAMPLE)}); "
        "re-run `clipindex convert --force`"
    )


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """The preprocessing parameters of one model (from its ``manifest.json``)."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> PreprocessConfig:
        config = cls(
            shortest_edge=manifest.resize_shortest_edge,
            crop_height=manifest.crop_height,
            crop_width=manifest.crop_width,
            resample=manifest.resample,
            rescale_factor=manifest.rescale_factor,
            image_mean=manifest.image_mean,
            image_std=manifest.image_std,
        )
        resample_filter(config.resample)  # fail early on a bad manifest
        return config

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(3, crop_height, crop_width)``."""
        return (3, self.crop_height, self.crop_width)


#: OpenAI CLIP's preprocessing (all public CLIP checkpoints on the Hugging Face hub use it).
CLIP_DEFAULT = PreprocessConfig()


# --- decoding ---------------------------------------------------------------------------------------


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


def _resolve_draft(draft: bool | None) -> bool:
    return DEFAULT_DRAFT if draft is None else bool(draft)


def _too_large(name: str, width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    pixels = width * height
    return ImageTooLargeError(
        name,
        f"image is {width}x{height} = {pixels:,} pixels, over the limit of {max_pixels:,} pixels "
        f"(a guard against decompression bombs); if the file is genuine, raise it with "
        f"--max-pixels {pixels}",
    )


def _pil_bomb(name: str, exc: Image.DecompressionBombError, limit: int) -> ImageTooLargeError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    needed = f" {found.group(1)}" if found else ""
    shown = f"{limit:,}" if limit else f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,}"
    return ImageTooLargeError(
        name,
        f"image declares {pixels}, over the limit of {shown} pixels (a guard against decompression "
        f"bombs); if the file is genuine, raise it with --max-pixels{needed}",
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
    """Decode ``path`` into an 8-bit RGB ``PIL.Image`` (see the module doc for every step).

    ``max_pixels``: refuse images declaring more pixels; ``None``: :data:`DEFAULT_MAX_PIXELS`,
    ``0``: no limit. ``draft``: ``None`` means :data:`DEFAULT_DRAFT`.
    ``draft``: JPEG only; decode at 1/2, 1/4 or 1/8 scale (see the module doc) and return the image
    already resized to ``config``'s resize size (default :data:`CLIP_DEFAULT`), so that
    :func:`preprocess` only crops. Without draft, or when the JPEG is too small to be scaled down,
    the full-size image is returned and ``config`` is not used.
    Raises :class:`~indexer.errors.ImageError` (or its subclass
    :class:`~indexer.errors.ImageTooLargeError`) for anything that is not a decodable image.
    """
    name = os.fspath(path)
    with _open_regular(name) as fp:
        draft_config = (config or CLIP_DEFAULT) if _resolve_draft(draft) else None
        image = _decode_guarded(fp, name, resolve_max_pixels(max_pixels), draft_config).image
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
    :class:`~indexer.errors.ImageError` names."""
    view = memoryview(data)
    if view.nbytes == 0:
        raise ImageError(name, "empty (0 bytes)")
    draft_config = (config or CLIP_DEFAULT) if _resolve_draft(draft) else None
    # BytesIO copies a memoryview/bytearray once; bytes are shared
    source = io.BytesIO(data if isinstance(data, bytes) else view.tobytes())
    image = _decode_guarded(source, name, resolve_max_pixels(max_pixels), draft_config).image
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
    fp: IO[bytes],
    name: str,
    limit: int,
    draft_config: PreprocessConfig | None,
    *,
    pixels: bool = True,
) -> _Decoded:
    """:func:`_decode` with every failure turned into :class:`ImageError` (``limit`` 0: none)."""
    register_optional_plugins()
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped it: truncated files would decode half grey
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    _allow_pil_limit(limit)
    try:
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
    can drop the bitmap early.
    """

    path: str
    size: int
    sha256: str
    width: int
    height: int
    format: str
    image: Image.Image | None


def decode_file(
    path: str | os.PathLike[str],
    preprocessor: Preprocessor | None = None,
    *,
    decode_pixels: Callable[[str], bool] | None = None,
) -> DecodedFile:
    """Read ``path`` once: sha256 of its bytes, header checks, then (unless ``decode_pixels(sha256)``
    is false) decode those same bytes like :func:`load_image` with ``preprocessor``'s settings (draft,
    max_pixels, config; default ``Preprocessor()``). Raises :class:`ImageError` like
    :func:`load_image`, also when only the header is read (not an image, too large...).
    """
    name = os.fspath(path)
    pre = preprocessor if preprocessor is not None else Preprocessor()
    draft_config = pre.config if pre.draft else None
    with _open_regular(name) as fp:
        # The header first (Pillow reads only what it needs): a file that is no image, or one declaring too
        # many pixels, fails in milliseconds instead of being read and hashed in full (a 10 GB file named .jpg)
        _decode_guarded(fp, name, pre.max_pixels, None, pixels=False)
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
            source: IO[bytes] = io.BytesIO(data)
        else:
            fp.seek(0)
            source = fp
        decoded = _decode_guarded(source, name, pre.max_pixels, draft_config, pixels=wanted)
    return DecodedFile(name, size, digest, decoded.width, decoded.height, decoded.format, decoded.image)


class _Decoded(NamedTuple):
    image: Image.Image | None
    width: int  # as displayed (after EXIF orientation), full resolution
    height: int
    format: str


def _decode(
    fp: IO[bytes],
    name: str,
    limit: int,
    draft_config: PreprocessConfig | None,
    *,
    pixels: bool = True,
) -> _Decoded:
    source = Image.open(fp)
    width, height = source.size
    if width <= 0 or height <= 0:
        raise ImageError(name, f"image has no pixels ({width}x{height})")
    if limit and width * height > limit:
        raise _too_large(name, width, height, limit)
    fmt = source.format or ""
    if not pixels:  # header only (EXIF that only a full decode reaches, as in PNG, is not seen)
        swap = _exif_orientation(source) >= 5
        return _Decoded(None, height if swap else width, width if swap else height, fmt)
    box: tuple[float, float, float, float] | None = None
    if draft_config is not None and source.format in _DRAFTABLE:
        side = math.ceil(DRAFT_OVERSAMPLE * draft_config.shortest_edge)
        result = source.draft(None, (side, side))
        if result is not None and source.size != (width, height):
            box = result[1]
    source.load()
    orientation = _exif_orientation(source)
    image = to_rgb(source, name=name)
    if box is not None and draft_config is not None:
        # The DCT-scaled image covers the original exactly over ``box`` (its last row/column may be
        # partial): resize that region to the size the exact path would resize the original to.
        target = resize_size(width, height, draft_config.shortest_edge)
        image = image.resize(target, resample_filter(draft_config.resample), box=box)
    method = _TRANSPOSE.get(orientation)
    if orientation >= 5 and method is not None:
        width, height = height, width
    return _Decoded(image if method is None else image.transpose(method), width, height, fmt)


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


# --- preprocessing ----------------------------------------------------------------------------------


def resize_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """``(width, height)`` after the shortest-edge resize, rounding exactly like transformers."""
    if width <= height:
        return shortest_edge, int(shortest_edge * height / width)
    return int(shortest_edge * width / height), shortest_edge


def crop_box(width: int, height: int, crop_width: int, crop_height: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of transformers' center crop (may extend past the image)."""
    left = (width - crop_width) // 2
    top = (height - crop_height) // 2
    return left, top, left + crop_width, top + crop_height


@functools.lru_cache(maxsize=16)
def _lut(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """``[3, 256]`` float32: value ``v`` of channel ``c`` -> its normalized pixel value (see module doc)."""
    rescaled = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table = ((rescaled[None, :] - mean32) / std32).astype(np.float32)
    table.setflags(write=False)
    return table


def preprocess(
    image: Image.Image,
    config: PreprocessConfig = CLIP_DEFAULT,
    *,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """``image`` -> ``float32 [3, crop_height, crop_width]``, equal to ``CLIPImageProcessorPil``.

    A non-RGB image goes through :func:`to_rgb` first. ``out``: write into this array (for batches).
    """
    if image.mode != "RGB" or "transparency" in image.info:
        image = to_rgb(image)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("<image>", f"image has no pixels ({width}x{height})")
    new_size = resize_size(width, height, config.shortest_edge)
    box = crop_box(*new_size, config.crop_width, config.crop_height)
    if new_size[0] * new_size[1] > RESIZE_PIXEL_BUDGET:
        cropped = _resize_crop_region(image, new_size, box, resample_filter(config.resample))
    else:
        if new_size != image.size:
            image = image.resize(new_size, resample_filter(config.resample))
        cropped = image.crop(box)
    pixels = np.asarray(cropped)  # [ch, cw, 3] uint8
    if out is None:
        out = np.empty(config.output_shape, dtype=np.float32)
    elif out.shape != config.output_shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {config.output_shape}, got {out.dtype} {out.shape}")
    table = _lut(config.rescale_factor, config.image_mean, config.image_std)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def _cubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (_F32_054 + _F32_046 * math.cos(x))


_F32_054 = float(np.float32(0.54))  # Pillow writes 0.54f and 0.46f
_F32_046 = float(np.float32(0.46))
#: Pillow's resampling filters (libImaging/Resample.c): support and kernel, in double precision like its C code
_PIL_FILTERS: dict[int, tuple[float, Callable[[float], float]]] = {
    Image.Resampling.BOX: (0.5, lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0),
    Image.Resampling.BILINEAR: (1.0, lambda x: max(0.0, 1.0 - abs(x))),
    Image.Resampling.HAMMING: (1.0, _hamming),
    Image.Resampling.BICUBIC: (2.0, _cubic),
    Image.Resampling.LANCZOS: (3.0, lambda x: _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0),
}
_PRECISION_BITS = 32 - 8 - 2


def _resample_axis(
    pixels: npt.NDArray[np.uint8], in_size: int, out_size: int, first: int, count: int, resample: int
) -> npt.NDArray[np.uint8]:
    """Output rows ``first .. first + count`` of Pillow's 8-bit resample of ``pixels`` (its axis 0, of
    ``in_size`` rows) to ``out_size`` rows: ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` + the 8bpc pass of
    libImaging/Resample.c, in the same arithmetic (double coefficients, 22-bit fixed point), so bit for bit."""
    support_base, kernel = _PIL_FILTERS[resample]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = support_base * filterscale
    inv_filterscale = 1.0 / filterscale
    out = np.empty((count, *pixels.shape[1:]), dtype=np.uint8)
    for row in range(count):
        center = (first + row + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        taps = min(int(center + support + 0.5), in_size) - xmin
        weights = [kernel((x + xmin - center + 0.5) * inv_filterscale) for x in range(taps)]
        total = 0.0
        for weight in weights:
            total += weight
        if total != 0.0:
            weights = [weight / total for weight in weights]
        acc = np.full(pixels.shape[1:], 1 << (_PRECISION_BITS - 1), dtype=np.int64)
        for x, weight in enumerate(weights):
            scaled = weight * (1 << _PRECISION_BITS)
            fixed = int(-0.5 + scaled) if weight < 0 else int(0.5 + scaled)
            acc += pixels[xmin + x].astype(np.int64) * fixed
        out[row] = np.clip(acc >> _PRECISION_BITS, 0, 255)
    return out


def _resize_crop_region(
    image: Image.Image, new_size: tuple[int, int], box: tuple[int, int, int, int], resample: Image.Resampling
) -> Image.Image:
    """``image.resize(new_size, resample).crop(box)``, bit for bit, computing only the crop: Pillow's two passes
    (in the order Pillow picks for the full resize) restricted to the rows and columns the crop needs. NEAREST,
    which has no such passes, uses Pillow's ``resize(box=...)`` (its box is float32: a pixel may shift)."""
    width, height = image.size
    new_width, new_height = new_size
    left, top, right, bottom = box
    cols = (max(left, 0), min(right, new_width))
    rows = (max(top, 0), min(bottom, new_height))
    if resample in _PIL_FILTERS:
        pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)  # [height, width, 3]
        # libImaging/Resample.c ImagingResampleInner: vertical first only when the height shrinks more than twice
        # as much as the width does
        horizontal_first = not (height - new_height > 0 and height - new_height > (width - new_width) * 2)

        def vertical(arr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
            if new_height == height:
                return arr[rows[0] : rows[1]]
            return _resample_axis(arr, height, new_height, rows[0], rows[1] - rows[0], resample)

        def horizontal(arr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
            if new_width == width:
                return arr[:, cols[0] : cols[1]]
            moved = np.moveaxis(arr, 1, 0)
            return np.moveaxis(_resample_axis(moved, width, new_width, cols[0], cols[1] - cols[0], resample), 0, 1)

        region_pixels = vertical(horizontal(pixels)) if horizontal_first else horizontal(vertical(pixels))
        region = Image.fromarray(np.ascontiguousarray(region_pixels), "RGB")
    else:
        scale_x, scale_y = width / new_width, height / new_height
        region = image.resize(
            (cols[1] - cols[0], rows[1] - rows[0]),
            resample,
            box=(cols[0] * scale_x, rows[0] * scale_y, cols[1] * scale_x, rows[1] * scale_y),
        )
    if (cols[0], rows[0], cols[1], rows[1]) == box:
        return region
    canvas = Image.new(region.mode, (right - left, bottom - top))  # zero fill, like crop past the edge
    canvas.paste(region, (cols[0] - left, rows[0] - top))
    return canvas


def preprocess_batch(images: Sequence[Image.Image], config: PreprocessConfig = CLIP_DEFAULT) -> npt.NDArray[np.float32]:
    """Stack :func:`preprocess` of each image into ``float32 [N, 3, crop_height, crop_width]``."""
    batch = np.empty((len(images), *config.output_shape), dtype=np.float32)
    for index, image in enumerate(images):
        preprocess(image, config, out=batch[index])
    return batch


def load_and_preprocess(
    path: str | os.PathLike[str],
    config: PreprocessConfig = CLIP_DEFAULT,
    *,
    max_pixels: int | None = None,
    draft: bool | None = None,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`load_image` then :func:`preprocess` with the same ``config``."""
    image = load_image(path, max_pixels=max_pixels, draft=draft, config=config)
    return preprocess(image, config, out=out)


class Preprocessor:
    """One model's decoding + preprocessing settings, bundled: what ingest and search use.

    ``Preprocessor.from_manifest(manifest, draft=..., max_pixels=...)``, then ``load(path)`` ->
    RGB image, ``preprocess(image)`` -> ``float32 [3, H, W]``, ``preprocess_batch(images)`` ->
    ``[N, 3, H, W]``, or ``load_and_preprocess(path)`` for both steps.
    """

    def __init__(
        self,
        config: PreprocessConfig = CLIP_DEFAULT,
        *,
        draft: bool | None = None,
        max_pixels: int | None = None,
    ) -> None:
        resample_filter(config.resample)
        self.config = config
        #: resolved settings: ``draft`` a bool, ``max_pixels`` an int (0: no limit)
        self.draft = _resolve_draft(draft)
        self.max_pixels = resolve_max_pixels(max_pixels)

    @classmethod
    def from_manifest(
        cls, manifest: ModelManifest, *, draft: bool | None = None, max_pixels: int | None = None
    ) -> Preprocessor:
        return cls(PreprocessConfig.from_manifest(manifest), draft=draft, max_pixels=max_pixels)

    def load(self, path: str | os.PathLike[str]) -> Image.Image:
        return load_image(path, max_pixels=self.max_pixels, draft=self.draft, config=self.config)

    def load_bytes(self, data: bytes | bytearray | memoryview, *, name: str = "<bytes>") -> Image.Image:
        return load_image_bytes(data, name=name, max_pixels=self.max_pixels, draft=self.draft, config=self.config)

    def load_decoded(self, image: Image.Image, *, name: str = "<image>") -> Image.Image:
        """A PIL image given by the caller -> RGB. One that ``Image.open`` opened and nothing has decoded yet
        (its pixels are still in its file) is decoded from that file, or from the bytes of the file object it was
        opened from, exactly as :meth:`load` decodes a file, draft decoding included; any other image is taken as
        decoded (:func:`prepare_decoded_image`)."""
        if isinstance(image, ImageFile.ImageFile) and image.tile:  # opened lazily, not decoded yet
            filename = getattr(image, "filename", None)
            if filename:
                return self.load(os.fsdecode(filename))
            stream = getattr(image, "fp", None)
            if stream is not None and callable(getattr(stream, "seekable", None)) and stream.seekable():
                with _STREAM_LOCK:  # the same image given twice must not be read by two threads at once
                    position = stream.tell()
                    try:
                        stream.seek(0)
                        data = stream.read()
                    finally:
                        stream.seek(position)
                return self.load_bytes(data, name=name)
        return prepare_decoded_image(image, name=name, max_pixels=self.max_pixels)

    def preprocess(self, image: Image.Image, *, out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
        return preprocess(image, self.config, out=out)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        return preprocess_batch(images, self.config)

    def load_and_preprocess(
        self, path: str | os.PathLike[str], *, out: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        return preprocess(self.load(path), self.config, out=out)

    def __repr__(self) -> str:
        return f"Preprocessor({self.config!r}, draft={self.draft}, max_pixels={self.max_pixels})"
