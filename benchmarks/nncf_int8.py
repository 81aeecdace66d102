"""OpenVINO's own int8 (NNCF post-training quantization) against ONNX Runtime's int8, on the full-size ViT-B/32.

Run from the repository root, the dev venv active, with an interpreter that has NNCF and OpenVINO (a separate venv:
``python3 -m venv V && V/bin/pip install nncf openvino onnxruntime``)::

    python benchmarks/nncf_int8.py --nncf-python V/bin/python

The dev venv preprocesses the calibration images (the converter's probe photos and the sample photos of
``tests/photos.py``) and 50 images of the 1080p set (the evaluation, never calibrated on) as ingest does, exact
decode. The NNCF interpreter quantizes ``vision.onnx`` (``ModelType.TRANSFORMER``, default preset), then times ONNX
Runtime fp32 and int8, OpenVINO bf16 and the NNCF model (2 threads, batches of 25, 3 rounds alternated, median) and
gives each one's per-image cosine against ONNX Runtime fp32. One JSON object on stdout. Benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "benchmarks" / "_work" / "models" / "clip-vit-base-patch32"
EVAL_SET = ROOT / "benchmarks" / "_work" / "inputs" / "1080p-96"


def dump(model_dir: Path, folder: Path, out: Path) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT / "tests"))
    from photos import RGB_PHOTO_NAMES, photos

    from clipindex.model.encode import Embedder
    from clipindex.model.engines import probe_pixels

    pre = Embedder(model_dir, device="cpu", draft=False).preprocessor
    sample = np.stack([pre.preprocess(p.convert("RGB")) for p in photos(RGB_PHOTO_NAMES).values()])
    np.save(out / "calib.npy", np.concatenate([probe_pixels(pre.preprocess), sample]))
    files = sorted(folder.glob("*.jpg"))[:50]
    np.save(out / "eval.npy", np.stack([pre.load_and_preprocess(f) for f in files]))


def measure(model_dir: Path, work: Path) -> dict[str, Any]:
    import nncf
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    calib, evaluation = np.load(work / "calib.npy"), np.load(work / "eval.npy")
    started = time.perf_counter()
    model = ov.Core().read_model(str(model_dir / "vision.onnx"))
    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    ov.save_model(quantized, str(work / "vision.nncf.xml"))
    out: dict[str, Any] = {"quantize_s": time.perf_counter() - started, "calibration_images": len(calib)}

    def ort_run(name: str) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_dir / name), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"pixel_values": x})[0]

    core = ov.Core()

    def ov_run(path: Path) -> Any:
        request = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 2}).create_infer_request()
        return lambda x: request.infer({0: x})[0].copy()

    runs = {
        "onnxruntime_fp32": ort_run("vision.onnx"),
        "onnxruntime_int8": ort_run("vision.int8.onnx"),
        "openvino_bf16": ov_run(model_dir / "vision.onnx"),
        "openvino_nncf_int8": ov_run(work / "vision.nncf.xml"),
    }

    def embed(run: Any) -> Any:
        vectors = np.concatenate([run(evaluation[i : i + 25]) for i in range(0, len(evaluation), 25)])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    reference = embed(runs["onnxruntime_fp32"])
    speeds: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(3):
        for key, run in runs.items():
            run(evaluation[:25])
            t0 = time.perf_counter()
            embed(run)
            speeds[key].append(len(evaluation) / (time.perf_counter() - t0))
    for key, run in runs.items():
        cosines = np.sum(embed(run) * reference, axis=1)
        out[key] = {
            "img_per_s": float(np.median(speeds[key])),
            "min_cosine": float(cosines.min()),
            "mean_cosine": float(cosines.mean()),
        }
    out["evaluation_images"] = len(evaluation)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nncf-python", default=sys.executable, help="an interpreter with nncf and openvino")
    parser.add_argument("--model-dir", type=Path, default=MODEL)
    parser.add_argument("--images", type=Path, default=EVAL_SET)
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.model_dir, args.measure), indent=1))
        return 0
    with tempfile.TemporaryDirectory() as work:
        dump(args.model_dir, args.images, Path(work))
        cmd = [args.nncf_python, __file__, "--model-dir", str(args.model_dir), "--measure", work]
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
