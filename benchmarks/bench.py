"""Throughput benchmark for ``clipindex ingest`` (issue 6), side by side with the plain transformers+PyTorch way.

Run from the repository root (the venv active)::

    python benchmarks/bench.py                 # full run: 96 images per set, 3 rounds, 100k-file no-op re-run
    python benchmarks/bench.py --rounds 5      # more rounds (medians get steadier on a noisy machine)
    python benchmarks/bench.py --quick         # dev run: 24 images, 1 round, 5k-file no-op (projected to 100k)

What it does, in one run:

1. **Inputs** (cached in ``benchmarks/_work/``, git-ignored): camera-like JPEGs made from the real sample photos of
   ``tests/photos.py`` (scikit-image / scikit-learn), cropped to 4:3 (a quarter of them portrait 3:4) and upscaled
   to 12 MP, or cropped to 16:9 and upscaled to 1920x1080, with mild sensor-like noise (sigma 3), JPEG quality 90.
   Every file differs (noise seed, mirror, crop position), so ingest's content-hash de-duplication never kicks in.
2. **Model**: the full-size random-weight ViT-B/32 checkpoint (``python -m convert.checkpoint --arch vit-b-32``),
   converted with the project's own converter (``clipindex convert --quantize int8``).
3. **Draft fidelity**: embedding cosine of the DCT-draft decode against the exact decode, per image, with the
   full-size model (fp32), on both sets; and int8 against fp32 (exact decode).
4. **Contenders**, alternated in every round (the order rotates each round), every one a fresh subprocess whose wall
   time, CPU time and peak RSS (``os.wait4`` rusage of that child) are recorded:

   - ``ingest fp32`` / ``ingest int8``: ``clipindex ingest SET --data-dir <fresh> --quiet --json`` end to end,
     interpreter start and model load counted, into the embedded Qdrant Edge store; the run must index every image;
   - ``ingest ... (draft on/off)``: the same with the non-default ``--draft``/``--no-draft`` (information only);
   - ``plain fp32``: PIL ``open().convert("RGB")`` -> transformers ``CLIPImageProcessor`` -> PyTorch
     ``CLIPModel.get_image_features``, batches of 25, interpreter start and model load counted;
   - ``pure ORT fp32`` / ``pure ORT int8``: the vision tower alone on ready ``pixel_values`` (batch 25, the project's
     own session options, after one warm-up batch; load time excluded): the ceiling.

5. **No-op re-run**: a synthetic tree of tiny JPEGs (100k by default) whose points are written straight into an
   embedded store with the payloads ingest writes (``indexer.points.make_payload``: same path, size, mtime_ns), then
   the real ``clipindex ingest`` over it, which must find every file unchanged.
6. **Search cold start** on that 100k-point store: ``benchmarks/search_cold_start.py`` when it exists, else
   ``clipindex search "a red car"`` in a fresh process, else (no search command yet) the library equivalent.

Results: medians (and the min-max over rounds) on stdout, ``benchmarks/results.md`` (a markdown table with the
ratios of issue 6 and the machine described), and the raw figures in ``benchmarks/_work/raw/``.
Benchmarks are not tests: CI does not run this.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_WORK = ROOT / "benchmarks" / "_work"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results.md"
MODEL_NAME = "clip-vit-base-patch32"
BATCH_SIZE = 25
JPEG_QUALITY = 90
NOISE_SIGMA = 3.0
SEARCH_QUERY = "a red car"
FASTEMBED_MODEL = "Qdrant/clip-ViT-B-32-vision"  # fastembed's registry name of CLIP ViT-B/32's vision tower
PURE_PASSES = 3  # steady passes over the set by the pure-model contender, after its first (cold) one
INPUT_FORMAT = 2  # bump to regenerate cached inputs

SETS: dict[str, dict[str, Any]] = {
    # name: aspect (w/h) of the crop before upscaling, megapixels; a quarter of the images are portrait
    "12mp": {"aspect": 4 / 3, "megapixels": 12.0, "label": "12 MP"},
    "1080p": {"aspect": 16 / 9, "megapixels": 1920 * 1080 / 1e6, "label": "1080p"},
}

# Issue 6's targets and the ceilings it computed (12 MP / 1080p).
TARGETS: dict[str, dict[str, float]] = {
    "12mp": {"vs_plain_fp32": 5.0, "vs_plain_int8": 8.0, "vs_pure_fp32": 0.65},
    "1080p": {"vs_plain_fp32": 1.8, "vs_plain_int8": 3.0, "vs_pure_fp32": 0.8},
}
CEILINGS: dict[str, dict[str, float]] = {
    "12mp": {"vs_plain_fp32": 5.9, "vs_plain_int8": 8.7, "vs_pure_fp32": 0.70},
    "1080p": {"vs_plain_fp32": 1.9, "vs_plain_int8": 3.2, "vs_pure_fp32": 0.89},
}
RSS_LIMIT_MB = 1500.0
NOOP_LIMIT_S_PER_100K = 10.0
SEARCH_LIMIT_S = 1.5


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# --- subprocesses -----------------------------------------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat`` (all cores summed)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return (math.nan, math.nan)
    hz = float(os.sysconf("SC_CLK_TCK"))
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is already in user)
    return ((total - idle) / hz, total / hz)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def wait_for_quiet(max_wait_s: float, busy_limit: float = 0.15) -> tuple[float, float]:
    """Wait (at most ``max_wait_s``) until the machine is mostly idle: the other users' load spoils timings.

    Returns (seconds waited, busy fraction of the last 1 s window).
    """
    started = time.perf_counter()
    while True:
        b0, t0 = cpu_seconds()
        time.sleep(1.0)
        b1, t1 = cpu_seconds()
        busy = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        waited = time.perf_counter() - started
        if busy <= busy_limit or waited >= max_wait_s or math.isnan(busy):
            return waited, busy


@dataclass
class ChildResult:
    """One subprocess: wall seconds from spawn to exit, CPU seconds, peak RSS, output.

    ``background`` is the CPU the *rest of the machine* used meanwhile, as a fraction of all cores
    (other users of a shared machine): a contender that ran with 0.5 had half the machine taken away.
    """

    cmd: list[str]
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    returncode: int
    stdout: str
    stderr: str
    background: float = 0.0

    def json(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    data = json.loads(line)
                    if isinstance(data, dict):
                        return data
        raise RuntimeError(f"no JSON object on stdout of {' '.join(self.cmd)}:\n{self.stdout[-2000:]}")

    def check(self) -> ChildResult:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.cmd)} exited {self.returncode}\nstdout: {self.stdout[-2000:]}\n"
                f"stderr: {self.stderr[-4000:]}"
            )
        return self


def child_env() -> dict[str, str]:
    """The environment of every contender: ours, without CLIPINDEX_* settings, offline for the hub, and with
    Python's default bytecode cache. A pip install compiles every package's ``.pyc`` (torch and transformers here
    have theirs); this checkout is an editable install, so without the cache clipindex alone would recompile its
    own modules (about 70 ms) in every run, which no installed user pays. ``PYTHONDONTWRITEBYTECODE``, which this
    machine sets, is therefore dropped for every contender alike."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout_s: float = 3600.0) -> ChildResult:
    """Run ``cmd``; its own rusage (``os.wait4``) gives the peak RSS and CPU time of exactly that child."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        busy0, _ = cpu_seconds()
        self0 = time.process_time()
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, cwd=ROOT, env=env or child_env())
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - started
        busy1, _ = cpu_seconds()
        child_cpu = usage.ru_utime + usage.ru_stime
        others = (busy1 - busy0) - child_cpu - (time.process_time() - self0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildResult(
            cmd=list(cmd),
            wall_s=wall,
            cpu_s=child_cpu,
            maxrss_mb=usage.ru_maxrss / 1024.0,  # KiB on Linux
            returncode=proc.returncode,
            stdout=out.read(),
            stderr=err.read(),
            background=max(0.0, others) / (wall * cores()) if wall > 0 and not math.isnan(others) else 0.0,
        )


def clipindex_cmd() -> list[str]:
    script = Path(sys.executable).with_name("clipindex")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "indexer"]


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# --- inputs -----------------------------------------------------------------------------------------------------


def _make_one(task: tuple[str, int, float, float, int]) -> tuple[str, int, int, int]:
    """Worker: one camera-like JPEG. Returns (path, width, height, bytes)."""
    from PIL import Image

    from tests.photos import PHOTO_NAMES, camera_size, photo

    out_path, index, aspect, megapixels, seed = task
    name = PHOTO_NAMES[index % len(PHOTO_NAMES)]
    variant = index // len(PHOTO_NAMES)
    image = photo(name).convert("RGB")
    if variant % 2 == 1:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if variant % 4 == 3:
        aspect = 1 / aspect  # portrait
    width, height = image.size
    slide = (variant * 0.37) % 1.0  # where the crop window sits
    if width / height > aspect:
        new_w = max(1, round(height * aspect))
        left = round((width - new_w) * slide)
        image = image.crop((left, 0, left + new_w, height))
    else:
        new_h = max(1, round(width / aspect))
        top = round((height - new_h) * slide)
        image = image.crop((0, top, width, top + new_h))
    big = camera_size(image, megapixels=megapixels, noise_sigma=NOISE_SIGMA, seed=seed)
    partial = Path(out_path).with_suffix(".partial")
    big.save(partial, "JPEG", quality=JPEG_QUALITY)
    partial.replace(out_path)
    return out_path, big.size[0], big.size[1], Path(out_path).stat().st_size


def make_inputs(work: Path, count: int) -> dict[str, Path]:
    """``{set: folder}`` holding ``count`` camera-like JPEGs each (cached; regenerated when the recipe changes)."""
    folders: dict[str, Path] = {}
    for set_name, spec in SETS.items():
        folder = work / "inputs" / f"{set_name}-{count}"
        marker = folder / ".done.json"
        recipe = {"format": INPUT_FORMAT, "count": count, "quality": JPEG_QUALITY, "noise": NOISE_SIGMA, **spec}
        if marker.is_file() and json.loads(marker.read_text()).get("recipe") == recipe:
            folders[set_name] = folder
            continue
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        log(f"inputs: making {count} {spec['label']} JPEGs in {folder}")
        tasks = [
            (str(folder / f"img_{i:04d}.jpg"), i, float(spec["aspect"]), float(spec["megapixels"]), 1000 + i)
            for i in range(count)
        ]
        with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            made = list(pool.map(_make_one, tasks))
        sizes = sorted({f"{w}x{h}" for _, w, h, _ in made})
        total = sum(b for *_, b in made)
        marker.write_text(json.dumps({"recipe": recipe, "sizes": sizes, "bytes": total}, indent=1))
        folders[set_name] = folder
    return folders


def describe_inputs(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / ".done.json").read_text())
    files = sorted(folder.glob("*.jpg"))
    return {"files": len(files), "sizes": data["sizes"], "mean_bytes": data["bytes"] / max(1, len(files))}


# --- model ------------------------------------------------------------------------------------------------------


def _stale_model(manifest: Path) -> bool:
    """True when the cached model was converted with another export or int8 settings than the converter's now."""
    from convert.api import INT8_SETTINGS
    from convert.export import VISION_EXPORT

    recorded = json.loads(manifest.read_text())
    quantization = recorded.get("quantization") or {}
    settings = {key: quantization.get(key) for key in INT8_SETTINGS}
    return bool(settings != INT8_SETTINGS or recorded.get("vision_export") != VISION_EXPORT)


