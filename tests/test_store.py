"""The storage layer, on the real engines: the same behaviour suite over the embedded Qdrant Edge store
and the server store on qdrant-client's local mode (same API as a server), plus a crash test, an
unreachable server, and the embedded store's own cases (busy shard, orphan cleanup, lost metadata)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipindex.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from clipindex.lock import server_lock_path
from clipindex.store import open_store
from clipindex.store.base import Point, SearchFilter, VectorStore, ancestor_dirs
from clipindex.store.edge import EdgeStore, cleanup_orphan_temp_segments
from clipindex.store.server import InsecureApiKeyWarning, ServerStore

REPO = Path(__file__).resolve().parents[1]
DIM = 8
NS = uuid.UUID("6f1c1c4e-0000-4000-8000-000000000000")


def pid_of(path: str) -> str:
    return str(uuid.uuid5(NS, path))


def make_points(paths: list[str], seed: int = 0, dim: int = DIM) -> list[Point]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(paths), dim)).astype(np.float32)
    return [
        Point(pid_of(p), vecs[i], {"path": p, "size": 100 + i, "mtime_ns": 1_700_000_000_000_000_000 + i})
        for i, p in enumerate(paths)
    ]


def unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


class Backend:
    """Opens (and reopens) a store of one kind on the same storage."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.tmp = tmp
        self.client: Any = None
        self.store: VectorStore | None = None

    def open(self, collection: str = "images") -> VectorStore:
        self.close()
        if self.kind == "edge":
            self.store = EdgeStore(self.tmp / "data", collection)
        else:
            from qdrant_client import QdrantClient

            self.client = QdrantClient(path=str(self.tmp / "qdrant-local"))
            self.store = ServerStore(client=self.client, collection=collection, state_dir=self.tmp / "state")
        return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def files(self) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of every file of the storage: to prove nothing was written."""
        root = self.tmp / ("data" if self.kind == "edge" else "qdrant-local")
        out = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != ".lock":
                st = p.stat()
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
        return out


@pytest.fixture(params=["edge", "server-local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


# --- the shared behaviour suite -------------------------------------------------------------------


def test_date_and_camera_filters_and_count_with(backend: Backend) -> None:
    """``filters``: ``after <= taken_ts < before`` and a camera word, combined with each other and ``path_prefix``;
    ``count_with`` counts the points carrying a key."""
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    points = make_points(["/p/a.jpg", "/p/b.jpg", "/q/c.jpg", "/q/d.jpg"])
    extra = [
        {"taken_ts": 100.0, "camera_lc": ["canon", "eos"], "taken_at_source": "exif"},
        {"taken_ts": 200.0, "camera_lc": ["nikon"], "taken_at_source": "exif"},
        {"taken_ts": 300.0, "camera_lc": ["canon"], "taken_at_source": "mtime"},
        {},
    ]
    store.upsert([Point(p.id, p.vector, {**p.payload, **e}) for p, e in zip(points, extra, strict=True)])
    query = points[0].vector

    def found(filters: SearchFilter, prefix: str | None = None) -> list[str]:
        return sorted(h.payload["path"] for h in store.search(query, limit=10, path_prefix=prefix, filters=filters))

    assert found(SearchFilter()) == ["/p/a.jpg", "/p/b.jpg", "/q/c.jpg", "/q/d.jpg"]
    assert found(SearchFilter(after=150.0)) == ["/p/b.jpg", "/q/c.jpg"]
    assert found(SearchFilter(before=200.0)) == ["/p/a.jpg"]
    assert found(SearchFilter(after=100.0, before=300.0)) == ["/p/a.jpg", "/p/b.jpg"]
    assert found(SearchFilter(camera="canon")) == ["/p/a.jpg", "/q/c.jpg"]
    assert found(SearchFilter(camera="canon", after=150.0)) == ["/q/c.jpg"]
    assert found(SearchFilter(camera="canon"), prefix="/p") == ["/p/a.jpg"]
    assert found(SearchFilter(camera="sony")) == []
    assert store.count_with("taken_at_source") == 3
    assert store.count_with("nothing_has_this") == 0


def test_create_then_reopen_remembers_model(backend: Backend) -> None:
    store = backend.open()
    info = store.ensure_collection(DIM, "clip-a")
    assert (info.model_name, info.vector_dim, info.created) == ("clip-a", DIM, True)
    assert store.count() == 0
    store.upsert(make_points(["/p/a.jpg"]))

    store = backend.open()
    info = store.ensure_collection(DIM, "clip-a")
    assert (info.model_name, info.vector_dim, info.created) == ("clip-a", DIM, False)
    assert store.count() == 1

    store = backend.open()
    info = store.collection_info()  # without knowing the model (status)
    assert (info.model_name, info.vector_dim) == ("clip-a", DIM)
    assert store.count() == 1


def test_missing_collection_is_not_found(backend: Backend) -> None:
    store = backend.open()
    with pytest.raises(CollectionNotFoundError, match="images"):
        store.collection_info()
    with pytest.raises(CollectionNotFoundError):
        store.ensure_collection(DIM, "clip-a", create=False)
    with pytest.raises(StoreError, match="not open"):
        store.upsert(make_points(["/p/a.jpg"]))


@pytest.mark.parametrize(("dim", "model"), [(DIM, "clip-b"), (2 * DIM, "clip-a"), (2 * DIM, "clip-b")])
def test_mismatch_refused_before_writing(backend: Backend, dim: int, model: str) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    store.upsert(make_points([f"/p/{i}.jpg" for i in range(3)]))

    store = backend.open()
    before = backend.files()
    with pytest.raises(CollectionMismatchError) as exc:
        store.ensure_collection(dim, model)
    msg = str(exc.value)
    assert "clip-a" in msg and f"{DIM}-d" in msg and model in msg and f"{dim}-d" in msg
    assert "\n" not in msg
    assert backend.files() == before  # not a byte written
    with pytest.raises(StoreError, match="not open"):
        store.upsert(make_points(["/p/x.jpg"], dim=dim))

    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    assert store.count() == 3


def test_upsert_count_and_idempotent_ids(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    paths = [f"/p/{i}.jpg" for i in range(10)]
    store.upsert(make_points(paths, seed=1))
    assert store.count(exact=True) == 10
    assert store.count(exact=False) == 10

    again = make_points(paths, seed=2)  # same ids, new vectors and payloads
    for p in again:
        p.payload["size"] = 7
    store.upsert(again[:5])
    store.upsert(again)
    assert store.count(exact=True) == 10
    assert store.count(exact=False) == 10
    sizes = {pid: pl["size"] for pid, pl in store.iter_payloads(["size"])}
    assert sizes == {pid_of(p): 7 for p in paths}
    got = store.get_vectors([pid_of(paths[0])])[pid_of(paths[0])]
    np.testing.assert_allclose(got, unit_rows(again[0].vector[None])[0], atol=1e-6)


def test_iter_payloads_pages_and_fields(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    paths = [f"/p/d{i % 3}/{i}.jpg" for i in range(25)]
    store.upsert(make_points(paths))

    some = dict(store.iter_payloads(["path", "size"], page_size=7))
    assert set(some) == {pid_of(p) for p in paths}
    assert all(set(pl) == {"path", "size"} for pl in some.values())
    assert {pl["path"] for pl in some.values()} == set(paths)

    full = dict(store.iter_payloads(page_size=1000))
    pl = full[pid_of(paths[4])]
    assert pl["path"] == paths[4] and pl["size"] == 104 and pl["mtime_ns"] == 1_700_000_000_000_000_004
    assert pl["model"] == "clip-a"  # filled in by upsert
    assert "dirs" not in pl  # internal

    inner = dict(store.iter_payloads(["dirs"]))
    assert inner[pid_of(paths[4])]["dirs"] == ["/", "/p", "/p/d1"]
    assert all(v == {} for v in dict(store.iter_payloads([])).values())


def test_get_vectors_and_delete(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    points = make_points([f"/p/{i}.jpg" for i in range(10)])
    store.upsert(points)

    ghost = str(uuid.uuid4())
    got = store.get_vectors([points[1].id, points[3].id, ghost])
    assert set(got) == {points[1].id, points[3].id}
    for p in (points[1], points[3]):
        assert got[p.id].dtype == np.float32 and got[p.id].shape == (DIM,)
        np.testing.assert_allclose(got[p.id], p.vector / np.linalg.norm(p.vector), atol=1e-6)

    store.delete([points[1].id, points[3].id, ghost])
    assert store.count() == 8
    assert store.count(exact=False) == 8
    assert store.get_vectors([points[1].id]) == {}
    hits = store.search(points[1].vector, limit=10)
    assert points[1].id not in {h.id for h in hits} and len(hits) == 8
    store.delete([])


def test_get_payloads_returns_the_fields_of_existing_points(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    points = make_points([f"/p/{i}.jpg" for i in range(10)])
    store.upsert(points)
    ghost = str(uuid.uuid4())
    got = store.get_payloads([points[2].id, points[7].id, ghost], ["path"])
    assert got == {points[2].id: {"path": "/p/2.jpg"}, points[7].id: {"path": "/p/7.jpg"}}
    assert store.get_payloads([], ["path"]) == {}


def test_search_ranking_and_scores_match_numpy(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    points = make_points([f"/p/{i}.jpg" for i in range(60)], seed=3)
    store.upsert(points[:30])
    store.upsert(points[30:])

    query = np.random.default_rng(4).standard_normal(DIM).astype(np.float32) * 3.0  # not unit-norm
    sims = unit_rows(np.stack([p.vector for p in points])) @ (query / np.linalg.norm(query))
    order = np.argsort(-sims)[:10]

    hits = store.search(query, limit=10)
    assert [h.id for h in hits] == [points[i].id for i in order]
    np.testing.assert_allclose([h.score for h in hits], sims[order], atol=1e-5)
    assert hits[0].payload["path"] == points[order[0]].payload["path"]
    assert "dirs" not in hits[0].payload

    # the point itself comes first with cosine 1
    top = store.search(points[7].vector * 0.5, limit=1)
    assert top[0].id == points[7].id and top[0].score == pytest.approx(1.0, abs=1e-5)
    assert store.search(query, limit=0) == []
    with pytest.raises(ValueError):
        store.search(np.zeros(DIM + 1, dtype=np.float32))


def test_score_threshold(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    points = make_points([f"/p/{i}.jpg" for i in range(40)], seed=5)
    store.upsert(points)
    query = points[0].vector
    sims = np.sort(unit_rows(np.stack([p.vector for p in points])) @ (query / np.linalg.norm(query)))[::-1]
    threshold = float((sims[5] + sims[6]) / 2)  # between the 6th and the 7th best

    hits = store.search(query, limit=20, score_threshold=threshold)
    assert len(hits) == 6
    assert all(h.score >= threshold for h in hits)
    assert store.search(query, limit=20, score_threshold=1.01) == []


def test_path_prefix_is_a_folder_not_a_string_prefix(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    paths = [
        "/a/photos/x.jpg",
        "/a/photos/sub/deep/y.jpg",
        "/a/photos2/z.jpg",  # shares the string prefix "/a/photos"
        "/a/photosx.jpg",  # a file whose name starts like the folder
        "/b/photos/w.jpg",
    ]
    points = make_points(paths, seed=6)
    store.upsert(points)
    query = points[2].vector  # the sibling is the best match overall

    def found(prefix: str) -> set[str]:
        return {h.payload["path"] for h in store.search(query, limit=10, path_prefix=prefix)}

    assert found("/a/photos") == {"/a/photos/x.jpg", "/a/photos/sub/deep/y.jpg"}
    assert found("/a/photos/") == {"/a/photos/x.jpg", "/a/photos/sub/deep/y.jpg"}
    assert found("/a/photos/sub") == {"/a/photos/sub/deep/y.jpg"}
    assert found("/a/photos2") == {"/a/photos2/z.jpg"}
    assert found("/a") == {p for p in paths if p.startswith("/a/")}
    assert found("/") == set(paths)
    assert found("/a/photos/x.jpg") == {"/a/photos/x.jpg"}  # an exact file
    assert found("/a/photo") == set()
    assert found("/c") == set()
    # the filter composes with the ranking and the threshold
    ranked = store.search(query, limit=1, path_prefix="/a/photos")
    assert len(ranked) == 1 and ranked[0].payload["path"].startswith("/a/photos/")
    assert store.search(query, limit=10, score_threshold=1.01, path_prefix="/a") == []


def test_reopen_after_close_keeps_everything(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    points = make_points([f"/p/{i}.jpg" for i in range(20)], seed=7)
    store.upsert(points)
    store.delete([points[0].id])
    store.save_summary({"files": 20, "failed": 1, "finished": "2025-01-01T00:00:00"})
    store.flush()
    before = [(h.id, round(h.score, 5)) for h in store.search(points[5].vector, limit=5)]
    store.close()
    store.close()  # idempotent

    store = backend.open()
    assert store.load_summary() == {"files": 20, "failed": 1, "finished": "2025-01-01T00:00:00"}
    store.ensure_collection(DIM, "clip-a")
    assert store.count() == 19
    assert [(h.id, round(h.score, 5)) for h in store.search(points[5].vector, limit=5)] == before
    assert set(store.get_vectors([p.id for p in points])) == {p.id for p in points[1:]}
    store.save_summary({"files": 21})
    assert store.load_summary() == {"files": 21}


def test_bad_arguments_are_value_errors(backend: Backend) -> None:
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    good = make_points(["/p/a.jpg"])[0]
    with pytest.raises(ValueError, match="UUID"):
        store.upsert([Point("not-a-uuid", good.vector, {})])
    with pytest.raises(ValueError, match="shape"):
        store.upsert([Point(good.id, np.zeros(DIM + 1, dtype=np.float32), {})])
    with pytest.raises(ValueError, match="NaN"):
        store.upsert([Point(good.id, np.full(DIM, np.nan, dtype=np.float32), {})])
    assert store.count() == 0
    store.upsert([])
    assert store.count() == 0


# --- the embedded store ---------------------------------------------------------------------------

CHILD_WRITER = textwrap.dedent(
    """
    import os, signal, sys, uuid
    from pathlib import Path
    import numpy as np
    from clipindex.store import EdgeStore, Point

    data_dir, n = Path(sys.argv[1]), int(sys.argv[2])
    store = EdgeStore(data_dir, "images")
    store.ensure_collection(8, "clip-a")
    rng = np.random.default_rng(0)
    ns = uuid.UUID("6f1c1c4e-0000-4000-8000-000000000000")
    for start in range(0, n, 25):
        batch = [
            Point(str(uuid.uuid5(ns, f"/p/{i}.jpg")), rng.standard_normal(8).astype(np.float32),
                  {"path": f"/p/{i}.jpg"})
            for i in range(start, min(n, start + 25))
        ]
        store.upsert(batch)
    # acknowledged: now die without flush() or close()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_edge_sigkill_after_upsert_loses_nothing(tmp_path: Path) -> None:
    n = 1000
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_WRITER, str(tmp_path), str(n)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    store = EdgeStore(tmp_path, "images")
    store.ensure_collection(8, "clip-a")
    assert store.count(exact=True) == n
    ids = [pid_of(f"/p/{i}.jpg") for i in range(n)]
    assert len(store.get_vectors(ids)) == n
    assert {pl["path"] for _, pl in store.iter_payloads(["path"])} == {f"/p/{i}.jpg" for i in range(n)}
    store.close()


