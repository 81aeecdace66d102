"""Where the converted model is: one answer for every command, from any current folder.

Precedence (:func:`resolve_model_dir`):

1. ``--model-dir``;
2. ``$CLIPINDEX_MODEL_DIR``;
3. the model folder that built the collection (recorded by every ingest with the collection's last-ingest
   summary: :func:`model_record`), when it still holds a model;
4. the per-user default, :func:`default_model_dir`: ``$XDG_DATA_HOME/clipindex/models/default`` (else
   ``~/.local/share/clipindex/models/default``). ``clipindex convert`` writes there unless told otherwise, and
   it is the only folder ingest converts into by itself.

Nothing here depends on the current folder: a relative ``--model-dir`` is made absolute before it is recorded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from clipindex.errors import ModelNotFoundError
from clipindex.model.manifest import ModelManifest
from clipindex.model.model_format import MANIFEST_NAME, VISION_FILE
from clipindex.settings import ENV_MODEL_DIR, default_model_dir

__all__ = [
    "ModelLocation",
    "ModelOrigin",
    "default_model_dir",
    "model_record",
    "recorded_model_dir",
    "require_model",
    "resolve_model_dir",
]

#: summary keys of the model that built a collection (saved with the last ingest's summary)
RECORD_KEYS = ("model_dir", "model", "embedding_dim", "vision_sha256")


class ModelOrigin(str, Enum):
    """Where the model folder in use came from (what messages say, and whether ingest may convert into it)."""

    FLAG = "--model-dir"
    ENV = ENV_MODEL_DIR
    COLLECTION = "the collection"
    DEFAULT = "the default"


@dataclass(frozen=True)
class ModelLocation:
    path: Path
    origin: ModelOrigin

    @property
    def explicit(self) -> bool:
        """Named by the user (flag or environment): never converted into, never replaced by another folder."""
        return self.origin in (ModelOrigin.FLAG, ModelOrigin.ENV)


def model_record(manifest: ModelManifest) -> dict[str, Any]:
    """What a collection records about the model that built it: absolute folder, name, dimension, and the
    sha256 of ``vision.onnx`` from the manifest (no hashing here)."""
    vision = manifest.files.get(VISION_FILE) or {}
    return {
        "model_dir": os.path.abspath(manifest.model_dir),
        "model": manifest.model_name,
        "embedding_dim": manifest.embedding_dim,
        "vision_sha256": vision.get("sha256"),
    }


def recorded_model_dir(summary: Mapping[str, Any] | None) -> Path | None:
    """The model folder recorded with a collection's last-ingest summary, when it still holds a model."""
    if not summary:
        return None
    folder = summary.get("model_dir")
    if not isinstance(folder, str) or not folder:
        return None
    path = Path(folder)
    return path if (path / MANIFEST_NAME).is_file() else None


def resolve_model_dir(
    given: Path | None, origin: ModelOrigin | None, summary: Mapping[str, Any] | None = None
) -> ModelLocation:
    """The model folder to use: ``given`` (from ``origin``: the flag or the environment) wins, then the folder
    recorded in the collection's ``summary``, then :func:`default_model_dir`."""
    if given is not None:
        return ModelLocation(Path(given).expanduser(), origin or ModelOrigin.FLAG)
    recorded = recorded_model_dir(summary)
    if recorded is not None:
        return ModelLocation(recorded, ModelOrigin.COLLECTION)
    return ModelLocation(default_model_dir(), ModelOrigin.DEFAULT)


def require_model(location: ModelLocation) -> ModelLocation:
    """``location``, unless it is the default folder and holds no model yet: then say what makes one (the
    other folders get :class:`~clipindex.model.manifest.ModelManifest`'s own message)."""
    if location.origin == ModelOrigin.DEFAULT and not (location.path / MANIFEST_NAME).exists():
        raise ModelNotFoundError(
            f"no model yet (none in {location.path}, the default model folder): `clipindex ingest DIR` converts "
            "one first, or run `clipindex convert` (or pass --model-dir / set CLIPINDEX_MODEL_DIR)"
        )
    return location
