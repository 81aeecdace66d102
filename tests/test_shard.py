"""`ingest --shard K/N`: N runs (machines, cron jobs) split one tree without overlap and together give exactly the
index of a single run; `--prune` with `--shard` only prunes its own shard.

The shared collection is on a real HTTP Qdrant API (tests/tcp_proxy.py: qdrant-client local mode behind it) and the
N shard runs are real processes writing to it at the same time, as N machines would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tcp_proxy import QdrantRestServer

from clipindex.cli.commands import cli
from clipindex.ingest.points import absolute, display_path, in_shard, point_id
from clipindex.store.edge import EdgeStore
from clipindex.store.server import ServerStore

COLLECTION = "images"
N = 3


def non_utf8_name_hashing_elsewhere(folder: Path) -> str:
    """A file name (not valid UTF-8) whose raw path and whose displayed path fall in different shards."""
    for i in range(100):
        name = os.fsdecode(b"caf\xe9_%d.png" % i)
        path = absolute(str(folder / name))
        raw = next(k for k in range(1, N + 1) if in_shard(path, k, N))
        shown = next(k for k in range(1, N + 1) if in_shard(display_path(path), k, N))
        if raw != shown:
            return name
    raise AssertionError("no such name in 100 tries")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    rng = np.random.default_rng(7)
    for i in range(45):
        folder = root / f"f{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(folder / f"p{i:03d}.png")
    (root / "dup").mkdir()
    (root / "dup" / "same.png").write_bytes((root / "f0" / "p000.png").read_bytes())  # a copy: reused vector
    odd = root / "f1" / non_utf8_name_hashing_elsewhere(root / "f1")
    odd.write_bytes((root / "f1" / "p001.png").read_bytes()[:-1] + b"\x00")  # other bytes, still a valid PNG
    return root


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def shard_of(path: Path) -> int:
    return next(k for k in range(1, N + 1) if in_shard(absolute(str(path)), k, N))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "QDRANT_API_KEY" and not k.startswith("CLIPINDEX_")}
    out["CLIPINDEX_STATE_DIR"] = str(tmp_path / "state")  # one machine: the N shard runs share it
    return out


def edge_ingest(root: Path, model_dir: Path, data: Path, *extra: str) -> dict[str, Any]:
    args = ["ingest", str(root), "--model-dir", str(model_dir), "--data-dir", str(data), "--json", "-q", *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def snapshot(store: Any) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    store.collection_info()
    payloads = dict(store.iter_payloads())
    assert store.count(exact=True) == len(payloads)
    return payloads, store.get_vectors(list(payloads))


def edge_snapshot(data: Path) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    with EdgeStore(data, COLLECTION) as store:
        return snapshot(store)


@pytest.fixture
def server() -> Iterator[QdrantRestServer]:
    with QdrantRestServer() as s:
        yield s


def run_shards_at_once(root: Path, model_dir: Path, url: str, env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    """The N shard runs as N processes started together against one server collection."""
    cmd = [sys.executable, "-m", "clipindex", "ingest", str(root), "--model-dir", str(model_dir), "--qdrant-url", url]
    procs = [
        subprocess.Popen(
            [*cmd, "--shard", f"{k}/{N}", "--batch-size", "4", "--json", "-q", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(1, N + 1)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    return reports


@pytest.mark.slow
def test_three_shards_at_once_give_exactly_the_single_run_index(
    tree: Path, tiny_model_dir: Path, tmp_path: Path, env: dict[str, str], server: QdrantRestServer
) -> None:
    all_files = files(tree)
    single = edge_ingest(tree, tiny_model_dir, tmp_path / "single")
    assert single["points"] == len(all_files) == 47 and single["failed"] == []
    want_payloads, want_vectors = edge_snapshot(tmp_path / "single")

    # each shard on its own: disjoint, exactly the paths hashing to it, and together every file
    shard_ids: list[set[str]] = []
    for k in range(1, N + 1):
        report = edge_ingest(tree, tiny_model_dir, tmp_path / f"shard{k}", "--shard", f"{k}/{N}")
        payloads, _ = edge_snapshot(tmp_path / f"shard{k}")
        assert set(payloads) == {point_id(str(p)) for p in all_files if shard_of(p) == k}
        assert report["indexed"] == len(payloads) > 0
        shard_ids.append(set(payloads))
    assert sum(map(len, shard_ids)) == len(set().union(*shard_ids)) == len(all_files)

    # the N shards at once into one server collection: the single run's index, vector for vector
    reports = run_shards_at_once(tree, tiny_model_dir, server.url, env)
    assert sum(r["indexed"] for r in reports) == len(all_files)
    store = ServerStore(client=server.local, collection=COLLECTION)
    payloads, vectors = snapshot(store)
    assert set(payloads) == set(want_payloads)
    for pid, payload in payloads.items():
        assert payload["path"] == want_payloads[pid]["path"] and payload["sha256"] == want_payloads[pid]["sha256"]
    assert max(float(np.abs(vectors[i] - want_vectors[i]).max()) for i in want_vectors) <= 1e-6


@pytest.mark.slow
def test_prune_with_shard_only_prunes_its_own_shard(
    tree: Path, tiny_model_dir: Path, env: dict[str, str], server: QdrantRestServer
) -> None:
    run_shards_at_once(tree, tiny_model_dir, server.url, env, "--prune")
    store = ServerStore(client=server.local, collection=COLLECTION)
    all_files = files(tree)
    by_shard = {k: [p for p in all_files if shard_of(p) == k and "caf" not in p.name] for k in range(1, N + 1)}
    gone = {k: paths[:2] for k, paths in by_shard.items()}
    for paths in gone.values():
        for path in paths:
            path.unlink()

    def stored_ids() -> set[str]:
        return set(snapshot(ServerStore(client=server.local, collection=COLLECTION))[0])

    cmd = [sys.executable, "-m", "clipindex", "ingest", str(tree), "--model-dir", str(tiny_model_dir)]

    def run_shard(k: int) -> dict[str, Any]:
        result = subprocess.run(
            [*cmd, "--qdrant-url", server.url, "--shard", f"{k}/{N}", "--prune", "--json", "-q"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    # shard 1 prunes its own two deleted files, and nothing of shards 2 and 3
    assert run_shard(1)["removed"] == 2
    ids = stored_ids()
    assert not ids & {point_id(str(p)) for p in gone[1]}
    assert {point_id(str(p)) for p in gone[2] + gone[3]} <= ids

    # then all three at once: shards 2 and 3 prune theirs, and a file whose displayed (escaped) name hashes to
    # another shard than its real name is pruned by nobody (each shard skips every file the walk saw)
    reports = run_shards_at_once(tree, tiny_model_dir, server.url, env, "--prune")
    assert [r["removed"] for r in reports] == [0, 2, 2] and [r["indexed"] for r in reports] == [0, 0, 0]
    left = files(tree)
    assert any("caf" in p.name for p in left)
    assert stored_ids() == {point_id(str(p)) for p in left}
    store.collection_info()
    assert store.count() == len(left)
