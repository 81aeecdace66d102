"""`clipindex ingest`: real photos, the tiny exported model, the real Qdrant Edge engine, the real CLI."""

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

import numpy as np
import pytest
from click.testing import CliRunner
from hostile import make_hostile_files
from PIL import Image, ImageOps
from reference import cosine_rows, image_features
from stored import stored_points, stored_vectors

from clipindex.cli.commands import cli
from clipindex.errors import CountMismatchError
from clipindex.ingest.pipeline import IngestOptions, ingest
from clipindex.ingest.points import point_id
from clipindex.lock import IngestLock
from clipindex.model.encode import Embedder
from clipindex.store.base import Point
from clipindex.store.edge import EdgeStore

COLLECTION = "images"


def write_photos(folder: Path, photos: dict[str, Image.Image], *, nested: bool = True) -> list[Path]:
    """Save the sample photos as JPEG and PNG, some in sub-folders."""
    paths = []
    for i, (name, image) in enumerate(sorted(photos.items())):
        sub = folder / ("2024" if nested and i % 2 else "") / ("trip" if nested and i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / (f"{name}.jpg" if i % 2 == 0 else f"{name}.png")
        image.save(path, quality=92) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def run_cli(*args: str | Path) -> Any:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def ingest_json(root: Path, model_dir: Path, data_dir: Path, *extra: str) -> dict[str, Any]:
    result = run_cli("ingest", root, "--model-dir", model_dir, "--data-dir", data_dir, "--json", *extra)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    data: dict[str, Any] = json.loads(lines[0])
    return data


@pytest.fixture
def photo_dir(tmp_path: Path, sample_photos: dict[str, Image.Image]) -> Path:
    root = tmp_path / "photos"
    write_photos(root, sample_photos)
    return root


def test_ingest_json_then_rerun_is_a_noop(photo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ingest_json(photo_dir, tiny_model_dir, data_dir)
    assert set(first) >= {"indexed", "unchanged", "failed", "removed", "points", "seconds"}
    assert first["indexed"] == 6 and first["points"] == 6 and first["failed"] == [] and first["unchanged"] == 0
    payloads = stored_points(data_dir)
    for path in photo_dir.rglob("*.*"):
        payload = payloads[point_id(str(path))]
        assert payload["path"] == str(path.absolute())
        assert payload["size"] == path.stat().st_size and payload["mtime_ns"] == path.stat().st_mtime_ns
        with Image.open(path) as img:
            assert (payload["width"], payload["height"], payload["format"]) == (img.width, img.height, img.format)
        assert len(payload["sha256"]) == 64 and payload["model"] == tiny_model_dir.name
        assert {"mtime", "indexed_at"} <= set(payload)

    second = ingest_json(photo_dir, tiny_model_dir, data_dir)
    assert second["indexed"] == 0 and second["unchanged"] == 6 and second["points"] == 6
    assert stored_points(data_dir) == payloads  # nothing rewritten, not even indexed_at


def test_stored_vectors_equal_transformers(tmp_path: Path, tiny_model_dir: Path, torch_clip, sample_photos) -> None:  # type: ignore[no-untyped-def]
    """Every kind of image the runtime meets, against CLIPModel.get_image_features on the expected RGB image."""
    model, _, processor = torch_clip
    root = tmp_path / "kinds"
    root.mkdir()
    astronaut, chelsea = sample_photos["astronaut"], sample_photos["chelsea"]
    coffee, rocket = sample_photos["coffee"], sample_photos["rocket"]
    expected: dict[str, Image.Image] = {}

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    chelsea.save(root / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(root / "exif_rotated.jpg") as img:
        expected["exif_rotated.jpg"] = ImageOps.exif_transpose(img).convert("RGB")

    coffee.convert("L").save(root / "grey.png")
    expected["grey.png"] = coffee.convert("L").convert("RGB")

    rocket.convert("CMYK").save(root / "cmyk.jpg", quality=95)
    with Image.open(root / "cmyk.jpg") as img:
        expected["cmyk.jpg"] = img.convert("RGB")

    palette = chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(root / "palette.png")
    expected["palette.png"] = palette.convert("RGB")

    rgba = astronaut.convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, np.uint8)
    alpha[:, : rgba.width // 3] = 0  # a transparent band: composited onto white, like transformers
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "alpha.png")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    expected["alpha.png"] = Image.alpha_composite(white, rgba).convert("RGB")

    grey16 = (np.asarray(coffee.convert("L"), dtype=np.uint32) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(root / "sixteen_bit.png")
    expected["sixteen_bit.png"] = coffee.convert("L").convert("RGB")

    frames = [rocket.resize((200, 133)), chelsea.resize((200, 133))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(root / "animated.gif") as img:
        img.seek(0)
        expected["animated.gif"] = img.convert("RGB")

    tiny = astronaut.resize((40, 30))
    tiny.save(root / "smaller_than_crop.png")
    expected["smaller_than_crop.png"] = tiny

    data_dir = tmp_path / "data"
    report = ingest_json(root, tiny_model_dir, data_dir)
    assert report["failed"] == [] and report["indexed"] == len(expected)
    names = sorted(expected)
    ids = [point_id(str(root / name)) for name in names]
    vectors = stored_vectors(data_dir, ids)
    got = np.stack([vectors[i] for i in ids])
    reference = image_features(model, processor, [expected[n] for n in names])
    cosines = cosine_rows(got, reference)
    assert cosines.min() >= 0.9999, dict(zip(names, cosines.round(6), strict=True))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_hostile_files_are_reported_and_the_run_completes(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image]
) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    outcomes = make_hostile_files(root)
    # a folder named folder.jpg is walked into, not reported
    errors = {name for name, outcome in outcomes.items() if outcome == "error"} - {"folder.jpg"}
    assert len(errors) >= 20
    sample_photos["rocket"].save(root / "good.jpg")
    (root / "bad\nname\x1b]0;pwned\x07\x1b[2J.jpg").write_bytes(b"not an image")  # a hostile name, too
    errors.add("bad\nname\x1b]0;pwned\x07\x1b[2J.jpg")
    result = run_cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", tmp_path / "d", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    failed_names = {Path(f["path"]).name for f in report["failed"]}
    assert errors <= failed_names, errors - failed_names
    assert all(f["reason"] for f in report["failed"])
    # one stderr line per bad file, naming it
    stderr_lines = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(stderr_lines) == len(report["failed"])
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr  # escapes shown, never sent raw
    assert [line for line in stderr_lines if "bad\\x0aname\\x1b]0;pwned\\x07\\x1b[2J.jpg: " in line]
    ok = {name for name, outcome in outcomes.items() if outcome == "ok"} | {"good.jpg"}
    assert report["indexed"] == len(ok) and report["points"] == len(ok)

    strict = run_cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", tmp_path / "d", "--strict", "-q")
    assert strict.exit_code == 1 and "--strict" in strict.stderr


def test_changed_renamed_deleted_and_prune_only_under_dir(
    photo_dir: Path, tiny_model_dir: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    data_dir = tmp_path / "data"
    other = tmp_path / "other"
    other.mkdir()
    sample_photos["flower"].save(other / "outside.jpg")
    ingest_json(other, tiny_model_dir, data_dir)
    ingest_json(photo_dir, tiny_model_dir, data_dir)
    before = stored_points(data_dir)

    files = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    changed, renamed, deleted = files[0], files[1], files[2]
    sample_photos["flower"].save(changed, format=Image.open(changed).format)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    new_name = renamed.with_name("renamed" + renamed.suffix)
    renamed.rename(new_name)
    deleted.unlink()
    duplicate = photo_dir / "copy_of_changed" / changed.name
    duplicate.parent.mkdir()
    shutil.copy2(changed, duplicate)

    report = ingest_json(photo_dir, tiny_model_dir, data_dir, "--prune")
    # changed (embedded), renamed (vector reused), duplicate of changed (reused within the batch)
    assert report["indexed"] == 3 and report["reused"] == 2
    assert report["removed"] == 2  # the renamed file's old path and the deleted file
    after = stored_points(data_dir)
    assert after[point_id(str(changed))]["sha256"] != before[point_id(str(changed))]["sha256"]
    assert point_id(str(renamed)) not in after and point_id(str(deleted)) not in after
    assert after[point_id(str(new_name))]["sha256"] == before[point_id(str(renamed))]["sha256"]
    assert point_id(str(other / "outside.jpg")) in after, "prune must not touch points outside DIR"
    vectors = stored_vectors(data_dir, [point_id(str(duplicate)), point_id(str(changed))])
    np.testing.assert_allclose(vectors[point_id(str(duplicate))], vectors[point_id(str(changed))], atol=1e-6)
    assert report["points"] == len(after) == 1 + sum(1 for p in photo_dir.rglob("*") if p.is_file())

    # without --prune a deleted file's point stays
    (photo_dir / "copy_of_changed" / changed.name).unlink()
    report = ingest_json(photo_dir, tiny_model_dir, data_dir)
    assert report["removed"] == 0 and point_id(str(duplicate)) in stored_points(data_dir)


def test_concurrent_ingest_is_refused(photo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = EdgeStore(data_dir, COLLECTION)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom clipindex.lock import IngestLock\n"
            f"lock = IngestLock(Path({str(store.lock_path)!r}), 'test')\nlock.acquire()\nprint('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = run_cli("ingest", photo_dir, "--model-dir", tiny_model_dir, "--data-dir", data_dir)
        assert result.exit_code == 75
        assert "another ingest is running" in result.stderr and str(holder.pid) in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the killed holder's lock: no stale lock
    with IngestLock(store.lock_path, "test"):
        pass


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_exact_index(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image]
) -> None:
    root = tmp_path / "many"
    root.mkdir()
    base = [img.resize((160, 120)) for img in sample_photos.values()]
    for i in range(300):
        img = base[i % len(base)].rotate(i, expand=False).resize((640, 480))
        img.save(root / f"img_{i:04d}.jpg", quality=85)
    data_dir = tmp_path / "data"
    cmd = [
        sys.executable,
        "-m",
        "clipindex",
        "ingest",
        str(root),
        "--model-dir",
        str(tiny_model_dir),
        "--data-dir",
        str(data_dir),
        "--batch-size",
        "10",
        "--quiet",
    ]
    # time one whole run on a scratch store, then kill real runs at fractions of that time
    started = time.monotonic()
    subprocess.run([*cmd[:7], "--data-dir", str(tmp_path / "scratch"), "--batch-size", "10", "-q"], check=True)
    full_run_s = time.monotonic() - started
    partial_counts = []
    for fraction in (0.35, 0.55, 0.75):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full_run_s * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial_counts.append(len(stored_points(data_dir)))
    assert any(0 < count < 300 for count in partial_counts), f"no kill landed mid-run: {partial_counts}"
    final = subprocess.run([*cmd[:-1], "--json"], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(final.stdout)
    assert report["points"] == 300 and report["failed"] == []
    payloads = stored_points(data_dir)
    assert sorted(p["path"] for p in payloads.values()) == sorted(str(p) for p in root.iterdir())
    assert set(payloads) == {point_id(str(p)) for p in root.iterdir()}


class PlantingStore(EdgeStore):
    """The real embedded store, plus a foreign point written behind the ingest's back after its first batch."""

    planted = False

    def upsert(self, points: Any) -> None:
        super().upsert(points)
        if not self.planted:
            self.planted = True
            foreign = np.zeros(points[0].vector.shape, np.float32)
            foreign[0] = 1.0
            super().upsert([Point("00000000-0000-4000-8000-000000000001", foreign, {"path": "/elsewhere/x.jpg"})])


def test_count_verification_catches_a_planted_mismatch(photo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    store = PlantingStore(tmp_path / "data", COLLECTION)
    with store, pytest.raises(CountMismatchError, match="expected"):
        ingest(photo_dir, Embedder(tiny_model_dir), store, options=IngestOptions(batch_size=2))


def test_model_mismatch_is_refused_before_writing(photo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ingest_json(photo_dir, tiny_model_dir, data_dir)
    other_model = tmp_path / "another-model"
    shutil.copytree(tiny_model_dir, other_model)
    manifest = json.loads((other_model / "manifest.json").read_text())
    manifest["model_name"] = "another-model"
    (other_model / "manifest.json").write_text(json.dumps(manifest))
    before = stored_points(data_dir)
    (photo_dir / "new.png").write_bytes(next(photo_dir.rglob("*.png")).read_bytes())
    result = run_cli("ingest", photo_dir, "--model-dir", other_model, "--data-dir", data_dir)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "another-model" in errors[0] and "--collection" in errors[0]
    assert stored_points(data_dir) == before


def test_missing_model_and_missing_dir_are_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = run_cli("ingest", tmp_path, "--model-dir", tmp_path / "nope", "--data-dir", tmp_path / "d")
    assert result.exit_code == 1 and "clipindex convert" in result.stderr and "Traceback" not in result.output
    result = run_cli("ingest", tmp_path / "missing", "--model-dir", tiny_model_dir, "--data-dir", tmp_path / "d")
    assert result.exit_code == 2 and "missing" in result.stderr  # a usage error, before anything is created
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_python_dash_m_indexer_runs_ingest_without_torch(photo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['clipindex', 'ingest', sys.argv[1], '--model-dir', sys.argv[2], '--data-dir', sys.argv[3], '-q']\n"
        "try:\n    runpy.run_module('clipindex', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'qdrant_client') if m in sys.modules]\n"
        "assert not heavy, heavy\nprint('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(photo_dir), str(tiny_model_dir), str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


@pytest.mark.slow
def test_ingest_converts_the_model_first_when_missing(photo_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The README's one-command start: no model yet, CLIPINDEX_SOURCE_MODEL names a local checkpoint; the model
    goes to the per-user default folder (the only one ingest converts into)."""
    model_dir = tmp_path / "xdg" / "clipindex" / "models" / "default"
    env = {"CLIPINDEX_SOURCE_MODEL": str(tiny_checkpoint), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    result = CliRunner(env=env).invoke(cli, ["ingest", str(photo_dir), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "converting" in result.stderr and (model_dir / "manifest.json").is_file()
    assert "indexed 6" in result.stdout


def test_model_dir_that_exists_without_a_model(photo_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A named folder is never converted into, empty or not: the one-line error names a fix that works (not
    `--force`, which ingest does not have), and the folder is left as it was."""
    runner = CliRunner(env={"CLIPINDEX_SOURCE_MODEL": str(tiny_checkpoint)})
    empty = tmp_path / "empty-model"
    empty.mkdir()
    args = ["ingest", str(photo_dir), "--data-dir", str(tmp_path / "d")]
    result = runner.invoke(cli, [*args, "--model-dir", str(empty)])
    assert result.exit_code == 1, result.output
    assert f"clipindex convert --output {empty}" in result.stderr and not any(empty.iterdir())
    busy = tmp_path / "busy-model"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = runner.invoke(cli, [*args, "--model-dir", str(busy)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "busy-model: not a converted model folder" in line and "--force" not in line
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_noop_rerun_never_loads_the_vision_model(photo_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        ingest(photo_dir, Embedder(tiny_model_dir), store)
    embedder = Embedder(tiny_model_dir)
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        report = ingest(photo_dir, embedder, store)
    assert report.unchanged == 6 and report.indexed == 0
    assert embedder._towers == {}, "an unchanged tree must cost stat() calls, not a model load"


@pytest.mark.slow
def test_ingest_seals_segments_as_it_goes_and_search_stays_exact(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded store's maintenance (EdgeStore.optimize at every flush) runs mid-ingest: every batch is still
    verified, sealed segments are memory-mapped with no HNSW graph, and search stays exact brute force."""
    import clipindex.store.edge as edge

    monkeypatch.setattr(edge, "INDEXING_THRESHOLD_KB", 1)  # seal from the first point on (2 KB a 512-d vector)
    monkeypatch.setattr(edge, "MAX_SEGMENT_KB", 40)  # segments of at most ~20 points: merges happen too
    root = tmp_path / "photos"
    photos = list(sample_photos.values())
    for i in range(90):  # distinct real crops of the sample photos
        image = photos[i % len(photos)].convert("RGB")
        x, y = (i * 7) % max(1, image.width - 96), (i * 11) % max(1, image.height - 96)
        folder = root / f"{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image.crop((x, y, x + 96, y + 96)).save(folder / f"{i:03d}.jpg", quality=90)
    data_dir = tmp_path / "data"
    options = IngestOptions(batch_size=10, flush_interval_s=0.0, prune=True)
    with EdgeStore(data_dir, COLLECTION) as store:
        report = ingest(root, Embedder(tiny_model_dir), store, options=options)
    assert (report.indexed, report.points, report.failed) == (90, 90, [])

    segments = [
        json.loads(p.read_text()) for p in (data_dir / COLLECTION / "shard" / "segments").glob("*/segment.json")
    ]
    sealed = [s for s in segments if s["config"]["vector_data"][""]["storage_type"] == "Mmap"]
    assert len(sealed) >= 2  # sealed more than once during the run
    for segment in sealed:
        assert segment["config"]["vector_data"][""]["index"]["options"]["m"] == 0  # no HNSW graph
        assert segment["config"]["id_tracker_memory"] == "cold"

    for path in sorted(root.rglob("*.jpg"))[::3]:  # a third of the files go, and are pruned
        path.unlink()
    with EdgeStore(data_dir, COLLECTION) as store:
        again = ingest(root, Embedder(tiny_model_dir), store, options=options)
        assert (again.indexed, again.unchanged, again.removed, again.points) == (0, 60, 30, 60)
        payloads = dict(store.iter_payloads(["path"]))
        vectors = store.get_vectors(list(payloads))
        assert len(vectors) == 60 and store.count(exact=True) == 60
        ids = list(vectors)
        matrix = np.stack([vectors[i] for i in ids])
        for probe in ids[:5]:  # exact brute force: the engine's top 10 is numpy's top 10
            scores = dict(zip(ids, (matrix @ vectors[probe]).tolist(), strict=True))
            hits = store.search(vectors[probe], limit=10)
            assert hits[0].id == probe
            for hit in hits:  # each hit carries its true score...
                assert hit.score == pytest.approx(scores[hit.id], abs=1e-5)
            # ...and they are the 10 best (ties aside, the same scores as numpy's top 10)
            np.testing.assert_allclose([h.score for h in hits], sorted(scores.values())[::-1][:10], atol=1e-5)
        under = store.search(vectors[ids[0]], limit=100, path_prefix=str(root / "1"))
        assert under and all(h.payload["path"].startswith(str(root / "1") + "/") for h in under)
        assert len(under) == sum(1 for p in payloads.values() if p["path"].startswith(str(root / "1") + "/"))


def test_rerun_on_a_large_store_releases_its_pages_before_embedding(
    photo_dir: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    sample_photos: dict[str, Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With new images to embed and a large index read (here: any), ingest reopens the embedded store to give back
    the pages the read left mapped; the run goes on on the reopened shard and every batch is still verified."""
    import clipindex.ingest.pipeline as pipeline

    data_dir = tmp_path / "data"
    with EdgeStore(data_dir, COLLECTION) as store:
        ingest(photo_dir, Embedder(tiny_model_dir), store)
    monkeypatch.setattr(pipeline, "RELEASE_MEMORY_POINTS", 1)
    sample_photos["chelsea"].rotate(90, expand=True).save(photo_dir / "new-rotated.jpg", quality=90)
    sample_photos["coffee"].crop((0, 0, 200, 150)).save(photo_dir / "new-crop.png")
    with EdgeStore(data_dir, COLLECTION) as store:
        store.collection_info()
        opened = store._shard
        embedder = Embedder(tiny_model_dir)
        report = ingest(photo_dir, embedder, store)
        assert (report.indexed, report.unchanged, report.points) == (2, 6, 8)
        assert store._shard is not None and store._shard is not opened  # reopened, and written through
        assert store.count(exact=True) == 8
    points = stored_points(data_dir)
    assert {p["path"] for p in points.values()} == {str(p) for p in photo_dir.rglob("*") if p.is_file()}
    new = photo_dir / "new-rotated.jpg"
    expected = embedder.encode_images([new])[0]
    np.testing.assert_allclose(stored_vectors(data_dir, [point_id(str(new))])[point_id(str(new))], expected, atol=1e-5)

    with EdgeStore(data_dir, COLLECTION) as store:  # nothing new: no release, no model load
        embedder = Embedder(tiny_model_dir)
        assert ingest(photo_dir, embedder, store).unchanged == 8
        assert embedder._towers == {}


def test_a_vanished_stored_vector_is_encoded_once_and_an_unreadable_copy_fails_cleanly(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Decode threads hash a batch ahead of its write; the stored point whose vector a file was to reuse can be
    deleted meanwhile (the previous batch found its file unreadable). The file is then decoded after all and indexed
    once, its copy in the batch reuses that vector; a file whose full decode fails then fails with its copies, and
    the batch goes on."""
    import hashlib

    from clipindex.ingest.pipeline import _Ingest, _Pending

    embedder = Embedder(tiny_model_dir)
    root = tmp_path / "photos"
    root.mkdir()
    good = (Path(__file__).resolve().parent.parent / "images" / "chelsea.jpg").read_bytes()
    truncated = good[: len(good) // 2]  # its header reads fine; its full decode fails
    for name, data in (("a.jpg", good), ("b.jpg", good), ("t1.jpg", truncated), ("t2.jpg", truncated)):
        (root / name).write_bytes(data)
    store = EdgeStore(tmp_path / "data", "images")
    store.ensure_collection(embedder.dimension, embedder.model_name)
    run = _Ingest(root, embedder, store, IngestOptions(), None, None)
    gone = point_id(str(tmp_path / "deleted.jpg"))  # known content, but its point is no longer stored
    for data in (good, truncated):
        run.hash_to_id[hashlib.sha256(data).digest()] = gone
    names = ("a.jpg", "b.jpg", "t1.jpg", "t2.jpg")
    stats = {n: (root / n).stat() for n in names}
    pending = [_Pending(str(root / n), stats[n].st_size, stats[n].st_mtime_ns, point_id(str(root / n))) for n in names]
    prepared = [run.prepare(p) for p in pending]
    assert all(p.pixels is None and p.reuse_from == gone for p in prepared)  # hashed only: meant to reuse
    run.write_batch(prepared)
    assert run.report.indexed == 2 and run.report.reused == 1  # a encoded once, b copies its vector
    assert sorted(Path(f.path).name for f in run.report.failed) == ["t1.jpg", "t2.jpg"]
    assert store.count(exact=True) == 2
    vectors = store.get_vectors([point_id(str(root / "a.jpg")), point_id(str(root / "b.jpg"))])
    a, b = vectors.values()
    assert np.allclose(a, b) and np.allclose(a, embedder.encode_images([root / "a.jpg"])[0], atol=1e-5)
    store.close()