def test_edge_second_opener_is_busy(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path, "images")
    first.ensure_collection(DIM, "clip-a")
    second = EdgeStore(tmp_path, "images", wait_s=0.3)
    with pytest.raises(StoreBusyError, match=rf"in use by a clipindex process \(pid {os.getpid()}, since .*waited 0 s"):
        second.ensure_collection(DIM, "clip-a")
    first.close()
    second.ensure_collection(DIM, "clip-a")  # free again
    second.close()


def test_edge_orphan_temp_segments_removed_on_open(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path, "images")
    store.ensure_collection(DIM, "clip-a")
    store.upsert(make_points([f"/p/{i}.jpg" for i in range(5)]))
    store.close()

    # what a SIGKILL during optimize() leaves (observed with qdrant-edge 0.9: temp_segments/segment_builder_*)
    orphan = store.shard_dir / "temp_segments" / "segment_builder_AbC123"
    (orphan / "vector_storage").mkdir(parents=True)
    (orphan / "vector_storage" / "chunk_0.mmap").write_bytes(b"\0" * 4096)

    holder = EdgeStore(tmp_path, "images")
    holder.ensure_collection(DIM, "clip-a")  # cleans up, then holds the shard
    assert not orphan.exists()
    orphan.mkdir()
    assert cleanup_orphan_temp_segments(store.shard_dir) == []  # shard open: hands off
    assert orphan.exists()
    holder.close()
    assert cleanup_orphan_temp_segments(store.shard_dir) == [orphan]
    assert not orphan.exists() and (store.shard_dir / "temp_segments").is_dir()

    store = EdgeStore(tmp_path, "images")
    store.ensure_collection(DIM, "clip-a")
    assert store.count() == 5
    store.close()


