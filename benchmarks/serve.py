"""``clipindex serve`` against its goals, from one run (section "clipindex serve" of results.md).

    python benchmarks/million.py build --tag serve   # once: the 1M synthetic store (million.py's)
    python benchmarks/serve.py                       # measure, print, write results.md

Measured, with the full-size random-weight ViT-B/32 (harness.make_model) and real HTTP on loopback:

1. HTTP text search at 1M points, 1 client: p50 / p99 of ``GET /api/v1/search`` (varied queries).
2. 8 concurrent clients: p99 and queries/s.
3. ``clipindex search`` as a fresh process through the running serve, against ``--no-server`` (in-process), alternated.
4. serve's RSS at 1M points after all of the above.
5. On a small store of 12 MP camera-like JPEGs: ingest img/s while serve answers 1 query/s, over ingest alone
   (alternated), and a thumbnail's first view (empty cache) and cached view.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "_work"
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness import cpu_description, make_inputs, make_model, write_section  # noqa: E402

START, END = "<!-- serve:start -->", "<!-- serve:end -->"
QUERIES = [
    "a red car", "a dog on a beach", "sunset over mountains", "a birthday cake", "two people hiking",
    "a cat asleep on a sofa", "snow in the city", "a bowl of ramen", "the eiffel tower", "a child with a kite",
]  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Serve:
    """``clipindex serve --port 0`` in a subprocess."""

    def __init__(self, data_dir: Path, model_dir: Path, cache_dir: Path) -> None:
        env = dict(os.environ, CLIPINDEX_DATA_DIR=str(data_dir), CLIPINDEX_CACHE_DIR=str(cache_dir))
        self.env = env
        cmd = [sys.executable, "-m", "clipindex", "serve", "--port", "0", "--model-dir", str(model_dir)]
        self.process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        started = time.perf_counter()
        for line in self.process.stdout:
            found = re.search(r"at (http://\S+)/", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise RuntimeError("serve exited before printing its URL")
        self.start_s = time.perf_counter() - started
        threading.Thread(target=lambda: [None for _ in self.process.stdout or ()], daemon=True).start()

    def rss_mb(self) -> float:
        import psutil

        parent = psutil.Process(self.process.pid)  # the server and its store process
        return sum(float(p.memory_info().rss) for p in [parent, *parent.children(recursive=True)]) / 2**20

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def http_latencies(url: str, count: int) -> list[float]:
    import httpx

    times: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(count):
            started = time.perf_counter()
            answer = http.get("/api/v1/search", params={"q": QUERIES[i % len(QUERIES)] + f" {i}", "limit": 10})
            times.append(time.perf_counter() - started)
            answer.raise_for_status()
    return times


def concurrent(url: str, clients: int, seconds: float) -> dict[str, float]:
    import httpx

    times: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = 0
            while time.perf_counter() < stop:
                started = time.perf_counter()
                http.get(
                    "/api/v1/search", params={"q": f"{QUERIES[(i + k) % len(QUERIES)]} {k} {i}"}
                ).raise_for_status()
                with lock:
                    times.append(time.perf_counter() - started)
                i += 1

    pings: list[float] = []

    def ping() -> None:  # a request that needs no model and no store: how long the event loop keeps it waiting
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                http.get("/static/app.css").raise_for_status()
                pings.append(time.perf_counter() - started)
                time.sleep(0.02)

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    threads.append(threading.Thread(target=ping))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {
        "p50_ms": pct(times, 50) * 1e3,
        "p99_ms": pct(times, 99) * 1e3,
        "qps": len(times) / wall,
        "ping_p99_ms": pct(pings, 99) * 1e3,
        "ping_max_ms": max(pings) * 1e3,
    }


def cli_search(env: dict[str, str], *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "clipindex", "search", "a red car", "--json", *extra],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def ingest_rate(env: dict[str, str], model_dir: Path, photos: Path) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "clipindex", "ingest", str(photos), "--model-dir", str(model_dir), "--json", "-q"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    return float(summary["indexed"]) / (time.perf_counter() - started)


def small_store_figures(model_dir: Path, photos: Path, rounds: int) -> dict[str, Any]:
    """Ingest alone vs beside serve answering 1 query/s (fresh store each run), and thumbnail timings."""
    import httpx

    alone: list[float] = []
    beside: list[float] = []
    thumbs: dict[str, float] = {}
    for _ in range(rounds):
        for mode in ("alone", "beside"):
            with tempfile.TemporaryDirectory(dir=WORK) as tmp:
                data, cache = Path(tmp) / "data", Path(tmp) / "cache"
                env = dict(os.environ, CLIPINDEX_DATA_DIR=str(data), CLIPINDEX_CACHE_DIR=str(cache))
                if mode == "alone":
                    alone.append(ingest_rate(env, model_dir, photos))
                    continue
                first = Path(tmp) / "first"
                first.mkdir()
                shutil.copy(sorted(photos.glob("*.jpg"))[0], first / "seed.jpg")
                subprocess.run(
                    [sys.executable, "-m", "clipindex", "ingest", str(first), "--model-dir", str(model_dir), "-q"],
                    env=env, check=True, capture_output=True,
                )  # fmt: skip
                serve = Serve(data, model_dir, cache)
                stop = threading.Event()

                def ask(url: str = serve.url, stop: threading.Event = stop) -> None:
                    with httpx.Client(base_url=url, timeout=60) as http:
                        while not stop.wait(1.0):
                            http.get("/api/v1/search", params={"q": "a photo"}).raise_for_status()

                asker = threading.Thread(target=ask)
                asker.start()
                try:
                    beside.append(ingest_rate(env, model_dir, photos))
                finally:
                    stop.set()
                    asker.join()
                if not thumbs:
                    thumbs = thumbnail_times(serve.url)
                serve.stop()
    return {
        "alone_img_s": statistics.median(alone),
        "beside_img_s": statistics.median(beside),
        "ratio": statistics.median(beside) / statistics.median(alone),
        **thumbs,
    }


def thumbnail_times(url: str) -> dict[str, float]:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        hits = http.get("/api/v1/search", params={"q": "a photo", "limit": 20}).json()["results"]
        first: list[float] = []
        cached: list[float] = []
        for hit in hits[:10]:
            started = time.perf_counter()
            http.get(hit["thumbnail"]).raise_for_status()
            first.append(time.perf_counter() - started)
            for _ in range(3):
                started = time.perf_counter()
                http.get(hit["thumbnail"]).raise_for_status()
                cached.append(time.perf_counter() - started)
    return {"thumb_first_ms": statistics.median(first) * 1e3, "thumb_cached_ms": statistics.median(cached) * 1e3}


def gil_holds(data: Path) -> dict[str, float]:
    """In this process: how long the engine's open and search hold the GIL (the longest gap of a 2 ms ticker
    thread), which bounds how long serve's event loop can stall on a store read."""
    import numpy as np

    from clipindex.store.edge import EdgeStore

    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    store = EdgeStore(data, "images")
    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.perf_counter()
    store.collection_info()
    open_s = time.perf_counter() - started
    open_gap = max(gaps)
    gaps.clear()
    rng = np.random.default_rng(0)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        store.search(rng.normal(size=512).astype(np.float32), limit=10)
        times.append(time.perf_counter() - started)
    stop.set()
    ticker.join()
    store.close()
    return {
        "open_s": open_s,
        "open_gap_ms": open_gap * 1e3,
        "search_ms": statistics.median(times) * 1e3,
        "search_gap_ms": max(gaps) * 1e3,
    }


