"""Every default, environment variable name and per-user folder of clipindex, in one place.

The CLI's options (:mod:`clipindex.cli.options`) and the library's keyword defaults both read from here, so a default
changes in one line. Folders follow the XDG base directories: data (the embedded store, the default model),
cache (optimised ONNX models) and state (ingest locks). Imports nothing heavy: ``clipindex --help`` loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

APP = "clipindex"

# --- environment variable names -------------------------------------------------------------------------------

ENV_SOURCE_MODEL = "CLIPINDEX_SOURCE_MODEL"
ENV_MODEL_DIR = "CLIPINDEX_MODEL_DIR"
ENV_DATA_DIR = "CLIPINDEX_DATA_DIR"
ENV_CACHE_DIR = "CLIPINDEX_CACHE_DIR"
ENV_STATE_DIR = "CLIPINDEX_STATE_DIR"
ENV_QDRANT_URL = "CLIPINDEX_QDRANT_URL"
ENV_API_KEY_FILE = "CLIPINDEX_API_KEY_FILE"
ENV_API_KEY = "QDRANT_API_KEY"
ENV_COLLECTION = "CLIPINDEX_COLLECTION"
ENV_TIMEOUT = "CLIPINDEX_TIMEOUT"
ENV_WAIT = "CLIPINDEX_WAIT"
ENV_BATCH_SIZE = "CLIPINDEX_BATCH_SIZE"
ENV_DEVICE = "CLIPINDEX_DEVICE"
ENV_PRECISION = "CLIPINDEX_PRECISION"
ENV_ENGINE = "CLIPINDEX_ENGINE"
ENV_SHARD = "CLIPINDEX_SHARD"
ENV_WORKERS = "CLIPINDEX_WORKERS"
ENV_MAX_PIXELS = "CLIPINDEX_MAX_PIXELS"
ENV_DRAFT = "CLIPINDEX_DRAFT"
ENV_MIGRATE_TO = "CLIPINDEX_MIGRATE_TO"
ENV_MIN_FREE_MB = "CLIPINDEX_MIN_FREE_MB"
ENV_QUANTIZATION = "CLIPINDEX_QUANTIZATION"
ENV_HNSW_M = "CLIPINDEX_HNSW_M"
ENV_HNSW_EF_CONSTRUCT = "CLIPINDEX_HNSW_EF_CONSTRUCT"
ENV_SERVE_HOST = "CLIPINDEX_SERVE_HOST"
ENV_SERVE_PORT = "CLIPINDEX_SERVE_PORT"
ENV_SERVE_TOKEN = "CLIPINDEX_SERVE_TOKEN"
ENV_SERVE_TOKEN_FILE = "CLIPINDEX_SERVE_TOKEN_FILE"
ENV_SERVE_CORS_ORIGIN = "CLIPINDEX_SERVE_CORS_ORIGIN"
ENV_THUMBNAIL_CACHE_MB = "CLIPINDEX_THUMBNAIL_CACHE_MB"
ENV_NO_SERVER = "CLIPINDEX_NO_SERVER"

# --- defaults -------------------------------------------------------------------------------------------------

#: the checkpoint ``convert`` (and ingest's first-run auto-conversion) converts unless told
DEFAULT_MODEL_ID = "openai/clip-vit-base-patch32"
DEFAULT_COLLECTION = "images"
#: images per inference batch, and per verified upsert
DEFAULT_BATCH_SIZE = 25
#: points per page read and per upsert when migrating
DEFAULT_MIGRATE_BATCH_SIZE = 256
#: seconds to keep retrying an unreachable Qdrant server
DEFAULT_TIMEOUT_S = 30.0
#: seconds a command waits for the embedded store while another process has it open
DEFAULT_WAIT_S = 60.0
#: search results
DEFAULT_LIMIT = 10
DEFAULT_DEVICE = "auto"
#: search and classify run one query's tower: the CPU is ready sooner than CUDA
DEFAULT_QUERY_DEVICE = "cpu"
DEFAULT_PRECISION = "fp32"
PRECISIONS = ("fp32", "int8")
#: the inference engines (clipindex.model.engines): ONNX Runtime, OpenVINO (the [openvino] extra), or auto's choice
ENGINE_ONNXRUNTIME: Final = "onnxruntime"
ENGINE_OPENVINO: Final = "openvino"
ENGINE_AUTO: Final = "auto"
ENGINES: tuple[str, ...] = (ENGINE_ONNXRUNTIME, ENGINE_OPENVINO, ENGINE_AUTO)
DEFAULT_ENGINE: Final = ENGINE_ONNXRUNTIME
#: twice Pillow's ``Image.MAX_IMAGE_PIXELS`` (Pillow's own refusal threshold)
DEFAULT_MAX_PIXELS = 2 * 89_478_485
#: DCT-scaled JPEG decoding (docs/design.md)
DEFAULT_DRAFT = True
#: free space the embedded store keeps before it writes (``CLIPINDEX_MIN_FREE_MB`` overrides it)
DEFAULT_MIN_FREE_BYTES = 64 * 2**20
#: a new server collection's vector storage: int8 copy in RAM (``none``: float32 in RAM), Qdrant's HNSW defaults
DEFAULT_QUANTIZATION: Final = "int8"
DEFAULT_HNSW_M = 16
DEFAULT_HNSW_EF_CONSTRUCT = 100
#: image inputs given as URLs: seconds per request, and bytes at most
DEFAULT_URL_TIMEOUT_S = 10.0
DEFAULT_MAX_URL_BYTES = 64 * 1024 * 1024

#: ``clipindex serve``: loopback only unless told, on this port (0 picks a free one)
DEFAULT_SERVE_HOST = "127.0.0.1"
DEFAULT_SERVE_PORT = 8765
#: request bodies (an uploaded query image) above this are refused with 413
DEFAULT_MAX_UPLOAD_BYTES = 64 * 2**20
#: thumbnails: the longest side served by default, the largest one asked for, and the disk cache's cap
DEFAULT_THUMBNAIL_SIZE = 256
MAX_THUMBNAIL_SIZE = 1024
DEFAULT_THUMBNAIL_CACHE_BYTES = 512 * 2**20
#: results one API search returns at most (``limit``), and how deep ``offset`` may page
MAX_SEARCH_LIMIT = 1000
MAX_SEARCH_OFFSET = 10_000

# --- per-user folders -----------------------------------------------------------------------------------------


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else Path.home() / fallback


def default_data_dir() -> Path:
    """The embedded store: ``$CLIPINDEX_DATA_DIR``, else ``$XDG_DATA_HOME/clipindex``, else
    ``~/.local/share/clipindex``."""
    explicit = os.environ.get(ENV_DATA_DIR)
    if explicit:
        return Path(explicit).expanduser()
    return _xdg("XDG_DATA_HOME", ".local/share") / APP


def default_model_dir() -> Path:
    """The per-user model folder: ``$XDG_DATA_HOME/clipindex/models/default``, else
    ``~/.local/share/clipindex/models/default``. Independent of ``CLIPINDEX_DATA_DIR`` (the store)."""
    return _xdg("XDG_DATA_HOME", ".local/share") / APP / "models" / "default"


def default_state_dir() -> Path:
    """Local state (ingest locks): ``$CLIPINDEX_STATE_DIR``, ``$XDG_STATE_HOME/clipindex`` or
    ``~/.local/state/clipindex``."""
    explicit = os.environ.get(ENV_STATE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    return _xdg("XDG_STATE_HOME", ".local/state") / APP


def cache_dir() -> Path | None:
    """Optimised models: ``$CLIPINDEX_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipindex``; ``None`` when
    ``CLIPINDEX_CACHE_DIR=off``."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit == "off":
        return None
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / APP


def thumbnail_cache_bytes_from_env() -> int:
    """``$CLIPINDEX_THUMBNAIL_CACHE_MB`` in bytes, else :data:`DEFAULT_THUMBNAIL_CACHE_BYTES`."""
    value = os.environ.get(ENV_THUMBNAIL_CACHE_MB)
    return int(float(value) * 2**20) if value else DEFAULT_THUMBNAIL_CACHE_BYTES


def api_key_from_env() -> str | None:
    """``$QDRANT_API_KEY``, or ``None`` when unset or empty."""
    return os.environ.get(ENV_API_KEY) or None


def min_free_bytes_from_env() -> int:
    """``$CLIPINDEX_MIN_FREE_MB`` in bytes, else :data:`DEFAULT_MIN_FREE_BYTES`."""
    value = os.environ.get(ENV_MIN_FREE_MB)
    return int(float(value) * 2**20) if value else DEFAULT_MIN_FREE_BYTES


#: ``clipindex duplicates``: cosine similarity at or above which two photos are near-duplicates (immich's default
#: cosine distance, 0.01)
DEFAULT_MIN_SIMILARITY = 0.99
