"""`clipindex search` and the search library API: real photos, the tiny exported model, the real Qdrant Edge
engine, the real CLI, checked against transformers' CLIPModel."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from reference import image_features, text_features

from clipindex.cli.commands import cli
from clipindex.display import printable
from clipindex.errors import CollectionMismatchError, NothingIndexedError
from clipindex.ingest.pipeline import ingest
from clipindex.ingest.points import point_id
from clipindex.model.encode import Embedder
from clipindex.ops.search import SearchResult, search_image, search_text, search_vector
from clipindex.store.base import Point
from clipindex.store.edge import EdgeStore

COLLECTION = "images"

#: where each sample photo goes under the indexed root: sub-folders, and a sibling folder ("ab") whose name
#: starts with another's ("a"), so a string-prefix filter would be wrong where a folder filter is right
LAYOUT: dict[str, str] = {
    "astronaut": "a/astronaut.png",
    "chelsea": "a/sub/chelsea.png",
    "china": "a/sub/deeper/china.jpg",
    "coffee": "ab/coffee.png",
    "flower": "ab/flower.jpg",
    "rocket": "rocket.jpg",
}
#: a hostile file name (markup, quotes, a newline), holding the mirrored flower photo
HOSTILE = "x/<img src=x onerror=alert(1)>\n\"'&.png"
QUERIES = ("a photo of a cat", "a rocket on the launch pad", "a cup of coffee", "flowers")


@dataclass(frozen=True)
class Indexed:
    root: Path
    data_dir: Path
    model_dir: Path
    #: name -> absolute path of each file (LAYOUT's names, plus "hostile")
    paths: dict[str, str]
    #: name -> the image as ingest decoded it (RGB)
    images: dict[str, Image.Image]


def build_photo_tree(root: Path, sample_photos: dict[str, Any]) -> tuple[dict[str, str], dict[str, Image.Image]]:
    paths: dict[str, str] = {}
    images: dict[str, Image.Image] = {}
    files = {name: (rel, sample_photos[name]) for name, rel in LAYOUT.items()}
    files["hostile"] = (HOSTILE, sample_photos["flower"].transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    for name, (rel, image) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            image.save(path, quality=95)
        else:
            image.save(path)
        paths[name] = os.path.abspath(path)
        with Image.open(path) as decoded:
            images[name] = decoded.convert("RGB")
    return paths, images


def make_index(base: Path, model_dir: Path, sample_photos: dict[str, Any]) -> Indexed:
    root = base / "photos"
    paths, images = build_photo_tree(root, sample_photos)
    data_dir = base / "data"
    with EdgeStore(data_dir, COLLECTION) as store:
        report = ingest(root, Embedder(model_dir), store)
    assert report.indexed == len(paths) and not report.failed
    return Indexed(root, data_dir, model_dir, paths, images)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Indexed:
    return make_index(tmp_path_factory.mktemp("search"), tiny_model_dir, sample_photos)


def run_cli(*args: str | Path) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def search_cli(indexed: Indexed, *args: str | Path) -> Any:
    return run_cli("search", *args, "--model-dir", indexed.model_dir, "--data-dir", indexed.data_dir)


def search_json(indexed: Indexed, *args: str | Path) -> list[dict[str, Any]]:
    result = search_cli(indexed, *args, "--json")
    assert result.exit_code == 0, result.output
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


@functools.cache
def cached_embedder(model_dir: Path) -> Embedder:
    return Embedder(model_dir)


def lib_search(indexed: Indexed, query: str, store: EdgeStore | None = None, **options: Any) -> list[dict[str, Any]]:
    """The library call behind the CLI (same results as ``search --json``), without a new model per call, and
    in ``store`` when given (opening a store costs more than a search; close it before running the CLI)."""
    if store is None:
        with EdgeStore(indexed.data_dir, COLLECTION) as own:
            return lib_search(indexed, query, own, **options)
    results = search_text(store, cached_embedder(indexed.model_dir), query, **options)
    return [r.as_json() for r in results]


def stored_vectors(indexed: Indexed) -> dict[str, np.ndarray]:
    """name -> the vector the store holds for that file."""
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        store.collection_info()
        by_id = store.get_vectors([point_id(p) for p in indexed.paths.values()])
    return {name: by_id[point_id(path)] for name, path in indexed.paths.items()}


def assert_one_line_error(result: Any, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return str(lines[0])


# --- ranking equals CLIP's ----------------------------------------------------------------------------------


def test_text_search_scores_equal_transformers(indexed: Indexed, torch_clip) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, processor = torch_clip
    names = sorted(indexed.paths)
    reference_images = image_features(model, processor, [indexed.images[n] for n in names])
    stored = stored_vectors(indexed)
    # what the store holds is transformers' get_image_features (normalised)
    for name, ref in zip(names, reference_images, strict=True):
        assert float(stored[name] @ ref) >= 0.9999, name
    reference_texts = text_features(model, tokenizer, list(QUERIES))
    for i, (query, ref_text) in enumerate(zip(QUERIES, reference_texts, strict=True)):
        # the CLI for one query, the library (what the CLI runs) for the others
        data = search_json(indexed, query, "--limit", "100") if i == 0 else lib_search(indexed, query, limit=100)
        assert [d["rank"] for d in data] == list(range(1, len(names) + 1))
        got = {d["path"]: d["score"] for d in data}
        expected = {indexed.paths[n]: float(v @ ref_text) for n, v in zip(names, reference_images, strict=True)}
        assert set(got) == set(expected)
        for path, score in expected.items():
            assert abs(got[path] - score) <= 1e-3, (query, path, got[path], score)
        assert [d["path"] for d in data] == sorted(expected, key=lambda p: -expected[p]), query


def test_library_text_search_loads_only_the_text_tower(indexed: Indexed) -> None:
    embedder = Embedder(indexed.model_dir)
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        results = search_text(store, embedder, "a photo of a cat", limit=3)
    assert [r.rank for r in results] == [1, 2, 3]
    assert all(isinstance(r, SearchResult) and r.path in indexed.paths.values() for r in results)
    assert set(embedder._towers) == {"text"}
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        by_vector = search_vector(store, embedder.encode_text("a photo of a cat")[0], limit=3)
    assert [(r.path, round(r.score, 6)) for r in by_vector] == [(r.path, round(r.score, 6)) for r in results]


def test_image_query_finds_itself_first(indexed: Indexed) -> None:
    embedder = Embedder(indexed.model_dir)
    for name in ("chelsea", "rocket", "hostile"):
        with EdgeStore(indexed.data_dir, COLLECTION) as store:
            results = search_image(store, embedder, indexed.paths[name], limit=3)
        assert results[0].path == indexed.paths[name]
        assert results[0].score == pytest.approx(1.0, abs=1e-4)
        assert results[1].score < results[0].score
    assert set(embedder._towers) == {"vision"}
    data = search_json(indexed, "--image", indexed.paths["coffee"], "--limit", "2")
    assert data[0]["path"] == indexed.paths["coffee"] and data[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert (data[0]["width"], data[0]["height"]) == indexed.images["coffee"].size


# --- options are exact --------------------------------------------------------------------------------------


def test_limit_is_exact(indexed: Indexed) -> None:
    everything = search_json(indexed, "a rocket", "--limit", "100")
    assert len(everything) == len(indexed.paths)
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        for limit in range(1, len(everything) + 2):
            assert lib_search(indexed, "a rocket", store, limit=limit) == everything[:limit]
    assert search_json(indexed, "a rocket", "--limit", "3") == everything[:3]
    assert search_json(indexed, "a rocket") == everything  # the default limit (10) exceeds the 7 files
    assert search_cli(indexed, "a rocket", "--limit", "0").exit_code == 2


@pytest.mark.slow
def test_threshold_is_exact_and_inclusive(indexed: Indexed) -> None:
    everything = search_json(indexed, "a cup of coffee", "--limit", "100")
    scores = [d["score"] for d in everything]
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        assert lib_search(indexed, "a cup of coffee", store, limit=100) == everything
        for k in range(len(scores) - 1):
            between = (scores[k] + scores[k + 1]) / 2
            assert lib_search(indexed, "a cup of coffee", store, limit=100, threshold=between) == everything[: k + 1]
            # a score equal to the threshold is kept ("drops results scoring below S")
            assert lib_search(indexed, "a cup of coffee", store, limit=100, threshold=scores[k]) == everything[: k + 1]
        # the threshold applies before the limit
        assert lib_search(indexed, "a cup of coffee", store, limit=2, threshold=scores[5]) == everything[:2]
    between = (scores[3] + scores[4]) / 2
    assert search_json(indexed, "a cup of coffee", "--limit", "100", "--threshold", repr(between)) == everything[:4]
    assert search_json(indexed, "a cup of coffee", "--limit", "100", "--threshold", repr(scores[3])) == everything[:4]
    result = search_cli(indexed, "a cup of coffee", "--threshold", "1")
    assert result.exit_code == 0 and result.stdout == "" and "No results scoring 1.0 or more" in result.stderr
    assert search_cli(indexed, "x", "--threshold", "2").exit_code == 2
    assert search_cli(indexed, "x", "--threshold", "nan").exit_code == 2


@pytest.mark.slow
def test_path_prefix_is_an_exact_folder_filter(indexed: Indexed, monkeypatch: pytest.MonkeyPatch) -> None:
    root = indexed.root
    everything = search_json(indexed, "flowers", "--limit", "100")

    def under(prefix: str) -> list[dict[str, Any]]:
        return [d for d in everything if d["path"] == prefix or d["path"].startswith(prefix.rstrip("/") + "/")]

    cases = {
        str(root / "a"): {"astronaut", "chelsea", "china"},  # not ab/ (shares the string prefix "a")
        str(root / "a") + "/": {"astronaut", "chelsea", "china"},
        str(root / "a" / "sub"): {"chelsea", "china"},
        str(root / "a" / "sub" / "deeper"): {"china"},
        str(root / "ab"): {"coffee", "flower"},
        str(root / "x"): {"hostile"},
        indexed.paths["rocket"]: {"rocket"},  # one file
        str(root / "a" / "su"): set(),  # a string prefix of a folder name is not a folder
        str(root): set(indexed.paths),
    }
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        for prefix, names in cases.items():
            data = lib_search(indexed, "flowers", store, limit=100, path_prefix=prefix)
            assert {d["path"] for d in data} == {indexed.paths[n] for n in names}, prefix
            assert data == [dict(d, rank=i) for i, d in enumerate(under(prefix), start=1)], prefix
    # the filter runs in Qdrant before the limit: the best hit under the folder, not the best overall then filtered
    best_in_ab = search_json(indexed, "flowers", "--limit", "1", "--path-prefix", str(root / "ab"))
    assert best_in_ab == lib_search(indexed, "flowers", limit=1, path_prefix=root / "ab")
    assert [d["path"] for d in best_in_ab] == [under(str(root / "ab"))[0]["path"]]
    # relative prefixes are taken from the current directory, like the paths ingest stores
    monkeypatch.chdir(root)
    relative = search_json(indexed, "flowers", "--limit", "100", "--path-prefix", "a/sub")
    assert {d["path"] for d in relative} == {indexed.paths["chelsea"], indexed.paths["china"]}
    monkeypatch.chdir(root / "a")
    assert {d["path"] for d in search_json(indexed, "flowers", "--path-prefix", "../ab")} == {
        indexed.paths["coffee"],
        indexed.paths["flower"],
    }


# --- output -------------------------------------------------------------------------------------------------


def test_json_is_valid_stable_and_sorted(indexed: Indexed) -> None:
    first = search_cli(indexed, "a photo of a cat", "--json", "--limit", "100")
    second = search_cli(indexed, "a photo of a cat", "--json", "--limit", "100")
    assert first.exit_code == 0 and first.stdout == second.stdout
    data = json.loads(first.stdout)
    assert isinstance(data, list) and len(data) == len(indexed.paths)
    assert all(list(d) == ["rank", "score", "path", "width", "height"] for d in data)
    assert [d["rank"] for d in data] == list(range(1, len(data) + 1))
    scores = [d["score"] for d in data]
    assert scores == sorted(scores, reverse=True)
    by_path = {path: name for name, path in indexed.paths.items()}
    for d in data:
        assert (d["width"], d["height"]) == indexed.images[by_path[d["path"]]].size
    assert indexed.paths["hostile"] in {d["path"] for d in data}  # the newline survives, escaped by JSON


def test_table_output_is_readable_and_escapes_hostile_names(indexed: Indexed) -> None:
    result = search_cli(indexed, "flowers", "--limit", "100")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    assert len(lines) == 1 + len(indexed.paths)  # the newline in the hostile name did not split a row
    data = search_json(indexed, "flowers", "--limit", "100")
    for line, d in zip(lines[1:], data, strict=True):
        rank, score, path = line.split(maxsplit=2)
        assert int(rank) == d["rank"] and float(score) == pytest.approx(d["score"], abs=5e-5)
        assert path == printable(d["path"])
    assert "\\x0a" in result.stdout and "onerror" in result.stdout


def test_long_query_warns_about_truncation(indexed: Indexed) -> None:
    result = search_cli(indexed, "a photo of a red car parked " * 20, "--limit", "1")
    assert result.exit_code == 0
    assert "longer than 77 tokens" in result.stderr
    assert "Warning" not in search_cli(indexed, "a red car", "--limit", "1").stderr


def test_query_that_is_not_utf8_is_searched_not_a_traceback(indexed: Indexed) -> None:
    """``caf\\xe9`` typed in a Latin-1 terminal: the undecodable byte becomes U+FFFD, as in any UTF-8 decoder."""
    env = {**os.environ, "CLIPINDEX_CACHE_DIR": "off"}
    args = [sys.executable, "-m", "clipindex", "search", b"caf\xe9", "--json", "--limit", "3"]
    args += ["--model-dir", str(indexed.model_dir), "--data-dir", str(indexed.data_dir)]
    result = subprocess.run(args, capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    assert json.loads(result.stdout) == lib_search(indexed, "caf\ufffd", limit=3)


def test_image_query_over_the_pixel_limit_names_an_option_that_exists(indexed: Indexed) -> None:
    photo = indexed.paths["chelsea"]
    refused = assert_one_line_error(search_cli(indexed, "--image", photo, "--max-pixels", "1000"), "--max-pixels")
    suggested = refused.split("--max-pixels", 1)[1].split()[0].strip(").;,")
    result = search_cli(indexed, "--image", photo, "--max-pixels", suggested, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"] == str(photo)


def test_usage_errors(indexed: Indexed) -> None:
    assert search_cli(indexed).exit_code == 2
    assert search_cli(indexed, "a cat", "--image", indexed.paths["chelsea"]).exit_code == 2
    assert search_cli(indexed, "  ").exit_code == 2
    assert search_cli(indexed, "a cat", "--path-prefix", "").exit_code == 2
    result = search_cli(indexed, "--image", str(indexed.root / "missing.jpg"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "missing.jpg: no such file" in line and "--image" in line


# --- errors -------------------------------------------------------------------------------------------------


def test_nothing_indexed_is_one_line_and_creates_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_cli("search", "a cat", "--model-dir", tiny_model_dir, "--data-dir", data_dir)
    assert_one_line_error(result, "clipindex ingest DIR", str(data_dir))
    assert not (data_dir / COLLECTION).exists()  # search never creates a collection
    # an empty collection (created, nothing stored) says the same
    with EdgeStore(data_dir, COLLECTION) as store:
        store.ensure_collection(512, Embedder(tiny_model_dir).model_name)
    for args in (("a cat",), ("a cat", "--json"), ("--image", str(Path(__file__).parent.parent / "images/horse.jpg"))):
        result = run_cli("search", *args, "--model-dir", tiny_model_dir, "--data-dir", data_dir)
        assert_one_line_error(result, "clipindex ingest DIR", "empty")
    with EdgeStore(data_dir, COLLECTION) as store, pytest.raises(NothingIndexedError):
        search_vector(store, np.ones(512, dtype=np.float32))


@pytest.mark.slow
def test_model_mismatch_is_one_clear_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_name = Embedder(tiny_model_dir).model_name
    for other_name, dim in (("clip-vit-large-patch14", 768), ("another-512-model", 512)):
        data_dir = tmp_path / other_name
        with EdgeStore(data_dir, COLLECTION) as store:
            store.ensure_collection(dim, other_name)
            store.upsert([Point(point_id("/p/x.jpg"), np.ones(dim, dtype=np.float32), {"path": "/p/x.jpg"})])
        for args in (("a red car",), ("--image", str(Path(__file__).parent.parent / "images/horse.jpg"))):
            result = run_cli("search", *args, "--model-dir", tiny_model_dir, "--data-dir", data_dir)
            line = assert_one_line_error(result, other_name, model_name, f"{dim}-d")
            assert "cannot search" in line
        with EdgeStore(data_dir, COLLECTION) as store, pytest.raises(CollectionMismatchError):
            search_text(store, Embedder(tiny_model_dir), "a cat")


# --- speed: no heavy imports, only the tower the query needs -------------------------------------------------


@pytest.mark.slow
def test_cli_text_search_imports_nothing_heavy_and_never_loads_the_vision_tower(
    indexed: Indexed, tmp_path: Path
) -> None:
    # a model folder whose vision.onnx is garbage: a text search succeeds only if it never loads it
    model_dir = tmp_path / "model"
    shutil.copytree(indexed.model_dir, model_dir)
    (model_dir / "vision.onnx").write_bytes(b"not an onnx model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    cmd = [sys.executable, "-X", "importtime", "-m", "clipindex", "search", "a photo of a cat", "--json"]
    cmd += ["--model-dir", str(model_dir), "--data-dir", str(indexed.data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)  # complete output, although the process ends without tearing down
    assert len(data) == 10 or len(data) == len(indexed.paths)
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "import time:" in line
    }
    assert {"clipindex", "onnxruntime", "qdrant_edge", "tokenizers"} <= imported
    assert not imported & {"torch", "transformers", "qdrant_client", "sklearn", "skimage", "scipy"}
    # the image search of the same folder does need the vision tower: it fails, in one line
    cmd = [sys.executable, "-m", "clipindex", "search", "--image", indexed.paths["chelsea"]]
    cmd += ["--model-dir", str(model_dir), "--data-dir", str(indexed.data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 1 and "vision.onnx" in proc.stderr and "Traceback" not in proc.stderr
