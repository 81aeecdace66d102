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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from indexer.errors import ModelNotFoundError
from indexer.manifest import MANIFEST_NAME, VISION_FILE, ModelManifest, missing_manifest_message
from indexer.settings import ENV_MODEL_DIR, default_model_dir

__all__ = [
    "ModelLocation",
    "ModelOrigin",
    "default_model_dir",
    "ensure_model",
    "model_record",
    "recorded_model_dir",
    "require_model",
    "resolve_model_dir",
    "run_converter",
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
    other folders get :class:`~indexer.manifest.ModelManifest`'s own message)."""
    if location.origin == ModelOrigin.DEFAULT and not (location.path / MANIFEST_NAME).exists():
        raise ModelNotFoundError(
            f"no model yet (none in {location.path}, the default model folder): `clipindex ingest DIR` converts "
            "one first, or run `clipindex convert` (or pass --model-dir / set CLIPINDEX_MODEL_DIR)"
        )
    return location


def ensure_model(location: ModelLocation, source_model: str, progress: Callable[[str], None] | None = None) -> None:
    """Convert ``source_model`` first when the default folder has no model (the README's one-command start).

    A folder the user named (--model-dir, CLIPINDEX_MODEL_DIR) is never converted into, and neither is a folder
    holding other files: a typo must not become a model. ``progress`` hears the conversion's steps.
    """
    import shlex

    model_dir: Path = location.path
    if (model_dir / MANIFEST_NAME).is_file():
        return
    if location.origin != ModelOrigin.DEFAULT:
        if model_dir.exists():
            raise ModelNotFoundError(missing_manifest_message(model_dir))
        raise ModelNotFoundError(
            f"{model_dir}: no such model folder ({location.origin.value}); convert a model into it with "
            f"`clipindex convert --output {shlex.quote(str(model_dir))}`, or leave {location.origin.value} out to "
            "use the default model folder"
        )
    empty_dir = model_dir.is_dir() and not any(model_dir.iterdir())
    if model_dir.exists() and not empty_dir:  # never convert over someone's files
        raise ModelNotFoundError(missing_manifest_message(model_dir))
    if progress is not None:
        progress(f"No model in {model_dir}: converting {source_model} first (clipindex convert)")
    run_converter(source_model, model_dir, force=empty_dir, progress=progress)


def run_converter(
    source: str,
    output: Path | None,
    *,
    quantize: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Any:
    """Run :func:`convert.api.convert_model` (the [convert] extra): the runtime's only import of ``convert``.

    Fails with one line naming the extra when torch, transformers or onnx are missing, before anything is
    loaded. Returns the :class:`convert.api.ConvertResult`.
    """
    from convert.api import convert_model, require_convert_extra

    require_convert_extra()
    return convert_model(source, output, quantize=quantize, force=force, progress=progress)
