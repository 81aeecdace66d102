"""Contender ``plain``: the plain way, PIL -> transformers' ``CLIPImageProcessor`` -> PyTorch ``CLIPModel``.

:func:`measure` runs :func:`child` in a fresh process (``bench.py _plain``): interpreter start, imports and model
load are counted, batches of 25.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import image_files, run_child, script_cmd


def measure(folder: Path, checkpoint: Path) -> tuple[Any, dict[str, Any], float, int]:
    """(child result, its detail, timed seconds, images) for one run over ``folder``."""
    files = len(image_files(folder))
    result = run_child(
        script_cmd("bench.py", "_plain", "--images", str(folder), "--checkpoint", str(checkpoint))
    ).check()
    detail = result.json()
    if detail["images"] != files:
        raise RuntimeError(f"plain pipeline embedded {detail['images']} of {files}")
    return result, detail, result.wall_s, files


def child(folder: Path, checkpoint: Path, batch_size: int) -> dict[str, Any]:
    """The plain way (seed 003): PIL -> CLIPImageProcessor -> CLIPModel.get_image_features, in batches."""
    t0 = time.perf_counter()
    import warnings

    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    t_import = time.perf_counter()
    model = CLIPModel.from_pretrained(str(checkpoint)).eval()
    processor = CLIPImageProcessor.from_pretrained(str(checkpoint))
    t_load = time.perf_counter()
    files = image_files(folder)
    decode_s = process_s = model_s = 0.0
    rows: list[Any] = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            a = time.perf_counter()
            images = [Image.open(f).convert("RGB") for f in files[start : start + batch_size]]
            b = time.perf_counter()
            inputs = processor(images=images, return_tensors="pt")
            c = time.perf_counter()
            out = model.get_image_features(pixel_values=inputs["pixel_values"])
            features = out if isinstance(out, torch.Tensor) else out.pooler_output
            features = features / features.norm(dim=-1, keepdim=True)
            rows.append(features.numpy())
            d = time.perf_counter()
            decode_s += b - a
            process_s += c - b
            model_s += d - c
    vectors = np.concatenate(rows)
    end = time.perf_counter()
    return {
        "images": int(vectors.shape[0]),
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "decode_s": decode_s,
        "processor_s": process_s,
        "model_s": model_s,
        "in_process_s": end - t0,
        "torch_threads": torch.get_num_threads(),
    }
