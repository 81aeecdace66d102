"""Contender ``pure``: the vision tower alone on ready ``pixel_values``, the ceiling (load time excluded), on ONNX
Runtime or (``engine="openvino"``) OpenVINO in its default precision on this CPU.

:func:`measure` runs :func:`child` in a fresh process (``bench.py _pure``) with the project's own session options,
batches of 25, after one cold pass; the median of the steady passes is the ceiling.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from harness import image_files, run_child, script_cmd

PURE_PASSES = 3  # steady passes over the set by the pure-model contender, after its first (cold) one


def measure(
    folder: Path, model_dir: Path, precision: str, engine: str = "onnxruntime"
) -> tuple[Any, dict[str, Any], float, int]:
    """(child result, its detail, timed seconds, images) for one run over ``folder``."""
    name = "vision.int8.onnx" if precision == "int8" else "vision.onnx"
    cmd = script_cmd("bench.py", "_pure", "--images", str(folder), "--model", str(model_dir / name))
    result = run_child([*cmd, "--engine", engine]).check()
    detail = result.json()
    timed_s, images = detail["infer_s"], detail["images"]
    # The same model with everything a real run pays counted: the whole process (interpreter, imports,
    # session load) and its first, cold pass over the set; only the tensor preparation and the steady
    # passes after it are taken out.
    loaded_s = result.wall_s - detail["prep_s"] - sum(detail["passes_s"][1:])
    detail["loaded_s"] = loaded_s
    detail["loaded_img_per_s"] = images / loaded_s
    return result, detail, timed_s, images


def child(folder: Path, model_file: Path, batch_size: int, engine: str = "onnxruntime") -> dict[str, Any]:
    """The ceiling: the vision tower alone (the project's session options) on ready pixel_values."""
    import numpy as np

    from clipindex.images.config import CLIP_DEFAULT
    from clipindex.images.preprocess import load_and_preprocess
    from clipindex.model.encode import CPU, OnnxTower, Tower, available_cores
    from clipindex.model.engines import OpenVinoTower, native_bf16

    files = image_files(folder)
    # Ready tensors: preprocess a few real images once and tile them (the pixel values do not change the speed).
    t_prep = time.perf_counter()
    sample = np.stack([load_and_preprocess(f, CLIP_DEFAULT, draft=True) for f in files[: min(8, len(files))]])
    pixels = np.ascontiguousarray(np.resize(sample, (len(files), *sample.shape[1:])), dtype=np.float32)
    t0 = time.perf_counter()
    tower: Tower
    if engine == "openvino":
        precision = "int8" if model_file.name.endswith(".int8.onnx") else "bf16" if native_bf16() else "fp32"
        tower = OpenVinoTower(model_file, precision=precision, threads=available_cores())
    else:
        tower = OnnxTower(model_file, [CPU])
    load_s = time.perf_counter() - t0
    # The first pass is the cold one (ONNX Runtime allocates its buffers on the first run); the median of the
    # others is the steady state, the ceiling.
    passes: list[float] = []
    for _ in range(1 + PURE_PASSES):
        t1 = time.perf_counter()
        for start in range(0, len(pixels), batch_size):
            tower.run(pixels[start : start + batch_size])
        passes.append(time.perf_counter() - t1)
    infer_s = statistics.median(passes[1:])
    return {
        "images": len(pixels),
        "load_s": load_s,
        "first_pass_s": passes[0],
        "prep_s": t0 - t_prep,
        "infer_s": infer_s,
        "passes_s": passes,
        "img_per_s": len(pixels) / infer_s,
        "engine": f"{tower.engine} {tower.precision}",
    }
