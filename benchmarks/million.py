"""The 1M-point scenario of issue 16: search on the embedded store at 1M points, before and after the upgrade.

Steps (each cached under ``benchmarks/_work/million-<points>/``)::

    python benchmarks/million.py build       # the store as clipindex wrote it before issue 16 (run on that code)
    python benchmarks/million.py search      # fresh `clipindex search` processes, warm and cold, recall@10, RSS
    python benchmarks/million.py upgrade     # a copy of the store, upgraded by `clipindex optimize`

**Vectors.** ``points`` synthetic unit vectors shaped like CLIP image embeddings rather than uniform noise:
a mixture of :data:`CLUSTERS` topics (``normalize(centre + SPREAD * noise)``), over a shared offset that gives
different photos a mean cosine near CLIP's. They are written with ingest's payloads
(:func:`clipindex.ingest.points.make_payload`), upserts of :data:`BATCH`, and a flush plus ``optimize()`` every
:data:`SEAL_EVERY` points (what ingest's 30 s periodic flush does). The vectors are regenerated from the seed
whenever they are needed (exact ground truth), never stored twice.

**Queries.** 100 query vectors near the data (a stored vector's cluster centre plus noise, like a text query
that matches a topic); recall@10 compares the store's top 10 with exact float32 top 10 (numpy over all
vectors).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"
for _path in (ROOT, ROOT / "benchmarks"):  # the repository's indexer, and synthetic.py beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness import cpu_description, write_section  # noqa: E402
from synthetic import path_of  # noqa: E402

DIM = 512
CLUSTERS = 2000
SPREAD = 0.9
SHARED = 1.2
BATCH = 250
SEAL_EVERY = 32_000
SEED = 16
CHUNK = 50_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def centres(dim: int = DIM) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(SEED)
    shared = rng.standard_normal(dim, dtype=np.float32)
    shared /= np.linalg.norm(shared)
    raw = _normalize(rng.standard_normal((CLUSTERS, dim), dtype=np.float32))
    return _normalize(raw + SHARED * shared)


def vector_chunks(points: int, dim: int = DIM) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    """(start, unit vectors) in chunks of :data:`CHUNK`: the same vectors on every call."""
    c = centres(dim)
    for start in range(0, points, CHUNK):
        rng = np.random.default_rng([SEED, start])
        count = min(CHUNK, points - start)
        topic = rng.integers(0, CLUSTERS, count)
        noise = rng.standard_normal((count, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
        yield start, _normalize(c[topic] + SPREAD * noise)


def queries(count: int = 100, dim: int = DIM) -> npt.NDArray[np.float32]:
    c = centres(dim)
    rng = np.random.default_rng([SEED, 999])
    topic = rng.integers(0, CLUSTERS, count)
    noise = rng.standard_normal((count, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    return _normalize(c[topic] + 1.2 * noise)


def exact_top(points: int, q: npt.NDArray[np.float32], k: int = 10) -> list[set[str]]:
    """The exact float32 top-``k`` point ids of every query."""
    from clipindex.ingest.points import point_id

    best_s = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
    for start, vectors in vector_chunks(points, q.shape[1]):
        scores = q @ vectors.T
        idx = np.argpartition(-scores, k, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, idx, 1)], axis=1)
        best_i = np.concatenate([best_i, idx + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return [{point_id(path_of(int(i))) for i in row} for row in best_i]


def store_dir(points: int, tag: str) -> Path:
    return WORK / f"million-{points}" / tag


def build(points: int, model_name: str, data_dir: Path) -> None:
    """Write ``points`` vectors into an embedded store the way ingest writes them (module doc)."""
    from synthetic import synthetic_point

    from clipindex.store.edge import EdgeStore

    started = time.perf_counter()
    written = 0
    with EdgeStore(data_dir, "images") as store:
        store.ensure_collection(DIM, model_name)
        for start, vectors in vector_chunks(points):
            for b in range(0, len(vectors), BATCH):
                chunk = [
                    synthetic_point(start + b + offset, vector, model_name)
                    for offset, vector in enumerate(vectors[b : b + BATCH])
                ]
                store.upsert(chunk)
                written += len(chunk)
                if written % SEAL_EVERY < BATCH:
                    store.optimize()
                    store.flush()
            log(f"  {written:,} points, {time.perf_counter() - started:.0f} s")
        store.optimize()
        count = store.count(exact=True)
    log(f"made a store of {count:,} points in {data_dir} in {time.perf_counter() - started:.0f} s")


def evict(*folders: Path) -> int:
    """Drop the page-cache pages of every file under ``folders`` (``posix_fadvise(DONTNEED)``): a cold start for
    those files without dropping the whole machine's cache (others share it). Returns the bytes evicted."""
    total = 0
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    total += os.fstat(fd).st_size
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return total


