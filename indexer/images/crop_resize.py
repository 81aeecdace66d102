"""The shortest-edge resize and center crop of CLIP preprocessing, exactly as Pillow and transformers do them.

:func:`resize_crop` gives ``image.resize(resize_size(...), resample).crop(crop_box(...))`` bit for bit. When the
resized image would exceed :data:`RESIZE_PIXEL_BUDGET` pixels (only very elongated images), it runs Pillow's two
resampling passes, in Pillow's own arithmetic (libImaging/Resample.c), on just the rows and columns the crop
keeps: the same pixels in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image

from clipindex.errors import ModelNotFoundError

__all__ = ["RESIZE_PIXEL_BUDGET", "crop_box", "resample_filter", "resize_crop", "resize_size"]

#: A shortest-edge resize to more pixels than this (only very elongated images: an aspect ratio beyond about
#: 1:334 at 224 px, such as 1 x 60000, which would otherwise resize to 224 x 13,440,000 pixels, 12 GB) resizes
#: just the region the center crop keeps: the same pixels, bit for bit, in bounded memory.
RESIZE_PIXEL_BUDGET: int = 1 << 24

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


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


def resize_crop(
    image: Image.Image, shortest_edge: int, crop_width: int, crop_height: int, resample: str | int
) -> Image.Image:
    """``image`` (RGB) resized so that its short side is ``shortest_edge``, then center-cropped to
    ``crop_width x crop_height`` (zero fill past the edges), bit for bit as transformers does it with Pillow."""
    new_size = resize_size(*image.size, shortest_edge)
    box = crop_box(*new_size, crop_width, crop_height)
    if new_size[0] * new_size[1] > RESIZE_PIXEL_BUDGET:
        return _resize_crop_region(image, new_size, box, resample_filter(resample))
    if new_size != image.size:
        image = image.resize(new_size, resample_filter(resample))
    return image.crop(box)


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
