"""Query arithmetic (``clipindex search "a cat" + ./x.jpg - 2:dog``): parsing, and scores that equal numpy's cosine
with the documented vector, on a real store built by the real ingest with the tiny exported model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from clipindex.cli import cli
from clipindex.errors import ImageError
from clipindex.model.encode import Embedder
from clipindex.ops.query import QueryTerm, combine_terms, parse_terms
from clipindex.store.edge import EdgeStore


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Path:
    base = tmp_path_factory.mktemp("query")
    photos = base / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "china", "flower"):
        sample_photos[name].save(photos / f"{name}.jpg")
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--model-dir", str(tiny_model_dir), "--data-dir", str(base / "data"), "-q"]
    )
    assert result.exit_code == 0, result.output
    return base


def test_parse_terms(tmp_path: Path) -> None:
    photo = tmp_path / "pool.jpg"
    photo.write_bytes(b"not read here")
    terms = parse_terms(["2:golden", "retriever", "+", str(photo), "-", "fruit"])
    assert terms == [
        QueryTerm("text", "golden retriever", 2.0, 1),
        QueryTerm("image", str(photo), 1.0, 1),
        QueryTerm("text", "fruit", 1.0, -1),
    ]
    assert parse_terms(["text:+"]) == [QueryTerm("text", "+", 1.0, 1)]
    assert parse_terms(["text:pool.jpg"]) == [QueryTerm("text", "pool.jpg", 1.0, 1)]
    assert parse_terms(["0.5:a", "red", "car"]) == [QueryTerm("text", "a red car", 0.5, 1)]
    assert parse_terms(["a photo of a car.jpg in snow"])[0].kind == "text"  # words, not a file name
    with pytest.raises(ImageError, match=r"missing\.jpg: no such file"):
        parse_terms(["a cat", "+", "missing.jpg"])
    with pytest.raises(ImageError, match="nowhere/x: no such file"):
        parse_terms(["image:nowhere/x"])
    for bad in (["+"], ["a", "+"], ["a", "+", "-", "b"], [], ["0:a"]):
        with pytest.raises(ValueError):
            parse_terms(bad)


def test_terms_that_cancel_out_are_an_error() -> None:
    v = np.ones(4, dtype=np.float32) / 2
    with pytest.raises(ValueError, match="cancel out"):
        combine_terms([v, v], [QueryTerm("text", "a"), QueryTerm("text", "b", sign=-1)])


def _search_json(indexed: Path, model: Path, *words: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli,
        [
            "search",
            *words,
            "-n",
            "6",
            "--json",
            "--no-server",
            "--model-dir",
            str(model),
            "--data-dir",
            str(indexed / "data"),
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_scores_equal_numpy_cosine_with_the_documented_vector(indexed: Path, tiny_model_dir: Path) -> None:
    photos = indexed / "photos"
    words = ["2:a cat on a sofa", "+", str(photos / "rocket.jpg"), "-", "0.5:a cup of coffee"]
    hits = _search_json(indexed, tiny_model_dir, *words)

    embedder = Embedder(tiny_model_dir, device="cpu")
    cat, coffee = embedder.encode_text(["a cat on a sofa", "a cup of coffee"])
    rocket = embedder.encode_images([photos / "rocket.jpg"])[0]
    query = 2.0 * cat + 1.0 * rocket - 0.5 * coffee
    query /= np.linalg.norm(query)
    store = EdgeStore(indexed / "data", "images")
    with store:
        store.collection_info()
        ids = {pid: payload["path"] for pid, payload in store.iter_payloads(["path"])}
        stored = store.get_vectors(list(ids))
    expected = sorted(((float(stored[i] @ query), ids[i]) for i in ids), reverse=True)
    assert [h["path"] for h in hits] == [path for _score, path in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [score for score, _path in expected], atol=2e-5)


def test_one_term_is_the_plain_query(indexed: Path, tiny_model_dir: Path) -> None:
    photos = indexed / "photos"
    assert _search_json(indexed, tiny_model_dir, "a", "red", "car") == _search_json(
        indexed, tiny_model_dir, "a red car"
    )
    by_term = _search_json(indexed, tiny_model_dir, str(photos / "chelsea.jpg"))
    by_option = _search_json(indexed, tiny_model_dir, "--image", str(photos / "chelsea.jpg"))
    assert by_term == by_option and by_term[0]["path"] == str(photos / "chelsea.jpg")
    weighted = _search_json(indexed, tiny_model_dir, "3:a red car")  # a weight alone changes nothing
    plain = _search_json(indexed, tiny_model_dir, "a red car")
    assert [h["path"] for h in weighted] == [h["path"] for h in plain]
    np.testing.assert_allclose([h["score"] for h in weighted], [h["score"] for h in plain], atol=1e-5)


def test_a_missing_file_term_is_a_usage_error_naming_it(indexed: Path, tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["search", "a cat", "+", "./nope.jpg", "--model-dir", str(tiny_model_dir), "--data-dir", str(indexed / "data")],
    )
    assert result.exit_code == 2
    assert "./nope.jpg: no such file" in result.output and "text:./nope.jpg" in result.output
    literal = CliRunner().invoke(
        cli, ["search", "text:+", "-n", "1", "--model-dir", str(tiny_model_dir), "--data-dir", str(indexed / "data")]
    )
    assert literal.exit_code == 0, literal.output


def test_the_library_takes_terms(indexed: Path, tiny_model_dir: Path) -> None:
    from clipindex.ops.search import search_terms, search_text

    embedder = Embedder(tiny_model_dir, device="cpu")
    store = EdgeStore(indexed / "data", "images")
    with store:
        one = search_terms(store, embedder, [QueryTerm("text", "a red car")], limit=3)
        plain = search_text(store, embedder, "a red car", limit=3)
        assert [r.path for r in one] == [r.path for r in plain]
        photo = str(indexed / "photos" / "flower.jpg")
        mixed = search_terms(store, embedder, [QueryTerm("image", photo), QueryTerm("text", "a flower", 0.1, -1)])
        assert mixed[0].path == photo
