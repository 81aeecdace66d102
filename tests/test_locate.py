"""One model location for every command and every folder (clipindex.model.locate), the first run offline, and the usage
errors a newcomer meets first. The real CLI in subprocesses with a temporary HOME, the real converter on a local
random-weight checkpoint, the real embedded store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from clipindex.cli.commands import cli

REPO = Path(__file__).resolve().parent.parent
#: what a user's shell may set that would point the commands elsewhere than the temporary HOME
USER_VARS = ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "CLIPINDEX_CACHE_DIR")


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_") and k not in USER_VARS}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def clipindex(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def photo_tree(folder: Path, sample_photos: dict[str, Image.Image]) -> Path:
    folder.mkdir(parents=True)
    for name, image in sorted(sample_photos.items()):
        image.save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.mark.slow
def test_zero_flag_workflow_from_three_folders(
    tiny_checkpoint: Path, sample_photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    """convert, ingest, search and status with no --model-dir (nor any CLIPINDEX_* variable), each from another
    current folder, and search from all three: every command exits 0 and finds the same results."""
    home = tmp_path / "home"
    home.mkdir()
    env = fresh_env(home)
    folders = [tmp_path / name for name in ("one", "two", "three")]
    for folder in folders:
        folder.mkdir()
    photos = photo_tree(tmp_path / "photos", sample_photos)
    default_model = home / ".local" / "share" / "clipindex" / "models" / "default"

    converted = clipindex("convert", tiny_checkpoint, cwd=folders[0], env=env)
    assert converted.returncode == 0, converted.stderr
    assert (default_model / "manifest.json").is_file()
    assert not any(folders[0].iterdir()), "convert wrote into the current folder"
    assert "Next: clipindex ingest /path/to/photos" in converted.stdout

    ingested = clipindex("ingest", os.path.relpath(photos, folders[1]), "--json", cwd=folders[1], env=env)
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["indexed"] == len(sample_photos)

    results = []
    for folder in folders:
        found = clipindex("search", "a red car", "--json", cwd=folder, env=env)
        assert found.returncode == 0, found.stderr
        results.append([(r["path"], round(r["score"], 6)) for r in json.loads(found.stdout)])
    assert results[0] == results[1] == results[2] and len(results[0]) == len(sample_photos)

    status = clipindex("status", "--json", cwd=folders[2], env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["model_dir"] == str(default_model) and report["model_mismatch"] is False
    assert report["points"] == len(sample_photos)
    assert report["last_ingest"]["model_dir"] == str(default_model)
    assert (
        report["last_ingest"]["vision_sha256"]
        == json.loads((default_model / "manifest.json").read_text())["files"]["vision.onnx"]["sha256"]
    )
    for folder in folders:
        assert not any(folder.iterdir()), f"{folder}: a command wrote into the current folder"


def test_search_finds_the_collections_model_from_anywhere(
    tiny_model_dir: Path, sample_photos: dict[str, Image.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection built with an explicit --model-dir: search and status in another folder, without it, use that
    model (recorded by the ingest); an explicit CLIPINDEX_MODEL_DIR still wins."""
    photos = photo_tree(tmp_path / "photos", sample_photos)
    data = tmp_path / "data"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in USER_VARS[:3]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CLIPINDEX_MODEL_DIR", raising=False)
    runner = CliRunner()
    ingested = runner.invoke(cli, ["ingest", str(photos), "--model-dir", str(tiny_model_dir), "--data-dir", str(data)])
    assert ingested.exit_code == 0, ingested.output
    monkeypatch.chdir(tmp_path)
    found = runner.invoke(cli, ["search", "a cat", "--data-dir", str(data), "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)) == len(sample_photos)
    status = runner.invoke(cli, ["status", "--data-dir", str(data), "--json"])
    assert json.loads(status.stdout)["model_dir"] == str(tiny_model_dir)
    assert json.loads(status.stdout)["model_dir_from"] == "the collection"
    text = runner.invoke(cli, ["status", "--data-dir", str(data)]).stdout
    assert f"{tiny_model_dir}  (from the collection)" in text
    wrong = runner.invoke(cli, ["search", "a cat", "--data-dir", str(data)], env={"CLIPINDEX_MODEL_DIR": "nowhere"})
    assert wrong.exit_code == 1 and "nowhere" in wrong.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_mistyped_model_dir_exits_non_zero_and_creates_nothing(
    how: str, tiny_checkpoint: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    """With CLIPINDEX_SOURCE_MODEL set, a mistyped --model-dir (or CLIPINDEX_MODEL_DIR) is never converted into:
    one line naming the command that would create it, and no folder, model or store appears."""
    photos = photo_tree(tmp_path / "photos", dict(list(sample_photos.items())[:1]))
    typo = tmp_path / "x" / "modles" / "typo"
    env = {"CLIPINDEX_SOURCE_MODEL": str(tiny_checkpoint), "HOME": str(tmp_path / "home")}
    args = ["ingest", str(photos), "--data-dir", str(tmp_path / "data")]
    if how == "flag":
        args += ["--model-dir", str(typo)]
    else:
        env["CLIPINDEX_MODEL_DIR"] = str(typo)
    result = CliRunner(env=env).invoke(cli, args)
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"clipindex convert --output {typo}" in line and str(typo) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.slow
def test_first_run_offline_names_the_two_ways_forward(tmp_path: Path) -> None:
    """No model and no hub: the error, then one line per way forward (a local checkpoint; a random-weight
    trial, said to rank meaninglessly); nothing is left in the default model folder."""
    home = tmp_path / "home"
    home.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32), (200, 20, 20)).save(photos / "red.png")
    result = clipindex("ingest", photos, cwd=tmp_path, env=fresh_env(home))
    assert result.returncode == 1
    all_lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(all_lines) if line.startswith("Error: ")]
    assert errors, result.stderr
    lines = all_lines[errors[0] :]
    assert len(lines) == 3, result.stderr
    assert lines[0].startswith("Error: ") and "openai/clip-vit-base-patch32" in lines[0]
    assert "--source-model" in lines[1] and "CLIPINDEX_SOURCE_MODEL" in lines[1]
    assert "python -m clipindex.convert.checkpoint" in lines[2] and "meaningless" in lines[2]
    assert not (home / ".local" / "share" / "clipindex" / "models" / "default").exists()
    assert not (home / ".local" / "share" / "clipindex" / "images").exists()