def test_edge_lost_metadata_is_derived_from_points(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path, "images")
    store.ensure_collection(DIM, "clip-a")
    store.upsert(make_points(["/p/a.jpg"]))
    store.close()
    meta = tmp_path / "images" / "collection.json"
    assert json.loads(meta.read_text())["model"] == "clip-a"
    meta.unlink()

    with pytest.raises(CollectionMismatchError, match="clip-a"):
        EdgeStore(tmp_path, "images").ensure_collection(DIM, "clip-b")
    with pytest.raises(CollectionMismatchError, match=f"{DIM}-d"):
        EdgeStore(tmp_path, "images").ensure_collection(DIM * 2, "clip-a")
    assert not meta.exists()
    store = EdgeStore(tmp_path, "images")
    assert store.ensure_collection(DIM, "clip-a").created is False
    assert json.loads(meta.read_text())["model"] == "clip-a"  # written back
    store.close()

    # an empty collection whose metadata is lost: unknown until a model claims it
    empty = EdgeStore(tmp_path, "empty")
    empty.ensure_collection(DIM, "clip-a")
    empty.close()
    (tmp_path / "empty" / "collection.json").unlink()
    empty = EdgeStore(tmp_path, "empty")
    assert empty.collection_info().model_name == "unknown"
    assert empty.ensure_collection(DIM, "clip-z").model_name == "clip-z"
    empty.close()
    assert json.loads((tmp_path / "empty" / "collection.json").read_text())["model"] == "clip-z"