def _site_packages() -> list[Path]:
    import numpy
    import onnxruntime
    import qdrant_edge
    import tokenizers

    return [Path(m.__file__).parent for m in (numpy, onnxruntime, qdrant_edge, tokenizers)]


def timed_search(
    model_dir: Path, data_dir: Path, query: str = "a red car", *, cold: bool = False, code: Path = ROOT
) -> dict[str, Any]:
    """One fresh ``clipindex search`` process: wall, CPU, peak RSS (``wait4``), hits."""
    if cold:
        evict(data_dir, model_dir, code / "indexer", *_site_packages())
    cmd = [sys.executable, "-m", "clipindex", "search", query, "--model-dir", str(model_dir)]
    cmd += ["--data-dir", str(data_dir), "--json"]
    figures, stdout = _run_timed(cmd, code)
    return {**figures, "hits": json.loads(stdout)}


def run_search(model_dir: Path, data_dir: Path, *, repeats: int = 5, code: Path = ROOT) -> dict[str, Any]:
    """Warm and cold fresh-process search timings, with peak RSS."""
    warm: list[dict[str, Any]] = []
    cold: list[dict[str, Any]] = []
    timed_search(model_dir, data_dir, code=code)  # page cache
    for _ in range(repeats):
        warm.append(timed_search(model_dir, data_dir, code=code))
    for _ in range(max(1, repeats // 2)):
        cold.append(timed_search(model_dir, data_dir, cold=True, code=code))
    return {
        "warm_median_s": float(np.median([r["wall_s"] for r in warm])),
        "warm_s": [r["wall_s"] for r in warm],
        "cold_median_s": float(np.median([r["wall_s"] for r in cold])),
        "cold_s": [r["wall_s"] for r in cold],
        "peak_rss_bytes": max(r["rss_bytes"] for r in warm + cold),
        "cpu_warm_median_s": float(np.median([r["cpu_s"] for r in warm])),
        "top_hit": warm[-1]["hits"][0]["path"] if warm[-1]["hits"] else None,
    }


def recall(data_dir: Path, points: int, *, count: int = 100, exact: bool = False) -> dict[str, Any]:
    """recall@10 of the store's search against exact float32 (numpy) on ``count`` queries; query latency."""
    from clipindex.store.edge import EdgeStore

    q = queries(count)
    truth = exact_top(points, q)
    got: list[set[str]] = []
    took: list[float] = []
    with EdgeStore(data_dir, "images") as store:
        store.collection_info()
        store.exact_search = exact
        for vector in q:
            started = time.perf_counter()
            hits = store.search(vector, limit=10)
            took.append(time.perf_counter() - started)
            got.append({h.id for h in hits})
    hit = sum(len(a & b) for a, b in zip(got, truth, strict=True))
    return {
        "recall_at_10": hit / (10 * count),
        "worst_query_recall": min(len(a & b) / 10 for a, b in zip(got, truth, strict=True)),
        "first_query_s": took[0],
        "query_median_s": float(np.median(took[1:])),
    }


def _anon_peak(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``, sampling its anonymous RSS every 0.1 s: wall, peak RSS (``wait4``), peak anonymous RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    peak_anon = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            kb = int(status.split("RssAnon:")[1].split()[0])
            peak_anon = max(peak_anon, kb * 1024)
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    return {
        "wall_s": time.perf_counter() - started,
        "rc": proc.returncode,
        "peak_anon_bytes": peak_anon,
        "stdout": out,
        "stderr": err[-2000:],
    }


def upgrade(points: int, tag: str = "after") -> dict[str, Any]:
    """Copy the ``before`` store, then ``clipindex optimize`` it (this tree's code): time and memory."""
    source, target = store_dir(points, "before"), store_dir(points, tag)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    env["PYTHONPATH"] = str(ROOT)
    result = _anon_peak([sys.executable, "-m", "clipindex", "optimize", "--data-dir", str(target), "--json"], env)
    if result["rc"] != 0:
        raise RuntimeError(f"optimize failed: {result['stderr']}")
    result["report"] = json.loads(result.pop("stdout"))
    return result


def compare(
    model_dir: Path, points: int, baseline_code: Path, *, rounds: int = 5, cold_rounds: int = 3
) -> dict[str, Any]:
    """Fresh ``clipindex search`` processes, alternating: today's code on the ``before`` store against this tree
    on the ``after`` store; warm (page cache) rounds, then cold ones (:func:`evict` first)."""
    contenders = {
        "before": (store_dir(points, "before"), baseline_code),
        "after": (store_dir(points, "after"), ROOT),
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {"warm": [], "cold": []} for name in contenders}
    for data_dir, code in contenders.values():
        timed_search(model_dir, data_dir, code=code)  # page cache, bytecode
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            data_dir, code = contenders[name]
            runs[name]["warm"].append(timed_search(model_dir, data_dir, code=code))
    for r in range(cold_rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            data_dir, code = contenders[name]
            runs[name]["cold"].append(timed_search(model_dir, data_dir, cold=True, code=code))
    summary: dict[str, Any] = {}
    for name, kinds in runs.items():
        for kind, results in kinds.items():
            summary[f"{name}_{kind}"] = {
                "median_s": float(np.median([x["wall_s"] for x in results])),
                "min_s": min(x["wall_s"] for x in results),
                "max_s": max(x["wall_s"] for x in results),
                "cpu_median_s": float(np.median([x["cpu_s"] for x in results])),
                "peak_rss_bytes": max(x["rss_bytes"] for x in results),
            }
        hits = [h["path"] for h in kinds["warm"][-1]["hits"]]
        summary[f"{name}_top10"] = hits
    return summary


def run_all(model_dir: Path, points: int, baseline_code: Path, out: Path) -> dict[str, Any]:
    started = time.time()
    load_before = os.getloadavg()[0]
    log("upgrade: copy of the store written the old way, `clipindex optimize`")
    up = upgrade(points)
    log(f"  {up['wall_s']:.1f} s, peak anonymous {up['peak_anon_bytes'] / 1e6:.0f} MB: {up['report']}")
    log("search: fresh processes, warm then cold, alternating")
    searches = compare(model_dir, points, baseline_code)
    log(json.dumps({k: v for k, v in searches.items() if not k.endswith("top10")}, indent=1))
    log("recall@10 on 100 queries (this tree, int8 + rescoring; then the float32-only path)")
    quantized = recall(store_dir(points, "after"), points)
    exact = recall(store_dir(points, "after"), points, exact=True)
    log(f"  int8: {quantized}; float32 only: {exact}")
    result = {
        "points": points,
        "upgrade": up,
        "search": searches,
        "recall_int8": quantized,
        "recall_float32": exact,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
        "minutes": (time.time() - started) / 60,
        "cpu_flags": cpu_description(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def _run_timed(cmd: list[str], code: Path) -> tuple[dict[str, float], str]:
    """Run ``cmd`` on the clipindex tree ``code``: its wall, CPU and peak RSS (``wait4``), and its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    env["PYTHONPATH"] = str(code)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=code)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{cmd} exited {status}: {err.read()[-2000:]}")
        stdout = out.read()
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_bytes": usage.ru_maxrss * 1024}, stdout


def _timed_child(cmd: list[str], code: Path) -> dict[str, Any]:
    """:func:`_run_timed`, with the JSON report on the last line of stdout merged in."""
    figures, stdout = _run_timed(cmd, code)
    return {**figures, **json.loads(stdout.strip().splitlines()[-1])}


def noop(model_dir: Path, files: int, baseline_code: Path, *, rounds: int = 2, new_photos: int = 48) -> dict[str, Any]:
    """No-op re-runs of ``clipindex ingest`` over ``files`` unchanged tiny JPEGs (bench.py's no-op tree and store),
    alternating the baseline code on a copy of the store as it wrote it and this tree on a copy upgraded by
    ``clipindex optimize`` (untimed); then a cron-like run that finds ``new_photos`` new files (fp32 model load),
    on each side's copy. Wall, peak RSS (``wait4``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench  # the no-op tree and store

    tree, data_dir = bench.make_noop_store(WORK, model_dir, files)
    copies = {"before": data_dir.parent / "data-before", "after": data_dir.parent / "data-after"}
    for copy in copies.values():
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(data_dir, copy)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "clipindex", "optimize", "--data-dir", str(copies["after"])], env=env, check=True
    )
    # the baseline's own layout (no int8 copy): what its ingest's final optimize() would otherwise rewrite in its
    # first timed run
    relayout = (
        "import sys; from pathlib import Path; from clipindex.store import EdgeStore; "
        "s = EdgeStore(Path(sys.argv[1]), 'images'); s.collection_info(); s.optimize(); s.close()"
    )
    base_env = {**os.environ, "PYTHONPATH": str(baseline_code)}
    subprocess.run([sys.executable, "-c", relayout, str(copies["before"])], env=base_env, check=True, cwd=baseline_code)
    codes = {"before": baseline_code, "after": ROOT}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}

    def ingest_cmd(name: str) -> list[str]:
        cmd = [sys.executable, "-m", "clipindex", "ingest", str(tree), "--model-dir", str(model_dir)]
        return [*cmd, "--data-dir", str(copies[name]), "--quiet", "--json"]

    for name in ("before", "after"):  # untimed: page cache, and any maintenance left
        _timed_child(ingest_cmd(name), codes[name])

    for r in range(rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            result = _timed_child(ingest_cmd(name), codes[name])
            if result["indexed"] != 0 or result["unchanged"] != files:
                raise RuntimeError(f"{name}: not a no-op: {result}")
            runs[name].append(result)
            log(f"  no-op {name}: {result['wall_s']:.1f} s, {result['rss_bytes'] / 1e9:.2f} GB")
    fresh = tree / "zz-new"
    cron: dict[str, dict[str, Any]] = {}
    for name in ("before", "after"):
        if fresh.exists():
            shutil.rmtree(fresh)
        fresh.mkdir()
        for i, blob in enumerate(bench._tiny_jpegs(new_photos)):
            (fresh / f"NEW_{i:03d}.jpg").write_bytes(blob + f"new-{name}-{i}".encode())
        cron[name] = _timed_child(ingest_cmd(name), codes[name])
        log(f"  cron {name}: {cron[name]['wall_s']:.1f} s, {cron[name]['rss_bytes'] / 1e9:.2f} GB")
    shutil.rmtree(fresh)
    return {
        "files": files,
        "noop": {
            name: {
                "median_s": float(np.median([x["wall_s"] for x in results])),
                "walls_s": [x["wall_s"] for x in results],
                "peak_rss_bytes": max(x["rss_bytes"] for x in results),
                "cpu_median_s": float(np.median([x["cpu_s"] for x in results])),
            }
            for name, results in runs.items()
        },
        "cron": {
            name: {"wall_s": c["wall_s"], "rss_bytes": c["rss_bytes"], "indexed": c["indexed"]}
            for name, c in cron.items()
        },
        "load_avg": os.getloadavg()[0],
    }


def first_batch(model_dir: Path, tree: Path, code: Path, *, timeout_s: float = 300.0) -> dict[str, Any]:
    """Seconds from the start of a first ``clipindex ingest`` of ``tree`` (empty store) to its first verified batch:
    the live progress file (``ingest.progress.json``, what ``clipindex status`` reads) reports ``done`` > 0. Then the
    run is stopped. ``todo`` tells whether the walk had finished by then (None: still walking)."""
    import signal

    data_dir = WORK / f"first-batch-{code.name}"
    shutil.rmtree(data_dir, ignore_errors=True)
    progress = data_dir / "images" / "ingest.progress.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-m", "clipindex", "ingest", str(tree), "--model-dir", str(model_dir)]
    cmd += ["--data-dir", str(data_dir), "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=code)
    seen: dict[str, Any] = {}
    try:
        while time.perf_counter() - started < timeout_s and proc.poll() is None:
            try:
                seen = json.loads(progress.read_text())
            except (OSError, ValueError):
                seen = {}
            if seen.get("done", 0) > 0:
                break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"first_batch_s": elapsed, "done": seen.get("done"), "todo": seen.get("todo"), "phase": seen.get("phase")}


def hnsw_cost(points: int) -> dict[str, float]:
    """Seconds to seal ``points`` vectors (one appendable segment) into sealed segments with the int8 copy, without
    an HNSW graph (clipindex's setting) and with one (``m`` 16, ``ef_construct`` 100)."""
    import uuid

    import qdrant_edge as qe

    def config(m: int, threshold_kb: int) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine, on_disk=True),
            hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=100, full_scan_threshold=10_000),
            quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb, max_segment_size=262_144),
            payload_memory=qe.Memory.Cold,
            id_tracker_memory=qe.Memory.Cold,
        )

    base = WORK / f"hnsw-{points}"
    shutil.rmtree(base, ignore_errors=True)
    shard = qe.EdgeShard.create(str(base), config(0, 10**9))  # nothing sealed while writing
    for start, vectors in vector_chunks(points):
        for b in range(0, len(vectors), 1000):
            batch = [
                qe.Point(str(uuid.UUID(int=start + b + i + 1)), v.tolist(), {})
                for i, v in enumerate(vectors[b : b + 1000])
            ]
            shard.update(qe.UpdateOperation.upsert_points(batch))
    shard.close()
    out: dict[str, float] = {}
    for m in (0, 16):
        copy = WORK / f"hnsw-{points}-m{m}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(base, copy)
        shard = qe.EdgeShard.load(str(copy), config(m, 1))
        started = time.perf_counter()
        shard.optimize()
        shard.flush()
        out[f"m{m}_s"] = time.perf_counter() - started
        shard.close()
        shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    return out


