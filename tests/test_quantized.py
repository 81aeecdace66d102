"""Issue 16: the embedded store's int8 copy of the vectors (scalar quantization, float32 rescoring).

Real Qdrant Edge engine throughout, real ONNX Runtime on the tiny model, the real CLI for the upgrade.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import qdrant_edge as qe
from click.testing import CliRunner
from PIL import Image

import clipindex.store.edge as edge
from clipindex.cli.commands import cli
from clipindex.ingest.pipeline import IngestOptions, ingest
from clipindex.ingest.points import point_id
from clipindex.model.encode import Embedder
from clipindex.ops.search import search_text
from clipindex.store.base import Point
from clipindex.store.edge import EdgeStore
from clipindex.store.prefetch import COLD_FILES, prefetch_shard

COLLECTION = "images"
MODEL = "synthetic-512"


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seal from the first point on and keep segments small: a few thousand points make several sealed segments."""
    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 1)
    monkeypatch.setattr(edge, "MAX_SEGMENT_KB", 2_000)  # ~1000 points of 512-d float32


def clustered(count: int, dim: int = 512, seed: int = 0) -> npt.NDArray[np.float32]:
    """Unit vectors in topics over a shared offset (photos' embeddings are not uniform noise)."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim).astype(np.float32)
    centres = rng.standard_normal((40, dim)).astype(np.float32) + 1.2 * shared / np.linalg.norm(shared) * np.sqrt(dim)
    vectors = centres[rng.integers(0, 40, count)] + 0.9 * rng.standard_normal((count, dim)).astype(np.float32)
    out: npt.NDArray[np.float32] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return out


def write_points(store: EdgeStore, vectors: npt.NDArray[np.float32]) -> list[str]:
    store.ensure_collection(vectors.shape[1], MODEL)
    ids = [point_id(f"/photos/{k:05d}.jpg") for k in range(len(vectors))]
    for start in range(0, len(vectors), 500):
        store.upsert(
            [
                Point(ids[k], vectors[k], {"path": f"/photos/{k:05d}.jpg", "size": k})
                for k in range(start, min(start + 500, len(vectors)))
            ]
        )
        store.optimize()
    store.optimize()
    return ids


def exact_top(vectors: npt.NDArray[np.float32], ids: list[str], query: npt.NDArray[np.float32], k: int) -> list[str]:
    scores = vectors @ query
    return [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]


def queries(vectors: npt.NDArray[np.float32], count: int, seed: int = 1) -> Iterator[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    for row in rng.choice(len(vectors), count, replace=False):
        q = vectors[row] + 0.8 * rng.standard_normal(vectors.shape[1]).astype(np.float32) / np.sqrt(vectors.shape[1])
        yield (q / np.linalg.norm(q)).astype(np.float32)


@pytest.mark.slow
def test_quantized_search_ranks_like_exact_search_on_synthetic_512d(tmp_path: Path, small_segments: None) -> None:
    vectors = clustered(4000)
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        ids = write_points(store, vectors)
        sealed, quantized = store.segment_layout()
        assert sealed >= 3 and quantized == sealed  # every sealed segment holds the int8 copy

        shard = store._shard
        assert shard is not None
        found = agree = 0
        for query in queries(vectors, 40):
            truth = exact_top(vectors, ids, query, 10)
            hits = store.search(query, limit=10)
            found += len({h.id for h in hits} & set(truth))
            # rescored: every score is the float32 cosine, not the int8 estimate
            by_id = dict(zip(ids, (vectors @ query).tolist(), strict=True))
            for hit in hits:
                assert hit.score == pytest.approx(by_id[hit.id], abs=1e-5)
            agree += [h.id for h in hits] == truth
            # the int8 copy is what is scanned: without rescoring the scores are its estimates
            raw = shard.query(
                qe.QueryRequest(
                    limit=10,
                    query=qe.Query.Nearest(query.tolist()),
                    params=qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=False)),
                )
            )
            errors = [abs(float(p.score) - by_id[str(p.id)]) for p in raw]
            assert max(errors) > 1e-6 and max(errors) < 0.05
        assert found / (10 * 40) >= 0.99
        assert agree >= 36  # the order agrees too, bar near-ties

        store.exact_search = True  # the float32-only path gives numpy's ranking exactly
        for query in queries(vectors, 5, seed=2):
            assert [h.id for h in store.search(query, limit=10)] == exact_top(vectors, ids, query, 10)


def crops(sample_photos: dict[str, Image.Image], root: Path, count: int) -> None:
    photos = list(sample_photos.values())
    for i in range(count):
        image = photos[i % len(photos)].convert("RGB")
        x, y = (i * 7) % max(1, image.width - 96), (i * 13) % max(1, image.height - 96)
        folder = root / f"{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        image.crop((x, y, x + 96, y + 96)).save(folder / f"{i:03d}.jpg", quality=90)


@pytest.mark.slow
def test_quantized_search_ranks_like_exact_search_on_the_tiny_model(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 1)
    monkeypatch.setattr(edge, "MAX_SEGMENT_KB", 60)  # ~30 points a segment
    root = tmp_path / "photos"
    crops(sample_photos, root, 120)
    embedder = Embedder(tiny_model_dir)
    options = IngestOptions(batch_size=20, flush_interval_s=0.0)
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        report = ingest(root, embedder, store, options=options)
        assert report.indexed == 120
        sealed, quantized = store.segment_layout()
        assert sealed >= 2 and quantized == sealed
        payloads = dict(store.iter_payloads(["path"]))
        vectors = store.get_vectors(list(payloads))
    ids = list(vectors)
    matrix = np.stack([vectors[i] for i in ids])
    texts = ["a cat", "a rocket launch", "coffee", "an astronaut", "a photo of a street", "red", "zzz"]
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        for text in texts:
            results = search_text(store, embedder, text, limit=10)
            query = embedder.encode_text([text])[0]
            truth = [payloads[i]["path"] for i in exact_top(matrix, ids, query, 10)]
            assert [r.path for r in results] == truth
            np.testing.assert_allclose([r.score for r in results], np.sort(matrix @ query)[::-1][:10], atol=1e-5)


def old_config(vector_dim: int) -> qe.EdgeConfig:
    """What clipindex created before issue 16: no int8 copy, segments of 64 MB."""
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=vector_dim, distance=qe.Distance.Cosine, on_disk=True),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=edge.INDEXING_THRESHOLD_KB, max_segment_size=2_000),
        payload_memory=qe.Memory.Cold,
        id_tracker_memory=qe.Memory.Cold,
    )


@pytest.mark.slow
def test_a_store_written_before_quantization_is_searched_then_upgraded_by_clipindex_optimize(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = clustered(3000, seed=5)
    data_dir = tmp_path / "data"
    with monkeypatch.context() as old:
        old.setattr(edge, "edge_config", old_config)
        with EdgeStore(data_dir, COLLECTION) as store:
            ids = write_points(store, vectors)
            sealed, quantized = store.segment_layout()
            assert sealed >= 3 and quantized == 0
    probes = list(queries(vectors, 10, seed=3))

    # today's clipindex opens it as it is: search works (exact scan of the old segments), nothing is rewritten
    with EdgeStore(data_dir, COLLECTION) as store:
        store.collection_info()
        before = [[h.id for h in store.search(q, limit=10)] for q in probes]
        assert store.segment_layout() == (sealed, 0)
    assert before == [exact_top(vectors, ids, q, 10) for q in probes]

    result = CliRunner().invoke(cli, ["optimize", "--data-dir", str(data_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["changed"] is True and report["points"] == 3000
    assert report["segments"] >= 1 and report["quantized_segments"] == report["segments"]

    with EdgeStore(data_dir, COLLECTION) as store:
        store.collection_info()
        assert store.count(exact=True) == 3000
        after = [[h.id for h in store.search(q, limit=10)] for q in probes]
        assert store.get_vectors(ids[:3]).keys() == set(ids[:3])
    found = sum(len(set(a) & set(b)) for a, b in zip(after, before, strict=True))
    assert found / (10 * len(probes)) >= 0.99

    again = CliRunner().invoke(cli, ["optimize", "--data-dir", str(data_dir), "--json"], catch_exceptions=False)
    assert again.exit_code == 0 and json.loads(again.output)["changed"] is False


def test_optimize_without_a_collection_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["optimize", "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "no collection" in result.output


def _evict(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_prefetch_reads_the_hot_files_once_and_skips_the_float32_vectors(tmp_path: Path, small_segments: None) -> None:
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        write_points(store, clustered(1500, seed=7))
    shard = tmp_path / "data" / COLLECTION / "shard"
    files = [p for p in shard.rglob("*") if p.is_file()]
    hot = sum(p.stat().st_size for p in files if p.name not in COLD_FILES and not p.name.startswith("page_"))
    quantized = sum(p.stat().st_size for p in files if p.name == "quantized.data")
    assert quantized > 0
    _evict(shard)
    if _int8_copy_looks_cached(shard):
        pytest.skip("this filesystem keeps pages cached after POSIX_FADV_DONTNEED (tmpfs?)")
    first = prefetch_shard(shard)
    assert quantized <= first <= hot  # the int8 copy is read; the float32 vectors and payload pages are not
    assert prefetch_shard(shard) < first  # now cached: skipped
    _evict(shard)
    assert prefetch_shard(shard, limit_bytes=4096) <= 4096 + (1 << 20)


def _int8_copy_looks_cached(shard: Path) -> bool:
    from clipindex.store.prefetch import _looks_cached

    with next(shard.rglob("quantized.data")).open("rb") as handle:
        return _looks_cached(handle.fileno())


@pytest.mark.slow
def test_a_full_payload_read_gives_back_its_pages_as_it_goes(
    tmp_path: Path, small_segments: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest's index read (iter_payloads over every point) closes and reopens the shard every
    RELEASE_EVERY_POINTS points, so its mapped payload pages never pile up; every point still comes once."""
    vectors = clustered(2300, seed=9)
    releases: list[int] = []

    class Counting(EdgeStore):
        def release_memory(self) -> None:
            releases.append(1)
            super().release_memory()

    monkeypatch.setattr(edge, "RELEASE_EVERY_POINTS", 500)
    with Counting(tmp_path / "data", COLLECTION) as store:
        ids = write_points(store, vectors)
        got = [pid for pid, _ in store.iter_payloads(["size"], page_size=200)]
        assert sorted(got) == sorted(ids)
        assert len(releases) == 3  # after 600, 1200 and 1800 points (pages of 200); none after the last page
        assert store.count(exact=True) == 2300  # the reopened shard is the same store