def make_model(work: Path) -> tuple[Path, Path]:
    """(checkpoint folder, converted model folder with int8 files); both cached."""
    checkpoint = work / "checkpoint" / MODEL_NAME
    model_dir = work / "models" / MODEL_NAME
    if not (checkpoint / "model.safetensors").is_file():
        log(f"model: writing the random-weight ViT-B/32 checkpoint to {checkpoint}")
        if checkpoint.exists():
            shutil.rmtree(checkpoint)
        run_child([sys.executable, "-m", "convert.checkpoint", str(checkpoint), "--arch", "vit-b-32"]).check()
    manifest = model_dir / "manifest.json"
    if not manifest.is_file() or not (model_dir / "vision.int8.onnx").is_file() or _stale_model(manifest):
        log(f"model: converting with `clipindex convert --quantize int8` into {model_dir} (a few minutes)")
        cmd = [*clipindex_cmd(), "convert", "--model", str(checkpoint), "--output", str(model_dir)]
        run_child([*cmd, "--quantize", "int8", "--force"]).check()
    return checkpoint, model_dir


# --- child processes: plain pipeline, pure ORT, fidelity, search fallback --------------------------------------


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")


def child_plain(folder: Path, checkpoint: Path, batch_size: int) -> dict[str, Any]:
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


def child_pure(folder: Path, model_file: Path, batch_size: int) -> dict[str, Any]:
    """The ceiling: the vision tower alone (the project's session options) on ready pixel_values."""
    import numpy as np

    from indexer.encode import CPU, OnnxTower
    from indexer.preprocess import CLIP_DEFAULT, load_and_preprocess

    files = image_files(folder)
    # Ready tensors: preprocess a few real images once and tile them (the pixel values do not change the speed).
    t_prep = time.perf_counter()
    sample = np.stack([load_and_preprocess(f, CLIP_DEFAULT, draft=True) for f in files[: min(8, len(files))]])
    pixels = np.ascontiguousarray(np.resize(sample, (len(files), *sample.shape[1:])), dtype=np.float32)
    t0 = time.perf_counter()
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
    }


def child_fastembed(folder: Path, model_dir: Path, batch_size: int) -> dict[str, Any]:
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