def run(points: int, repeats: int) -> dict[str, Any]:
    _checkpoint, model_dir = make_model(WORK)
    data = WORK / f"million-{points}" / "serve"
    if not (data / "images").is_dir():
        raise SystemExit(f"no store in {data}: run `python benchmarks/million.py build --tag serve --points {points}`")
    cache = Path(tempfile.mkdtemp(dir=WORK, prefix="serve-cache-"))
    result: dict[str, Any] = {"points": points, "cpu": cpu_description(), "load_before": os.getloadavg()[0]}
    result["gil"] = gil_holds(data)
    serve = Serve(data, model_dir, cache)
    try:
        result["start_s"] = serve.start_s
        http_latencies(serve.url, 20)  # warm
        single = http_latencies(serve.url, 200)
        result["single"] = {"p50_ms": pct(single, 50) * 1e3, "p99_ms": pct(single, 99) * 1e3}
        result["eight"] = concurrent(serve.url, 8, 15.0)
        served: list[float] = []
        local: list[float] = []
        here = ("--no-server", "--model-dir", str(model_dir))
        cli_search(serve.env)
        cli_search(serve.env, *here)
        for _ in range(repeats):
            served.append(cli_search(serve.env))
            local.append(cli_search(serve.env, *here))
        result["cli"] = {"served_s": statistics.median(served), "in_process_s": statistics.median(local)}
        result["rss_mb"] = serve.rss_mb()
    finally:
        serve.stop()
        shutil.rmtree(cache, ignore_errors=True)
    photos = make_inputs(WORK, 96)["12mp"]
    result["small"] = small_store_figures(model_dir, photos, rounds=2)
    result["load_after"] = os.getloadavg()[0]
    return result


