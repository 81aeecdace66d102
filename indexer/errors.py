"""Typed exceptions raised by the clipindex library.

Library code raises these; only :mod:`clipindex.cli` and :mod:`clipindex.web` turn them into one-line messages,
exit codes and HTTP status codes.
Conversion's errors (:mod:`clipindex.convert.errors`) derive from :class:`ClipIndexError` too.
Every message is meant to be shown to a user as is: it names the file (or URL) at fault and the fix.
"""

from __future__ import annotations


class ClipIndexError(Exception):
    """Base class for every error clipindex raises on purpose (this module's and :mod:`clipindex.convert.errors`)."""

    #: process exit code the CLI uses for this error
    exit_code: int = 1
    #: lines the CLI prints under the one-line message (ways forward), one per line
    hints: tuple[str, ...] = ()


# --- models -------------------------------------------------------------------------


class ModelNotFoundError(ClipIndexError):
    """The model folder (manifest.json, vision.onnx, text.onnx, tokenizer.json) is missing or incomplete."""


class ModelIntegrityError(ClipIndexError):
    """A model file does not match the sha256 recorded in its manifest."""


# --- images -----------------------------------------------------------------------------------------


class ImageError(ClipIndexError):
    """One image could not be decoded or preprocessed. Ingest reports it and goes on."""

    def __init__(self, path: str, reason: str) -> None:
        reason = " ".join(reason.split())  # always one line (a server's reply, a library's message...)
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --- runtime ----------------------------------------------------------------------------------------


class DeviceError(ClipIndexError):
    """The requested ONNX Runtime execution provider is not available."""


class StoreError(ClipIndexError):
    """The vector store failed (unreachable server, unwritable data dir, corrupt store...)."""


class StoreUnavailableError(StoreError):
    """The Qdrant server could not be reached after retries."""

    exit_code = 69  # EX_UNAVAILABLE


class CollectionMismatchError(StoreError):
    """The collection was built by another model (name or dimension) than the one in use."""


class CollectionNotFoundError(StoreError):
    """The collection does not exist yet (nothing was ingested)."""


class StoreDamagedError(StoreError):
    """The store's files are there but cannot be read back: a segment, its vectors or its payloads are damaged.

    The message names the store and the way out (``clipindex check --repair``, then an ingest re-embeds what the
    repair could not keep)."""


class CountMismatchError(StoreError):
    """After an upsert, the collection's point count differs from what was expected (after one retry)."""


class LockHeldError(ClipIndexError):
    """Another ingest holds the store's lock."""

    exit_code = 75  # EX_TEMPFAIL: cron can treat it as "try again later"


class FailedFilesError(ClipIndexError):
    """`--strict`: the run completed but some files failed."""


# --- walking and decoding (clipindex.ingest.walk, clipindex.images.preprocess) ---------------------------------------


class WalkError(ClipIndexError):
    """The folder to index does not exist, is not a folder, or cannot be listed."""


class ImageTooLargeError(ImageError):
    """The image declares more pixels than the limit (a possible decompression bomb); see ``--max-pixels``."""


class StoreBusyError(StoreError):
    """The embedded store is open in another process (Qdrant Edge allows one process per shard)."""

    exit_code = 75  # EX_TEMPFAIL: try again when the other process has finished


# --- search (clipindex.ops.search) -----------------------------------------------------------------------


class NothingIndexedError(CollectionNotFoundError):
    """A search found no collection, or an empty one: run ``clipindex ingest DIR`` first."""


class OutputError(ClipIndexError):
    """An output file (``search --html FILE``) could not be written."""


# --- serve (clipindex.web) ---------------------------------------------------------------------------------


class PointNotFoundError(ClipIndexError):
    """No indexed point has this id (a thumbnail or image asked for by id), or its file is gone."""


class ServeError(ClipIndexError):
    """``clipindex serve`` cannot start: a non-loopback address without a token, a port in use, a bad token file."""


class RequestTooLargeError(ClipIndexError):
    """A request body (an uploaded query image) is over the upload cap."""


class ServedError(ClipIndexError):
    """An error a running ``clipindex serve`` answered a request with: its message, exit code and hints, so that
    ``clipindex search`` through the server fails exactly as it would in-process."""

    def __init__(self, message: str, exit_code: int = 1, hints: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.hints = hints


# --- warnings -------------------------------------------------------------------------------------


class DeviceFallbackWarning(UserWarning):
    """``device="auto"`` runs on the CPU although onnxruntime-gpu is installed (no usable CUDA device)."""


class EngineFallbackWarning(UserWarning):
    """``engine="auto"`` runs a tower on ONNX Runtime because OpenVINO's vectors failed the load-time check."""
