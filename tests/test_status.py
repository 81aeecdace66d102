"""`clipindex status`: model, store, collection, point count and last ingest, before and after an ingest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from clipindex.cli.commands import cli
from clipindex.ingest.points import point_id
from clipindex.model.encode import Embedder
from clipindex.ops.status import collect_status
from clipindex.store.base import Point
from clipindex.store.edge import EdgeStore

KEYS = [
    "model_dir",
    "model",
    "source_model",
    "embedding_dim",
    "model_error",
    "store",
    "collection",
    "collection_exists",
    "collection_model",
    "collection_dim",
    "points",
    "model_mismatch",
    "busy",
    "last_ingest",
    "running_ingest",
    "interrupted_ingest",
    "busy_reason",
    "engines",
    "mixed_engines",
    "integrity_warning",
    "dated_points",
    "model_dir_from",
    "failed_files",
    "model_cache",
    "thumbnail_cache",
]
IMAGES = Path(__file__).resolve().parent.parent / "images"


def status(model_dir: Path, data_dir: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        cli, ["status", "--model-dir", str(model_dir), "--data-dir", str(data_dir), *extra], catch_exceptions=False
    )


def status_json(model_dir: Path, data_dir: Path, *extra: str, exit_code: int = 0) -> dict[str, Any]:
    result = status(model_dir, data_dir, "--json", *extra)
    assert result.exit_code == exit_code, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def rows(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("  ")
        out[key.strip()] = value.strip()
    return out


def test_status_before_and_after_an_ingest(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    model_name = Embedder(tiny_model_dir).model_name
    before = status_json(tiny_model_dir, data_dir)
    assert list(before) == KEYS
    assert before["model"] == model_name and before["embedding_dim"] == 512 and before["model_error"] is None
    assert before["store"] == f"embedded store {data_dir / 'images'}" and before["collection"] == "images"
    assert before["collection_exists"] is False and before["points"] is None and before["last_ingest"] is None
    assert not (data_dir / "images").exists()  # status creates nothing
    text = status(tiny_model_dir, data_dir)
    assert text.exit_code == 0
    shown = rows(text.stdout)
    assert shown["model"].startswith(f"{model_name} (512-d")
    assert "nothing ingested yet" in shown["collection"] and "clipindex ingest DIR" in shown["collection"]
    assert shown["last ingest"] == "never"

    started = time.time()
    ingest = CliRunner().invoke(
        cli, ["ingest", str(IMAGES), "--model-dir", str(tiny_model_dir), "--data-dir", str(data_dir), "-q"]
    )
    assert ingest.exit_code == 0, ingest.output
    after = status_json(tiny_model_dir, data_dir)
    assert list(after) == KEYS
    assert after["collection_exists"] is True and after["points"] == 8
    assert after["collection_model"] == model_name and after["collection_dim"] == 512
    assert after["model_mismatch"] is False and after["busy"] is False
    last = after["last_ingest"]
    assert last["indexed"] == 8 and last["failed"] == 0 and last["points"] == 8 and last["root"] == str(IMAGES)
    assert last["model"] == model_name and started - 1 <= last["finished_at"] <= time.time()
    assert isinstance(last["finished_at_iso"], str) and last["finished_at_iso"][:4].isdigit()
    shown = rows(status(tiny_model_dir, data_dir).stdout)
    assert shown["points"] == "8"
    assert shown["collection"] == f"images: built with {model_name} (512-d)"
    assert shown["last ingest"].startswith(last["finished_at_iso"])
    assert f"{IMAGES}; indexed 8, reused 0, unchanged 0, failed 0, removed 0; 8 points" in shown["last ingest"]
    # a re-run updates the summary
    CliRunner().invoke(cli, ["ingest", str(IMAGES), "--model-dir", str(tiny_model_dir), "--data-dir", str(data_dir)])
    again = status_json(tiny_model_dir, data_dir)["last_ingest"]
    assert again["unchanged"] == 8 and again["indexed"] == 0 and again["finished_at"] >= last["finished_at"]
    # a damaged summary is reported, and status still shows everything else
    (data_dir / "images" / "last_ingest.json").write_text("{broken")
    damaged = status_json(tiny_model_dir, data_dir)
    assert damaged["points"] == 8 and "not valid JSON" in damaged["last_ingest"]["error"]
    shown = rows(status(tiny_model_dir, data_dir).stdout)
    assert (
        shown["points"] == "8"
        and shown["last ingest"].startswith("unreadable (")
        and "fix or delete" in shown["last ingest"]
    )


def test_status_without_a_model_and_with_another_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EdgeStore(data_dir, "other") as store:
        store.ensure_collection(768, "clip-vit-large-patch14")
        store.upsert(
            [Point(point_id(f"/p/{i}.jpg"), np.ones(768, np.float32), {"path": f"/p/{i}.jpg"}) for i in range(3)]
        )
    data = status_json(tmp_path / "no-model", data_dir, "--collection", "other")
    assert data["model"] is None and "clipindex convert" in data["model_error"]
    assert data["points"] == 3 and data["collection_model"] == "clip-vit-large-patch14" and data["last_ingest"] is None
    assert data["model_mismatch"] is False  # nothing to compare with
    text = status(tmp_path / "no-model", data_dir, "--collection", "other")
    assert text.exit_code == 0 and rows(text.stdout)["model"].startswith("none: ")
    mismatch = status_json(tiny_model_dir, data_dir, "--collection", "other")
    assert mismatch["model_mismatch"] is True
    warning = rows(status(tiny_model_dir, data_dir, "--collection", "other").stdout)["warning"]
    assert "clip-vit-large-patch14" in warning and "search would refuse" in warning


def test_status_of_a_busy_store_and_the_library_api(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EdgeStore(data_dir, "images") as store:
        store.ensure_collection(512, Embedder(tiny_model_dir).model_name)
        store.save_summary({"indexed": 1, "finished_at": 1_700_000_000.0, "root": "/x"})
        # while this store stays open past --wait, status says who holds it, still shows the last ingest, and
        # exits 75
        result = status(tiny_model_dir, data_dir, "--wait", "0.2")
        assert result.exit_code == 75, result.output
        assert f"in use by a clipindex process (pid {os.getpid()}," in rows(result.stdout)["collection"]
        busy = status_json(tiny_model_dir, data_dir, "--wait", "0", exit_code=75)
        assert busy["busy"] is True and busy["points"] is None and busy["last_ingest"]["indexed"] == 1
    with EdgeStore(data_dir, "images") as store:
        report = collect_status(tiny_model_dir, store)
    assert report.busy is False and report.points == 0 and report.last_ingest is not None
    assert report.as_json()["last_ingest"]["root"] == "/x"
    assert "points" in report.format()
