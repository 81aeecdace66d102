"""Read a Qdrant Edge shard's hot files sequentially before the engine opens it.

The engine memory-maps its segment files and pages them in by faulting 4 KB at a time. A search process that
starts with a cold page cache then spends most of its time in page faults (the first query's scan of the int8
vectors, the shard's open: id trackers, null flags of the payload indexes, WAL), far longer than plain sequential
``read`` calls take to bring the same files into the page cache, after which the engine's faults find the pages
cached (docs/operations.md, Search at scale). :func:`prefetch_shard` does that read.

What is read: every file of the shard except those a search touches only a few pages of (the float32 vectors,
read back for the few rescored candidates; the payload pages, read for the hits; the payload index maps, used by
filters). Reading into one small buffer adds nothing to the process's memory. A file whose sampled pages are all in the
page cache already is skipped (``preadv2`` with ``RWF_NOWAIT``), so a warm start does not pay the copy.

It runs on the calling thread: the engine holds the GIL while it loads, so a prefetch thread would stall until the
load it is meant to speed up has finished.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["COLD_FILES", "prefetch_shard"]

#: file names a search reads only a few pages of: left to the engine's page faults
COLD_FILES = frozenset({"matrix.dat", "point_to_values.bin", "values_to_points.bin"})
_COLD_PREFIXES = ("page_",)  # payload_storage/page_N.dat (and the payload index maps' pages)
_BUFFER = 1 << 20
_PAGE = 4096
#: files up to this size are read without probing first
_PROBE_MIN = 64 * 1024
#: pages probed per file to tell a warm file from a cold one
_SAMPLES = 16


def _wanted(name: str) -> bool:
    return name not in COLD_FILES and not name.startswith(_COLD_PREFIXES)


def _looks_cached(fd: int) -> bool:
    """True when sampled pages of the file are all in the page cache (``preadv2(RWF_NOWAIT)`` fails with EAGAIN,
    or reads short, for a page that is not): a warm start then skips the copy."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return False
    size = os.fstat(fd).st_size
    if size == 0:
        return True
    page = bytearray(_PAGE)
    last = max(0, size - 1)
    for k in range(_SAMPLES):
        offset = (last * k // (_SAMPLES - 1)) // _PAGE * _PAGE
        try:
            if os.preadv(fd, [page], offset, nowait) <= 0:
                return False
        except OSError:
            return False
    return True


def prefetch_shard(shard_dir: Path, *, limit_bytes: int | None = None) -> int:
    """Read the hot files under ``shard_dir`` once (module doc); returns the bytes read.

    Never raises: a file that cannot be read is skipped (the engine reports real problems when it opens the
    shard). ``limit_bytes`` stops after that many bytes (None: no limit).
    """
    total = 0
    buffer = bytearray(_BUFFER)
    view = memoryview(buffer)
    for root, _dirs, files in os.walk(shard_dir):
        for name in files:
            if not _wanted(name):
                continue
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                if os.fstat(fd).st_size > _PROBE_MIN and _looks_cached(fd):  # a small file costs a read or two anyway
                    continue
                while True:
                    count = os.readv(fd, [view])
                    if count <= 0:
                        break
                    total += count
                    if limit_bytes is not None and total >= limit_bytes:
                        return total
            except OSError:
                pass
            finally:
                os.close(fd)
    return total
