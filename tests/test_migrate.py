"""`clipindex migrate`: an embedded (Qdrant Edge) collection copied to a Qdrant server, ids/vectors/payloads intact.

The server side is qdrant-client's local mode: directly (``ServerStore(client=QdrantClient(path=...))``) for the
library, and behind a real HTTP server (tests/tcp_proxy.py) for the CLI, which talks to it like to a real server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from qdrant_client import QdrantClient
from tcp_proxy import QdrantRestServer, closed_port

from clipindex.cli.commands import cli
from clipindex.errors import CollectionMismatchError, CollectionNotFoundError, CountMismatchError
from clipindex.ingest.points import point_id
from clipindex.ops.migrate import migrate
from clipindex.store.base import Point
from clipindex.store.edge import EdgeStore
from clipindex.store.server import ServerStore

COLLECTION = "images"


def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPINDEX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)


@pytest.fixture
def photo_dir(tmp_path: Path, sample_photos: dict[str, Image.Image]) -> Path:
    root = tmp_path / "photos"
    for i, (name, image) in enumerate(sorted(sample_photos.items())):
        folder = root / ("2024" if i % 2 else "trips")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{name}.jpg", quality=90)
        image.resize((image.width // 2, image.height // 2)).save(folder / f"{name}_small.png")
    (root / "copy").mkdir()
    (root / "copy" / "same.jpg").write_bytes(next((root / "trips").glob("*.jpg")).read_bytes())
    return root


@pytest.fixture
def edge_dir(tmp_path: Path, photo_dir: Path, tiny_model_dir: Path) -> Path:
    """An embedded store filled by a real ingest of the photos."""
    data = tmp_path / "edge"
    result = run_cli("ingest", photo_dir, "--model-dir", tiny_model_dir, "--data-dir", data, "-q")
    assert result.exit_code == 0, result.output
    return data


def snapshot(store: Any) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], int]:
    """(payloads by id, vectors by id, exact count) of an opened store."""
    payloads = dict(store.iter_payloads())
    return payloads, store.get_vectors(list(payloads)), store.count(exact=True)


def edge_snapshot(data: Path) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], int]:
    store = EdgeStore(data, COLLECTION)
    with store:
        store.collection_info()
        return snapshot(store)


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[ServerStore]:
    client = QdrantClient(path=str(tmp_path / "qdrant-local"))
    store = ServerStore(client=client, collection=COLLECTION, state_dir=tmp_path / "state")
    yield store
    store.close()
    client.close()


def assert_same_collection(edge: Path, target: Any) -> None:
    src_payloads, src_vectors, src_count = edge_snapshot(edge)
    dst_payloads, dst_vectors, dst_count = snapshot(target)
    assert dst_count == src_count == len(src_payloads) > 0
    assert dst_payloads == src_payloads  # same ids, every payload key and value
    assert all(pid == point_id(payload["path"]) for pid, payload in dst_payloads.items())
    assert set(dst_vectors) == set(src_vectors)
    assert max(float(np.abs(dst_vectors[i] - src_vectors[i]).max()) for i in src_vectors) <= 1e-6


def test_migrate_copies_ids_vectors_payloads_and_model(
    edge_dir: Path, local_server: ServerStore, tmp_path: Path
) -> None:
    source = EdgeStore(edge_dir, COLLECTION)
    with source:
        report = migrate(source, local_server, batch_size=4)  # several pages
    assert report.created and report.copied == report.source_points == report.target_after == 13
    assert report.target_before == 0 and report.verified_vectors == 13
    assert report.model == "clip-tiny-test" and report.vector_dim == 512
    info = local_server.collection_info()
    assert (info.model_name, info.vector_dim) == ("clip-tiny-test", 512)
    assert_same_collection(edge_dir, local_server)
    summary = local_server.load_summary()
    assert summary is not None and summary["points"] == 13  # the last ingest's summary went along

    # search answers the same on both sides
    _, vectors, _ = edge_snapshot(edge_dir)
    query = next(iter(vectors.values()))
    source = EdgeStore(edge_dir, COLLECTION)
    with source:
        source.collection_info()
        want = {h.id: h.score for h in source.search(query, limit=20)}
    got = local_server.search(query, limit=20)
    # (a byte copy ties with its original: compare as sets; the two engines round scores differently)
    assert {h.id for h in got} == set(want)
    assert all(abs(h.score - want[h.id]) <= 1e-5 for h in got)
    assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)

    # a second run (as from a new process) is idempotent: nothing added, everything verified again
    source = EdgeStore(edge_dir, COLLECTION)
    target = ServerStore(client=local_server._client, collection=COLLECTION, state_dir=tmp_path / "state")
    with source:
        again = migrate(source, target)
    assert not again.created and again.target_before == again.target_after == 13 and again.copied == 13


def test_migrate_into_a_target_that_already_holds_some_points(edge_dir: Path, local_server: ServerStore) -> None:
    payloads, vectors, _ = edge_snapshot(edge_dir)
    local_server.ensure_collection(512, "clip-tiny-test")
    some = sorted(payloads)[:3]
    local_server.upsert([Point(i, vectors[i], payloads[i]) for i in some])
    other = np.zeros(512, np.float32)
    other[0] = 1
    local_server.upsert([Point("00000000-0000-4000-8000-00000000abcd", other, {"path": "/elsewhere/x.jpg"})])
    source = EdgeStore(edge_dir, COLLECTION)
    with source:
        report = migrate(source, local_server)
    assert (report.target_before, report.target_after, report.created) == (4, 14, False)


def test_migrate_refuses_a_target_built_by_another_model(edge_dir: Path, local_server: ServerStore) -> None:
    local_server.ensure_collection(512, "another-model")
    source = EdgeStore(edge_dir, COLLECTION)
    with source, pytest.raises(CollectionMismatchError, match="another-model"):
        migrate(source, local_server)
    assert local_server.count() == 0


def test_migrate_without_a_source_collection_fails(tmp_path: Path, local_server: ServerStore) -> None:
    with EdgeStore(tmp_path / "empty", COLLECTION) as source, pytest.raises(CollectionNotFoundError):
        migrate(source, local_server)


class LossyServerStore(ServerStore):
    """Drops the last point of every upsert: the count check must notice."""

    def upsert(self, points: Any) -> None:
        super().upsert(list(points)[:-1])


class CorruptingServerStore(ServerStore):
    """Stores every vector with its sign flipped: counts match, the sampled vectors must not."""

    def upsert(self, points: Any) -> None:
        super().upsert([Point(p.id, -p.vector, p.payload) for p in points])


@pytest.mark.parametrize("kind", [LossyServerStore, CorruptingServerStore])
def test_migrate_verification_catches_a_bad_copy(edge_dir: Path, tmp_path: Path, kind: type[ServerStore]) -> None:
    client = QdrantClient(":memory:")
    target = kind(client=client, collection=COLLECTION, state_dir=tmp_path / "state")
    source = EdgeStore(edge_dir, COLLECTION)
    with source, pytest.raises(CountMismatchError, match="run the migration again"):
        migrate(source, target, batch_size=5)
    client.close()


# --- the CLI, against a real HTTP server ----------------------------------------------------------------------


@pytest.mark.slow
def test_cli_migrate_to_a_server_then_ingest_there_needs_no_re_embedding(
    edge_dir: Path, photo_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    key = "migrate-test-key"
    with QdrantRestServer(api_key=key) as server:
        env = {"QDRANT_API_KEY": key}
        args = ["migrate", "--data-dir", edge_dir, "--to", server.url, "--to-collection", "moved"]
        result = run_cli(*args, "--shards", "3", "--replicas", "2", "--batch-size", "5", "--json", env=env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["copied"] == report["target_after"] == 13 and report["created"] is True
        assert report["target"] == f"{server.url}, collection 'moved'"
        created = server.created["moved"]
        assert (created["shard_number"], created["replication_factor"]) == (3, 2)
        assert created["metadata"]["clipindex_model"] == "clip-tiny-test"
        assert key not in result.output

        moved = ServerStore(client=server.local, collection="moved")
        moved.collection_info()
        assert_same_collection(edge_dir, moved)

        # the payloads are intact: an incremental ingest against the server finds every file unchanged
        result = run_cli(
            "ingest",
            photo_dir,
            "--model-dir",
            tiny_model_dir,
            "--qdrant-url",
            server.url,
            "--collection",
            "moved",
            "--json",
            "-q",
            env=env,
        )
        assert result.exit_code == 0, result.output
        ingest = json.loads(result.stdout)
        assert (ingest["indexed"], ingest["unchanged"], ingest["points"]) == (0, 13, 13)

        # the one-line summary of a re-run
        result = run_cli(*args, "-q", env=env)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("copied 13 of 13 points (clip-tiny-test, 512-d)")
        assert "13 points (13 before)" in result.stdout

        # a target made by another model is refused before anything is written
        other = ServerStore(client=server.local, collection="other")
        other.ensure_collection(512, "another-model")
        result = run_cli("migrate", "--data-dir", edge_dir, "--to", server.url, "--to-collection", "other", env=env)
        assert result.exit_code == 1 and "another-model" in result.stderr and len(result.stderr.splitlines()) == 1
        assert other.count() == 0


@pytest.mark.slow
def test_cli_migrate_errors_are_one_line_with_their_exit_codes(edge_dir: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("migrate", "--data-dir", edge_dir, "--to", url, "--timeout", "0.5")
    assert result.exit_code == 69 and url in result.stderr
    # the wait is said at once, then one Error: line
    assert result.stderr.strip().splitlines()[0] == f"waiting for Qdrant at {url} (up to 0.5 s)"
    assert len([line for line in result.stderr.splitlines() if line.startswith("Error: ")]) == 1
    with QdrantRestServer() as server:
        result = run_cli("migrate", "--data-dir", tmp_path / "nothing-here", "--to", server.url)
        assert result.exit_code == 1 and "no collection" in result.stderr
        assert not server.local.collection_exists(COLLECTION)
    result = run_cli("migrate", "--data-dir", edge_dir)
    assert result.exit_code == 2 and "--to" in result.stderr
    assert os.environ.get("QDRANT_API_KEY") is None