def test_edge_layout_indexes_and_optimize(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path, "images")
    assert not (tmp_path / "images").exists()  # nothing touched before ensure_collection
    store.ensure_collection(DIM, "clip-a")
    assert store.lock_path == tmp_path / "images" / "ingest.lock"
    assert str(tmp_path / "images") in store.describe()
    assert store._shard is not None
    schema = store._shard.info().payload_schema
    assert {"path", "dirs"} <= set(schema)
    points = make_points([f"/p/{i}.jpg" for i in range(50)])
    store.upsert(points)
    store.flush()
    # vectors live in a memory-mapped file, not loaded into RAM at open (the engine's own segment config)
    segments = list((tmp_path / "images" / "shard" / "segments").glob("*/segment.json"))
    assert segments
    for segment in segments:
        vector_data = json.loads(segment.read_text())["config"]["vector_data"][""]
        assert vector_data["storage_type"] == "ChunkedMmap"
    store.delete([p.id for p in points[:20]])
    store.optimize()
    assert store.count(exact=True) == 30
    assert store.search(points[25].vector, limit=1)[0].id == points[25].id
    store.close()
    with pytest.raises(StoreError, match="invalid collection name"):
        EdgeStore(tmp_path, "../escape")


# --- the server store -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_server_unreachable_fails_fast_without_leaking_the_key() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    store = ServerStore(url, "images", api_key="s3cr3t-KEY-42", timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError) as exc:
        store.ensure_collection(DIM, "clip-a")
    elapsed = time.monotonic() - t0
    msg = str(exc.value)
    assert 0.9 <= elapsed < 5.0
    assert url in msg and "s3cr3t" not in msg and "\n" not in msg
    assert "times" in msg  # it retried
    assert exc.value.exit_code == 69
    assert "s3cr3t" not in store.describe() and "s3cr3t" not in repr(store)
    store.close()


