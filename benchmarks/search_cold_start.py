"""Cold-start wall time of ``clipindex search`` on an embedded store of 100k points (issue 4).

Every query is a new process, so what counts is the wall time of a whole ``python -m clipindex search "..."``:
interpreter start, imports, text tower and tokenizer load, opening the Qdrant Edge shard, the query, output.

Run from the repository root (the venv active)::

    python benchmarks/search_cold_start.py --model-dir models/clip-vit-base-patch32
    python benchmarks/search_cold_start.py --model-dir M --data-dir D --repeats 7   # reuse / make a store in D

or from another script::

    from search_cold_start import measure          # with benchmarks/ on sys.path
    result = measure(Path("models/clip-vit-base-patch32"), data_dir=None, points=100_000)

Without ``--data-dir`` a store is made (once) under ``benchmarks/_work/search-<points>-<model>/``: ``points``
random unit vectors written straight into an ``EdgeStore`` with the payloads ingest writes
(:func:`clipindex.ingest.points.make_payload`), in upserts of 25 points (ingest's default batch), flushed and closed as
ingest leaves it. An existing collection in ``--data-dir`` is used as it is; it must have been built with the
model in ``--model-dir``.

Output: one line per run, a breakdown of one extra in-process run (where the time goes), and, last, one
JSON object on stdout: ``{"median_s", "min_s", "max_s", "walls_s", "points", "model", "breakdown", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_QUERY = "a red car"
WORK = ROOT / "benchmarks" / "_work"
for _path in (ROOT, ROOT / "benchmarks"):  # run as a script: the repository's indexer, and synthetic.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

#: run in a fresh interpreter: the steps of a text search, timed one by one (as ``clipindex search`` does them)
_BREAKDOWN = r"""
import time, json, sys
t0 = time.perf_counter()
import numpy, onnxruntime, PIL.Image, click
t1 = time.perf_counter()
import clipindex.cli, clipindex.ops.search, clipindex.store
t2 = time.perf_counter()
from clipindex.model.encode import Embedder
from clipindex.ops.search import open_collection, search_vector
from clipindex.store import EdgeStore
model_dir, data_dir, query, engine = sys.argv[1:5]
embedder = Embedder(model_dir, device="cpu", engine=engine)
t3 = time.perf_counter()
embedder.tokenizer
t4 = time.perf_counter()
embedder.tower("text")
t5 = time.perf_counter()
vector = embedder.encode_text([query])[0]
t6 = time.perf_counter()
store = EdgeStore(data_dir, "images")
open_collection(store, embedder.model_name, embedder.dimension)
t7 = time.perf_counter()
results = search_vector(store, vector, limit=10, model_name=embedder.model_name)
t8 = time.perf_counter()
store.close()
t9 = time.perf_counter()
print(json.dumps({
    "import_numpy_onnxruntime_pillow_click_s": t1 - t0,
    "import_indexer_and_qdrant_edge_s": t2 - t1,
    "manifest_s": t3 - t2,
    "tokenizer_load_s": t4 - t3,
    "text_tower_load_s": t5 - t4,
    "text_encode_s": t6 - t5,
    "store_open_s": t7 - t6,
    "query_s": t8 - t7,
    "store_close_s": t9 - t8,
    "hits": len(results),
}))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_store(data_dir: Path, model_dir: Path, points: int, *, batch: int = 25, seed: int = 0) -> None:
    """``points`` random unit vectors with ingest's payloads, in upserts of ``batch``, into ``data_dir``."""
    import numpy as np
    from synthetic import synthetic_point

    from clipindex.model.manifest import ModelManifest
    from clipindex.store.edge import EdgeStore

    manifest = ModelManifest.load(model_dir)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with EdgeStore(data_dir, "images") as store:
        store.ensure_collection(manifest.embedding_dim, manifest.model_name)
        for start in range(0, points, batch):
            count = min(batch, points - start)
            vectors = rng.standard_normal((count, manifest.embedding_dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunk = [
                synthetic_point(start + offset, vector, manifest.model_name) for offset, vector in enumerate(vectors)
            ]
            store.upsert(chunk)
            if (start // batch) % 400 == 399:
                store.flush()  # ingest flushes every 30 s
        count = store.count(exact=True)
    log(f"made a store of {count:,} points in {data_dir} in {time.perf_counter() - started:.0f} s")


def _has_collection(data_dir: Path) -> bool:
    return (data_dir / "images" / "shard" / "edge_config.json").is_file()


def _search_cmd(model_dir: Path, data_dir: Path, query: str, engine: str = "onnxruntime") -> list[str]:
    return [
        sys.executable,
        "-m",
        "clipindex",
        "search",
        query,
        "--model-dir",
        str(model_dir),
        "--data-dir",
        str(data_dir),
        "--json",
        "--engine",
        engine,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``: its wall time, its own CPU time (user + sys, from ``wait4``) and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.read().strip()[-2000:]}")
        return wall, usage.ru_utime + usage.ru_stime, out.read()


def measure(
    model_dir: Path,
    data_dir: Path | None = None,
    *,
    points: int = 100_000,
    repeats: int = 5,
    query: str = DEFAULT_QUERY,
    engine: str = "onnxruntime",
) -> dict[str, Any]:
    """Time ``repeats`` cold ``clipindex search`` processes (after one warm-up for the page cache); print and
    return the figures (see the module doc)."""
    from clipindex.model.manifest import ModelManifest

    manifest = ModelManifest.load(model_dir)
    if data_dir is None:
        data_dir = WORK / f"search-{points}-{manifest.model_name}"
    if not _has_collection(data_dir):
        build_store(data_dir, model_dir, points)
    cmd = _search_cmd(model_dir, data_dir, query, engine)
    env = _env()
    walls: list[float] = []
    cpus: list[float] = []
    first: float | None = None
    for attempt in range(repeats + 1):
        wall, cpu, stdout = _run_timed(cmd, env)
        hits = len(json.loads(stdout))
        if attempt == 0:
            first = wall
            log(f"warm-up (page cache): {wall:.3f} s, {hits} hits")
            continue
        walls.append(wall)
        cpus.append(cpu)
        log(f"run {attempt}/{repeats}: {wall:.3f} s wall, {cpu:.3f} s CPU (user+sys), {hits} hits")
    breakdown_proc = subprocess.run(
        [sys.executable, "-c", _BREAKDOWN, str(model_dir), str(data_dir), query, engine],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=True,
    )
    breakdown = json.loads(breakdown_proc.stdout.strip().splitlines()[-1])
    log("breakdown of one sequential in-process run (the CLI overlaps tower load and store open):")
    for key, value in breakdown.items():
        if key.endswith("_s"):
            log(f"  {key:<40} {value:.3f} s")
    stored = stored_points(data_dir)
    result = {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "walls_s": walls,
        "cpu_median_s": statistics.median(cpus),
        "first_s": first,
        "points": stored,
        "model": manifest.model_name,
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "query": query,
        "engine": engine,
        "cores": len(os.sched_getaffinity(0)),
        "load_avg": os.getloadavg()[0],
        "breakdown": breakdown,
    }
    log(
        f"clipindex search cold start at {stored:,} points ({manifest.model_name}): median {result['median_s']:.3f} s "
        f"(min {result['min_s']:.3f}, max {result['max_s']:.3f}) over {len(walls)} fresh processes; "
        f"CPU median {result['cpu_median_s']:.3f} s; load average {result['load_avg']:.1f} on {result['cores']} cores"
    )
    print(json.dumps(result))
    return result


def stored_points(data_dir: Path) -> int:
    """The exact point count of the collection in ``data_dir``."""
    from clipindex.store.edge import EdgeStore

    with EdgeStore(data_dir, "images") as store:
        store.collection_info()
        return store.count(exact=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "clip-vit-base-patch32")
    parser.add_argument("--data-dir", type=Path, default=None, help="store to search (made when it has no collection)")
    parser.add_argument("--points", type=int, default=100_000, help="points of a store made here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument(
        "--engine", default="onnxruntime", help="clipindex search --engine (onnxruntime, openvino, auto)"
    )
    args = parser.parse_args(argv)
    measure(
        args.model_dir, args.data_dir, points=args.points, repeats=args.repeats, query=args.query, engine=args.engine
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