def test_ingest_of_a_missing_folder_or_a_file_is_a_usage_error(tmp_path: Path) -> None:
    """Exit 2 at once: no model is looked for or converted, no store created; a file gets its folder suggested."""
    env = {"HOME": str(tmp_path / "home"), "CLIPINDEX_SOURCE_MODEL": str(tmp_path / "no-checkpoint")}
    data = tmp_path / "data"
    missing = CliRunner(env=env).invoke(cli, ["ingest", str(tmp_path / "nope"), "--data-dir", str(data)])
    assert missing.exit_code == 2 and "no such folder" in missing.stderr
    photo = tmp_path / "pics" / "one.jpg"
    photo.parent.mkdir()
    Image.new("RGB", (8, 8)).save(photo)
    a_file = CliRunner(env=env).invoke(cli, ["ingest", str(photo), "--data-dir", str(data)])
    assert a_file.exit_code == 2 and f"clipindex ingest {photo.parent}" in a_file.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pics"]


@pytest.mark.slow
def test_missing_int8_files_hint_is_a_command_that_works(
    tiny_checkpoint: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    """A model converted without --quantize: `--precision int8` names one complete command; run as printed (from
    another folder), it writes the int8 files and the same ingest then works."""
    from clipindex.convert.api import convert_model

    model = tmp_path / "model"
    convert_model(str(tiny_checkpoint), model)
    photos = photo_tree(tmp_path / "photos", dict(list(sample_photos.items())[:2]))
    args = ["ingest", str(photos), "--model-dir", str(model), "--data-dir", str(tmp_path / "d"), "--precision", "int8"]
    env = fresh_env(tmp_path / "home")
    first = clipindex(*args, cwd=tmp_path, env=env)
    assert first.returncode == 1
    hint = first.stderr.split("`")[1]
    assert hint.startswith("clipindex convert ") and "--quantize int8" in hint
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    converted = subprocess.run(
        [sys.executable, "-m", "clipindex", *hint.split()[1:]], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert converted.returncode == 0, converted.stderr
    again = clipindex(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "indexed 2" in again.stdout
    shutil.rmtree(model)


@pytest.mark.slow
def test_ctrl_c_during_convert_says_nothing_was_written(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGINT in the middle of a conversion: convert's own message (not ingest's "finished batches are kept"),
    exit 130, and no model folder."""
    import signal
    import time

    out = tmp_path / "model"
    child = subprocess.Popen(
        [sys.executable, "-m", "clipindex", "convert", str(tiny_checkpoint), "--output", str(out)],
        env=fresh_env(tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "[2/5]" not in seen and time.monotonic() < deadline:  # interrupted while exporting
        line = child.stderr.readline()
        if not line:
            break
        seen += line
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=120)
    assert child.returncode == 130, seen + rest
    assert "nothing was written" in rest and "finished batches" not in rest
    assert not out.exists()


def test_optimised_model_cache_has_one_entry_per_model_content_and_status_shows_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three copies of one model folder share one cache entry per tower (each copy is checked once against the
    manifest's sha256, then trusted); `status` reports the cache's size."""
    from clipindex.model.encode import Embedder

    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPINDEX_CACHE_DIR", str(cache))
    vectors = []
    for i in range(3):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(tiny_model_dir, copy)
        vectors.append(Embedder(copy).encode_text("a red car"))
    assert all((v == vectors[0]).all() for v in vectors)
    entries = sorted((cache / "ort").iterdir())
    assert len(entries) == 1, entries  # the text tower of three copies
    assert len((entries[0] / "sources").read_text().splitlines()) == 3
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    result = CliRunner().invoke(cli, ["status", "--data-dir", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_cache"] == {"dir": str(cache), "bytes": size}


@pytest.mark.slow
def test_readme_first_lines_run_offline_in_a_fresh_home(tmp_path: Path) -> None:
    """The README's offline trial line, run as written by bash from the checkout (./images), in a fresh HOME,
    then a search from another folder with no flags."""
    if shutil.which("clipindex") is None:
        pytest.skip("the clipindex script is not installed")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    head = readme.split("\n## A model: real weights, or a trial\n", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    (trial,) = [line for line in head.splitlines() if line.startswith("python -m clipindex.convert.checkpoint")]
    assert "meaningless" in head.split(trial)[0].splitlines()[-1]  # said right above the command
    from clipindex.convert.errors import SourceUnavailableError

    hints = SourceUnavailableError("offline").hints
    assert any(f"`{trial}`" in hint for hint in hints), "the offline error suggests the README's own trial recipe"
    (real,) = [line for line in head.splitlines() if line.startswith("CLIPINDEX_SOURCE_MODEL=/path/to/checkpoint")]
    assert any("CLIPINDEX_SOURCE_MODEL=/path/to/checkpoint" in hint for hint in hints), real
    trial = trial.replace("/tmp/clip-trial", str(tmp_path / "clip-trial"))
    env = fresh_env(tmp_path / "home")
    ran = subprocess.run(["bash", "-c", trial], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "indexed 8" in ran.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = clipindex("search", "a red car", "--json", cwd=elsewhere, env=env)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 8


def test_search_before_any_model_says_what_makes_one(tmp_path: Path) -> None:
    """A fresh user's first `clipindex search`: one line naming the commands that make a model; nothing created."""
    result = CliRunner(env={"XDG_DATA_HOME": str(tmp_path / "xdg")}).invoke(
        cli, ["search", "a cat", "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "clipindex ingest DIR" in line and "clipindex convert" in line
    assert not any(tmp_path.iterdir())


def _wait_for(predicate: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_first_ingest_leaves_a_collection_that_knows_its_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The model is recorded when the collection is created: after a first ``ingest --model-dir`` is SIGKILLed
    mid-run (and with ``last_ingest.json`` corrupt), ``search`` and ``status`` with no flag find that model; a
    second ingest meets the lock before any model work: exit 75 at once, even with a source model to convert."""
    import numpy as np

    home = tmp_path / "home"
    home.mkdir()
    env = fresh_env(home)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(5)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / f"p{i:03d}.png")
    collection = home / ".local" / "share" / "clipindex" / "images"
    progress = collection / "ingest.progress.json"

    def batches_done(n: int) -> bool:
        try:
            return int(json.loads(progress.read_text()).get("done") or 0) >= n
        except (OSError, ValueError):
            return False

    first = subprocess.Popen(
        [sys.executable, "-m", "clipindex", "ingest", photos, "--model-dir", tiny_model_dir, "--batch-size", "5"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: batches_done(20))
        # while it runs: a second ingest, with a source model that does not exist, is refused at once
        started = time.monotonic()
        second = clipindex("ingest", photos, cwd=tmp_path, env=dict(env, CLIPINDEX_SOURCE_MODEL=str(tmp_path / "none")))
        assert second.returncode == 75, second.stderr
        assert time.monotonic() - started < 20
        assert "another ingest is running" in second.stderr and "converting" not in second.stderr
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert not (collection / "last_ingest.json").exists()  # it never finished
    dead = clipindex("status", cwd=tmp_path, env=env)
    (row,) = [line for line in dead.stdout.splitlines() if line.startswith("ingest")]
    assert "interrupted (killed)" in row and "ETA" not in row and "img/s" not in row, row

    for summary in (None, "{ corrupt"):
        if summary is not None:
            (collection / "last_ingest.json").write_text(summary)
        found = clipindex("search", "a photo", "--json", cwd=tmp_path, env=env)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)
        status = clipindex("status", "--json", cwd=tmp_path, env=env)
        data = json.loads(status.stdout)
        assert data["model_dir"] == str(tiny_model_dir) and data["model_dir_from"] == "the collection"
    record = json.loads((collection / "collection.json").read_text())["model_record"]
    assert record["model_dir"] == str(tiny_model_dir) and record["embedding_dim"] == 512
    assert len(record["vision_sha256"]) == 64


def test_a_source_model_ignored_because_a_model_exists_gets_one_notice(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The README's trial, then its real-weights line: the trial model stays (the collection is built with it),
    and one notice line says so and names the way to switch."""
    home = tmp_path / "home"
    default = home / ".local" / "share" / "clipindex" / "models" / "default"
    shutil.copytree(tiny_model_dir, default)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (30, 20), (5, 6, 7)).save(photos / "a.png")
    env = fresh_env(home)
    assert clipindex("ingest", photos, "-q", cwd=tmp_path, env=env).returncode == 0
    again = clipindex("ingest", photos, cwd=tmp_path, env=dict(env, CLIPINDEX_SOURCE_MODEL="/real/checkpoint"))
    assert again.returncode == 0, again.stderr
    (notice,) = [line for line in again.stderr.splitlines() if line.startswith("notice:")]
    assert "/real/checkpoint is not converted" in notice and "--reembed" in notice
    plain = clipindex("ingest", photos, cwd=tmp_path, env=env)
    assert "notice:" not in plain.stderr


def test_the_trial_checkpoint_tool_says_its_default_and_prints_only_its_folder(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "clipindex.convert.checkpoint"]
    helped = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "default: tiny" in helped.stdout
    out = tmp_path / "trial"
    written = subprocess.run([*command, str(out)], capture_output=True, text=True, timeout=300)
    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == str(out) and written.stderr == ""
