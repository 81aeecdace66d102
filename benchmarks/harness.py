"""The benchmarks' harness: timed child processes, the machine's idle wait, the inputs, the model, the facts.

Every benchmark script (``bench.py``, ``concurrency.py``, ``library.py``, ``million.py``) imports this module.
Each contender of ``bench.py`` has its own module (``contender_*.py``): what it runs and how it is measured.
"""

from __future__ import annotations

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
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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
INPUT_FORMAT = 2  # bump to regenerate cached inputs

SETS: dict[str, dict[str, Any]] = {
    # name: aspect (w/h) of the crop before upscaling, megapixels; a quarter of the images are portrait
    "12mp": {"aspect": 4 / 3, "megapixels": 12.0, "label": "12 MP"},
    "1080p": {"aspect": 16 / 9, "megapixels": 1920 * 1080 / 1e6, "label": "1080p"},
}


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


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
    return [str(script)] if script.is_file() else [sys.executable, "-m", "clipindex"]


def script_cmd(script: str, *args: str) -> list[str]:
    """``python benchmarks/<script> ARGS...`` with this interpreter."""
    return [sys.executable, str(Path(__file__).resolve().with_name(script)), *args]


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


def _stale_model(manifest: Path) -> bool:
    """True when the cached model was converted with another export or int8 settings than the converter's now."""
    from clipindex.convert.api import INT8_SETTINGS
    from clipindex.convert.export import VISION_EXPORT

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
        run_child([sys.executable, "-m", "clipindex.convert.checkpoint", str(checkpoint), "--arch", "vit-b-32"]).check()
    manifest = model_dir / "manifest.json"
    if not manifest.is_file() or not (model_dir / "vision.int8.onnx").is_file() or _stale_model(manifest):
        log(f"model: converting with `clipindex convert --quantize int8` into {model_dir} (a few minutes)")
        cmd = [*clipindex_cmd(), "convert", "--model", str(checkpoint), "--output", str(model_dir)]
        run_child([*cmd, "--quantize", "int8", "--force"]).check()
    return checkpoint, model_dir


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    simd = [
        f
        for f in (
            "avx2",
            "fma",
            "avx512f",
            "avx512_vnni",
            "avx512_bf16",
            "avx_vnni",
            "amx_tile",
            "amx_bf16",
            "amx_int8",
        )
        if f in flags
    ]
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


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into ``path`` in place of the one
    between those markers, or append it; the rest of the file is left as it is. Every script that writes a part
    of results.md uses this."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    section = section.rstrip("\n")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def cpu_description() -> str:
    """``model (SIMD flags), N cores``: what to name beside every figure."""
    m = machine()
    return f"{m['cpu']} ({', '.join(m['simd'])}), {m['cores']} cores"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@contextlib.contextmanager
def timer(label: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    log(f"{label}: {time.perf_counter() - t0:.1f} s")
