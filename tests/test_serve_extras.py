"""``clipindex serve`` beyond search: dates and cameras in hits and filters, and duplicates, through a real server
(the CLI in a subprocess on a free loopback port) over a real store that the real ingest built with the tiny
exported model from real photos with EXIF dates and cameras and planted copies; the page in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from exif_photos import make_photos
from serving import Served, chromium_path, run_cli, serve_env, serving

#: a.jpg-e.jpg and two copies
PHOTOS = 7
#: the tiny random-weight model's planted copies score >= 0.999 with their originals, different photos <= 0.984
THRESHOLD = 0.995
FILTERS: tuple[tuple[str, ...], ...] = (
    ("--after", "2020"),
    ("--before", "2020"),
    ("--camera", "canon"),
    ("--camera", "NIKON d750"),
    ("--sort", "date"),
    ("--after", "2015-01", "--before", "2018", "--sort", "date"),
)


@dataclass(frozen=True)
class Library:
    photos: Path
    data: Path
    cache: Path
    model: Path

    def env(self) -> dict[str, str]:
        return serve_env(self.data, self.cache)


def clipindex(library: Library, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(library.env(), *args)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Library:
    base = tmp_path_factory.mktemp("serve-extras")
    photos = base / "photos"
    make_photos(photos, sample_photos)  # a-e: EXIF dates with and without offsets, cameras, none, broken ones
    (photos / "copies").mkdir()
    shutil.copyfile(photos / "b.jpg", photos / "copies" / "b.jpg")  # byte-identical
    sample_photos["astronaut"].convert("RGB").save(photos / "copies" / "a-q60.jpg", quality=60)  # re-encoded
    library = Library(photos, base / "data", base / "cache", tiny_model_dir)
    run = clipindex(library, "ingest", photos, "--model-dir", tiny_model_dir)
    assert run.returncode == 0, run.stderr
    return library


@pytest.fixture(scope="module")
def server(library: Library) -> Iterator[Served]:
    with serving(library.data, library.model, library.cache) as served:
        yield served


@pytest.fixture()
def http(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def options_to_params(args: tuple[str, ...]) -> dict[str, str]:
    return {args[k].removeprefix("--"): args[k + 1] for k in range(0, len(args), 2)}


def in_process(library: Library, *args: str) -> list[dict[str, Any]]:
    run = clipindex(library, "search", *args, "--json", "--no-server", "--model-dir", library.model)
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


def test_hits_say_when_and_with_what(library: Library, http: httpx.Client) -> None:
    hits = {
        Path(h["path"]).name: h
        for h in http.get("/api/v1/search", params={"q": "a photo", "limit": 50}).json()["results"]
    }
    assert hits["a.jpg"]["taken_at"] == "2021-05-06T10:00:00+02:00" and hits["a.jpg"]["taken_at_source"] == "exif"
    assert (hits["a.jpg"]["camera_make"], hits["a.jpg"]["camera_model"]) == ("Canon", "Canon EOS R5")
    assert (hits["b.jpg"]["camera_make"], hits["b.jpg"]["camera_model"]) == ("NIKON CORPORATION", "NIKON D750")
    assert hits["c.jpg"]["taken_at_source"] == "mtime" and hits["c.jpg"]["camera_make"] is None
    assert hits["c.jpg"]["taken_at"].startswith("2015-06-01T12:00:00")
    assert "gps" not in json.dumps(hits).lower()  # never stored without --store-gps


@pytest.mark.parametrize("args", FILTERS, ids=lambda a: " ".join(a))
def test_filters_and_date_order_equal_the_cli(library: Library, server: Served, args: tuple[str, ...]) -> None:
    expected = in_process(library, "a photo", "-n", "20", *args)
    assert expected  # every filter keeps some photos ...
    assert len(expected) < PHOTOS or "--sort" in args  # ... and a filter drops some
    params = {"q": "a photo", "limit": "20", **options_to_params(args)}
    got = httpx.get(server.url + "api/v1/search", params=params, timeout=60).json()["results"]
    assert [(h["rank"], h["path"], h["score"]) for h in got] == [(h["rank"], h["path"], h["score"]) for h in expected]
    body = {"text": "a photo", "limit": 20, **options_to_params(args)}
    posted = httpx.post(server.url + "api/v1/search", json=body, timeout=60).json()["results"]
    assert [h["path"] for h in posted] == [h["path"] for h in expected]
    # the CLI through the running server prints what the in-process search prints
    served = clipindex(library, "search", "a photo", "-n", "20", *args, "--json")
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout) == expected
    table = clipindex(library, "search", "a photo", "-n", "20", *args)
    local = clipindex(library, "search", "a photo", "-n", "20", *args, "--no-server", "--model-dir", library.model)
    assert table.stdout == local.stdout


def test_the_date_order_is_oldest_first(http: httpx.Client) -> None:
    hits = http.get("/api/v1/search", params={"q": "a photo", "limit": 50, "sort": "date"}).json()["results"]
    stamps = [h["taken_at"] for h in hits]
    assert len(stamps) == PHOTOS and all(stamps)
    from datetime import datetime

    assert [datetime.fromisoformat(s).timestamp() for s in stamps] == sorted(
        datetime.fromisoformat(s).timestamp() for s in stamps
    )
    assert [h["rank"] for h in hits] == list(range(1, PHOTOS + 1))


def test_bad_filters_are_422_naming_the_field(http: httpx.Client) -> None:
    bad = http.get("/api/v1/search", params={"q": "a photo", "after": "last tuesday"})
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert error["message"].startswith("after:") and "YYYY" in error["message"] and "\n" not in error["message"]
    assert http.get("/api/v1/search", params={"q": "x", "sort": "size"}).status_code == 422
    assert http.post("/api/v1/search", json={"text": "x", "camera": ""}).status_code == 422


def test_duplicates_equal_the_cli(library: Library, http: httpx.Client) -> None:
    run = clipindex(library, "duplicates", "--min-similarity", str(THRESHOLD), "--json")
    assert run.returncode == 0, run.stderr
    cli = json.loads(run.stdout)
    answer = http.get("/api/v1/duplicates", params={"min_similarity": THRESHOLD})
    assert answer.status_code == 200, answer.text
    api = answer.json()
    assert api["scanned"] == cli["scanned"] == PHOTOS and api["method"] == cli["method"] == "exact"
    assert [[f["path"] for f in g["files"]] for g in api["groups"]] == [
        [m["path"] for m in g["members"]] for g in cli["groups"]
    ]
    assert [g["kind"] for g in api["groups"]] == [g["kind"] for g in cli["groups"]] == ["near", "exact"]
    best = [next(f["path"] for f in g["files"] if f["best"]) for g in api["groups"]]
    assert best == [g["best"] for g in cli["groups"]]
    names = [[Path(f["path"]).relative_to(library.photos).as_posix() for f in g["files"]] for g in api["groups"]]
    assert names == [["a.jpg", "copies/a-q60.jpg"], ["b.jpg", "copies/b.jpg"]]
    for group in api["groups"]:
        for file in group["files"]:
            thumb = http.get(file["thumbnail"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            assert file["similarity"] == pytest.approx(1.0, abs=0.005)
    copies = http.get(
        "/api/v1/duplicates", params={"min_similarity": THRESHOLD, "folder": str(library.photos / "copies")}
    )
    assert copies.json()["scanned"] == 2 and copies.json()["groups"] == []


def test_a_raw_upload_finds_its_file(library: Library, http: httpx.Client, tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    from PIL import Image
    from test_raw import write_dng

    dng = write_dng(library.photos / "raw.dng", Image.open(library.photos / "c.jpg"))
    run = clipindex(library, "ingest", library.photos, "--model-dir", library.model)
    assert run.returncode == 0, run.stderr
    try:
        data = dng.read_bytes()
        uploaded = http.post("/api/v1/search", files={"image": ("upload.bin", data, "application/octet-stream")})
        assert uploaded.status_code == 200, uploaded.text
        top = uploaded.json()["results"][0]
        assert top["path"] == str(dng) and top["score"] == pytest.approx(1.0, abs=1e-3)
        assert top["taken_at"] == "2024-05-17T08:30:00" and top["camera_model"] == "Test DNG"
    finally:
        dng.unlink()
        assert clipindex(library, "ingest", library.photos, "--model-dir", library.model, "--prune").returncode == 0


def test_bad_duplicate_queries_are_422(http: httpx.Client) -> None:
    assert http.get("/api/v1/duplicates", params={"min_similarity": 2}).status_code == 422
    assert http.get("/api/v1/duplicates", params={"folder": "relative/path"}).status_code == 422


def test_searches_are_answered_between_the_pages_of_a_scan(library: Library, http: httpx.Client) -> None:
    """The scan reads the store a page per store-process call: a search sent while a scan runs is answered."""
    import threading

    done: list[int] = []

    def scan() -> None:
        for _ in range(5):
            done.append(http.get("/api/v1/duplicates", params={"min_similarity": 0.5}).status_code)

    worker = threading.Thread(target=scan)
    worker.start()
    searched = [http.get("/api/v1/search", params={"q": "a cat"}).status_code for _ in range(10)]
    worker.join(timeout=120)
    assert searched == [200] * 10 and done == [200] * 5


@pytest.mark.slow
def test_the_page_filters_and_shows_duplicates(library: Library, server: Served, tmp_path: Path) -> None:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        # the test's probes are evaluated scripts, which the page's CSP forbids (test_serve checks the CSP)
        page = browser.new_context(bypass_csp=True, viewport={"width": 1200, "height": 900}).new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url)
        page.fill("#camera", "canon")
        page.fill("#q", "a photo")
        page.wait_for_function("document.querySelector('#message').textContent.includes('results for')")
        expected = in_process(library, "a photo", "-n", "60", "--camera", "canon")
        assert page.locator("#results .name").all_text_contents() == [Path(h["path"]).name for h in expected]
        assert "camera=canon" in page.url
        page.fill("#camera", "")
        page.select_option("#sort", "date")
        page.fill("#after", "2016")
        page.press("#after", "Enter")
        dated = in_process(library, "a photo", "-n", "60", "--after", "2016", "--sort", "date")
        page.wait_for_function(
            f"document.querySelectorAll('#results li').length === {len(dated)}"
            " && document.querySelector('#message').textContent.includes('results for')"
        )
        assert page.locator("#results .name").all_text_contents() == [Path(h["path"]).name for h in dated]
        page.locator("#results li button").first.click()
        page.wait_for_selector("#viewer[open]")
        assert "taken " in (page.locator("#viewer-taken").text_content() or "")
        page.keyboard.press("Escape")

        page.click("#show-duplicates")
        assert page.locator("#duplicates").is_visible() and not page.locator("#results").is_visible()
        page.fill("#min-similarity", str(THRESHOLD))
        page.click("#duplicates-form button[type=submit]")
        page.wait_for_function("document.querySelector('#duplicates-message').textContent.includes('groups')")
        groups = page.locator("#groups > li")
        assert groups.count() == 2
        assert page.locator("#groups .best").count() == 2  # one file to keep per group, outlined
        assert page.locator("#groups > li").nth(1).locator(".name").all_text_contents() == ["b.jpg", "b.jpg"]
        page.wait_for_function(
            "[...document.querySelectorAll('#groups img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert f"2 groups, 2 copies among {PHOTOS} photos" in (page.locator("#duplicates-message").text_content() or "")
        page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
        page.click("#hide-duplicates")
        assert page.locator("#results").is_visible()
        browser.close()
    assert errors == []
