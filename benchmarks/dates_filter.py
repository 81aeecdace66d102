"""Filtered against unfiltered search on a synthetic embedded store: ``--after``/``--before`` (float index on
``taken_ts``) and ``--camera`` (keyword index on ``camera_lc``) against no filter, same queries.

The store holds million.py's clustered vectors with ingest's payload; ``taken_ts`` is spread uniformly over ten
years and the camera is one of 20 models, so a one-year window keeps ~10 % and a camera ~5 %.
Usage: ``python benchmarks/dates_filter.py --points 100000`` (prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from million import BATCH, DIM, queries, vector_chunks  # noqa: E402
from synthetic import synthetic_point  # noqa: E402

from clipindex.store.base import Point, SearchFilter  # noqa: E402
from clipindex.store.edge import EdgeStore  # noqa: E402

START = 1_420_070_400.0  # 2015-01-01 UTC
YEAR = 365.25 * 86400
CAMERAS = 20


def build(points: int, data_dir: Path) -> float:
    started = time.perf_counter()
    rng = np.random.default_rng(7)
    with EdgeStore(data_dir, "images") as store:
        store.ensure_collection(DIM, "synthetic")
        for start, vectors in vector_chunks(points):
            stamps = START + rng.random(len(vectors)) * 10 * YEAR
            cams = rng.integers(0, CAMERAS, len(vectors))
            for b in range(0, len(vectors), BATCH):
                chunk: list[Point] = []
                for offset, vector in enumerate(vectors[b : b + BATCH]):
                    point = synthetic_point(start + b + offset, vector, "synthetic")
                    i = b + offset
                    point.payload.update(
                        {"taken_ts": float(stamps[i]), "camera_lc": [f"cam{cams[i]}"], "taken_at_source": "exif"}
                    )
                    chunk.append(point)
                store.upsert(chunk)
            store.optimize()
            store.flush()
        store.optimize()
    return time.perf_counter() - started


def timed(store: EdgeStore, qs: np.ndarray, filters: SearchFilter | None, repeats: int) -> dict[str, Any]:
    times: list[float] = []
    hits = 0
    for _ in range(repeats):
        for q in qs:
            t0 = time.perf_counter()
            found = store.search(q, limit=10, filters=filters)
            times.append(time.perf_counter() - t0)
            hits += len(found)
    return {
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p95_ms": round(sorted(times)[int(0.95 * len(times))] * 1000, 3),
        "mean_hits": hits / (repeats * len(qs)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=HERE / "_work" / "dates-filter")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = args.data_dir / str(args.points)
    build_s = None if (data / "images").exists() else build(args.points, data)
    qs = queries(100)
    cases: dict[str, SearchFilter | None] = {
        "unfiltered": None,
        "one year (~10 %)": SearchFilter(after=START + 3 * YEAR, before=START + 4 * YEAR),
        "five years (~50 %)": SearchFilter(after=START + 2 * YEAR, before=START + 7 * YEAR),
        "camera (~5 %)": SearchFilter(camera="cam3"),
        "camera and year (~0.5 %)": SearchFilter(after=START + 3 * YEAR, before=START + 4 * YEAR, camera="cam3"),
    }
    with EdgeStore(data, "images") as store:
        store.collection_info()
        timed(store, qs[:10], None, 1)  # warm the pages
        results = {name: timed(store, qs, flt, args.repeats) for name, flt in cases.items()}
    base = results["unfiltered"]["median_ms"]
    for row in results.values():
        row["vs_unfiltered"] = round(row["median_ms"] / base, 2)
    print(json.dumps({"points": args.points, "build_s": build_s, "search": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
