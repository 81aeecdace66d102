"""Which image formats this installation decodes: base extensions, optional plugins, and file kinds for messages."""

from __future__ import annotations

import functools
import stat

__all__ = [
    "AVIF_EXTENSIONS",
    "BASE_EXTENSIONS",
    "HEIF_EXTENSIONS",
    "RAW_EXTENSIONS",
    "file_kind",
    "has_image_extension",
    "register_optional_plugins",
    "supported_extensions",
]

#: extensions Pillow decodes without any plugin (lower case, without the dot)
BASE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
#: extensions that need the optional ``pillow_heif`` plugin (AVIF: or Pillow's native AVIF support)
HEIF_EXTENSIONS: frozenset[str] = frozenset({"heic", "heif"})
AVIF_EXTENSIONS: frozenset[str] = frozenset({"avif"})
#: camera RAW files, decoded by the optional ``rawpy`` (``clipindex[raw]``); always walked, so that without the
#: extra each one fails with a reason that names it (:mod:`clipindex.images.raw`)
RAW_EXTENSIONS: frozenset[str] = frozenset({"cr2", "nef", "arw", "dng", "raf", "orf"})

#: folder links into these are never followed (kernel views of processes and devices, not photos)


@functools.cache
def register_optional_plugins() -> frozenset[str]:
    """Register optional Pillow plugins once; return the extra extensions they (and Pillow) add.

    ``pillow_heif`` brings HEIC/HEIF (and AVIF with older Pillow); Pillow >= 11.3 decodes AVIF
    itself when built with libavif.
    """
    extra: set[str] = set()
    try:
        from PIL import features

        if features.check("avif"):
            extra |= AVIF_EXTENSIONS
    except (ImportError, ValueError):  # older Pillow: no "avif" feature
        pass
    try:
        import pillow_heif
    except ImportError:
        return frozenset(extra)
    pillow_heif.register_heif_opener()
    extra |= HEIF_EXTENSIONS
    register_avif = getattr(pillow_heif, "register_avif_opener", None)
    if register_avif is not None and not extra & AVIF_EXTENSIONS:
        register_avif()
        extra |= AVIF_EXTENSIONS
    return frozenset(extra)


def supported_extensions() -> frozenset[str]:
    """Lower-case extensions (no dot) ingest walks: what this installation decodes (registers optional plugins),
    and the RAW extensions, decoded with the ``clipindex[raw]`` extra and failed with a reason naming it without."""
    return BASE_EXTENSIONS | RAW_EXTENSIONS | register_optional_plugins()


def has_image_extension(name: str, extensions: frozenset[str]) -> bool:
    """``name`` ends with ``.<ext>`` for one of ``extensions`` (lower case), case-insensitively."""
    dot = name.rfind(".")
    return dot > 0 and name[dot + 1 :].lower() in extensions


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, for messages (``"a FIFO (named pipe)"``...)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a file"
    return "a special file"
