"""CLIP preprocessing: an image -> ``pixel_values``, bit for bit as transformers' ``CLIPImageProcessorPil``.

For an RGB image and a model's ``PreprocessConfig`` (from its manifest; ``CLIP_DEFAULT`` is OpenAI's):

1. resize the short side to ``shortest_edge`` (long side ``int(S * long / short)``), ``resample`` = bicubic;
2. center-crop to ``crop_height x crop_width`` (zero fill past the edges) (:mod:`clipindex.images.crop_resize`);
3. ``x = float32(float64(v) * rescale_factor)``, then ``(x - mean[c]) / std[c]`` in float32, per channel;
4. lay out ``float32 [3, crop_height, crop_width]``; :func:`preprocess_batch` stacks ``[N, 3, H, W]``.

Files are decoded by :mod:`clipindex.images.decode`; :class:`Preprocessor` holds one model's settings for both
steps (:mod:`clipindex.images.config` holds :class:`~clipindex.images.config.PreprocessConfig`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile

from clipindex.errors import ImageError
from clipindex.images.config import CLIP_DEFAULT, PreprocessConfig, PreprocessRules, resolve_draft
from clipindex.images.crop_resize import resample_filter, resize_crop
from clipindex.images.decode import load_image, load_image_bytes, prepare_decoded_image, resolve_max_pixels, to_rgb

__all__ = [
    "Preprocessor",
    "load_and_preprocess",
    "preprocess",
    "preprocess_batch",
]

_STREAM_LOCK = threading.Lock()


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
    cropped = resize_crop(image, config.shortest_edge, config.crop_width, config.crop_height, config.resample)
    pixels = np.asarray(cropped)  # [ch, cw, 3] uint8
    if out is None:
        out = np.empty(config.output_shape, dtype=np.float32)
    elif out.shape != config.output_shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {config.output_shape}, got {out.dtype} {out.shape}")
    table = _lut(config.rescale_factor, config.image_mean, config.image_std)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


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
        self.draft = resolve_draft(draft)
        self.max_pixels = resolve_max_pixels(max_pixels)

    @classmethod
    def from_manifest(
        cls, manifest: PreprocessRules, *, draft: bool | None = None, max_pixels: int | None = None
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
