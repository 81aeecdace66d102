"""``clipindex duplicates``: groups found on a real store built by the real ingest with the tiny exported model
(planted re-encoded, resized, cropped, byte-identical and renamed copies), equal to a brute-force numpy reference,
also on synthetic 512-d vectors written into an embedded store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner

from clipindex.cli import cli
from clipindex.ops.duplicates import components, find_duplicates, linked
from clipindex.store.edge import EdgeStore

#: threshold for the random-weight tiny model: its planted copies score >= 0.999 with their originals, two
#: different photos at most 0.984
TINY_THRESHOLD = 0.995
ORIGINALS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Path:
    base = tmp_path_factory.mktemp("duplicates")
    photos = base / "photos"
    (photos / "copies").mkdir(parents=True)
    (photos / "other").mkdir()
    for name in ORIGINALS:
        sample_photos[name].save(photos / f"{name}.jpg", quality=95)
    chelsea = sample_photos["chelsea"]
    chelsea.save(photos / "copies" / "chelsea-q60.jpg", quality=60)  # re-encoded
    coffee = sample_photos["coffee"]
    coffee.resize((coffee.width // 2, coffee.height // 2)).save(photos / "copies" / "coffee-half.jpg", quality=95)
    rocket = sample_photos["rocket"]
    w, h = rocket.size
    rocket.crop((w // 40, h // 40, w - w // 40, h - h // 40)).save(photos / "copies" / "rocket-crop.jpg", quality=95)
    shutil.copyfile(photos / "china.jpg", photos / "copies" / "china.jpg")  # byte-identical
    shutil.copyfile(photos / "flower.jpg", photos / "other" / "renamed <b>&'\".jpg")  # renamed, hostile name
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--model-dir", str(tiny_model_dir), "--data-dir", str(base / "data"), "-q"]
    )
    assert result.exit_code == 0, result.output
    return base


def reference_groups(
    paths: list[str], shas: list[str], vectors: npt.NDArray[np.float32], threshold: float
) -> list[list[str]]:
    """Brute force: the full similarity matrix in numpy, components grown by repeated merging of sets."""
    scores = vectors @ vectors.T
    n = len(paths)
    sets: list[set[int]] = [{i} for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if scores[i, j] >= np.float32(threshold) or shas[i] == shas[j]:
                a = next(s for s in sets if i in s)
                b = next(s for s in sets if j in s)
                if a is not b:
                    a |= b
                    sets.remove(b)
    return sorted(sorted(paths[k] for k in s) for s in sets if len(s) > 1)


def stored(data: Path) -> tuple[list[str], list[str], npt.NDArray[np.float32]]:
    store = EdgeStore(data, "images")
    with store:
        store.collection_info()
        payloads = dict(store.iter_payloads(["path", "sha256"]))
        vectors = store.get_vectors(list(payloads))
    ids = sorted(payloads, key=lambda i: payloads[i]["path"])
    return (
        [payloads[i]["path"] for i in ids],
        [payloads[i]["sha256"] for i in ids],
        np.stack([vectors[i] for i in ids]),
    )


def run_cli(indexed: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["duplicates", "--data-dir", str(indexed / "data"), *args])
    assert result.exit_code == 0, result.output
    return result


def names(group: list[str], root: Path) -> list[str]:
    return [str(Path(p).relative_to(root)) for p in group]


def test_planted_copies_group_with_their_originals(indexed: Path) -> None:
    photos = indexed / "photos"
    out = json.loads(run_cli(indexed, "--min-similarity", str(TINY_THRESHOLD), "--json").stdout)
    groups = [[m["path"] for m in g["members"]] for g in out["groups"]]
    assert [names(g, photos) for g in groups] == [
        ["chelsea.jpg", "copies/chelsea-q60.jpg"],
        ["china.jpg", "copies/china.jpg"],
        ["coffee.jpg", "copies/coffee-half.jpg"],
        ["copies/rocket-crop.jpg", "rocket.jpg"],
        ["flower.jpg", "other/renamed <b>&'\".jpg"],
    ]
    kinds = [g["kind"] for g in out["groups"]]
    assert kinds == ["near", "exact", "near", "near", "exact"]
    best = [Path(g["best"]).relative_to(photos).as_posix() for g in out["groups"]]
    # most pixels first (the half-size and cropped copies lose), then oldest mtime, then path
    assert best[2] == "coffee.jpg" and best[3] == "rocket.jpg"
    assert out["scanned"] == 11 and out["min_similarity"] == TINY_THRESHOLD
    paths, shas, vectors = stored(indexed / "data")
    assert groups == reference_groups(paths, shas, vectors, TINY_THRESHOLD)
    # the default threshold (0.99) separates them too
    default = json.loads(run_cli(indexed, "--json").stdout)
    assert [[m["path"] for m in g["members"]] for g in default["groups"]] == groups


@pytest.mark.parametrize("threshold", [0.95, 0.98, 0.9])
def test_groups_equal_the_brute_force_reference_at_lower_thresholds(indexed: Path, threshold: float) -> None:
    store = EdgeStore(indexed / "data", "images")
    with store:
        report = find_duplicates(store, min_similarity=threshold, block=3)  # blocks smaller than the store
    paths, shas, vectors = stored(indexed / "data")
    assert [[m.path for m in g.members] for g in report.groups] == reference_groups(paths, shas, vectors, threshold)


def test_synthetic_512d_store_equals_brute_force(tmp_path: Path) -> None:
    from clipindex.ingest.points import make_payload, point_id
    from clipindex.store.base import Point

    rng = np.random.default_rng(7)
    n, dim = 1500, 512
    base = rng.standard_normal((n, dim)).astype(np.float32)
    base[:, :8] += 6.0  # a shared direction: different photos score ~0.1, not 0
    planted = rng.choice(n, size=120, replace=False)
    for a, b in zip(planted[::2], planted[1::2], strict=True):  # near-copies at various distances
        base[b] = base[a] + rng.uniform(0.02, 0.3) * rng.standard_normal(dim).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    points = []
    for k, vector in enumerate(base):
        path = f"/photos/{k // 500:02d}/IMG_{k:05d}.jpg"
        payload = make_payload(
            path=path,
            size=1000 + k,
            mtime_ns=k,
            sha256=f"{k:064x}",
            width=64,
            height=48,
            image_format="JPEG",
            model="synthetic",
        )
        points.append(Point(point_id(path), vector, payload))
    with EdgeStore(tmp_path / "data", "images") as store:
        store.ensure_collection(dim, "synthetic")
        store.upsert(points)
        store.flush()
    paths, shas, vectors = stored(tmp_path / "data")
    for threshold in (0.9, 0.97, 0.99):
        with EdgeStore(tmp_path / "data", "images") as store:
            report = find_duplicates(store, min_similarity=threshold, block=256)
        expected = reference_groups(paths, shas, vectors, threshold)
        assert [[m.path for m in g.members] for g in report.groups] == expected
        assert expected  # the planted pairs make groups at every threshold
    with EdgeStore(tmp_path / "data", "images") as store:
        folder = find_duplicates(store, min_similarity=0.9, path_prefix="/photos/01")
    assert folder.groups and all(m.path.startswith("/photos/01/") for g in folder.groups for m in g.members)
    for threshold in (0.97, 0.99):  # the cell index (small cells, so that pairs straddle them) finds the same
        with EdgeStore(tmp_path / "data", "images") as store:
            cells = find_duplicates(store, min_similarity=threshold, method="cells", cells=12)
        assert cells.method == "cells" and cells.sampled_recall is not None
        assert cells.sampled_recall.recall == 1.0 and cells.sampled_recall.expected > 0
        assert [[m.path for m in g.members] for g in cells.groups] == reference_groups(paths, shas, vectors, threshold)


def test_print0_lists_the_copies_not_the_best(indexed: Path) -> None:
    photos = indexed / "photos"
    raw = run_cli(indexed, "--print0").stdout_bytes
    assert raw.endswith(b"\0")
    copies = [Path(p.decode()).relative_to(photos).as_posix() for p in raw.split(b"\0")[:-1]]
    assert "coffee-half.jpg" in " ".join(copies) and "rocket-crop.jpg" in " ".join(copies)
    assert "coffee.jpg" not in copies and "rocket.jpg" not in copies
    assert len(copies) == 5  # one copy per group


def test_folder_limits_the_scan(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = indexed / "photos"
    out = json.loads(run_cli(indexed, "--folder", str(photos / "copies"), "--json").stdout)
    assert out["groups"] == [] and out["scanned"] == 4
    monkeypatch.chdir(photos)
    table = run_cli(indexed, "--folder", ".")  # relative to the current directory
    assert "chelsea-q60.jpg" in table.stdout
    none = run_cli(indexed, "--folder", str(photos / "cop"))  # a folder name's prefix is not the folder
    assert "No duplicates among 0 files" in none.output


def test_table_and_determinism(indexed: Path) -> None:
    first = run_cli(indexed)
    second = run_cli(indexed)
    assert first.stdout == second.stdout
    lines = first.stdout.splitlines()
    assert len(lines) == 10 and sum("*" in line.split()[3] for line in lines if len(line.split()) > 3) >= 1
    assert "5 groups, 5 copies among 11 files" in first.output
    assert run_cli(indexed, "--json").stdout == run_cli(indexed, "--json").stdout


def test_html_shows_groups_side_by_side_escaped(indexed: Path, tmp_path: Path) -> None:
    target = tmp_path / "dups.html"
    result = run_cli(indexed, "--html", str(target))
    assert "Wrote" in result.output
    page = target.read_text(encoding="utf-8")
    assert page.count('<section class="group">') == 5
    assert page.count('class="card best"') == 5
    assert "renamed <b>" not in page and "renamed &lt;b&gt;&amp;&#x27;&quot;.jpg" in page
    assert page.count("data:image/jpeg;base64,") == 10


def test_usage_errors(indexed: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(indexed / "data")]
    assert runner.invoke(cli, ["duplicates", *data, "--min-similarity", "2"]).exit_code == 2
    assert runner.invoke(cli, ["duplicates", *data, "--folder", ""]).exit_code == 2
    assert runner.invoke(cli, ["duplicates", *data, "--json", "--print0"]).exit_code == 2
    empty = runner.invoke(cli, ["duplicates", "--data-dir", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "nothing is indexed" in empty.output


def test_rule_and_components() -> None:
    assert linked(0.99, 0.99) and not linked(0.9899, 0.99) and linked(-1.0, 0.99, same_content=True)
    assert components(6, [(4, 5), (0, 2), (2, 3)]) == [[0, 2, 3], [4, 5]]
    assert components(3, []) == []


def test_method_cells_from_the_cli(indexed: Path) -> None:
    exact = json.loads(run_cli(indexed, "--min-similarity", str(TINY_THRESHOLD), "--json").stdout)
    cells = run_cli(indexed, "--min-similarity", str(TINY_THRESHOLD), "--method", "cells", "--json")
    found = json.loads(cells.stdout)
    assert exact["method"] == "exact" and exact["sampled_recall"] is None
    assert found["method"] == "cells" and found["groups"] == exact["groups"]
    # 11 files, of which two byte-identical copies are linked by hash and not compared: 9 vectors sampled
    assert found["sampled_recall"]["sampled"] == 9 and found["sampled_recall"]["recall"] == 1.0
    table = run_cli(indexed, "--min-similarity", str(TINY_THRESHOLD), "--method", "cells")
    assert "Compared by cells: of the" in table.stderr and "(100.00%)" in table.stderr
    bad = CliRunner().invoke(cli, ["duplicates", "--data-dir", str(indexed / "data"), "--method", "faiss"])
    assert bad.exit_code == 2 and "--method" in bad.output


@pytest.mark.slow
def test_a_waiting_process_gets_the_store_during_a_long_scan(tmp_path: Path) -> None:
    """`clipindex duplicates` holds the embedded store for its whole run (seconds at 60k points, minutes at 1M);
    between two pages of its read and two blocks of its comparison it lets a waiting `clipindex status` in."""
    import os
    import subprocess
    import sys
    import time

    from clipindex.ingest.points import make_payload, point_id
    from clipindex.store.base import Point

    rng = np.random.default_rng(11)
    count, dim = 60_000, 512
    data = tmp_path / "data"
    with EdgeStore(data, "images") as store:
        store.ensure_collection(dim, "synthetic")
        for start in range(0, count, 5000):
            vectors = rng.standard_normal((5000, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            points = []
            for k, vector in enumerate(vectors, start=start):
                path = f"/photos/IMG_{k:06d}.jpg"
                payload = make_payload(
                    path=path, size=k, mtime_ns=k, sha256=f"{k:064x}", width=8, height=8,
                    image_format="JPEG", model="synthetic",
                )  # fmt: skip
                points.append(Point(point_id(path), vector, payload))
            store.upsert(points)
        store.optimize()
    env = {**os.environ, "CLIPINDEX_DATA_DIR": str(data)}
    command = [sys.executable, "-m", "clipindex"]
    scan = subprocess.Popen(
        [*command, "duplicates", "--method", "exact", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        time.sleep(3.0)  # imported, and reading or comparing
        assert scan.poll() is None
        started = time.monotonic()
        status = subprocess.run(
            [*command, "status", "--json", "--wait", "4"], env=env, capture_output=True, text=True, timeout=120
        )
        waited = time.monotonic() - started
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["points"] == count
        assert scan.poll() is None, "the scan ended before the test could show anything: make it longer"
        assert waited < 4.0
    finally:
        out, err = scan.communicate(timeout=300)
    assert scan.returncode == 0, err
    assert json.loads(out)["scanned"] == count
