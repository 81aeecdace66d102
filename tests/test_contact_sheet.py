"""`clipindex search --html`: the contact sheet is self-contained, escapes hostile names, honours EXIF orientation,
and renders in headless Chromium (Debian's `chromium`) with the thumbnails where the layout puts them."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_search import COLLECTION, HOSTILE, Indexed, make_index

from clipindex.cli.commands import cli
from clipindex.cli.contact_sheet import (
    THUMB_SIZE,
    card_box,
    columns_for,
    render_contact_sheet,
    thumbnail,
    write_contact_sheet,
)
from clipindex.model.encode import Embedder
from clipindex.ops.search import SearchResult, search_text
from clipindex.store.edge import EdgeStore

WINDOW = (1200, 900)
QUERY = '<b>a cat</b> & "a dog"'


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Indexed:
    return make_index(tmp_path_factory.mktemp("html"), tiny_model_dir, sample_photos)


@pytest.fixture(scope="module")
def results(indexed: Indexed) -> list[SearchResult]:
    with EdgeStore(indexed.data_dir, COLLECTION) as store:
        found = search_text(store, Embedder(indexed.model_dir), "a cat", limit=20)
    assert len(found) == len(indexed.paths)
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; in CI (env CI set) its absence is a failure, elsewhere a skip."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must render the contact sheet (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def run_chromium(chromium: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def grid_means(pixels: np.ndarray, cells: int = 4) -> np.ndarray:
    """Mean colour of each cell of a ``cells x cells`` grid: a small signature of where the colours are."""
    rows = np.array_split(pixels, cells, axis=0)
    return np.array([[cell.mean(axis=(0, 1)) for cell in np.array_split(row, cells, axis=1)] for row in rows])


def test_contact_sheet_renders_in_headless_chromium(
    chromium: str, indexed: Indexed, results: list[SearchResult], tmp_path: Path
) -> None:
    sheet = write_contact_sheet(tmp_path / "sheet.html", results, query=QUERY, model="tiny", store="test store")
    png = tmp_path / "shot.png"
    proc = run_chromium(
        chromium, tmp_path, sheet.as_uri(), f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}"
    )
    assert png.is_file(), proc.stderr[-2000:]
    shot = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])
    background = shot[WINDOW[1] - 5, WINDOW[0] - 5]  # the page, below and right of the cards
    columns = columns_for(WINDOW[0])
    assert columns == 4
    expected_means: list[np.ndarray] = []
    shown_means: list[np.ndarray] = []
    for index, result in enumerate(results):
        left, top, _, bottom = card_box(index, columns)
        if bottom > WINDOW[1]:
            break
        thumb = thumbnail(result.path)
        assert thumb.data_uri is not None, result.path
        expected = np.asarray(decode_data_uri(thumb.data_uri), dtype=np.float64)
        # the image is centred in its THUMB_SIZE box; keep clear of its (sub-pixel) edges
        x0 = left + (THUMB_SIZE - thumb.width) // 2 + 3
        y0 = top + (THUMB_SIZE - thumb.height) // 2 + 3
        region = shot[y0 : y0 + thumb.height - 6, x0 : x0 + thumb.width - 6]
        assert region.std() > 15, f"thumbnail {index} looks flat: not rendered?"
        assert np.abs(region.mean(axis=(0, 1)) - background).max() > 10 or region.std() > 30
        expected_means.append(grid_means(expected[3:-3, 3:-3]))
        shown_means.append(grid_means(region))
    assert len(shown_means) == 7  # two rows of four fit 1200x900; all 7 results are on screen
    for index, shown in enumerate(shown_means):
        distances = [np.abs(shown - e).max() for e in expected_means]
        assert distances[index] < 8, (index, results[index].path, distances)
        assert int(np.argmin(distances)) == index  # each card shows its own photo (not the mirrored one), in order
    # the header (dark band) holds the query text: some light pixels on the dark background
    header = shot[10:110, 10:600]
    assert header.mean() < 80 and (header > 200).any()


def test_chromium_dom_has_no_injected_markup(chromium: str, results: list[SearchResult], tmp_path: Path) -> None:
    sheet = write_contact_sheet(tmp_path / "sheet.html", results, query=QUERY)
    proc = run_chromium(chromium, tmp_path, sheet.as_uri(), "--dump-dom")
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    dom = proc.stdout
    assert len(re.findall(r"<img\b", dom)) == len(results)
    assert "onerror" not in re.sub(r'"[^"]*"|>[^<]*<', "", dom)  # never an attribute, only escaped text
    assert "<b>" not in dom
    assert dom.count('class="card"') == len(results)


def test_sheet_is_self_contained_and_escapes_everything(results: list[SearchResult], indexed: Indexed) -> None:
    document = render_contact_sheet(results, query=QUERY, model="m<1>", store="s&t")
    assert document.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in document and "default-src 'none'" in document
    assert not re.search(r"(src|href)=\"(https?:|//)", document)  # nothing fetched from anywhere
    assert document.count('src="data:image/jpeg;base64,') == len(results)
    # the hostile path appears only escaped (markup, quotes, ampersand, the newline as \x0a)
    hostile = indexed.paths["hostile"]
    assert hostile not in document
    assert "<img src=x onerror" not in document
    escaped = "&lt;img src=x onerror=alert(1)&gt;\\x0a&quot;&#x27;&amp;.png"
    assert escaped in document
    assert "&lt;b&gt;a cat&lt;/b&gt; &amp; &quot;a dog&quot;" in document and "<b>" not in document
    assert "m&lt;1&gt;" in document and "s&amp;t" in document
    # the link to the original file is a percent-encoded file:// URL
    assert "file://" + hostile.replace("<", "%3C") not in document
    quoted = re.findall(r'href="(file://[^"]*)"', document)
    assert len(quoted) == len(results) and all(re.fullmatch(r"file://[A-Za-z0-9/%._~-]+", q) for q in quoted)
    assert HOSTILE.split("/")[0] in document


def test_thumbnail_honours_exif_orientation(tmp_path: Path) -> None:
    # stored 300x100, left half red, right half blue; orientation 6: shown rotated 90 degrees clockwise,
    # so it is portrait with red on top
    stored = Image.new("RGB", (300, 100), (220, 20, 20))
    stored.paste((20, 20, 220), (150, 0, 300, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    thumb = thumbnail(path)
    assert (thumb.width, thumb.height) == (85, 256) or (thumb.width, thumb.height) == (86, 256)
    assert thumb.data_uri is not None
    image = np.asarray(decode_data_uri(thumb.data_uri), dtype=np.int64)
    top, bottom = image[20, thumb.width // 2], image[-20, thumb.width // 2]
    assert top[0] > 180 and top[2] < 60, top
    assert bottom[2] > 180 and bottom[0] < 60, bottom
    # a big photo is shrunk to fit THUMB_SIZE, aspect kept
    Image.new("RGB", (4000, 3000), (10, 200, 10)).save(tmp_path / "big.jpg")
    big = thumbnail(tmp_path / "big.jpg")
    assert (big.width, big.height) == (256, 192)


def test_missing_or_broken_files_get_a_placeholder(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = [
        SearchResult(1, 0.5, str(tmp_path / "gone.jpg"), 10, 10, "id1", {}),
        SearchResult(2, 0.4, str(tmp_path / "broken.jpg"), None, None, "id2", {}),
    ]
    document = render_contact_sheet(rows, query="q")
    assert document.count("image unavailable") == 2
    assert "data:image/jpeg" not in document
    assert "No results." in render_contact_sheet([], query="q")


def test_cli_html_option(indexed: Indexed, tmp_path: Path) -> None:
    out = tmp_path / "more.html"
    args = ["--model-dir", str(indexed.model_dir), "--data-dir", str(indexed.data_dir)]
    result = CliRunner().invoke(cli, ["search", "--image", indexed.paths["rocket"], "--html", str(out), *args])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.stderr
    document = out.read_text(encoding="utf-8")
    assert 'class="query-image"' in document and "more like" in document
    assert document.count('class="card"') == len(indexed.paths)
    result = CliRunner().invoke(cli, ["search", "a cat", "--html", str(tmp_path / "no" / "such" / "dir.html"), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0 and "cannot write the contact sheet" in result.stderr
