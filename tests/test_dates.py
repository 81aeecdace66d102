"""Dates and cameras: real JPEGs written by Pillow with EXIF dates (with and without offsets), none, and broken
ones, ingested by the real CLI with the tiny model; ``search --after/--before/--camera/--sort``; the backfill of
a store written before the fields existed (without re-embedding: the encoder's calls are counted); GPS only with
``--store-gps``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from exif_photos import MTIME_C, MTIME_D, MTIME_E, make_photos

from clipindex.cli import cli
from clipindex.dates import parse_when
from clipindex.images.decode import decode_file
from clipindex.ingest.points import DATE_FIELDS
from clipindex.model.encode import Embedder
from clipindex.store.base import Point
from clipindex.store.edge import EdgeStore


def ingest(model: Path, photos: Path, data: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--model-dir", str(model), "--data-dir", str(data), "--json", *extra]
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def payloads(data: Path) -> dict[str, dict[str, Any]]:
    with EdgeStore(data, "images") as store:
        store.collection_info()
        return {Path(p["path"]).name: p for _pid, p in store.iter_payloads()}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Path:
    base = tmp_path_factory.mktemp("dates")
    make_photos(base / "photos", sample_photos)
    ingest(tiny_model_dir, base / "photos", base / "data")
    return base


def search(model: Path, data: Path, *options: str) -> list[str]:
    result = CliRunner().invoke(
        cli, ["search", "a photo", "--model-dir", str(model), "--data-dir", str(data), "--json", *options]
    )
    assert result.exit_code == 0, result.output
    return [Path(hit["path"]).name for hit in json.loads(result.stdout)]


def test_payload_fields(indexed: Path) -> None:
    stored = payloads(indexed / "data")
    a, b, c, d, e = (stored[f"{n}.jpg"] for n in "abcde")
    assert a["taken_at"] == "2021-05-06T10:00:00+02:00" and a["taken_at_source"] == "exif"
    assert a["taken_ts"] == datetime(2021, 5, 6, 8, 0, tzinfo=timezone.utc).timestamp()
    assert a["camera_make"] == "Canon" and a["camera_model"] == "Canon EOS R5"
    assert sorted(a["camera_lc"]) == ["canon", "canon eos", "canon eos r5", "eos", "eos r5", "r5"]
    assert b["taken_at"] == "2019-01-02T03:04:05" and b["taken_at_source"] == "exif"  # naive: no offset
    assert b["camera_make"] == "NIKON CORPORATION" and b["camera_model"] == "NIKON D750"
    for point, mtime in ((c, MTIME_C), (d, MTIME_D), (e, MTIME_E)):
        assert point["taken_at_source"] == "mtime" and point["taken_ts"] == mtime
        assert point["taken_at"] == datetime.fromtimestamp(mtime, timezone.utc).isoformat()
    assert "camera_make" not in c and "camera_model" not in c and "camera_lc" not in c
    assert e["camera_make"] == "Canon" and "camera_model" not in e
    assert all("gps" not in p for p in stored.values())  # the privacy default


def test_decode_reads_facts_from_the_header_only(indexed: Path) -> None:
    decoded = decode_file(indexed / "photos" / "a.jpg", decode_pixels=lambda _sha: False)
    assert decoded.image is None
    assert decoded.facts.make == "Canon" and decoded.facts.taken_at is not None
    assert decoded.facts.gps is not None and abs(decoded.facts.gps[0] - 48.8584) < 1e-3


def test_filters_and_sorting(indexed: Path, tiny_model_dir: Path) -> None:
    data = indexed / "data"
    assert sorted(search(tiny_model_dir, data)) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert search(tiny_model_dir, data, "--after", "2020") == ["a.jpg"]
    assert sorted(search(tiny_model_dir, data, "--before", "2017")) == ["c.jpg", "d.jpg"]
    assert sorted(search(tiny_model_dir, data, "--after", "2016-01-01", "--before", "2019-06")) == [
        "b.jpg",
        "d.jpg",
        "e.jpg",
    ]
    # the offset counts: 10:00+02:00 is 08:00 UTC
    assert search(tiny_model_dir, data, "--after", "2021-05-06T08:30:00+00:00") == []
    assert search(tiny_model_dir, data, "--after", "2021-05-06T09:30:00+02:00") == ["a.jpg"]
    assert sorted(search(tiny_model_dir, data, "--camera", "CANON")) == ["a.jpg", "e.jpg"]
    assert search(tiny_model_dir, data, "--camera", "eos r5") == ["a.jpg"]
    assert search(tiny_model_dir, data, "--camera", "nikon d750") == ["b.jpg"]
    assert search(tiny_model_dir, data, "--camera", "canon", "--after", "2018") == ["a.jpg"]
    assert search(tiny_model_dir, data, "--camera", "sony") == []
    assert search(tiny_model_dir, data, "--sort", "date") == ["c.jpg", "d.jpg", "e.jpg", "b.jpg", "a.jpg"]
    by_date = search(tiny_model_dir, data, "--sort", "date", "--path-prefix", str(indexed / "photos"), "-n", "5")
    assert by_date == ["c.jpg", "d.jpg", "e.jpg", "b.jpg", "a.jpg"]


def test_bad_dates_are_usage_errors(indexed: Path, tiny_model_dir: Path) -> None:
    for bad in ("yesterday", "2021-13-01", "0000:00:00"):
        result = CliRunner().invoke(
            cli,
            ["search", "x", "--model-dir", str(tiny_model_dir), "--data-dir", str(indexed / "data"), "--after", bad],
        )
        assert result.exit_code == 2, result.output
        assert "--after" in result.output and "YYYY-MM-DD" in result.output
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_when("June")
    assert parse_when("2020") == datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()


class CountingEncoder:
    """Counts the images the real vision tower is asked to encode."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        real = Embedder.encode_pixels

        def counting(embedder: Embedder, pixels: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
            self.images += len(pixels)
            return real(embedder, pixels, *args, **kwargs)

        monkeypatch.setattr(Embedder, "encode_pixels", counting)


def strip_date_fields(data: Path) -> int:
    """Rewrite every point as a store from before dates and cameras holds it (same vector, no new fields)."""
    with EdgeStore(data, "images") as store:
        store.collection_info()
        old = {pid: {k: v for k, v in p.items() if k not in DATE_FIELDS} for pid, p in store.iter_payloads()}
        vectors = store.get_vectors(list(old))
        store.upsert([Point(pid, vectors[pid], payload) for pid, payload in old.items()])
        store.flush()
        return len(old)


def status_json(model: Path, data: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--model-dir", str(model), "--data-dir", str(data), "--json"])
    assert result.exit_code == 0, result.output
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingEncoder]:
    yield CountingEncoder(monkeypatch)


def test_backfill_without_reembedding(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Any], counter: CountingEncoder
) -> None:
    make_photos(tmp_path / "photos", sample_photos)
    data = tmp_path / "data"
    first = ingest(tiny_model_dir, tmp_path / "photos", data)
    assert first["indexed"] == 5 and counter.images == 5
    fresh = payloads(data)
    assert status_json(tiny_model_dir, data)["dated_points"] == 5
    assert strip_date_fields(data) == 5
    assert all("taken_at_source" not in p for p in payloads(data).values())
    assert status_json(tiny_model_dir, data)["dated_points"] == 0
    assert search(tiny_model_dir, data, "--after", "2000") == []  # the old points carry no dates yet

    counter.images = 0
    again = ingest(tiny_model_dir, tmp_path / "photos", data)
    assert counter.images == 0  # nothing re-embedded: the header was read, the stored vectors reused
    assert again["reused"] == 5 and again["unchanged"] == 0 and again["points"] == 5
    restored = payloads(data)
    for name, payload in fresh.items():
        for key in DATE_FIELDS:
            assert restored[name].get(key) == payload.get(key), (name, key)
    assert status_json(tiny_model_dir, data)["dated_points"] == 5
    assert search(tiny_model_dir, data, "--after", "2020") == ["a.jpg"]

    third = ingest(tiny_model_dir, tmp_path / "photos", data)  # now they are unchanged: a stat each
    assert third["unchanged"] == 5 and third["indexed"] == 0 and counter.images == 0


def test_gps_only_with_store_gps(tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> None:
    make_photos(tmp_path / "photos", sample_photos)
    ingest(tiny_model_dir, tmp_path / "photos", tmp_path / "data", "--store-gps")
    stored = payloads(tmp_path / "data")
    gps = stored["a.jpg"]["gps"]
    assert abs(gps["lat"] - 48.8584) < 1e-4 and abs(gps["lon"] + 2.2945) < 1e-4
    assert all("gps" not in stored[f"{n}.jpg"] for n in "bcde")