START, END = "<!-- million:start -->", "<!-- million:end -->"


def markdown(r: dict[str, Any]) -> str:
    """The 1M-point section of benchmarks/results.md, from one :func:`run_all` result."""
    s, up = r["search"], r["upgrade"]
    bw, bc, aw, ac = s["before_warm"], s["before_cold"], s["after_warm"], s["after_cold"]

    def row(label: str, before: dict[str, Any], after: dict[str, Any], goal: str) -> str:
        return (
            f"| {label} | {before['median_s']:.2f} s ({before['min_s']:.2f}–{before['max_s']:.2f}), CPU "
            f"{before['cpu_median_s']:.2f} s | **{after['median_s']:.2f} s** "
            f"({after['min_s']:.2f}–{after['max_s']:.2f}), "
            f"CPU {after['cpu_median_s']:.2f} s | **{after['median_s'] / before['median_s']:.2f}** | {goal} |"
        )

    q, e = r["recall_int8"], r["recall_float32"]
    lines = [
        START,
        "## Search at 1M points (issue 16)",
        "",
        f"Written by `python benchmarks/million.py all` ({r['minutes']:.0f} min). **Machine:** {r['cpu_flags']}, "
        f"shared (load average {r['load_avg_before']:.1f} before, {r['load_avg_after']:.1f} after: other users' "
        "jobs ran throughout, so wall times are inflated, and the CPU time of each process is given next to it). "
        f"{r['points']:,} synthetic 512-d unit vectors in topics (`benchmarks/million.py`), written with ingest's "
        "payloads, upserts of 250 and a flush plus `optimize()` every 32k points, as ingest does. *Before*: the "
        "store as clipindex wrote it before issue 16 (33 segments of 64 MB, no int8 copy), searched by `main`'s "
        "code (`--code`, a `git archive` of it); *after*: a copy of it upgraded by `clipindex optimize`, "
        "searched by this tree. "
        'Each figure is a fresh `clipindex search "a red car" --json` process (full-size random-weight '
        "ViT-B/32 text tower), the two alternating; warm after a first untimed run, cold after dropping the "
        "page cache of the store, the model and the Python packages (`posix_fadvise(DONTNEED)`). Peak RSS from "
        "`wait4`.",
        "",
        "| Measure | before | after | after / before | goal |",
        "| --- | --- | --- | --- | --- |",
        row("fresh search, warm page cache", bw, aw, "≤ 0.5 s " + ("✅" if aw["median_s"] <= 0.5 else "❌")),
        row("fresh search, cold", bc, ac, "≤ 1.5 s " + ("✅" if ac["median_s"] <= 1.5 else "❌")),
        f"| peak RSS of the search process | {max(bw['peak_rss_bytes'], bc['peak_rss_bytes']) / 1e9:.2f} GB | "
        f"**{max(aw['peak_rss_bytes'], ac['peak_rss_bytes']) / 1e9:.2f} GB** | "
        f"**{max(aw['peak_rss_bytes'], ac['peak_rss_bytes']) / max(bw['peak_rss_bytes'], bc['peak_rss_bytes']):.2f}** "
        f"| ≤ 1 GB {'✅' if max(aw['peak_rss_bytes'], ac['peak_rss_bytes']) <= 1e9 else '❌'} |",
        f"| recall@10 vs exact float32 (numpy), 100 queries; before = the float32-only path on the same store | "
        f"{e['recall_at_10']:.3f} | "
        f"**{q['recall_at_10']:.3f}** (worst query {q['worst_query_recall']:.1f}) | | ≥ 0.99 "
        f"{'✅' if q['recall_at_10'] >= 0.99 else '❌'} |",
        f"| one query in a warm process (median of 99), same store: float32 scan vs int8 + rescoring | "
        f"{e['query_median_s'] * 1000:.0f} ms | "
        f"**{q['query_median_s'] * 1000:.0f} ms** | "
        f"**{q['query_median_s'] / e['query_median_s']:.2f}** | |",
        f"| first query after opening the store, same store: float32 scan vs int8 + rescoring | "
        f"{e['first_query_s']:.2f} s | "
        f"**{q['first_query_s']:.2f} s** | "
        f"**{q['first_query_s'] / e['first_query_s']:.2f}** | |",
        f"| upgrade of the 1M store (`clipindex optimize`) | | {up['wall_s']:.0f} s, peak anonymous RSS "
        f"{up['peak_anon_bytes'] / 1e6:.0f} MB; {up['report']['segments']} segments, "
        f"{up['report']['quantized_segments']} with the int8 copy | | |",
        "",
        "Both top-10 lists of the warm runs: "
        + ("identical" if s["before_top10"] == s["after_top10"] else "differ")
        + " (the text query is embedded by the same model; the store's rankings agree).",
        "",
        "Where a warm fresh search spends its time (one traced run of this tree, seconds from process start): "
        "interpreter and imports (numpy, click, qdrant_edge, indexer) until ~0.2; then, overlapped, the text "
        "tower's session load on one worker (0.12-0.25 s), the tokenizer on another (0.07 s) and the store's open "
        "on the main thread (0.11 s for 8 segments, after the prefetch's page-cache probes); the query embedding "
        "(0.01 s) and the int8 scan with rescoring (0.02-0.05 s); exit without teardown. On 2 shared cores the "
        "warm median sits above 0.5 s; the fastest run reached 0.50 s.",
        END,
    ]
    return "\n".join(lines)


