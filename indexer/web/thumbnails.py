"""Thumbnails of indexed images, cached on disk with a size cap.

A thumbnail is the image decoded like ingest decodes it (:func:`clipindex.images.decode.load_image`: the same pixel
limit, EXIF orientation, and the same draft rule, a JPEG decoded at the smallest DCT scale that keeps its short
side at least 1.5x the thumbnail's), scaled so that its *short* side is ``size`` pixels (the page crops squares
from it), and saved as a JPEG at quality 85. An image smaller than that is not enlarged.

The cache key is the point id, the file's stored sha256 and ``size``: a re-ingested file that changed gets a new
thumbnail, and its ETag changes with it. Files live in ``<cache>/thumbnails/<2 hex>/<key>.jpg``; each write
keeps the folder under its cap by deleting the least recently used files (a hit refreshes a file's mtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clipindex.images.config import PreprocessConfig
from clipindex.images.decode import load_image

__all__ = ["Thumbnail", "ThumbnailCache", "make_thumbnail"]

JPEG_QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    """JPEG bytes and the entity tag that names their content."""

    data: bytes
    etag: str
    cached: bool
    #: the first 16 hex digits of the file's sha256: a thumbnail URL's ``v`` names the content it wants
    version: str


def make_thumbnail(path: str, size: int, *, max_pixels: int | None = None) -> bytes:
    """The JPEG thumbnail of the image file ``path`` (see the module doc); raises ImageError when unreadable."""
    config = PreprocessConfig(shortest_edge=size, crop_height=size, crop_width=size)
    image = load_image(path, max_pixels=max_pixels, draft=True, config=config)
    short = min(image.size)
    if short > size:
        scale = size / short
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=False)
    return out.getvalue()


class ThumbnailCache:
    """``get(point_id, sha256, path, size)``: the cached thumbnail, made on a miss. ``folder`` None: no cache."""

    def __init__(self, folder: Path | None, cap_bytes: int, *, max_pixels: int | None = None) -> None:
        self.folder = folder
        self.cap_bytes = max(0, int(cap_bytes))
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._total: int | None = None

    @staticmethod
    def key(point_id: str, sha256: str, size: int) -> str:
        return hashlib.sha256(f"{point_id}|{sha256}|{size}".encode()).hexdigest()

    def get(self, point_id: str, sha256: str, path: str, size: int) -> Thumbnail:
        key = self.key(point_id, sha256, size)
        etag = f'"{key[:32]}"'
        file = self.folder / key[:2] / f"{key}.jpg" if self.folder is not None else None
        if file is not None:
            with contextlib.suppress(OSError):
                data = file.read_bytes()
                os.utime(file)  # least recently used goes first
                return Thumbnail(data, etag, cached=True, version=sha256[:16])
        data = make_thumbnail(path, size, max_pixels=self.max_pixels)
        if file is not None and self.cap_bytes > 0:
            with contextlib.suppress(OSError):
                self._store(file, data)
        return Thumbnail(data, etag, cached=False, version=sha256[:16])

    def _store(self, file: Path, data: bytes) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".thumb.", suffix=".tmp", dir=file.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            if self._total is None:
                self._total = sum(size for _path, size, _mtime in self._files())
            else:
                self._total += len(data)
            if self._total > self.cap_bytes:
                self._evict()

    def _files(self) -> list[tuple[str, int, float]]:
        assert self.folder is not None
        found: list[tuple[str, int, float]] = []
        for dirpath, _dirs, names in os.walk(self.folder):
            for name in names:
                if name.endswith(".jpg"):
                    full = os.path.join(dirpath, name)
                    with contextlib.suppress(OSError):
                        st = os.stat(full)
                        found.append((full, st.st_size, st.st_mtime))
        return found

    def _evict(self) -> None:
        """Delete the least recently used files until the folder is at 90 % of its cap."""
        files = sorted(self._files(), key=lambda f: f[2])
        total = sum(size for _path, size, _mtime in files)
        goal = self.cap_bytes * 0.9
        for full, size, _mtime in files:
            if total <= goal:
                break
            with contextlib.suppress(OSError):
                os.unlink(full)
                total -= size
        self._total = total
