"""Issue 16: the vector storage of a server collection that clipindex creates, checked on the requests a real
qdrant-client sends over HTTP to the REST stand-in (tests/tcp_proxy.py: qdrant-client local mode behind it),
and the sizing table of docs/operations.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from tcp_proxy import QdrantRestServer

from clipindex.cli.commands import cli
from clipindex.store.sizing import OVERHEAD, CollectionSettings, estimate, sizing_table

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPINDEX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    for name in ("CLIPINDEX_QUANTIZATION", "CLIPINDEX_HNSW_M", "CLIPINDEX_HNSW_EF_CONSTRUCT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def photo_dir(tmp_path: Path, sample_photos: dict[str, Image.Image]) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for name, image in sorted(sample_photos.items()):
        image.convert("RGB").save(root / f"{name}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_ingest_creates_a_quantized_collection_and_search_rescores(photo_dir: Path, tiny_model_dir: Path) -> None:
    with QdrantRestServer() as server:
        result = run_cli("ingest", photo_dir, "--model-dir", tiny_model_dir, "--qdrant-url", server.url, "-q")
        assert result.exit_code == 0, result.output
        body = server.created["images"]
        assert body["vectors"] == {"size": 512, "distance": "Cosine", "on_disk": True}
        assert body["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
        assert body["hnsw_config"] == {"m": 16, "ef_construct": 100, "on_disk": False}
        assert "shard_number" not in body and "replication_factor" not in body  # the server's defaults

        result = run_cli("search", "a cat", "--model-dir", tiny_model_dir, "--qdrant-url", server.url, "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)) == len(list(photo_dir.glob("*.jpg")))
        assert server.queries[-1]["params"] == {"quantization": {"rescore": True, "oversampling": 2.0}}


def test_flags_and_env_vars_override_the_recommended_settings(photo_dir: Path, tiny_model_dir: Path) -> None:
    with QdrantRestServer() as server:
        args = ["ingest", photo_dir, "--model-dir", tiny_model_dir, "--qdrant-url", server.url, "-q"]
        result = run_cli(*args, "--quantization", "none", "--hnsw-m", "32", "--hnsw-ef-construct", "200")
        assert result.exit_code == 0, result.output
        body = server.created["images"]
        assert body["vectors"]["on_disk"] is False
        assert "quantization_config" not in body
        assert body["hnsw_config"] == {"m": 32, "ef_construct": 200, "on_disk": False}

        env = {"CLIPINDEX_QUANTIZATION": "none", "CLIPINDEX_HNSW_M": "0"}
        result = run_cli(*args, "--collection", "flat", "--shards", "2", "--replicas", "2", env=env)
        assert result.exit_code == 0, result.output
        body = server.created["flat"]
        assert "quantization_config" not in body and body["hnsw_config"]["m"] == 0
        assert (body["shard_number"], body["replication_factor"]) == (2, 2)

        bad = run_cli(*args, "--quantization", "int4")
        assert bad.exit_code == 2 and "int4" in bad.output


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="quantization"):
        CollectionSettings("int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hnsw_m"):
        CollectionSettings(hnsw_m=-1)


def test_estimate_follows_the_documented_formula() -> None:
    flat = estimate(1_000_000, 512, quantization="none", hnsw_m=0)
    # Qdrant's capacity-planning formula, plus clipindex's payload indexes and id tracker (214 B a point)
    assert flat.ram_bytes == int((1_000_000 * 512 * 4 + 1_000_000 * 214) * OVERHEAD)
    quantized = estimate(1_000_000, 512, hnsw_m=0)
    assert quantized.ram_bytes == int((1_000_000 * 512 + 1_000_000 * 214) * OVERHEAD)
    assert quantized.disk_bytes > flat.disk_bytes  # the int8 copy is stored too
    assert estimate(1_000_000, replicas=2).ram_bytes == 2 * estimate(1_000_000).ram_bytes
    assert estimate(25_000_000).shards == 3


def test_the_sizing_table_in_the_docs_is_the_one_the_code_computes() -> None:
    assert sizing_table() in OPERATIONS.read_text(encoding="utf-8")


def test_optimize_on_a_server_only_reports(photo_dir: Path, tiny_model_dir: Path) -> None:
    with QdrantRestServer() as server:
        result = run_cli("ingest", photo_dir, "--model-dir", tiny_model_dir, "--qdrant-url", server.url, "-q")
        assert result.exit_code == 0, result.output
        result = run_cli("optimize", "--qdrant-url", server.url, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["changed"] is False and report["points"] == len(list(photo_dir.glob("*.jpg")))
        assert report["segments"] is None  # a server's segments are its own business
