"""Contender ``fastembed``: fastembed's ``ImageEmbedding``, as a Qdrant user would run it.

:func:`measure` runs :func:`child` in a fresh process of an interpreter that has fastembed
(:func:`fastembed_python`), on the converted ``vision.onnx`` (:func:`make_fastembed_model`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness import image_files, run_child

FASTEMBED_MODEL = "Qdrant/clip-ViT-B-32-vision"  # fastembed's registry name of CLIP ViT-B/32's vision tower


def measure(folder: Path, model_dir: Path, work: Path) -> tuple[Any, dict[str, Any], float, int]:
    """(child result, its detail, timed seconds, images) for one run over ``folder``."""
    files = len(image_files(folder))
    python = fastembed_python(work)
    if python is None:
        raise RuntimeError("fastembed is not installed (pip install fastembed, or set FASTEMBED_PYTHON)")
    folder_fe = make_fastembed_model(work, model_dir)
    cmd = [python, str(Path(__file__).resolve().with_name("bench.py")), "_fastembed", "--images", str(folder)]
    cmd += ["--model-dir", str(folder_fe)]
    result = run_child(cmd).check()
    detail = result.json()
    if detail["images"] != files:
        raise RuntimeError(f"fastembed embedded {detail['images']} of {files}")
    return result, detail, result.wall_s, files


def child(folder: Path, model_dir: Path, batch_size: int) -> dict[str, Any]:
    """fastembed's ``ImageEmbedding``, as a Qdrant user would run it: the registry's CLIP ViT-B/32 vision model,
    pointed offline at the converted ``vision.onnx`` through ``specific_model_path``, batches of 25. fastembed
    opens each file with PIL and decodes it in full (no draft), with no EXIF orientation."""
    t0 = time.perf_counter()
    import numpy as np
    from fastembed import ImageEmbedding

    t_import = time.perf_counter()
    model = ImageEmbedding(FASTEMBED_MODEL, specific_model_path=str(model_dir))
    t_load = time.perf_counter()
    files = [str(f) for f in image_files(folder)]
    vectors = np.stack(list(model.embed(files, batch_size=batch_size)))
    end = time.perf_counter()
    return {
        "images": int(vectors.shape[0]),
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "embed_s": end - t_load,
        "in_process_s": end - t0,
    }


def make_fastembed_model(work: Path, model_dir: Path) -> Path:
    """The folder fastembed's ``specific_model_path`` wants: ``model.onnx`` (a link to the converted vision tower,
    which fits as is) and the ``preprocessor_config.json`` of fastembed's own ``Qdrant/clip-ViT-B-32-vision``
    (CLIPImageProcessor: shortest edge and centre crop at the model's size, its mean and std)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    folder = work / "fastembed-model"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((model_dir / "vision.onnx").resolve())
    size = int(manifest["image_size"])
    config = {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": manifest["image_mean"],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": manifest["image_std"],
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
    return folder


def fastembed_python(work: Path) -> str | None:
    """An interpreter that has fastembed: ``$FASTEMBED_PYTHON``, this one, or ``_work/fastembed-venv`` (a separate
    venv keeps fastembed's ``huggingface-hub<2`` pin out of the dev venv); None: the contender is skipped."""
    import importlib.util

    explicit = os.environ.get("FASTEMBED_PYTHON")
    if explicit:
        return explicit
    if importlib.util.find_spec("fastembed") is not None:
        return sys.executable
    venv = work / "fastembed-venv" / "bin" / "python"
    return str(venv) if venv.exists() else None
