"""Throughput benchmark for ``clipindex ingest`` (issue 6), side by side with the plain transformers+PyTorch way.

Run from the repository root (the venv active)::

    python benchmarks/bench.py                 # full run: 96 images per set, 3 rounds, 100k-file no-op re-run
    python benchmarks/bench.py --rounds 5      # more rounds (medians get steadier on a noisy machine)
    python benchmarks/bench.py --quick         # dev run: 24 images, 1 round, 5k-file no-op (projected to 100k)

One run makes the inputs and the model (:mod:`harness`), measures draft and int8 fidelity, alternates the
contenders round by round (one module each: ``contender_ingest.py``, ``contender_plain.py``,
``contender_pure_ort.py``, ``contender_fastembed.py``; every one a fresh, timed subprocess), then times the
no-op re-run over a large synthetic tree and the search cold start. benchmarks/README.md describes each step.
Results: medians on stdout, ``benchmarks/results.md``, and the raw figures in ``benchmarks/_work/raw/``.
Benchmarks are not tests: CI does not run this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness and the contenders, beside this script

import contender_fastembed
import contender_ingest
import contender_plain
import contender_pure_ort
from contender_pure_ort import PURE_PASSES
from harness import (
    BATCH_SIZE,
    DEFAULT_RESULTS,
    DEFAULT_WORK,
    JPEG_QUALITY,
    NOISE_SIGMA,
    ROOT,
    SETS,
    ChildResult,
    clipindex_cmd,
    code_fingerprint,
    describe_inputs,
    image_files,
    log,
    machine,
    make_inputs,
    make_model,
    median,
    run_child,
    timer,
    wait_for_quiet,
)

SEARCH_QUERY = "a red car"


# Issue 6's targets and the ceilings it computed (12 MP / 1080p).
TARGETS: dict[str, dict[str, float]] = {
    "12mp": {"vs_plain_fp32": 5.0, "vs_plain_int8": 8.0, "vs_pure_fp32": 0.65},
    "1080p": {"vs_plain_fp32": 1.8, "vs_plain_int8": 3.0, "vs_pure_fp32": 0.8},
}
CEILINGS: dict[str, dict[str, float]] = {
    "12mp": {"vs_plain_fp32": 5.9, "vs_plain_int8": 8.7, "vs_pure_fp32": 0.70},
    "1080p": {"vs_plain_fp32": 1.9, "vs_plain_int8": 3.2, "vs_pure_fp32": 0.89},
}
# Issue 23's goals: ingest on OpenVINO against today's fp32 ingest, and against the peers (rclip's and
# fastembed's figures are issue 23's, measured side by side on this machine; fastembed runs here too).
OPENVINO_TARGETS: dict[str, dict[str, float]] = {
    "12mp": {"openvino_vs_fp32": 1.8, "openvino_vs_fastembed": 4.0, "openvino_vs_rclip": 4.0},
    "1080p": {"openvino_vs_fp32": 2.0, "openvino_vs_fastembed": 2.5, "openvino_vs_rclip": 2.5},
}
#: rclip 3.3's img/s on this machine's sets (issue 23's table; rclip is not installed here)
RCLIP_IMG_PER_S: dict[str, float] = {"12mp": 5.6, "1080p": 10.8}
MIN_ENGINE_COSINE = 0.9999
RSS_LIMIT_MB = 1500.0
NOOP_LIMIT_S_PER_100K = 10.0
SEARCH_LIMIT_S = 1.5


# --- subprocesses -----------------------------------------------------------------------------------------------


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# --- inputs -----------------------------------------------------------------------------------------------------


# --- model ------------------------------------------------------------------------------------------------------


# --- child processes: plain pipeline, pure ORT, fidelity, search fallback --------------------------------------


def child_fidelity(folders: dict[str, Path], model_dir: Path) -> dict[str, Any]:
    """Per-image cosine: draft vs exact decode (fp32), and int8 vs fp32 (exact decode), full-size model."""
    import numpy as np

    from clipindex.model.encode import Embedder

    exact = Embedder(model_dir, device="cpu", precision="fp32", draft=False)
    draft = Embedder(model_dir, device="cpu", precision="fp32", draft=True)
    int8 = Embedder(model_dir, device="cpu", precision="int8", draft=False)
    openvino = openvino_int8 = None
    if _openvino_installed():
        openvino = Embedder(model_dir, device="cpu", engine="openvino", draft=False)
        openvino_int8 = Embedder(model_dir, device="cpu", engine="openvino", precision="int8", draft=False)
    result: dict[str, Any] = {}
    for set_name, folder in folders.items():
        files = [str(p) for p in image_files(folder)]
        timings: dict[str, float] = {}
        vectors: dict[str, Any] = {}
        for label, embedder in (("exact", exact), ("draft", draft)):
            t0 = time.perf_counter()
            pixels = np.stack([embedder.preprocessor.load_and_preprocess(f) for f in files])
            timings[f"{label}_decode_ms_per_image"] = 1000 * (time.perf_counter() - t0) / len(files)
            vectors[label] = embedder.encode_pixels(pixels)
            if label == "exact":
                vectors["int8"] = int8.encode_pixels(pixels)
                if openvino is not None and openvino_int8 is not None:
                    vectors["openvino"] = openvino.encode_pixels(pixels)
                    vectors["openvino_int8"] = openvino_int8.encode_pixels(pixels)
        draft_cos = np.sum(vectors["exact"] * vectors["draft"], axis=1)
        int8_cos = np.sum(vectors["exact"] * vectors["int8"], axis=1)
        # Baseline: how far apart the model puts *different* photos (pairs made from different source photos).
        # A random-weight network maps all inputs close together, so draft's error is judged against this spread.
        sims = vectors["exact"] @ vectors["exact"].T
        source = np.arange(len(files)) % 7  # _make_one cycles through the 7 sample photos
        different = source[:, None] != source[None, :]
        between = sims[different]
        spread = max(1e-12, 1 - float(between.mean())) if between.size else float("nan")
        engines: dict[str, Any] = {}
        if "openvino" in vectors:
            for key in ("openvino", "openvino_int8"):
                cos = np.sum(vectors["exact"] * vectors[key], axis=1)
                engines[f"{key}_vs_fp32_min"] = float(cos.min())
                engines[f"{key}_vs_fp32_mean"] = float(cos.mean())
            engines["openvino_engine"] = openvino.engine("vision") if openvino is not None else None
        result[set_name] = {
            **engines,
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


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def child_search(model_dir: Path, data_dir: Path, query: str) -> dict[str, Any]:
    """Library equivalent of ``clipindex search QUERY`` (used only while the CLI has no search command)."""
    t0 = time.perf_counter()
    from clipindex.model.encode import Embedder
    from clipindex.store.edge import EdgeStore

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

    from clipindex.ingest.points import absolute, make_payload, point_id
    from clipindex.model.manifest import ModelManifest
    from clipindex.store.base import Point
    from clipindex.store.edge import EdgeStore

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


def run_search(model_dir: Path, data_dir: Path, repeats: int, engine: str = "onnxruntime") -> dict[str, Any]:
    """Search cold start: a fresh process each time, after one warm-up run (page cache)."""
    external = ROOT / "benchmarks" / "search_cold_start.py"
    if external.is_file():  # another engineer's benchmark of `clipindex search` (issue 4): use it
        cmd = [sys.executable, str(external), "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
        cmd += ["--engine", engine]
        result = run_child([*cmd, "--repeats", str(repeats)])
        if result.returncode == 0:
            with contextlib.suppress(RuntimeError):
                data = result.json()
                if isinstance(data.get("median_s"), (int, float)):
                    return {
                        "method": '`benchmarks/search_cold_start.py` (`clipindex search "a red car" --json'
                        + ("" if engine == "onnxruntime" else f" --engine {engine}")
                        + "`)",
                        "engine": engine,
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
    engine: str = "onnxruntime"


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


OV = "openvino"


def contenders(default_draft: bool, variants: bool, openvino: bool = False) -> list[Contender]:
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
    if openvino:
        items += [
            Contender(
                "ingest_openvino", "clipindex ingest, openvino (fp32 files)", "ingest", "fp32", [same], False, OV
            ),
            Contender(
                "ingest_openvino_int8", "clipindex ingest, openvino, int8 files", "ingest", "int8", [same], True, OV
            ),
            Contender("pure_openvino", "pure OpenVINO vision model (fp32 files)", "pure", "fp32", [], False, OV),
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
    """One timed run of ``contender`` over ``folder``, by its module (``contender_*.py``)."""
    waited, _ = wait_for_quiet(quiet_wait_s) if quiet_wait_s > 0 else (0.0, 0.0)
    if contender.kind == "ingest":
        result, detail, timed_s, images = contender_ingest.measure(
            folder,
            model_dir,
            work,
            precision=contender.precision,
            extra=[*contender.extra, "--engine", contender.engine],
            name=f"{set_name}-{contender.key}",
            label=contender.label,
        )
    elif contender.kind == "fastembed":
        result, detail, timed_s, images = contender_fastembed.measure(folder, model_dir, work)
    elif contender.kind == "plain":
        result, detail, timed_s, images = contender_plain.measure(folder, checkpoint)
    else:
        result, detail, timed_s, images = contender_pure_ort.measure(
            folder, model_dir, contender.precision, contender.engine
        )
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
        "openvino_vs_fp32": ("ingest_openvino", "ingest_fp32"),
        "openvino_vs_int8": ("ingest_openvino", "ingest_int8"),
        "openvino_int8_vs_fp32": ("ingest_openvino_int8", "ingest_fp32"),
        "openvino_vs_plain": ("ingest_openvino", "plain_fp32"),
        "openvino_vs_fastembed": ("ingest_openvino", "fastembed_fp32"),
        "pure_openvino_vs_pure_fp32": ("pure_openvino", "pure_fp32"),
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
        "**Model:** full-size ViT-B/32 with random weights "
        "(`clipindex.convert.checkpoint --arch vit-b-32`), converted by "
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
    add_openvino(add, data)
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
    markers = ("<!-- nncf_int8.py -->", "<!-- million:start -->", "<!-- concurrency:begin -->", "<!-- library.py -->")
    kept = [old.index(marker) for marker in markers if marker in old]
    if kept:
        text += "\n" + old[min(kept) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def add_openvino(add: Callable[[str], None], data: dict[str, Any]) -> None:
    """Issue 23: ingest on OpenVINO against today's fp32 and int8 ingest and the peers, at what fidelity."""
    summary, rat, fid = data["summary"], data["ratios"], data.get("fidelity") or {}
    if not any("openvino_vs_fp32" in rat.get(set_name, {}) for set_name in summary):
        return
    m = data["machine"]
    flags = ", ".join(m["simd"]) or "no AVX2"
    rounds = data["config"]["rounds"]

    def cell(set_name: str, key: str, digits: int = 2) -> str:
        r = rat.get(set_name, {}).get(key)
        if r is None:
            return "–"
        span = f" ({r['min']:.{digits}f}–{r['max']:.{digits}f})" if rounds > 1 else ""
        target = OPENVINO_TARGETS.get(set_name, {}).get(key)
        goal = "" if target is None else (" ✅" if r["value"] >= target else " ❌") + f" goal ≥ {target:g}×"
        return f"**{r['value']:.{digits}f}×**{span}{goal}"

    def cpu_cell(set_name: str) -> str:
        per_set = summary[set_name]
        if "ingest_openvino" not in per_set or "ingest_fp32" not in per_set:
            return "–"
        ort_cpu, ov_cpu = per_set["ingest_fp32"]["median_cpu_s"], per_set["ingest_openvino"]["median_cpu_s"]
        return f"{ort_cpu:.1f} → {ov_cpu:.1f} ({ort_cpu / ov_cpu:.2f}× the images per CPU second)"

    add("## OpenVINO engine (issue 23)")
    add("")
    add(f"CPU: {m['cpu']}, flags {flags}; {m['cores']} cores. Engine labels as ingest records them.")
    add("")
    add(
        "| Set | engine | openvino vs ingest fp32 | vs ingest int8 | openvino int8 files vs ingest fp32 | "
        "vs plain fp32 | vs fastembed | vs rclip (issue's img/s) | min cosine vs ONNX Runtime fp32, per image | "
        "CPU seconds, ingest fp32 → openvino |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for set_name in summary:
        f = fid.get(set_name, {})
        ov = summary[set_name].get("ingest_openvino", {}).get("median_img_per_s")
        rclip = RCLIP_IMG_PER_S.get(set_name)
        if ov and rclip:
            target = OPENVINO_TARGETS[set_name]["openvino_vs_rclip"]
            ok = " ✅" if ov / rclip >= target else " ❌"
            rclip_cell = f"**{ov / rclip:.1f}×**{ok} goal ≥ {target:g}×"
        else:
            rclip_cell = "–"
        cos = f.get("openvino_vs_fp32_min")
        cos_cell = "–"
        if isinstance(cos, float):
            ok = " ✅" if cos >= MIN_ENGINE_COSINE else " ❌"
            cos_cell = f"{cos:.6f}{ok} (int8 files: {f.get('openvino_int8_vs_fp32_min', float('nan')):.5f})"
        add(
            f"| {SETS[set_name]['label']} | {f.get('openvino_engine') or 'openvino'} | "
            f"{cell(set_name, 'openvino_vs_fp32')} | {cell(set_name, 'openvino_vs_int8')} | "
            f"{cell(set_name, 'openvino_int8_vs_fp32')} | {cell(set_name, 'openvino_vs_plain', 1)} | "
            f"{cell(set_name, 'openvino_vs_fastembed', 1)} | {rclip_cell} | {cos_cell} | {cpu_cell(set_name)} |"
        )
    pure = [rat.get(s, {}).get("pure_openvino_vs_pure_fp32") for s in summary]
    pure_text = ", ".join(f"{p['value']:.2f}×" for p in pure if p)
    add("")
    add(
        "Ratios of median img/s of `clipindex ingest --engine openvino` (fresh process, model load and OpenVINO's "
        "cached compile counted) against the other contenders of the same rounds, the range within each round in "
        "brackets. The cosine is per image, OpenVINO against ONNX Runtime on the same exact-decoded pixels, the "
        "full-size ViT-B/32. The pure model alone, OpenVINO against ONNX Runtime fp32: "
        f"{pure_text or '–'}. rclip is not installed here: its column divides by issue 23's figure for it, measured "
        "on this project's machine, so it is indicative only. The last column is each run's own CPU time (user + "
        "system, median): on a machine whose other users take a share of the cores, the images per CPU second "
        "show what the engine saves whatever the others' load. Others' load during the runs (median, share of all "
        "cores), ingest fp32 · openvino: "
        + "; ".join(
            f"{SETS[set_name]['label']} {100 * summary[set_name]['ingest_fp32']['median_background']:.0f} % · "
            f"{100 * summary[set_name]['ingest_openvino']['median_background']:.0f} %"
            for set_name in summary
            if {"ingest_fp32", "ingest_openvino"} <= set(summary[set_name])
        )
        + "."
    )
    searches = [data.get("search"), data.get("search_openvino")]
    if all(s and s.get("median_s") is not None for s in searches):
        ort_s, ov_s = searches[0]["median_s"], searches[1]["median_s"]  # type: ignore[index]
        tower = [
            (s.get("breakdown") or {}).get("text_tower_load_s")
            for s in searches  # type: ignore[union-attr]
        ]
        tower_text = (
            f"; text tower load {tower[0]:.2f} s → {tower[1]:.2f} s" if all(isinstance(t, float) for t in tower) else ""
        )
        add("")
        add(
            f"Search cold start (a fresh `clipindex search` process, median): --engine onnxruntime **{ort_s:.2f} s**, "
            f"--engine auto **{ov_s:.2f} s** ({ov_s / ort_s:.2f}×{tower_text}; OpenVINO's compiled text tower read "
            "from its cache, auto's check verdict kept)."
        )
    add("")


def add_ceiling(add: Callable[[str], None], data: dict[str, Any]) -> None:
    """What this machine allows: per-image CPU of decoding and of the model, both cores kept busy."""
    fid = data.get("fidelity")
    summary = data["summary"]
    cores = max(1, int(data["machine"]["cores"]))
    pure = {p: median([s["img_per_s"] for s in data["samples"] if s["key"] == f"pure_{p}"]) for p in ("fp32", "int8")}
    if not fid or any(math.isnan(v) for v in pure.values()):
        return
    openvino = [s["img_per_s"] for s in data["samples"] if s["key"] == "pure_openvino"]
    verified = all(f.get("openvino_vs_fp32_min", 0.0) >= MIN_ENGINE_COSINE for f in fid.values())
    if openvino and verified and median(openvino) > pure["fp32"]:
        pure["fp32"] = median(openvino)  # the fastest engine whose vectors agree with ONNX Runtime fp32's
        fastest = "OpenVINO (its cosine to ONNX Runtime fp32 ≥ 0.9999 per image)"
    else:
        fastest = "ONNX Runtime"
    draft = "draft" if data["default_draft"] else "exact"
    add("")
    add("### What this machine allows")
    add("")
    add(
        f"Both cores busy, no fixed cost: img/s ≤ {cores} / (decode+preprocess CPU per image + model CPU per image), "
        f"with decoding as measured one image at a time on one core ({draft} decode, the default) and the model's "
        f"CPU per image = {cores} cores / the pure model's img/s, fp32-quality on the fastest verified engine: "
        f"{fastest}. Ingest's own figure also pays its start (interpreter, imports, store) and the session load."
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
        fp32_key = "ingest_openvino" if fastest != "ONNX Runtime" else "ingest_fp32"
        reached = [
            f"{100 * summary[set_name][key]['median_img_per_s'] / ceiling[p]:.0f} %"
            if key in summary[set_name]
            else "–"
            for p, key in (("fp32", fp32_key), ("int8", "ingest_int8"))
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


def run_benchmark(args: argparse.Namespace) -> int:
    from clipindex import settings

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
        "default_draft": bool(settings.DEFAULT_DRAFT),
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
    items = contenders(bool(settings.DEFAULT_DRAFT), variants=not args.no_variants, openvino=_openvino_installed())
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
        if _openvino_installed():
            with timer("search cold start, --engine auto"):
                data["search_openvino"] = run_search(
                    model_dir, Path(data["noop"]["data_dir"]), repeats=max(3, args.rounds), engine="auto"
                )
            log(f"search cold start, auto: {data['search_openvino'].get('median_s')} s")
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
    parser.add_argument("--engine", default="onnxruntime")
    args = parser.parse_args(argv[1:])
    modes: dict[str, Callable[[], dict[str, Any]]] = {
        "_plain": lambda: contender_plain.child(args.images, args.checkpoint, args.batch_size),
        "_pure": lambda: contender_pure_ort.child(args.images, args.model, args.batch_size, args.engine),
        "_fastembed": lambda: contender_fastembed.child(args.images, args.model_dir, args.batch_size),
        "_fidelity": lambda: child_fidelity(dict(parse_set(s) for s in args.set), args.model_dir),
        "_search": lambda: child_search(args.model_dir, args.data_dir, SEARCH_QUERY),
    }
    if argv[0] not in modes:
        parser.error(f"unknown mode {argv[0]}")
    print(json.dumps(modes[argv[0]]()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
