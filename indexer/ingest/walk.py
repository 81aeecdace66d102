"""Find the image files under a folder: fast, deterministic, and hard to trip up.

:func:`iter_image_files` walks a tree with :func:`os.scandir` and yields one :class:`FoundFile` per
regular file whose extension is an image extension. It never opens a file: the only per-file system
call is one ``stat`` (following symlinks) for the files it yields, which also gives the size and
mtime that ingest uses to skip unchanged files. Directories cost one ``stat`` (for loop detection)
and one ``scandir`` each.

The rules (order, extensions, hidden entries, symlinks, errors, names) are :func:`iter_image_files`'.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clipindex.errors import WalkError
from clipindex.images.formats import file_kind, has_image_extension, supported_extensions

#: folders the walk never enters (kernel and device file systems)
VIRTUAL_FILESYSTEMS: tuple[str, ...] = ("/proc", "/sys", "/dev")

#: ``on_error(path, reason)``: called for each entry the walk had to skip
OnError = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class FoundFile:
    """One image file found by the walk, with what ``stat`` (following symlinks) said about it."""

    path: Path
    size: int
    mtime_ns: int


def _reason(exc: OSError, entry: os.DirEntry[str] | None = None) -> str:
    """A short, user-facing reason for an ``OSError`` met while walking."""
    import errno

    if entry is not None and isinstance(exc, FileNotFoundError):
        try:
            if entry.is_symlink():
                return "dangling symlink (its target does not exist)"
        except OSError:
            pass
        return "vanished during the walk"
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _unsafe_folder_link(entry: os.DirEntry[str], root_real: str) -> str | None:
    """Why the folder symlink ``entry`` must not be followed, or ``None``."""
    target = os.path.realpath(entry.path)
    if root_real == target or root_real.startswith(target.rstrip(os.sep) + os.sep):
        return f"skipped: symlink to {target}, a folder that contains the folder being indexed"
    for virtual in VIRTUAL_FILESYSTEMS:
        if target == virtual or target.startswith(virtual + os.sep):
            return f"skipped: symlink to {target}, in the virtual file system {virtual}"
    return None


def _sorted_entries(path: str) -> list[os.DirEntry[str]]:
    """The entries of one folder, sorted by the bytes of their names. Raises ``OSError``."""
    with os.scandir(path) as it:
        entries = list(it)
    entries.sort(key=lambda e: os.fsencode(e.name))
    return entries


def iter_image_files(
    root: str | os.PathLike[str],
    *,
    extensions: frozenset[str] | None = None,
    on_error: OnError | None = None,
) -> Iterator[FoundFile]:
    """Yield every image file under ``root`` (recursively) as a :class:`FoundFile` (:func:`iter_image_entries`).

    Rules:

    * Order: depth first, entries of each directory sorted by the *bytes* of their names
      (``os.fsencode(name)``), files and sub-directories interleaved in that order. Two runs over the
      same tree yield the same sequence, whatever the locale or the file system's own order.
    * Extensions are matched case-insensitively against :func:`supported_extensions` (or the
      ``extensions`` argument): ``jpg jpeg png webp bmp gif tif tiff`` and ``avif`` (Pillow >= 11.3
      decodes it natively), plus ``heic heif`` (and ``avif``) when the optional ``pillow_heif`` plugin
      is installed (``pip install 'clipindex[heif]'``), which is then registered with Pillow.
    * Hidden entries (name starts with ``.``) are skipped, files and folders alike. The root itself is
      walked even if its own name starts with a dot.
    * Symlinks are followed, to files and to folders. Every folder is walked at most once (tracked by
      ``(st_dev, st_ino)``), so symlink loops end and a folder linked twice is not indexed twice. Two kinds of
      folder links are reported and skipped instead: one to a folder that contains the root (a link to ``/``
      or ``~`` would otherwise walk, and index, everything above), and one into a virtual file system
      (:data:`VIRTUAL_FILESYSTEMS`: ``/proc``, ``/sys``, ``/dev``).
    * Nothing stops the walk: a folder that cannot be listed (permission denied, removed meanwhile), a
      dangling or looping symlink, or an image-named entry that is not a regular file (FIFO, socket,
      device such as a link to ``/dev/zero``) is reported to ``on_error(path, reason)`` and skipped.
      Without ``on_error`` these are skipped silently.
    * Names that are not valid UTF-8 work end to end: paths are ``str`` with the bytes kept by
      Python's ``surrogateescape`` (``os.fsencode(str(path))`` gives the original bytes back), which
      ``open``/``os.stat``/:func:`clipindex.images.preprocess.load_image` accept as is.
    """
    for path, size, mtime_ns in iter_image_entries(root, extensions=extensions, on_error=on_error):
        yield FoundFile(Path(path), size, mtime_ns)


def iter_image_entries(
    root: str | os.PathLike[str],
    *,
    extensions: frozenset[str] | None = None,
    on_error: OnError | None = None,
) -> Iterator[tuple[str, int, int]]:
    """Yield every image file under ``root`` (recursively) as ``(path, size, mtime_ns)``, the path a string (``root``
    joined with the names: absolute and normalised when ``root`` is), by :func:`iter_image_files`' rules. This is what
    ingest walks
    (no ``Path`` object per file: a no-op run at 1M files makes a million of them).

    ``extensions``: lower-case extensions without the dot; default :func:`supported_extensions`.
    ``on_error(path, reason)``: called for each entry skipped because of an error or because it is
    not a regular file. Raises :class:`~clipindex.errors.WalkError` only when ``root`` itself is not a
    folder that can be listed.
    """
    exts = supported_extensions() if extensions is None else frozenset(e.lower().lstrip(".") for e in extensions)
    root_str = os.fspath(root)
    try:
        root_st = os.stat(root_str)
    except OSError as exc:
        raise WalkError(f"{root_str}: cannot read the folder to index ({_reason(exc)})") from exc
    if not stat.S_ISDIR(root_st.st_mode):
        raise WalkError(f"{root_str}: is not a folder ({file_kind(root_st.st_mode)})")
    try:
        first = _sorted_entries(root_str)
    except OSError as exc:
        raise WalkError(f"{root_str}: cannot list the folder to index ({_reason(exc)})") from exc

    visited: set[tuple[int, int]] = {(root_st.st_dev, root_st.st_ino)}
    root_real = os.path.realpath(root_str)
    stack: list[Iterator[os.DirEntry[str]]] = [iter(first)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name
        if name.startswith("."):
            continue
        try:
            # d_type answers for plain entries; symlinks (and DT_UNKNOWN) need a stat.
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            try:
                st = entry.stat()
            except OSError as exc:
                if on_error is not None:
                    on_error(entry.path, f"cannot read folder: {_reason(exc, entry)}")
                continue
            if not stat.S_ISDIR(st.st_mode):  # replaced by something else since scandir
                if has_image_extension(name, exts) and on_error is not None:
                    on_error(entry.path, f"skipped: {file_kind(st.st_mode)}")
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:  # symlink loop, or a folder reachable twice
                continue
            unsafe = _unsafe_folder_link(entry, root_real) if entry.is_symlink() else None
            if unsafe is not None:
                if on_error is not None:
                    on_error(entry.path, unsafe)
                continue
            visited.add(key)
            try:
                children = _sorted_entries(entry.path)
            except OSError as exc:
                if on_error is not None:
                    on_error(entry.path, f"cannot list folder: {_reason(exc)}")
                continue
            stack.append(iter(children))
            continue
        if not has_image_extension(name, exts):
            continue
        try:
            st = entry.stat()  # follows symlinks
        except OSError as exc:
            if on_error is not None:
                on_error(entry.path, _reason(exc, entry))
            continue
        if not stat.S_ISREG(st.st_mode):
            if on_error is not None:
                on_error(entry.path, f"skipped: {file_kind(st.st_mode)}, not a regular file")
            continue
        yield entry.path, st.st_size, st.st_mtime_ns