def markdown(r: dict[str, Any]) -> str:
    s, e, c, small = r["single"], r["eight"], r["cli"], r["small"]
    ratio = c["served_s"] / c["in_process_s"]
    rows = [
        ("HTTP text search, 1 client: p50 / p99", f"{s['p50_ms']:.1f} ms / {s['p99_ms']:.1f} ms", "≤ 30 ms / ≤ 100 ms"),
        ("8 concurrent clients: p99; queries/s", f"{e['p99_ms']:.0f} ms; {e['qps']:.0f} q/s", "≤ 250 ms; ≥ 80 q/s"),
        (
            "`clipindex search` through serve, fresh process (÷ in-process)",
            f"{c['served_s']:.2f} s ({ratio:.2f}; in-process {c['in_process_s']:.2f} s)",
            "≤ 0.15 s, ≤ 0.25",
        ),
        (
            "ingest img/s beside serve answering 1 q/s ÷ alone (12 MP)",
            f"{small['ratio']:.2f} ({small['beside_img_s']:.1f} / {small['alone_img_s']:.1f})",
            "≥ 0.95",
        ),
        (
            "thumbnail of a 12 MP JPEG: first view / cached",
            f"{small['thumb_first_ms']:.0f} ms / {small['thumb_cached_ms']:.1f} ms",
            "≤ 80 ms / ≤ 5 ms",
        ),
        (f"serve's RSS at {r['points']:,} points (server + store process)", f"{r['rss_mb']:.0f} MB", "≤ 1.2 GB"),
        (
            "a static file's answer while 8 clients search (event loop): p99 / max",
            f"{e['ping_p99_ms']:.0f} ms / {e['ping_max_ms']:.0f} ms",
            "≤ 50 ms",
        ),
        (
            "the engine's longest GIL hold: one search / a reopen after a handover (in the store process)",
            f"{r['gil']['search_gap_ms']:.0f} ms (search {r['gil']['search_ms']:.0f} ms) / "
            f"{r['gil']['open_gap_ms']:.0f} ms (open {r['gil']['open_s']:.2f} s)",
            "none on the server's loop",
        ),
    ]
    lines = [
        START,
        "## clipindex serve",
        "",
        f"Written by `python benchmarks/serve.py` on {r['cpu']}; load average {r['load_before']:.1f} before, "
        f"{r['load_after']:.1f} after. Full-size random-weight ViT-B/32 (fp32, ONNX Runtime CPU), real HTTP on "
        f"loopback (httpx), million.py's synthetic store of {r['points']:,} points; serve started in "
        f"{r['start_s']:.1f} s. Ingest figures: 96 camera-like 12 MP JPEGs into a fresh store, medians of 2 rounds "
        "alternated.",
        "",
        "| measure | result | goal |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {g} |" for a, b, g in rows],
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = run(args.points, args.repeats)
    raw = WORK / "raw" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(result, indent=1))
    section = markdown(result)
    print(section)
    write_section(ROOT / "benchmarks" / "results.md", section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
