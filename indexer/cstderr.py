"""Keep what C libraries print while images are decoded out of the terminal and the cron log.

libtiff, libjpeg and friends write warnings (``TIFFFetchNormalTag: ...``, ``Fax4Decode: Bad code word ...``)
straight to file descriptor 2, with no file name; Python cannot catch them. While
:func:`capture_c_stderr` is active (``clipindex ingest``):

* fd 2 is a pipe read by a thread; Python's own ``sys.stderr`` (the start line, ``failed:`` lines, the
  progress bar) writes to a duplicate of the original fd 2, so it is untouched;
* every decode runs inside :func:`decoding`, which writes a begin and an end marker into the pipe (4 bytes
  each, atomic, so the markers are in the pipe's order even with several decode threads). Text that the
  reader finds between markers came from a decode and is dropped; any other text (a crash report, a library
  warning outside decoding) is passed on to the original fd 2;
* a file that fails is decoded once more by :func:`explain`, alone (the other decode threads wait: a
  readers-writer lock), and what the C libraries print during that decode is returned, so that the useful
  part goes into the file's one ``failed: PATH: REASON`` line.

Pillow's own log records (``PIL`` loggers, e.g. ``More samples per pixel than can be decoded`` from a TIFF header,
which Python's last-resort handler would print) are written to fd 2 meanwhile, so they are filtered the same way.
A reason keeps one line of what was said: the first that reports an error rather than a warning about a tag.

Outside :func:`capture_c_stderr`, :func:`decoding` and :func:`explain` cost nothing and change nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["capture_c_stderr", "decoding", "explain", "short_reason"]

_BEGIN = b"\x00cb\x00"
_END = b"\x00ce\x00"
_XBEGIN = b"\x00xb\x00"
_XEND = b"\x00xe\x00"
_MARKERS = (_BEGIN, _END, _XBEGIN, _XEND)
_MARKER_LEN = 4
#: how long :func:`explain` waits for the reader to reach its end marker
_SYNC_TIMEOUT_S = 5.0
#: a reason with what the libraries said stays shorter than this (one line of their detail at most)
MAX_REASON_CHARS = 200
#: lines that are warnings about a file's tags, not why it failed (libtiff's ``TIFFFetchNormalTag: ...``)
_WARNING_MARKS = ("tiffreaddirectory", "tiffreadcustomdirectory", "tifffetchnormaltag", "unknown field", "ascii value")
#: words that mark the line saying why a decode failed
_ERROR_MARKS = (
    "error",
    "invalid",
    "bad ",
    "cannot",
    "can't",
    "premature",
    "corrupt",
    "not yet in table",
    "more samples",
)
#: file names libraries give to in-memory streams (Pillow hands libtiff "tempfile.tif"): not useful
_NOISE_PREFIXES = ("tempfile.tif: ",)


class _ReadersWriter:
    """Many decodes at once, or one alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Fd2Handler(logging.Handler):
    """Writes log records to file descriptor 2 (the pipe while capturing), one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            os.write(2, (" ".join(self.format(record).split()) + "\n").encode("utf-8", "backslashreplace"))


class _Capture:
    def __init__(self) -> None:
        self.lock = _ReadersWriter()
        self.state = threading.Condition()
        self.open_windows = 0
        self.isolated = False
        self.isolated_text = bytearray()
        self.isolated_done = 0
        self.saved_fd = -1
        self.read_fd = -1
        self.thread: threading.Thread | None = None
        self.old_stderr: Any = None
        self.handler = _Fd2Handler()
        self.pil_propagate = True

    # --- start and stop -------------------------------------------------------------------------------

    def start(self) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        self.saved_fd = os.dup(2)
        self.read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        if _is_fd2(sys.stderr):  # Python's own messages keep going where they went
            self.old_stderr = sys.stderr
            stream = os.fdopen(os.dup(self.saved_fd), "wb", buffering=0)
            sys.stderr = io.TextIOWrapper(
                stream,
                encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                errors="backslashreplace",
                line_buffering=True,
                write_through=True,
            )
        self.thread = threading.Thread(target=self._read, name="clipindex-c-stderr", daemon=True)
        self.thread.start()
        pil = logging.getLogger("PIL")
        self.pil_propagate, pil.propagate = pil.propagate, False
        pil.addHandler(self.handler)

    def stop(self) -> None:
        pil = logging.getLogger("PIL")
        pil.removeHandler(self.handler)
        pil.propagate = self.pil_propagate
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        if self.old_stderr is not None:
            replaced, sys.stderr = sys.stderr, self.old_stderr
            with contextlib.suppress(Exception):
                replaced.close()
        os.dup2(self.saved_fd, 2)  # the pipe's last writer goes: the reader sees the end
        if self.thread is not None:
            self.thread.join(timeout=_SYNC_TIMEOUT_S)
        os.close(self.saved_fd)
        os.close(self.read_fd)

    # --- the reader thread ----------------------------------------------------------------------------

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                pending = self._route(pending + chunk)
            except Exception:  # never stop draining the pipe (a writer would block): pass the bytes on as they are
                with contextlib.suppress(OSError):
                    os.write(self.saved_fd, pending + chunk)
                pending = b""
        if pending:
            self._text(pending)

    def _route(self, data: bytes) -> bytes:
        """Handle ``data`` up to its last complete marker; return what may be the start of one."""
        while data:
            at = data.find(b"\x00")
            if at < 0:
                self._text(data)
                return b""
            if at:
                self._text(data[:at])
                data = data[at:]
            if len(data) < _MARKER_LEN:
                return data
            marker = data[:_MARKER_LEN]
            if marker in _MARKERS:
                self._marker(marker)
                data = data[_MARKER_LEN:]
            else:  # a NUL byte that is no marker: text
                self._text(data[:1])
                data = data[1:]
        return b""

    def _marker(self, marker: bytes) -> None:
        with self.state:
            if marker == _BEGIN:
                self.open_windows += 1
            elif marker == _END:
                self.open_windows = max(0, self.open_windows - 1)
            elif marker == _XBEGIN:
                self.isolated = True
            else:
                self.isolated = False
                self.isolated_done += 1
                self.state.notify_all()

    def _text(self, data: bytes) -> None:
        with self.state:
            if self.isolated:
                self.isolated_text += data
                return
            if self.open_windows:
                return  # printed while some file was being decoded: dropped (a failure is explained alone)
        with contextlib.suppress(OSError):
            os.write(self.saved_fd, data)

    # --- used by the decode threads --------------------------------------------------------------------

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        with self.lock.shared():
            _write_marker(_BEGIN)
            try:
                yield
            finally:
                _write_marker(_END)

    def explain(self, redo: Callable[[], object]) -> str:
        with self.lock.exclusive():
            with self.state:
                self.isolated_text = bytearray()
                done = self.isolated_done
            _write_marker(_XBEGIN)
            try:
                redo()
            except Exception:  # the failure is already known; only its messages are wanted
                pass
            finally:
                _write_marker(_XEND)
            with self.state:
                self.state.wait_for(lambda: self.isolated_done > done, timeout=_SYNC_TIMEOUT_S)
                text = bytes(self.isolated_text)
        return _tidy(text.decode("utf-8", "backslashreplace"))


_active: _Capture | None = None
_active_lock = threading.Lock()


def _is_fd2(stream: Any) -> bool:
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _write_marker(marker: bytes) -> None:
    with contextlib.suppress(OSError):
        os.write(2, marker)


def _tidy(text: str) -> str:
    """Captured lines -> the one that says why: without in-memory file names; the first line reporting an error,
    else the first that is not a warning about a tag, else the first."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        for prefix in _NOISE_PREFIXES:
            line = line.replace(prefix, "")
        if line and line not in lines:
            lines.append(line)
    if not lines:
        return ""

    def warning(line: str) -> bool:
        return any(mark in line.lower() for mark in _WARNING_MARKS)

    errors = [line for line in lines if not warning(line) and any(m in line.lower() for m in _ERROR_MARKS)]
    others = [line for line in lines if not warning(line)]
    return (errors or others or lines)[0]


