"""Client-side costs of the server code path at scale (issue 16): what clipindex itself spends per point when it
writes to a Qdrant server, measured against qdrant-client's local mode behind a real HTTP facade
(``tests/tcp_proxy.py``: the real client, HTTP transport and retries of :class:`clipindex.store.ServerStore`).

For each batch size, ``points`` synthetic points with ingest's payloads go through ``ServerStore.upsert`` and the
per-batch count verification ingest does (``count(exact=False)``), then a read of the index as a re-run does
(``iter_payloads``). The facade times its own side of every request (parse, local mode, reply), so
client time = wall time - server time: building the points, JSON, HTTP, the retry wrapper. Payload bytes are the
request bodies the facade received. A real server's own work (WAL, indexing) is not in these figures.

    python benchmarks/server_client.py                 # 20,000 points, batches of 25, 100, 250
    python benchmarks/server_client.py --points 50000 --batch 25 250
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(points: int, batch: int, dim: int = 512) -> dict[str, Any]:
    from tcp_proxy import QdrantRestServer

    from clipindex.ingest.points import make_payload, point_id
    from clipindex.store.base import Point
    from clipindex.store.server import ServerStore

    rng = np.random.default_rng(batch)
    with QdrantRestServer() as server:
        store = ServerStore(server.url, "bench")
        store.ensure_collection(dim, "clip-vit-base-patch32")
        build_s = upsert_s = count_s = 0.0
        expected = 0
        for start in range(0, points, batch):
            n = min(batch, points - start)
            t0 = time.perf_counter()
            vectors = rng.standard_normal((n, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            chunk = []
            for k in range(start, start + n):
                path = f"/home/alice/Pictures/{k // 1000:04d}/IMG_{k:07d}.jpg"
                payload = make_payload(
                    path=path,
                    size=3_000_000 + k,
                    mtime_ns=1_700_000_000_000_000_000 + k,
                    sha256=f"{k:064x}",
                    width=4032,
                    height=3024,
                    image_format="JPEG",
                    model="clip-vit-base-patch32",
                )
                chunk.append(Point(point_id(path), vectors[k - start], payload))
            t1 = time.perf_counter()
            store.upsert(chunk)
            t2 = time.perf_counter()
            expected += n
            if store.count(exact=False) != expected:
                raise RuntimeError("count mismatch")
            t3 = time.perf_counter()
            build_s += t1 - t0
            upsert_s += t2 - t1
            count_s += t3 - t2
        t4 = time.perf_counter()
        read = sum(1 for _ in store.iter_payloads(["size", "mtime_ns", "sha256"], page_size=5000))
        read_s = time.perf_counter() - t4
        store.close()
        server_upsert = server.server_s["upsert"]
        server_count = server.server_s["count"]
        server_scroll = server.server_s["scroll"]
        body = server.bytes_in["upsert"]
    if read != points:
        raise RuntimeError(f"read {read} of {points}")
    batches = -(-points // batch)
    return {
        "points": points,
        "batch": batch,
        "build_us_per_point": 1e6 * build_s / points,
        "upsert_client_us_per_point": 1e6 * (upsert_s - server_upsert) / points,
        "upsert_server_us_per_point": 1e6 * server_upsert / points,
        "count_client_ms_per_batch": 1e3 * (count_s - server_count) / batches,
        "count_server_ms_per_batch": 1e3 * server_count / batches,
        "request_bytes_per_point": body / points,
        "read_client_us_per_point": 1e6 * (read_s - server_scroll) / points,
        "read_server_us_per_point": 1e6 * server_scroll / points,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[25, 100, 250])
    args = parser.parse_args(argv)
    rows = []
    for batch in args.batch:
        row = measure(args.points, batch)
        log(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
        rows.append(row)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