def test_server_url_credentials_and_insecure_key_warning(tmp_path: Path) -> None:
    seen: list[str] = []
    with pytest.warns(InsecureApiKeyWarning, match="clear text"):
        store = ServerStore("http://qdrant.example.com:6333", "images", "k3y", on_warning=seen.append)
    assert len(seen) == 1 and "k3y" not in seen[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ServerStore("https://qdrant.example.com:6333", "images", "k3y")
        ServerStore("http://localhost:6333", "images", "k3y")
        ServerStore("http://127.0.0.1:6333", "images", "k3y")
        ServerStore("http://qdrant.example.com:6333", "images", None)
        odd = ServerStore("https://user:pa55@qdrant.example.com:6333/?api-key=k3y", "images", None)
    assert "pa55" not in odd.describe() and "k3y" not in odd.describe()
    assert "qdrant.example.com:6333" in odd.describe()
    # the lock of a server collection lives in the local state dir, keyed by url + collection
    a = ServerStore("http://q:6333", "images", None, state_dir=tmp_path).lock_path
    assert a == ServerStore("http://q:6333/", "images", None, state_dir=tmp_path).lock_path
    assert a == server_lock_path("http://q:6333", "images", tmp_path)
    assert a != ServerStore("http://q:6333", "other", None, state_dir=tmp_path).lock_path
    assert a != ServerStore("http://r:6333", "images", None, state_dir=tmp_path).lock_path
    assert a.is_relative_to(tmp_path)
    with pytest.raises(StoreError, match="bad port"):
        ServerStore("http://q:notaport", "images", None)
    store.close()


def test_server_metadata_and_fallbacks(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    store = ServerStore(client=client, collection="images")
    store.ensure_collection(DIM, "clip-a")
    meta = client.get_collection("images").config.metadata or {}
    assert meta["clipindex_model"] == "clip-a" and meta["clipindex_vector_dim"] == DIM

    # a collection without metadata: the model comes from a point's payload, then gets recorded
    client.create_collection("bare", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    p = make_points(["/p/a.jpg"])[0]
    client.upsert("bare", [models.PointStruct(id=p.id, vector=p.vector.tolist(), payload={"model": "clip-a"})])
    with pytest.raises(CollectionMismatchError, match="clip-a"):
        ServerStore(client=client, collection="bare").ensure_collection(DIM, "clip-b")
    assert not (client.get_collection("bare").config.metadata or {}).get("clipindex_model")
    ServerStore(client=client, collection="bare").ensure_collection(DIM, "clip-a")
    assert (client.get_collection("bare").config.metadata or {})["clipindex_model"] == "clip-a"

    # collections clipindex did not make
    client.create_collection("dot", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
    with pytest.raises(CollectionMismatchError, match="Dot"):
        ServerStore(client=client, collection="dot").ensure_collection(DIM, "clip-a")
    client.create_collection(
        "named", vectors_config={"img": models.VectorParams(size=DIM, distance=models.Distance.COSINE)}
    )
    with pytest.raises(CollectionMismatchError, match="named vectors"):
        ServerStore(client=client, collection="named").ensure_collection(DIM, "clip-a")
    assert "memory" in store.describe() and "'images'" in store.describe()
    assert store.lock_path != ServerStore(client=QdrantClient(":memory:"), collection="images").lock_path
    client.close()


# --- the package ----------------------------------------------------------------------------------


def test_open_store_factory_and_lazy_import(tmp_path: Path) -> None:
    edge = open_store(tmp_path, None, "images", None)
    assert isinstance(edge, EdgeStore) and edge.root == tmp_path / "images"
    server = open_store(None, "http://127.0.0.1:6333", "images", "k", shards=2, replicas=1)
    assert isinstance(server, ServerStore) and server.shards == 2
    server.close()

    code = "import sys, clipindex.store; print('qdrant_client' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_ancestor_dirs() -> None:
    assert ancestor_dirs("/a/photos/x.jpg") == ["/", "/a", "/a/photos"]
    assert ancestor_dirs("/x.jpg") == ["/"]
    assert ancestor_dirs("/a//b/../c/y.jpg") == ["/", "/a", "/a/c"]
    assert ancestor_dirs("rel/x.jpg") == ["rel"]


def test_edge_optimize_is_skipped_when_the_disk_is_nearly_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sealing writes a copy of a segment through memory maps: with less than the headroom free, it is skipped
    (no SIGBUS risk) while upserts, which need only CLIPINDEX_MIN_FREE_MB, still work."""
    import clipindex.store.edge as edge

    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 1)  # anything is due for sealing
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    margin = 128 * 2**20  # what the test may write, with room to spare; less than the 256 MB headroom
    store = EdgeStore(tmp_path, "images", min_free_bytes=max(0, free - margin))
    store.ensure_collection(DIM, "clip-a")
    store.upsert(make_points([f"/p/{i}.jpg" for i in range(50)]))
    with caplog.at_level("WARNING", logger="clipindex.store.edge"):
        assert store.optimize() is False
    assert "needed to seal segments; skipped" in caplog.text
    assert store.count(exact=True) == 50
    store.min_free_bytes = 0  # room again: the same store seals
    assert store.optimize() is True
    assert store.count(exact=True) == 50
    store.close()


def _rss_file_mb() -> float:
    """Resident file-backed pages of this process (memory maps included), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.slow
def test_edge_release_memory_unmaps_what_a_full_read_paged_in(tmp_path: Path) -> None:
    """Reading every payload (ingest's index) leaves the store's pages mapped into the process; release_memory
    gives them back and the store stays open, with every point and payload as before."""
    store = EdgeStore(tmp_path, "images")
    store.ensure_collection(DIM, "clip-a")
    # random (incompressible: the engine compresses its payload pages) 400-character names: ~5 MB of payloads
    rng = np.random.default_rng(1)
    points = make_points([f"/photos/{rng.bytes(200).hex()}-{i:05d}.jpg" for i in range(10_000)])
    for start in range(0, len(points), 1000):
        store.upsert(points[start : start + 1000])
    store.optimize()  # sealed into memory-mapped segments, as ingest leaves a large store
    store.close()

    store = EdgeStore(tmp_path, "images")
    store.collection_info()
    before = _rss_file_mb()
    assert sum(1 for _ in store.iter_payloads(["path", "size"], page_size=1000)) == 10_000
    paged_in = _rss_file_mb()
    store.release_memory()
    released = _rss_file_mb()
    assert paged_in - before >= 3, (before, paged_in)
    assert paged_in - released >= 3, (paged_in, released)

    assert store.count(exact=True) == 10_000
    got = store.get_payloads([points[7].id], ["path", "size"])
    assert got == {points[7].id: {"path": points[7].payload["path"], "size": points[7].payload["size"]}}
    store.upsert(make_points(["/p/new.jpg"]))
    assert store.count(exact=True) == 10_001
    store.close()


def test_edge_release_memory_keeps_the_turn_so_no_other_process_gets_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between closing and reopening the shard the store keeps its turn: another opener (a search) is kept
    waiting, not let in, and the reopen never fails because of it."""
    import clipindex.store.edge as edge

    store = EdgeStore(tmp_path, "images")
    store.ensure_collection(DIM, "clip-a")
    store.upsert(make_points([f"/p/{i}.jpg" for i in range(20)]))
    real_cleanup = edge.cleanup_orphan_temp_segments
    refused: list[str] = []

    def a_search_tries_to_get_in(shard_dir: Path) -> list[Path]:
        # runs inside the reopen, after the close: the shard is closed, yet the turn is still ours
        other = EdgeStore(tmp_path, "images", wait_s=0.1)
        try:
            other.collection_info()
        except StoreBusyError as exc:
            refused.append(str(exc))
        return real_cleanup(shard_dir)

    monkeypatch.setattr(edge, "cleanup_orphan_temp_segments", a_search_tries_to_get_in)
    store.release_memory()
    assert len(refused) == 1 and "in use by a clipindex process" in refused[0]
    assert store.count(exact=True) == 20
    monkeypatch.setattr(edge, "cleanup_orphan_temp_segments", real_cleanup)
    store.close()
    again = EdgeStore(tmp_path, "images", wait_s=0.1)
    assert again.collection_info().vector_dim == DIM and again.count() == 20
    again.close()


def test_server_release_memory_is_a_no_op(tmp_path: Path) -> None:
    backend = Backend("server-local", tmp_path)
    store = backend.open()
    store.ensure_collection(DIM, "clip-a")
    store.upsert(make_points(["/p/a.jpg"]))
    store.release_memory()
    assert store.count(exact=True) == 1
    backend.close()


def test_a_damaged_embedded_store_is_one_line_naming_the_fix_and_is_left_alone(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from clipindex.cli.commands import cli

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (20, 90, 200)).save(photos / "a.jpg")
    args = ["--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "data")]
    assert CliRunner().invoke(cli, ["ingest", str(photos), *args, "-q"]).exit_code == 0
    config = next((tmp_path / "data").rglob("edge_config.json"))
    config.write_text("{not json")
    for command in (["ingest", str(photos)], ["search", "a cat"]):
        result = CliRunner().invoke(cli, [*command, *args])
        assert result.exit_code == 1, result.output
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert line.startswith("Error: embedded store ") and "is damaged (Qdrant Edge: open failed" in line
        assert "clipindex check --repair" in line
        assert config.read_text() == "{not json"  # nothing was rewritten or deleted