def child_fidelity(folders: dict[str, Path], model_dir: Path) -> dict[str, Any]:
    """Per-image cosine: draft vs exact decode (fp32), and int8 vs fp32 (exact decode), full-size model."""
    import numpy as np

    from indexer.encode import Embedder

    exact = Embedder(model_dir, device="cpu", precision="fp32", draft=False)
    draft = Embedder(model_dir, device="cpu", precision="fp32", draft=True)
    int8 = Embedder(model_dir, device="cpu", precision="int8", draft=False)
    result: dict[str, Any] = {}
    for set_name, folder in folders.items():
        files = [str(p) for p in image_files(folder)]
        timings: dict[str, float] = {}
        vectors: dict[str, Any] = {}
        for label, embedder in (("exact", exact), ("draft", draft)):
            t0 = time.perf_counter()
            pixels = np.stack([embedder._pixels(f) for f in files])
            timings[f"{label}_decode_ms_per_image"] = 1000 * (time.perf_counter() - t0) / len(files)
            vectors[label] = embedder.encode_pixels(pixels)
            if label == "exact":
                vectors["int8"] = int8.encode_pixels(pixels)
        draft_cos = np.sum(vectors["exact"] * vectors["draft"], axis=1)
        int8_cos = np.sum(vectors["exact"] * vectors["int8"], axis=1)
        # Baseline: how far apart the model puts *different* photos (pairs made from different source photos).
        # A random-weight network maps all inputs close together, so draft's error is judged against this spread.
        sims = vectors["exact"] @ vectors["exact"].T
        source = np.arange(len(files)) % 7  # _make_one cycles through the 7 sample photos
        different = source[:, None] != source[None, :]
        between = sims[different]
        spread = max(1e-12, 1 - float(between.mean())) if between.size else float("nan")
        result[set_name] = {
            "images": len(files),
            "draft_vs_exact_min": float(draft_cos.min()),
            "draft_vs_exact_mean": float(draft_cos.mean()),
            "int8_vs_fp32_min": float(int8_cos.min()),
            "int8_vs_fp32_mean": float(int8_cos.mean()),
            "between_photos_mean": float(between.mean()) if between.size else float("nan"),
            "between_photos_max": float(between.max()) if between.size else float("nan"),
            # the worst distance (1 - cos) to the exact embedding, as a share of the distance between different photos
            "draft_rel_distance_max": float((1 - draft_cos).max()) / spread,
            "int8_rel_distance_max": float((1 - int8_cos).max()) / spread,
            **timings,
        }
    return result


def child_search(model_dir: Path, data_dir: Path, query: str) -> dict[str, Any]:
    """Library equivalent of ``clipindex search QUERY`` (used only while the CLI has no search command)."""
    t0 = time.perf_counter()
    from indexer.encode import Embedder
    from indexer.store import EdgeStore

    embedder = Embedder(model_dir, device="cpu")
    store = EdgeStore(data_dir, "images")
    store.ensure_collection(embedder.dimension, embedder.model_name, create=False)
    vector = embedder.encode_text(query)[0]
    hits = store.search(vector, limit=10)
    for hit in hits:
        print(f"{hit.score:.4f}  {hit.payload.get('path')}")
    store.close()
    return {"hits": len(hits), "in_process_s": time.perf_counter() - t0}


# --- no-op re-run over a large synthetic tree -------------------------------------------------------------------


def _tiny_jpegs(count: int) -> list[bytes]:
    """``count`` distinct tiny JPEGs (16x16, one colour each)."""
    import io

    from PIL import Image

    out: list[bytes] = []
    for i in range(count):
        buf = io.BytesIO()
        colour = (i * 37 % 256, i * 91 % 256, i * 173 % 256)
        Image.new("RGB", (16, 16), colour).save(buf, "JPEG", quality=75)
        out.append(buf.getvalue())
    return out


