"""Conversion on demand: what ``clipindex ingest`` does when the default model folder is empty, and the one
door through which the CLI reaches the converter (its torch, transformers and onnx load only then)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipindex.errors import ModelNotFoundError
from clipindex.model.locate import ModelLocation, ModelOrigin
from clipindex.model.manifest import missing_manifest_message
from clipindex.model.model_format import MANIFEST_NAME

__all__ = ["ensure_model", "run_converter"]


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
    """Run :func:`clipindex.convert.api.convert_model` (the [convert] extra), imported only now.

    Fails with one line naming the extra when torch, transformers or onnx are missing, before anything is
    loaded. Returns the :class:`clipindex.convert.api.ConvertResult`.
    """
    from clipindex.convert.api import convert_model, require_convert_extra

    require_convert_extra()
    return convert_model(source, output, quantize=quantize, force=force, progress=progress)