NOOP_START, NOOP_END = "<!-- million-noop:start -->", "<!-- million-noop:end -->"


def noop_markdown(r: dict[str, Any], first: dict[str, Any] | None) -> str:
    """The no-op / cron / first-batch section of results.md."""
    b, a = r["noop"]["before"], r["noop"]["after"]
    cb, ca = r["cron"]["before"], r["cron"]["after"]
    lines = [
        NOOP_START,
        "## Re-runs and streaming at 1M files (issue 16)",
        "",
        f"`python benchmarks/million.py noop` (load average {r['load_avg']:.1f} at the end; machine as above): "
        f"bench.py's no-op tree of {r['files']:,} tiny JPEGs whose points are already stored, written the way "
        "ingest writes them. *Before*: `main`'s code on its own copy of the store; *after*: this tree on a copy "
        "upgraded by `clipindex optimize`; alternated, after one untimed run each. Whole processes, peak RSS from "
        "`wait4` (it counts the store's mapped payload pages, which the kernel can drop).",
        "",
        "| Measure | before | after | after / before | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| no-op re-run over {r['files']:,} unchanged files | {b['median_s']:.1f} s (CPU {b['cpu_median_s']:.1f} s) | "
        f"**{a['median_s']:.1f} s** (CPU {a['cpu_median_s']:.1f} s) | **{a['median_s'] / b['median_s']:.2f}** | "
        f"≤ 30 s {'✅' if a['median_s'] <= 30 else '❌'} |",
        f"| its peak RSS | {b['peak_rss_bytes'] / 1e9:.2f} GB | **{a['peak_rss_bytes'] / 1e9:.2f} GB** | "
        f"**{a['peak_rss_bytes'] / b['peak_rss_bytes']:.2f}** | "
        f"≤ 1 GB {'✅' if a['peak_rss_bytes'] <= 1e9 else '❌'} |",
        f"| cron run finding {ca['indexed']} new photos (fp32): wall | {cb['wall_s']:.1f} s | "
        f"**{ca['wall_s']:.1f} s** | "
        f"**{ca['wall_s'] / cb['wall_s']:.2f}** | |",
        f"| its peak RSS | {cb['rss_bytes'] / 1e9:.2f} GB | **{ca['rss_bytes'] / 1e9:.2f} GB** | "
        f"**{ca['rss_bytes'] / cb['rss_bytes']:.2f}** | ≤ 1.5 GB {'✅' if ca['rss_bytes'] <= 1.5e9 else '❌'} |",
    ]
    if first:
        fb, fa = first["before"], first["after"]
        lines.append(
            f"| first ingest of the {r['files']:,}-file tree: time to the first verified batch | "
            f"{fb['first_batch_s']:.1f} s (walk finished first: {fb['todo'] is not None}) | "
            f"**{fa['first_batch_s']:.1f} s** (walk still running: {fa['todo'] is None}) | "
            f"**{fa['first_batch_s'] / fb['first_batch_s']:.2f}** | ~2 s "
            f"{'✅' if fa['first_batch_s'] <= 2.5 else '❌'} |"
        )
    lines += [
        "",
        "The new photos sit at the end of the walk (`zz-new/`), so the cron run reads the whole index and walks the "
        "whole tree before it embeds, as the worst case. The first-batch time is read from the live progress file "
        "(`ingest.progress.json`, what `clipindex status` shows), polled every 20 ms, on an empty store.",
        NOOP_END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = ["build", "search", "recall", "upgrade", "all", "report", "hnsw", "noop", "first-batch", "noop-report"]
    parser.add_argument("step", choices=steps)
    parser.add_argument("--raw", type=Path, default=None, help="report: the raw JSON of an `all` run")
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--code", type=Path, default=ROOT, help="the clipindex source tree `search` runs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--model-dir", type=Path, default=WORK / "models" / "clip-vit-base-patch32")
    parser.add_argument("--tag", default="before")
    args = parser.parse_args(argv)
    from clipindex.model.manifest import ModelManifest

    manifest = ModelManifest.load(args.model_dir)
    if args.step == "build":
        data_dir = store_dir(args.points, args.tag)
        if data_dir.exists():
            shutil.rmtree(data_dir)
        build(args.points, manifest.model_name, data_dir)
    elif args.step == "search":
        print(
            json.dumps(
                run_search(args.model_dir, store_dir(args.points, args.tag), repeats=args.repeats, code=args.code)
            )
        )
    elif args.step == "recall":
        print(json.dumps(recall(store_dir(args.points, args.tag), args.points, exact=args.exact)))
    elif args.step == "upgrade":
        print(json.dumps(upgrade(args.points, args.tag)))
    elif args.step == "all":
        out = WORK / "raw" / f"million-{args.points}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        section = markdown(run_all(args.model_dir, args.points, args.code, out))
        write_section(ROOT / "benchmarks" / "results.md", section, START, END)
        log(f"wrote {out} and benchmarks/results.md")
    elif args.step == "noop":
        out = WORK / "raw" / f"noop-{args.points}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        result = noop(args.model_dir, args.points, args.code)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
    elif args.step == "first-batch":
        tree = WORK / "noop" / f"{args.points}" / "tree"
        sides = (("before", args.code), ("after", ROOT))
        result = {name: first_batch(args.model_dir, tree, code) for name, code in sides}
        out = WORK / "raw" / f"first-batch-{args.points}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
    elif args.step == "noop-report":
        noop_raw = max((WORK / "raw").glob(f"noop-{args.points}-*.json"))
        firsts = sorted((WORK / "raw").glob(f"first-batch-{args.points}-*.json"))
        first = json.loads(firsts[-1].read_text()) if firsts else None
        section = noop_markdown(json.loads(noop_raw.read_text()), first)
        write_section(ROOT / "benchmarks" / "results.md", section, NOOP_START, NOOP_END)
    elif args.step == "hnsw":
        print(json.dumps({"points": args.points, **hnsw_cost(args.points)}))
    elif args.step == "report":
        raw = args.raw or max((WORK / "raw").glob(f"million-{args.points}-*.json"))
        write_section(ROOT / "benchmarks" / "results.md", markdown(json.loads(raw.read_text())), START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