def make_noop_store(work: Path, model_dir: Path, files: int) -> tuple[Path, Path]:
    """A tree of ``files`` tiny JPEGs and a store already holding their points (cached). (tree, data_dir)."""
    import hashlib

    import numpy as np

    from indexer.manifest import ModelManifest
    from indexer.points import absolute, make_payload, point_id
    from indexer.store import EdgeStore
    from indexer.store.base import Point

    base = work / "noop" / f"{files}"
    tree, data_dir, marker = base / "tree", base / "data", base / "done.json"
    manifest = ModelManifest.load(model_dir)
    if marker.is_file():
        return tree, data_dir
    if base.exists():
        shutil.rmtree(base)
    log(f"no-op: writing {files:,} tiny JPEGs under {tree} and their points into {data_dir}")
    t0 = time.perf_counter()
    blobs = _tiny_jpegs(min(files, 4096))
    per_dir = 1000
    entries: list[tuple[str, int, int, str]] = []
    for i in range(files):
        folder = tree / f"{i // (per_dir * 10):03d}" / f"{(i // per_dir) % 10:02d}"
        if i % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        # distinct bytes per file: a tiny JPEG plus a unique trailer after EOI (decoders ignore it)
        data = blobs[i % len(blobs)] + f"clipindex-bench-{i}".encode()
        path = folder / f"IMG_{i:06d}.jpg"
        path.write_bytes(data)
        st = path.stat()
        entries.append((absolute(path), st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()))
    log(f"no-op: tree written in {time.perf_counter() - t0:.1f} s; writing points")
    t1 = time.perf_counter()
    rng = np.random.default_rng(0)
    store = EdgeStore(data_dir, "images")
    store.ensure_collection(manifest.embedding_dim, manifest.model_name)
    # upserts of 25 points (ingest's batch), with the store's maintenance and a flush now and then as ingest
    # does (ingest: every 30 s): the store ingest would leave
    chunk = 25
    for start in range(0, len(entries), chunk):
        vectors = rng.standard_normal((min(chunk, len(entries) - start), manifest.embedding_dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        points = [
            Point(
                point_id(path),
                vector,
                make_payload(
                    path=path,
                    size=size,
                    mtime_ns=mtime_ns,
                    sha256=sha,
                    width=16,
                    height=16,
                    image_format="JPEG",
                    model=manifest.model_name,
                ),
            )
            for (path, size, mtime_ns, sha), vector in zip(entries[start : start + chunk], vectors, strict=True)
        ]
        store.upsert(points)
        if (start // chunk) % 400 == 399:
            store.optimize()
            store.flush()
    store.optimize()
    count = store.count(exact=True)
    store.close()
    if count != files:
        raise RuntimeError(f"no-op store holds {count} points, expected {files}")
    log(f"no-op: {count:,} points written in {time.perf_counter() - t1:.1f} s")
    marker.write_text(json.dumps({"files": files, "points": count}))
    return tree, data_dir


def run_noop(work: Path, model_dir: Path, files: int, repeats: int) -> dict[str, Any]:
    tree, data_dir = make_noop_store(work, model_dir, files)
    cmd = [*clipindex_cmd(), "ingest", str(tree), "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
    cmd += ["--quiet", "--json"]
    runs: list[ChildResult] = []
    for attempt in range(repeats):
        result = run_child(cmd).check()
        report = result.json()
        if report.get("indexed") != 0 or report.get("unchanged") != files:
            if attempt == 0 and not runs:
                # a cached store that no longer matches (payload layout changed): rebuild once
                log(f"no-op: re-run was not a no-op ({report}); rebuilding the store")
                shutil.rmtree(tree.parent)
                tree, data_dir = make_noop_store(work, model_dir, files)
                cmd[cmd.index("--data-dir") + 1] = str(data_dir)
                result = run_child(cmd).check()
                report = result.json()
            if report.get("indexed") != 0 or report.get("unchanged") != files:
                raise RuntimeError(f"the re-run over the unchanged tree was not a no-op: {report}")
        runs.append(result)
        log(f"no-op re-run {attempt + 1}/{repeats}: {result.wall_s:.2f} s wall, {result.maxrss_mb:.0f} MB")
    walls = [r.wall_s for r in runs]
    # The fixed cost of any run (interpreter, imports, model load, store open): an empty folder, empty store.
    empty = work / "noop" / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    fixed: list[float] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=work / "noop") as scratch:
            empty_cmd = [*clipindex_cmd(), "ingest", str(empty), "--model-dir", str(model_dir), "--data-dir", scratch]
            fixed.append(run_child([*empty_cmd, "--quiet", "--json"]).check().wall_s)
    med, fixed_s = statistics.median(walls), statistics.median(fixed)
    per_100k = med if files == 100_000 else fixed_s + (med - fixed_s) * 100_000 / files
    return {
        "files": files,
        "walls_s": walls,
        "median_s": med,
        "in_run_s": [r.json().get("seconds") for r in runs],
        "fixed_s": fixed_s,
        "per_100k_s": per_100k,
        "maxrss_mb": max(r.maxrss_mb for r in runs),
        "background": statistics.median(r.background for r in runs),
        "data_dir": str(data_dir),
        "projected": files != 100_000,
    }


def run_search(model_dir: Path, data_dir: Path, repeats: int) -> dict[str, Any]:
    """Search cold start: a fresh process each time, after one warm-up run (page cache)."""
    external = ROOT / "benchmarks" / "search_cold_start.py"
    if external.is_file():  # another engineer's benchmark of `clipindex search` (issue 4): use it
        cmd = [sys.executable, str(external), "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
        result = run_child([*cmd, "--repeats", str(repeats)])
        if result.returncode == 0:
            with contextlib.suppress(RuntimeError):
                data = result.json()
                if isinstance(data.get("median_s"), (int, float)):
                    return {
                        "method": '`benchmarks/search_cold_start.py` (`clipindex search "a red car" --json`)',
                        "median_s": float(data["median_s"]),
                        "walls_s": list(data.get("walls_s", [])),
                        "first_s": data.get("first_s"),
                        "breakdown": data.get("breakdown"),
                        "points": data.get("points"),
                    }
        log(f"search: {external.name} did not run as expected (rc {result.returncode}); measuring it here")
    if run_child([*clipindex_cmd(), "search", "--help"]).returncode == 0:
        method = f'`clipindex search "{SEARCH_QUERY}"`'
        cmd = [*clipindex_cmd(), "search", SEARCH_QUERY, "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
    else:
        method = "library equivalent (Embedder.encode_text + EdgeStore.search; the CLI has no search command yet)"
        cmd = this_script("_search", "--model-dir", str(model_dir), "--data-dir", str(data_dir))
    first = run_child(cmd).check().wall_s
    walls = [run_child(cmd).check().wall_s for _ in range(repeats)]
    return {"method": method, "walls_s": walls, "median_s": statistics.median(walls), "first_s": first}


# --- contenders -------------------------------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    label: str
    kind: str  # ingest | plain | pure | fastembed
    precision: str = "fp32"
    extra: list[str] = field(default_factory=list)
    informational: bool = False


@dataclass
class Sample:
    set_name: str
    key: str
    round: int
    images: int
    wall_s: float
    img_per_s: float
    cpu_s: float
    maxrss_mb: float
    background: float
    waited_s: float
    detail: dict[str, Any]


def contenders(default_draft: bool, variants: bool) -> list[Contender]:
    """The contenders. Ingest's default draft setting is passed explicitly (read once at the start), so that
    a change of the default in the working tree during the run cannot mix two settings in one median."""
    same = "--draft" if default_draft else "--no-draft"
    other = "--no-draft" if default_draft else "--draft"
    other_label = "draft off" if default_draft else "draft on"
    items = [
        Contender("ingest_fp32", "clipindex ingest, fp32", "ingest", "fp32", [same]),
        Contender("ingest_int8", "clipindex ingest, int8", "ingest", "int8", [same]),
        Contender("plain_fp32", "plain transformers+PyTorch, fp32", "plain"),
        Contender("fastembed_fp32", "fastembed ImageEmbedding, fp32", "fastembed"),
        Contender("pure_fp32", "pure ORT vision model, fp32 (ceiling)", "pure", "fp32"),
        Contender("pure_int8", "pure ORT vision model, int8", "pure", "int8", informational=True),
    ]
    if variants:
        items += [
            Contender("ingest_fp32_alt", f"clipindex ingest, fp32, {other_label}", "ingest", "fp32", [other], True),
            Contender("ingest_int8_alt", f"clipindex ingest, int8, {other_label}", "ingest", "int8", [other], True),
        ]
    return items


def run_contender(
    contender: Contender,
    set_name: str,
    folder: Path,
    checkpoint: Path,
    model_dir: Path,
    work: Path,
    round_no: int,
    quiet_wait_s: float,
) -> Sample:
    files = len(image_files(folder))
    waited, _ = wait_for_quiet(quiet_wait_s) if quiet_wait_s > 0 else (0.0, 0.0)
    if contender.kind == "ingest":
        runs = work / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        data_dir = Path(tempfile.mkdtemp(prefix=f"{set_name}-{contender.key}-", dir=runs))
        try:
            cmd = [*clipindex_cmd(), "ingest", str(folder), "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
            cmd += ["--precision", contender.precision, "--quiet", "--json", *contender.extra]
            result = run_child(cmd).check()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        report = result.json()
        failed = report.get("failed")
        if report.get("indexed") != files or failed:
            raise RuntimeError(f"{contender.label}: indexed {report.get('indexed')} of {files}, failed {failed}")
        detail: dict[str, Any] = {"in_run_s": report.get("seconds")}
        timed_s, images = result.wall_s, files
    elif contender.kind == "fastembed":
        python = fastembed_python(work)
        if python is None:
            raise RuntimeError("fastembed is not installed (pip install fastembed, or set FASTEMBED_PYTHON)")
        folder_fe = make_fastembed_model(work, model_dir)
        cmd = [python, str(Path(__file__).resolve()), "_fastembed", "--images", str(folder)]
        cmd += ["--model-dir", str(folder_fe)]
        result = run_child(cmd).check()
        detail = result.json()
        if detail["images"] != files:
            raise RuntimeError(f"fastembed embedded {detail['images']} of {files}")
        timed_s, images = result.wall_s, files
    elif contender.kind == "plain":
        cmd = this_script("_plain", "--images", str(folder), "--checkpoint", str(checkpoint))
        result = run_child(cmd).check()
        detail = result.json()
        if detail["images"] != files:
            raise RuntimeError(f"plain pipeline embedded {detail['images']} of {files}")
        timed_s, images = result.wall_s, files
    else:
        name = "vision.int8.onnx" if contender.precision == "int8" else "vision.onnx"
        result = run_child(this_script("_pure", "--images", str(folder), "--model", str(model_dir / name))).check()
        detail = result.json()
        timed_s, images = detail["infer_s"], detail["images"]
        # The same model with everything a real run pays counted: the whole process (interpreter, imports,
        # session load) and its first, cold pass over the set; only the tensor preparation and the steady
        # passes after it are taken out.
        loaded_s = result.wall_s - detail["prep_s"] - sum(detail["passes_s"][1:])
        detail["loaded_s"] = loaded_s
        detail["loaded_img_per_s"] = images / loaded_s
    return Sample(
        set_name=set_name,
        key=contender.key,
        round=round_no,
        images=images,
        wall_s=timed_s,
        img_per_s=images / timed_s,
        cpu_s=result.cpu_s,
        maxrss_mb=result.maxrss_mb,
        background=result.background,
        waited_s=waited,
        detail={**detail, "process_wall_s": result.wall_s},
    )


# --- report -----------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    ram_gb = 0.0
    with contextlib.suppress(ImportError):
        import psutil

        ram_gb = psutil.virtual_memory().total / 2**30
    versions: dict[str, str] = {"python": platform.python_version()}
    for dist in ("clipindex", "onnxruntime", "torch", "transformers", "pillow", "numpy", "qdrant-edge-py"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "-"
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "indexer", "convert"], cwd=ROOT, capture_output=True, text=True
        )
        git = {"head": head.stdout.strip(), "dirty": [line[3:] for line in dirty.stdout.splitlines()]}
    return {
        "cpu": cpu,
        "simd": simd,
        "cores": cores,
        "ram_gb": ram_gb,
        "kernel": platform.release(),
        "versions": versions,
        "git": git,
    }


def code_fingerprint() -> str:
    """git HEAD plus a hash of the package sources as they are on disk (uncommitted edits included)."""
    import hashlib

    digest = hashlib.sha256()
    for package in ("indexer", "convert"):
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    head = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    return f"{head}+{digest.hexdigest()[:12]}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarise(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in samples:
        entry = out.setdefault(s.set_name, {}).setdefault(
            s.key,
            {"img_per_s": [], "wall_s": [], "maxrss_mb": [], "cpu_s": [], "background": [], "process_wall_s": []},
        )
        entry["images"] = s.images
        entry["background"].append(s.background)
        entry["process_wall_s"].append(s.detail.get("process_wall_s", s.wall_s))
        entry["img_per_s"].append(s.img_per_s)
        entry["wall_s"].append(s.wall_s)
        entry["maxrss_mb"].append(s.maxrss_mb)
        entry["cpu_s"].append(s.cpu_s)
    for per_set in out.values():
        for entry in per_set.values():
            entry["median_img_per_s"] = median(entry["img_per_s"])
            entry["median_wall_s"] = median(entry["wall_s"])
            entry["peak_rss_mb"] = max(entry["maxrss_mb"])
            entry["median_cpu_s"] = median(entry["cpu_s"])
            entry["median_background"] = median(entry["background"])
            entry["cpu_use"] = median([c / w for c, w in zip(entry["cpu_s"], entry["process_wall_s"], strict=True)])
    return out


def ratios(summary: dict[str, dict[str, dict[str, Any]]], samples: Sequence[Sample]) -> dict[str, dict[str, Any]]:
    """Issue 6's ratios, from the medians; plus the range of the same ratio within each round.

    The pure model runs on ready tensors, so its speed does not depend on the set: its samples from both sets
    are pooled into one median (twice the samples: the steadier ceiling), per round too.
    """
    out: dict[str, dict[str, Any]] = {}
    by_round: dict[tuple[str, int], dict[str, float]] = {}
    pure_pool: dict[int, list[float]] = {}
    loaded_pool: dict[int, list[float]] = {}
    for s in samples:
        by_round.setdefault((s.set_name, s.round), {})[s.key] = s.img_per_s
        if s.key == "pure_fp32":
            pure_pool.setdefault(s.round, []).append(s.img_per_s)
            loaded_pool.setdefault(s.round, []).append(s.detail["loaded_img_per_s"])
    pooled = median([v for values in pure_pool.values() for v in values])
    pooled_loaded = median([v for values in loaded_pool.values() for v in values])
    for (_, round_no), per_round_values in by_round.items():
        if round_no in pure_pool:
            per_round_values["pure_fp32"] = median(pure_pool[round_no])
            per_round_values["pure_fp32_loaded"] = median(loaded_pool[round_no])
    pooled_entries = {
        "pure_fp32": {"median_img_per_s": pooled},
        "pure_fp32_loaded": {"median_img_per_s": pooled_loaded},
    }
    pairs = {
        "vs_plain_fp32": ("ingest_fp32", "plain_fp32"),
        "vs_plain_int8": ("ingest_int8", "plain_fp32"),
        "vs_pure_fp32": ("ingest_fp32", "pure_fp32"),
        "vs_pure_fp32_loaded": ("ingest_fp32", "pure_fp32_loaded"),
        "vs_fastembed_fp32": ("ingest_fp32", "fastembed_fp32"),
        "vs_fastembed_int8": ("ingest_int8", "fastembed_fp32"),
    }
    for set_name, per_set in summary.items():
        out[set_name] = {}
        for name, (num, den) in pairs.items():
            den_entry = pooled_entries.get(den) or per_set.get(den)
            if num not in per_set or den_entry is None or math.isnan(den_entry["median_img_per_s"]):
                continue
            value = per_set[num]["median_img_per_s"] / den_entry["median_img_per_s"]
            per_round = [
                r[num] / r[den] for (sn, _), r in sorted(by_round.items()) if sn == set_name and num in r and den in r
            ]
            out[set_name][name] = {"value": value, "min": min(per_round), "max": max(per_round)}
    return out


def fmt_range(values: Sequence[float], digits: int = 1) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):.{digits}f}–{max(values):.{digits}f})"


def write_markdown(path: Path, data: dict[str, Any]) -> str:
    m = data["machine"]
    summary = data["summary"]
    rat = data["ratios"]
    cfg = data["config"]
    lines: list[str] = []
    add = lines.append
    add("# clipindex ingest throughput")
    add("")
    add(
        f"Written by `python benchmarks/bench.py{' ' + cfg['argv'] if cfg['argv'] else ''}` on "
        f"{data['finished_at']} ({data['elapsed_min']:.0f} min). {cfg['rounds']} round(s), contenders alternated "
        f"(order rotated each round); medians, with the min–max over rounds in brackets. Every contender is a fresh "
        f"process; ingest and the plain pipeline count interpreter start and model load."
    )
    add("")
    add(
        f"**Machine:** {m['cpu']} ({', '.join(m['simd']) or 'no AVX2'}), {m['cores']} cores, "
        f"{m['ram_gb']:.0f} GiB RAM, Linux {m['kernel']}, shared (load average {data['load_before']:.1f} before, "
        f"{data['load_after']:.1f} after)."
    )
    v = m["versions"]
    add(
        "**Versions:** "
        + ", ".join(f"{k} {v[k]}" for k in v)
        + f"; clipindex at `{m['git'].get('head', '?')}`"
        + (f" with uncommitted changes to {', '.join(m['git']['dirty'])}" if m["git"].get("dirty") else "")
        + "."
    )
    add("")
    add(
        "**Model:** full-size ViT-B/32 with random weights (`convert.checkpoint --arch vit-b-32`), converted by "
        "`clipindex convert --quantize int8`. **Inputs:** "
        + "; ".join(
            f"{SETS[s]['label']}: {d['files']} JPEGs (q{JPEG_QUALITY}, noise σ{NOISE_SIGMA:g}, "
            f"{', '.join(d['sizes'][:3])}{'…' if len(d['sizes']) > 3 else ''}, {d['mean_bytes'] / 1e6:.1f} MB avg)"
            for s, d in data["inputs"].items()
        )
        + ", made from the sample photos of `tests/photos.py`."
    )
    add(
        f"Ingest runs with its defaults: batch {BATCH_SIZE}, threads sized to the cores, DCT draft decoding "
        f"{'on' if data['default_draft'] else 'off'} (the default when the run started, passed explicitly so that "
        "a change of the default during the run cannot mix two settings). One untimed warm-up run of every "
        "contender comes first (page cache, ONNX Runtime's optimised-model cache, Python's bytecode cache, which "
        "every contender keeps as an installed package would)."
    )
    if data.get("code_before") != data.get("code_after"):
        add("")
        add(
            f"**Warning:** indexer/convert sources changed during this run ({data.get('code_before')} → "
            f"{data.get('code_after')}): rounds may have measured different code."
        )
    add("")
    add("## Issue 6 ratios")
    add("")
    add(
        "| Set | vs the plain pipeline, fp32 | vs the plain pipeline, int8 | vs the pure fp32 model | "
        "vs the pure fp32 model, its load counted too |"
    )
    add("| --- | --- | --- | --- | --- |")
    for set_name in summary:
        cells = []
        for key in ("vs_plain_fp32", "vs_plain_int8", "vs_pure_fp32", "vs_pure_fp32_loaded"):
            r = rat.get(set_name, {}).get(key)
            if r is None:
                cells.append("–")
                continue
            unit = "" if key.startswith("vs_pure") else "×"
            digits = 2 if key.startswith("vs_pure") else 1
            span = f" ({r['min']:.{digits}f}–{r['max']:.{digits}f})" if cfg["rounds"] > 1 else ""
            target = TARGETS[set_name].get(key)
            goal = "" if target is None else (" ✅" if r["value"] >= target else " ❌") + f" target ≥ {target:g}{unit}"
            cells.append(f"**{r['value']:.{digits}f}{unit}**{span}{goal}")
        add(f"| {SETS[set_name]['label']} | " + " | ".join(cells) + " |")
    add("")
    add(
        "Ratios of median img/s, with the range of the same ratio within each round in brackets. The issue's "
        "columns: `clipindex ingest` end to end (fresh process, model load counted) against the plain pipeline "
        "(fresh process, model load counted) and against the pure model's steady state on ready tensors (its load "
        "and first-run warm-up excluded: the strict ceiling). The last column, for context, counts the pure "
        "model's process start, session load and warm-up too, as ingest's figure does."
    )
    add("")
    if any("vs_fastembed_fp32" in rat.get(set_name, {}) for set_name in summary):
        add("## Against fastembed (issue 16)")
        add("")
        add("| Set | clipindex ingest fp32 vs fastembed | clipindex ingest int8 vs fastembed (fp32) |")
        add("| --- | --- | --- |")
        for set_name in summary:
            cells = []
            for key in ("vs_fastembed_fp32", "vs_fastembed_int8"):
                r = rat.get(set_name, {}).get(key)
                span = f" ({r['min']:.1f}–{r['max']:.1f})" if r is not None and cfg["rounds"] > 1 else ""
                cells.append("–" if r is None else f"**{r['value']:.1f}×**{span}")
            add(f"| {SETS[set_name]['label']} | " + " | ".join(cells) + " |")
        add("")
        add(
            "fastembed's `ImageEmbedding('Qdrant/clip-ViT-B-32-vision', specific_model_path=...)`, offline, on the "
            "same converted `vision.onnx` (linked as `model.onnx`, with fastembed's own CLIPImageProcessor config), "
            "`embed(files, batch_size=25)`, fresh process, model load counted; it writes nothing to a store, so "
            "clipindex's figure carries the store work on top. What each decodes: clipindex decodes JPEGs with DCT "
            "draft scaling (1/2–1/8 size) and applies EXIF orientation; fastembed decodes every file in full with "
            "PIL and does not apply EXIF orientation (a rotated phone photo is embedded sideways)."
        )
        add("")
    add("## Throughput and memory")
    add("")
    add("| Set | Contender | img/s | wall s | CPU use of the cores | others' load | peak RSS MB |")
    add("| --- | --- | --- | --- | --- | --- | --- |")
    labels = {c["key"]: c["label"] for c in data["contenders"]}
    for set_name, per_set in summary.items():
        for key, entry in per_set.items():
            ips = entry["median_img_per_s"]
            n_cores = max(1, m["cores"])
            if key.startswith("pure"):
                cpu_use = "–"
                wall = f"{entry['median_wall_s']:.2f} (inference only)"
            else:
                cpu_use = f"{100 * entry['cpu_use'] / n_cores:.0f} %"
                wall = f"{entry['median_wall_s']:.1f}"
            others = f"{100 * entry['median_background']:.0f} %"
            rss = entry["peak_rss_mb"]
            rss_cell = f"{rss:.0f}" + (" ⚠️" if rss > RSS_LIMIT_MB and key.startswith("ingest") else "")
            add(
                f"| {SETS[set_name]['label']} | {labels[key]} | **{ips:.2f}**{fmt_range(entry['img_per_s'], 2)} | "
                f"{wall} | {cpu_use} | {others} | {rss_cell} |"
            )
    add("")
    add(
        "CPU use = (user + system CPU seconds of the process) / wall time / cores. Others' load = CPU used by the "
        "rest of this shared machine during the run (`/proc/stat` minus the contender), as a share of all cores: "
        "figures taken while others' load was high understate what the machine can do, for every contender alike "
        "(they alternate). Peak RSS = `ru_maxrss` of that child process (`os.wait4`); issue 6 asks ingest to stay "
        f"≤ {RSS_LIMIT_MB / 1000:g} GB."
    )
    plain = {s: p.get("plain_fp32") for s, p in summary.items()}
    details = [(s, d) for s, d in data.get("plain_detail", {}).items() if plain.get(s)]
    if details:
        add("")
        add(
            "Where the plain pipeline's time goes (median per run, seconds): "
            + "; ".join(
                f"{SETS[s]['label']}: imports {d['import_s']:.1f}, model load {d['load_s']:.1f}, PIL decode "
                f"{d['decode_s']:.1f}, CLIPImageProcessor {d['processor_s']:.1f}, model {d['model_s']:.1f}"
                for s, d in details
            )
            + "."
        )
    pure = data.get("pure_detail", {})
    if pure:
        add(
            f"The pure model's img/s is its median of {PURE_PASSES} passes over the set after a first (cold) pass, "
            "session load excluded ("
            + "; ".join(f"{k} {v:.2f} s" for k, v in sorted(pure.items()))
            + "). It runs on ready tensors, so the *vs the pure fp32 model* ratios divide by the median of its "
            "samples from both sets together."
        )
    add("")
    add_ceiling(add, data)
    add("")
    add("## Re-runs and search")
    add("")
    add("| Measure | Result | Goal |")
    add("| --- | --- | --- |")
    noop = data.get("noop")
    if noop:
        proj = " (projected: fixed cost + per-file cost × 100k)" if noop["projected"] else ""
        ok = "✅" if noop["per_100k_s"] <= NOOP_LIMIT_S_PER_100K else "❌"
        add(
            f"| No-op re-run: real `clipindex ingest` over {noop['files']:,} unchanged files (their points written "
            f"into the store beforehand with ingest's payloads), whole process | "
            f"**{noop['median_s']:.2f} s**{fmt_range(noop['walls_s'], 2)}, of which {noop['fixed_s']:.2f} s is the "
            f"fixed cost of any run (an empty folder: start, imports, model load); "
            f"{noop['per_100k_s']:.2f} s per 100k{proj}; peak RSS {noop['maxrss_mb']:.0f} MB; others' load "
            f"{100 * noop['background']:.0f} % {ok} | ≤ {NOOP_LIMIT_S_PER_100K:g} s per 100k |"
        )
    search = data.get("search")
    if search and search.get("median_s") is not None:
        ok = "✅" if search["median_s"] <= SEARCH_LIMIT_S else "❌"
        walls = search.get("walls_s", [])
        first = f"; warm-up run (page cache) {search['first_s']:.2f} s" if search.get("first_s") else ""
        points = search.get("points") or (noop["files"] if noop else 0)
        add(
            f"| Search cold start at {points:,} points: {search['method']}, fresh process | "
            f"**{search['median_s']:.2f} s**{fmt_range(walls, 2)}{first} {ok} | ≤ {SEARCH_LIMIT_S:g} s |"
        )
    if search and search.get("breakdown"):
        parts = [
            f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f} s"
            for k, v in search["breakdown"].items()
            if k.endswith("_s") and isinstance(v, (int, float))
        ]
        add("")
        add("Search, one sequential in-process run step by step (`search_cold_start.py`): " + ", ".join(parts) + ".")
    fid = data.get("fidelity")
    if fid:
        add("")
        add("## DCT draft decoding: fidelity with the full-size model")
        add("")
        add(
            "| Set | draft vs exact cosine, min / mean | int8 vs fp32 cosine, min / mean | different photos' cosine, "
            "mean / max | worst error / photo distance, draft · int8 | decode+preprocess ms/img, exact → draft |"
        )
        add("| --- | --- | --- | --- | --- | --- |")
        for set_name, f in fid.items():
            add(
                f"| {SETS[set_name]['label']} ({f['images']} images) | {f['draft_vs_exact_min']:.6f} / "
                f"{f['draft_vs_exact_mean']:.6f} | {f['int8_vs_fp32_min']:.5f} / {f['int8_vs_fp32_mean']:.5f} | "
                f"{f['between_photos_mean']:.4f} / {f['between_photos_max']:.4f} | "
                f"{100 * f['draft_rel_distance_max']:.2f} % · {100 * f['int8_rel_distance_max']:.2f} % | "
                f"{f['exact_decode_ms_per_image']:.0f} → {f['draft_decode_ms_per_image']:.0f} |"
            )
        add("")
        add(
            "Cosines of each image's embedding (fp32 vision tower, the full-size ViT-B/32) with draft decoding vs the "
            "exact decode, and int8 vs fp32. A random-weight network maps all images closer together than a trained "
            "CLIP does (see the different photos' cosine), so the fifth column puts the worst error next to the "
            "average distance (1 − cosine) between different photos. Issue 3: draft becomes the default only with "
            "≥ 0.999 on real photos; a check with trained weights is still worth doing where they can be had."
        )
    add("")
    text = "\n".join(lines) + "\n"
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    # the sections other scripts write (million.py, server_client.py, concurrency.py, library.py) are kept until
    # those scripts replace them
    markers = ("<!-- million:start -->", "<!-- concurrency:begin -->", "<!-- library.py -->")
    kept = [old.index(marker) for marker in markers if marker in old]
    if kept:
        text += "\n" + old[min(kept) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def add_ceiling(add: Callable[[str], None], data: dict[str, Any]) -> None:
    """What this machine allows: per-image CPU of decoding and of the model, both cores kept busy."""
    fid = data.get("fidelity")
    summary = data["summary"]
    cores = max(1, int(data["machine"]["cores"]))
    pure = {p: median([s["img_per_s"] for s in data["samples"] if s["key"] == f"pure_{p}"]) for p in ("fp32", "int8")}
    if not fid or any(math.isnan(v) for v in pure.values()):
        return
    draft = "draft" if data["default_draft"] else "exact"
    add("")
    add("### What this machine allows")
    add("")
    add(
        f"Both cores busy, no fixed cost: img/s ≤ {cores} / (decode+preprocess CPU per image + model CPU per image), "
        f"with decoding as measured one image at a time on one core ({draft} decode, the default) and the model's "
        f"CPU per image = {cores} cores / the pure model's img/s. Ingest's own figure also pays its start "
        "(interpreter, imports, store) and the session load."
    )
    add("")
    add(
        "| Set | decode ms | model ms fp32 · int8 | ceiling img/s fp32 · int8 | ceiling vs plain fp32 · int8 | "
        "ingest reached fp32 · int8 |"
    )
    add("| --- | --- | --- | --- | --- | --- |")
    for set_name, f in fid.items():
        if set_name not in summary or "plain_fp32" not in summary[set_name]:
            continue
        decode_ms = f[f"{draft}_decode_ms_per_image"]
        model_ms = {p: 1000 * cores / pure[p] for p in pure}
        ceiling = {p: cores * 1000 / (decode_ms + model_ms[p]) for p in pure}
        plain = summary[set_name]["plain_fp32"]["median_img_per_s"]
        reached = [
            f"{100 * summary[set_name][f'ingest_{p}']['median_img_per_s'] / ceiling[p]:.0f} %"
            if f"ingest_{p}" in summary[set_name]
            else "–"
            for p in ("fp32", "int8")
        ]
        add(
            f"| {SETS[set_name]['label']} | {decode_ms:.0f} | {model_ms['fp32']:.0f} · {model_ms['int8']:.0f} | "
            f"{ceiling['fp32']:.1f} · {ceiling['int8']:.1f} | {ceiling['fp32'] / plain:.1f}× · "
            f"{ceiling['int8'] / plain:.1f}× | {reached[0]} · {reached[1]} |"
        )


def print_table(summary: dict[str, dict[str, dict[str, Any]]], rat: dict[str, dict[str, Any]]) -> None:
    print()
    print(f"{'set':<7} {'contender':<22} {'img/s':>8} {'min':>7} {'max':>7} {'wall s':>8} {'RSS MB':>8}")
    for set_name, per_set in summary.items():
        for key, entry in per_set.items():
            ips = entry["img_per_s"]
            print(
                f"{set_name:<7} {key:<22} {entry['median_img_per_s']:8.2f} {min(ips):7.2f} {max(ips):7.2f} "
                f"{entry['median_wall_s']:8.2f} {entry['peak_rss_mb']:8.0f}"
            )
        for name, r in rat.get(set_name, {}).items():
            target = TARGETS[set_name].get(name)
            goal = f"  target >= {target}" if target is not None else ""
            print(f"{set_name:<7} ratio {name:<16} {r['value']:8.2f} {r['min']:7.2f} {r['max']:7.2f}{goal}")
    print()


# --- main -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timer(label: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    log(f"{label}: {time.perf_counter() - t0:.1f} s")


def run_benchmark(args: argparse.Namespace) -> int:
    from indexer import preprocess

    started = time.monotonic()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with timer("inputs"):
        folders = make_inputs(work, args.images)
    with timer("model"):
        checkpoint, model_dir = make_model(work)
    data: dict[str, Any] = {
        "config": {
            "argv": " ".join(args.argv),
            "rounds": args.rounds,
            "images": args.images,
            "batch_size": BATCH_SIZE,
            "noop_files": args.noop_files,
        },
        "inputs": {s: describe_inputs(f) for s, f in folders.items()},
        "default_draft": bool(preprocess.DEFAULT_DRAFT),
        "load_before": load_before,
    }
    if not args.skip_fidelity:
        with timer("fidelity"):
            cmd = this_script("_fidelity", "--model-dir", str(model_dir))
            for set_name, folder in folders.items():
                cmd += ["--set", f"{set_name}={folder}"]
            data["fidelity"] = run_child(cmd).check().json()
        for set_name, f in data["fidelity"].items():
            log(
                f"fidelity {set_name}: draft vs exact cosine min {f['draft_vs_exact_min']:.5f} mean "
                f"{f['draft_vs_exact_mean']:.5f}; int8 vs fp32 min {f['int8_vs_fp32_min']:.5f}"
            )
    items = contenders(bool(preprocess.DEFAULT_DRAFT), variants=not args.no_variants)
    if args.only:
        items = [c for c in items if c.key in args.only]
    data["contenders"] = [asdict(c) for c in items]
    data["code_before"] = code_fingerprint()
    with timer("warm-up (page cache, ONNX Runtime's optimised-model cache; not timed)"):
        warm = work / "inputs" / "warmup"
        if not warm.is_dir():
            warm.mkdir(parents=True)
            for src in image_files(next(iter(folders.values())))[:2]:
                shutil.copy(src, warm / src.name)
        for contender in items:
            run_contender(contender, "warmup", warm, checkpoint, model_dir, work, -1, 0.0)
    samples: list[Sample] = []
    for round_no in range(args.rounds):
        for set_name, folder in folders.items():
            shift = round_no % len(items)
            for contender in items[shift:] + items[:shift]:
                sample = run_contender(
                    contender, set_name, folder, checkpoint, model_dir, work, round_no, args.quiet_wait
                )
                samples.append(sample)
                log(
                    f"round {round_no + 1}/{args.rounds} {set_name:>5} {contender.key:<16} "
                    f"{sample.img_per_s:6.2f} img/s  wall {sample.wall_s:6.2f} s  cpu {sample.cpu_s:6.1f} s  "
                    f"rss {sample.maxrss_mb:5.0f} MB  others {100 * sample.background:3.0f} %  "
                    f"(waited {sample.waited_s:.0f} s)"
                )
    summary = summarise(samples)
    data["summary"] = summary
    data["ratios"] = ratios(summary, samples)
    data["samples"] = [asdict(s) for s in samples]
    plain_detail: dict[str, dict[str, float]] = {}
    pure_detail: dict[str, float] = {}
    for set_name in folders:
        plain = [s.detail for s in samples if s.set_name == set_name and s.key == "plain_fp32"]
        if plain:
            keys = ("import_s", "load_s", "decode_s", "processor_s", "model_s")
            plain_detail[set_name] = {k: median([p[k] for p in plain]) for k in keys}
    for key in ("pure_fp32", "pure_int8"):
        loads = [s.detail["load_s"] for s in samples if s.key == key]
        if loads:
            pure_detail[key.replace("pure_", "")] = median(loads)
    data["plain_detail"] = plain_detail
    data["pure_detail"] = pure_detail
    print_table(summary, data["ratios"])
    if not args.skip_noop:
        with timer("no-op re-run"):
            data["noop"] = run_noop(work, model_dir, args.noop_files, repeats=max(3, args.rounds))
        log(f"no-op: {data['noop']['median_s']:.2f} s for {args.noop_files:,} files")
        with timer("search cold start"):
            data["search"] = run_search(model_dir, Path(data["noop"]["data_dir"]), repeats=max(3, args.rounds))
        log(f"search cold start: {data['search'].get('median_s')} s ({data['search']['method']})")
    data["machine"] = machine()
    data["code_after"] = code_fingerprint()
    if data["code_after"] != data["code_before"]:
        log(f"warning: the code changed during the run ({data['code_before']} -> {data['code_after']})")
    data["load_after"] = os.getloadavg()[0]
    data["elapsed_min"] = (time.monotonic() - started) / 60
    data["finished_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    raw = work / "raw" / f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(data, indent=1, default=str))
    out: Path = args.out or (work / "results-quick.md" if args.quick else DEFAULT_RESULTS)
    text = write_markdown(out, data)
    print(text)
    log(f"wrote {out} and {raw}")
    return 0


def parse_set(value: str) -> tuple[str, Path]:
    name, _, folder = value.partition("=")
    return name, Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("_"):  # child modes
        return child_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=None, help="alternation rounds (default 3; --quick 1)")
    parser.add_argument("--images", type=int, default=None, help="images per set (default 96; --quick 24)")
    parser.add_argument("--noop-files", type=int, default=None, help="no-op tree size (default 100000; --quick 5000)")
    parser.add_argument("--quick", action="store_true", help="small dev run; writes _work/results-quick.md")
    parser.add_argument("--render", type=Path, default=None, help="only re-write the markdown from a raw JSON file")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache folder (default benchmarks/_work)")
    parser.add_argument("--out", type=Path, default=None, help="markdown output (default benchmarks/results.md)")
    parser.add_argument("--only", nargs="*", default=None, help="contender keys to run (e.g. ingest_fp32 plain_fp32)")
    parser.add_argument("--no-variants", action="store_true", help="skip the ingest runs with the other draft setting")
    parser.add_argument("--skip-noop", action="store_true", help="skip the no-op re-run and search cold start")
    parser.add_argument("--skip-fidelity", action="store_true", help="skip the draft/int8 cosine measurement")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each contender, wait up to this many seconds for the machine to be idle (default 30; 0: never)",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.images = args.images or (24 if args.quick else 96)
    args.noop_files = args.noop_files or (5000 if args.quick else 100_000)
    if args.render is not None:
        text = write_markdown(args.out or DEFAULT_RESULTS, json.loads(args.render.read_text()))
        print(text)
        return 0
    return run_benchmark(args)


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"bench.py {argv[0]}")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv[1:])
    modes: dict[str, Callable[[], dict[str, Any]]] = {
        "_plain": lambda: child_plain(args.images, args.checkpoint, args.batch_size),
        "_pure": lambda: child_pure(args.images, args.model, args.batch_size),
        "_fastembed": lambda: child_fastembed(args.images, args.model_dir, args.batch_size),
        "_fidelity": lambda: child_fidelity(dict(parse_set(s) for s in args.set), args.model_dir),
        "_search": lambda: child_search(args.model_dir, args.data_dir, SEARCH_QUERY),
    }
    if argv[0] not in modes:
        parser.error(f"unknown mode {argv[0]}")
    print(json.dumps(modes[argv[0]]()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
