"""Switching a collection to another model: ``clipindex ingest DIR --model-dir NEW --reembed``. Real processes
SIGKILLed at random moments, the tiny exported model and a renamed copy of it (another model to the store), the real
embedded store, searches run meanwhile: there is always exactly one working collection."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipindex.store.edge import READY_DIR, EdgeStore

COUNT = 120


def clipindex(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(7)
    for i in range(COUNT):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / f"p{i:03d}.png")
    new = tmp_path / "new-model"
    shutil.copytree(tiny_model_dir, new)
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["model_name"] = "new-model"
    (new / "manifest.json").write_text(json.dumps(manifest))
    return {"photos": photos, "old": tiny_model_dir, "new": new, "data": tmp_path / "data"}


def model_of(data: Path, env: dict[str, str]) -> str:
    status = json.loads(clipindex("status", "--json", "--data-dir", data, env=env).stdout)
    return str(status["collection_model"])


def assert_one_working_collection(data: Path, env: dict[str, str]) -> str:
    """A search with no --model-dir works and sees the whole collection, of one model or the other."""
    found = clipindex("search", "a photo", "--data-dir", data, "--limit", "1000", "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == COUNT
    return model_of(data, env)


@pytest.mark.slow
def test_reembed_switches_models_and_a_kill_at_any_moment_leaves_one_working_collection(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    env["CLIPINDEX_STATE_DIR"] = str(tmp_path / "state")
    data = setup["data"]
    first = clipindex("ingest", setup["photos"], "--model-dir", setup["old"], "--data-dir", data, "-q", env=env)
    assert first.returncode == 0, first.stderr
    refused = clipindex("ingest", setup["photos"], "--model-dir", setup["new"], "--data-dir", data, env=env)
    assert refused.returncode == 1 and "--reembed" in refused.stderr  # the mismatch names the way out

    command = [
        sys.executable, "-m", "clipindex", "ingest", str(setup["photos"]), "--model-dir", str(setup["new"]),
        "--data-dir", str(data), "--reembed", "--batch-size", "4", "-q",
    ]  # fmt: skip
    started = time.monotonic()
    full = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    seconds = time.monotonic() - started
    assert assert_one_working_collection(data, env) == "new-model"
    # and back to the old model, this time killed at random moments over a run, with a search after each kill
    back = [*command[:6], str(setup["old"]), *command[7:]]
    rng = random.Random(22)
    killed = 0
    for _ in range(6):
        proc = subprocess.Popen(back, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
        time.sleep(rng.uniform(0.3, max(0.5, seconds)))
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        assert assert_one_working_collection(data, env) in ("new-model", "clip-tiny-test")
    assert killed >= 3
    done = subprocess.run(back, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert assert_one_working_collection(data, env) == "clip-tiny-test"
    assert sorted(p.name for p in data.iterdir()) == ["images"]  # the staging collection is gone
    assert not any(p.name.startswith("shard.") for p in (data / "images").iterdir())


def test_a_switch_killed_after_its_copies_is_finished_by_the_next_open(setup: dict[str, Path], tmp_path: Path) -> None:
    """The state :meth:`EdgeStore.adopt` leaves when killed after the new shard and files were put beside the
    collection (``shard.ready``, ``collection.json.ready``) and before the renames: the next open switches."""
    from click.testing import CliRunner

    from clipindex.cli.commands import cli

    data = setup["data"]
    for model, collection in ((setup["old"], "images"), (setup["new"], "images.reembed")):
        args = ["ingest", str(setup["photos"]), "--model-dir", str(model), "--data-dir", str(data)]
        assert CliRunner().invoke(cli, [*args, "--collection", collection, "-q"]).exit_code == 0
    root, staged = data / "images", data / "images.reembed"
    shutil.copyfile(staged / "collection.json", root / "collection.json.ready")
    os.replace(staged / "shard", root / READY_DIR)
    store = EdgeStore(data)
    with store:
        assert store.collection_info().model_name == "new-model"
        assert store.count() == COUNT
    assert not (root / READY_DIR).exists() and not (root / "collection.json.ready").exists()
    assert not [p for p in root.iterdir() if p.name.startswith("shard.")]  # the replaced shard is deleted
