"""A damaged embedded store knows it: real stores written by a real ingest, damaged on disk the ways real disks and
people damage them (a truncated id tracker, an emptied vector chunk, zeroed payload pages, a lost ``segments/``,
a config that does not parse), then the real CLI: ``status``, ``search``, ``ingest`` and ``check [--repair]`` each
say what happened and the way out in one line, and the next ingest converges to the exact index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from clipindex.cli.commands import cli
from clipindex.store.edge import READY_DIR, EdgeStore

COUNT = 60


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(22)
    folder = tmp_path / "photos"
    folder.mkdir()
    out = []
    for i in range(COUNT):
        path = folder / f"p{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def segment(data: Path) -> Path:
    (seg,) = (data / "images" / "shard" / "segments").iterdir()
    return seg


def stored_paths(data: Path) -> set[str]:
    store = EdgeStore(data)
    with store:
        store.collection_info()
        return {str(p["path"]) for _, p in store.iter_payloads(["path"])}


def stored_paths_all(s: dict[str, Any]) -> set[str]:
    return {str(p) for p in s["photos"]}


@pytest.fixture
def indexed(tmp_path: Path, photos: list[Path], tiny_model_dir: Path) -> dict[str, Any]:
    data = tmp_path / "data"
    common = ["--model-dir", tiny_model_dir, "--data-dir", data]
    first = run("ingest", photos[0].parent, *common, "-q")
    assert first.exit_code == 0, first.output
    return {"data": data, "root": photos[0].parent, "common": common, "photos": photos}


def ingest(s: dict[str, Any], *extra: str) -> Result:
    return run("ingest", s["root"], *s["common"], "-q", *extra)


def check(s: dict[str, Any], *extra: str) -> Result:
    return run("check", "--data-dir", s["data"], *extra)


def assert_repairs_then_converges(s: dict[str, Any]) -> dict[str, Any]:
    """check finds the damage (exit 1, one Error line naming --repair); --repair rebuilds (exit 0) keeping the old
    shard aside; the next ingest re-embeds what was lost; check then says ok."""
    found = check(s)
    assert found.exit_code == 1, found.output
    (line,) = errors(found)
    assert "clipindex check --repair" in line and str(s["data"]) in line
    assert any(out.startswith("problem: ") for out in found.stdout.splitlines())

    repaired = check(s, "--repair", "--json")
    assert repaired.exit_code == 0, repaired.output
    report = json.loads(repaired.stdout)
    assert report["ok"] is False and report["after"]["ok"] is True
    assert report["repair"]["kept"] + report["repair"]["to_reembed"] == COUNT
    aside = Path(report["repair"]["kept_aside"])
    assert aside.is_dir() and aside.parent == s["data"] / "images"  # the old shard is kept, not deleted

    again = ingest(s)
    assert again.exit_code == 0, again.output
    assert f"indexed {report['repair']['to_reembed']} " in again.stdout
    assert stored_paths(s["data"]) == {str(p) for p in s["photos"]}
    final = check(s)
    assert final.exit_code == 0 and final.stdout.rstrip().endswith("s)") and ": ok (" in final.stdout, final.output
    search = run("search", "a photo", "--data-dir", s["data"], "-n", "3")
    assert search.exit_code == 0 and "Warning" not in search.stderr, search.output
    return report


def test_a_healthy_store_checks_ok_and_repair_changes_nothing(indexed: dict[str, Any]) -> None:
    result = check(indexed, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["points"] == report["listed"] == report["readable"] == report["expected"] == COUNT
    assert report["search_error"] is None and report["problems"] == []
    repaired = check(indexed, "--repair")
    assert repaired.exit_code == 0 and "repaired" not in repaired.stdout, repaired.output
    assert sorted(p.name for p in (indexed["data"] / "images").iterdir() if p.name.startswith("shard")) == ["shard"]


def test_a_truncated_id_tracker_is_warned_about_then_repaired(indexed: dict[str, Any]) -> None:
    mappings = segment(indexed["data"]) / "mutable_id_tracker.mappings"
    os.truncate(mappings, mappings.stat().st_size // 4)

    status = run("status", "--data-dir", indexed["data"], "--json")
    data = json.loads(status.stdout)
    assert data["points"] < COUNT and data["last_ingest"]["points"] == COUNT
    assert (
        f"the last ingest left {COUNT}" in data["integrity_warning"] and "clipindex check" in data["integrity_warning"]
    )
    text = run("status", "--data-dir", indexed["data"])
    assert "warning" in text.stdout and "may be damaged" in text.stdout

    search = run("search", "a photo", "--data-dir", indexed["data"], "--limit", "1000", "--json")
    assert search.exit_code == 0  # the answers it has, with a warning on stderr
    assert len(json.loads(search.stdout)) == data["points"]
    (warning,) = [line for line in search.stderr.splitlines() if line.startswith("Warning:")]
    assert f"the last ingest left {COUNT}" in warning and "clipindex check" in warning

    scratch = indexed["data"].with_name("copy")  # an ingest on the damaged store itself: warns, then converges
    shutil.copytree(indexed["data"], scratch)
    healed = run("ingest", indexed["root"], "--data-dir", scratch, "-q")
    assert healed.exit_code == 0, healed.output
    (warning,) = [line for line in healed.stderr.splitlines() if line.startswith("Warning:")]
    assert f"the last ingest left {COUNT}" in warning
    assert f"indexed {COUNT - data['points']} " in healed.stdout and stored_paths(scratch) == stored_paths_all(indexed)

    report = assert_repairs_then_converges(indexed)
    assert report["repair"]["kept"] == data["points"] and report["repair"]["lost"] == 0


def test_an_emptied_vector_chunk_fails_ingest_and_search_with_the_repair_hint(indexed: dict[str, Any]) -> None:
    (chunk,) = (segment(indexed["data"]) / "vector_storage" / "vectors").glob("chunk_*.mmap")
    os.truncate(chunk, 0)

    again = ingest(indexed)  # every file unchanged: only the end-of-run probe can tell
    assert again.exit_code == 1, again.output
    (line,) = errors(again)
    assert "is damaged" in line and "clipindex check --repair" in line and str(indexed["data"]) in line
    search = run("search", "a photo", "--data-dir", indexed["data"])
    assert search.exit_code == 1
    (line,) = errors(search)
    assert "is damaged" in line and "clipindex check --repair" in line

    report = assert_repairs_then_converges(indexed)
    assert report["repair"]["kept"] == 0 and report["repair"]["lost"] == COUNT


def test_zeroed_payload_pages_fail_with_the_repair_hint_not_raw_engine_text(indexed: dict[str, Any]) -> None:
    page = segment(indexed["data"]) / "payload_storage" / "page_0.dat"
    with open(page, "r+b") as f:
        f.write(bytes(1 << 20))

    for result in (ingest(indexed), run("search", "a photo", "--data-dir", indexed["data"])):
        assert result.exit_code == 1, result.output
        (line,) = errors(result)
        assert line.startswith("Error: embedded store ") and "is damaged" in line
        assert "clipindex check --repair" in line
    status = run("status", "--data-dir", indexed["data"], "--json")
    assert status.exit_code == 0

    report = assert_repairs_then_converges(indexed)
    assert report["repair"]["kept"] < COUNT


def test_lost_segments_are_warned_about_then_repaired(indexed: dict[str, Any]) -> None:
    shutil.rmtree(indexed["data"] / "images" / "shard" / "segments")
    (indexed["data"] / "images" / "shard" / "segments").mkdir()
    status = json.loads(run("status", "--data-dir", indexed["data"], "--json").stdout)
    assert status["points"] < COUNT and status["integrity_warning"]
    assert_repairs_then_converges(indexed)


def test_a_shard_that_does_not_open_is_rebuilt_empty_and_ingest_refills_it(indexed: dict[str, Any]) -> None:
    config = indexed["data"] / "images" / "shard" / "edge_config.json"
    config.write_text("{not json")
    report = assert_repairs_then_converges(indexed)
    assert report["points"] is None and report["repair"]["kept"] == 0
    assert report["repair"]["to_reembed"] == COUNT


def test_a_repair_killed_between_its_renames_is_finished_by_the_next_open(indexed: dict[str, Any]) -> None:
    """The state a repair leaves when killed after the new shard is complete (``shard.ready``) and before it is
    put in place: the next process that opens the store finishes the swap; the damaged shard is kept aside."""
    root = indexed["data"] / "images"
    shutil.copytree(root / "shard", root / READY_DIR)  # a complete shard (here: a healthy copy)
    (chunk,) = (segment(indexed["data"]) / "vector_storage" / "vectors").glob("chunk_*.mmap")
    os.truncate(chunk, 0)  # the current one is damaged
    result = check(indexed)
    assert result.exit_code == 0, result.output
    assert not (root / READY_DIR).exists()
    assert len(list(root.glob("shard.damaged-*"))) == 1
    assert stored_paths(indexed["data"]) == {str(p) for p in indexed["photos"]}


def test_check_of_a_store_with_nothing_indexed_is_one_line(tmp_path: Path) -> None:
    result = run("check", "--data-dir", tmp_path / "none")
    assert result.exit_code == 1
    (line,) = errors(result)
    assert "nothing to check" in line and "clipindex ingest" in line