def short_reason(reason: str, detail: str = "") -> str:
    """``reason`` (the decisive error) then ``; the decoder said: DETAIL``, on one line, under
    :data:`MAX_REASON_CHARS` characters (the detail is cut first)."""
    reason = " ".join(reason.split())
    if len(reason) >= MAX_REASON_CHARS:
        return reason[: MAX_REASON_CHARS - 4] + "..."
    detail = " ".join(detail.split())
    if not detail:
        return reason
    text = f"{reason}; the decoder said: {detail}"
    if len(text) < MAX_REASON_CHARS:
        return text
    room = MAX_REASON_CHARS - 4 - len(reason) - len("; the decoder said: ")
    return f"{reason}; the decoder said: {detail[:room]}..." if room > 10 else reason


@contextlib.contextmanager
def capture_c_stderr() -> Iterator[None]:
    """For the duration of the block, route fd 2 through the filter described in the module doc. Nested or
    concurrent uses are no-ops; on a platform without ``os.pipe``/``os.dup2`` semantics, a no-op too."""
    global _active
    with _active_lock:
        if _active is not None:
            owner = None
        else:
            owner = _Capture()
            try:
                owner.start()
            except OSError:
                owner = None
            _active = owner
    try:
        yield
    finally:
        if owner is not None:
            with _active_lock:
                _active = None
            owner.stop()


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """Around one file's decode (any thread): what C libraries print meanwhile is kept out of the terminal."""
    capture = _active
    if capture is None:
        yield
        return
    with capture.window():
        yield


def explain(reason: str, redo: Callable[[], object]) -> str:
    """``reason``, followed by what the C libraries print while ``redo`` (the failed decode) runs again alone;
    just ``reason`` when nothing is captured."""
    capture = _active
    if capture is None:
        return short_reason(reason)
    return short_reason(reason, capture.explain(redo))
