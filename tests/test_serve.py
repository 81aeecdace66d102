"""``clipindex serve``: a real server (the CLI in a subprocess, uvicorn on a free loopback port) over a real store
built by the real ingest from real photos with the tiny exported model, asked by a real HTTP client (httpx)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import Served, chromium_path, run_cli, serve_env, serving

HOSTILE = "<img src=x onerror=window.__pwned=1>.jpg"


@dataclass(frozen=True)
class Library:
    photos: Path
    data: Path
    cache: Path
    model: Path
    files: dict[str, Path]

    def env(self, **extra: str) -> dict[str, str]:
        return serve_env(self.data, self.cache, **extra)


def clipindex(
    library: Library, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(env or library.env(), *args)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, sample_photos: dict[str, Any]) -> Library:
    base = tmp_path_factory.mktemp("serve")
    photos = base / "photos"
    (photos / "sub").mkdir(parents=True)
    files = {
        "astronaut": photos / "astronaut.jpg",
        "chelsea": photos / "chelsea.jpg",
        "coffee": photos / "coffee.png",
        "rocket": photos / "rocket.jpg",
        "china": photos / "sub" / "china.jpg",
        "flower": photos / "sub" / "flower.jpg",
        "hostile": photos / HOSTILE,
    }
    for name, path in files.items():
        source = sample_photos["chelsea" if name == "hostile" else name]
        image = source.rotate(180) if name == "hostile" else source  # its own vector
        image.save(path)
    library = Library(photos, base / "data", base / "cache", tiny_model_dir, files)
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


def cli_search_json(library: Library, *args: str) -> list[dict[str, Any]]:
    run = clipindex(library, "search", *args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def point_ids(http: httpx.Client) -> dict[str, str]:
    """path -> id of every indexed photo."""
    hits = http.get("/api/v1/search", params={"q": "a photo", "limit": 100}).json()["results"]
    return {hit["path"]: hit["id"] for hit in hits}


# --- the server itself ------------------------------------------------------------------------------------


def test_it_prints_the_url_of_the_port_it_picked(server: Served, http: httpx.Client) -> None:
    assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0/")
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    assert http.get("/static/app.js").status_code == 200


def test_openapi_document_describes_the_api(http: httpx.Client) -> None:
    document = http.get("/api/v1/openapi.json").json()
    assert document["openapi"].startswith("3.")
    for path in ("/api/v1/search", "/api/v1/status", "/api/v1/thumbnails/{point_id}", "/api/v1/images/{point_id}"):
        assert path in document["paths"]
    assert "/knn-service" in document["paths"]
    assert http.get("/docs").status_code == 404  # no documentation UI: it would load a CDN's scripts


# --- search -----------------------------------------------------------------------------------------------


def test_text_search_equals_the_cli_in_process(library: Library, http: httpx.Client) -> None:
    cli = cli_search_json(library, "a cat on a sofa", "-n", "7", "--no-server")
    answer = http.get("/api/v1/search", params={"q": "a cat on a sofa", "limit": 7}).json()
    assert [(h["rank"], h["score"], h["path"]) for h in answer["results"]] == [
        (h["rank"], h["score"], h["path"]) for h in cli
    ]
    assert answer["took_ms"] >= 0 and answer["warnings"] == []
    first = answer["results"][0]
    assert set(first) == {
        "id",
        "rank",
        "score",
        "path",
        "width",
        "height",
        "thumbnail",
        "path_bytes",
        "taken_at",
        "taken_at_source",
        "camera_make",
        "camera_model",
    }
    assert first["path_bytes"] is None
    assert first["thumbnail"].startswith(f"/api/v1/thumbnails/{first['id']}?size=256")


def test_offset_min_score_and_folder(library: Library, http: httpx.Client) -> None:
    everything = http.get("/api/v1/search", params={"q": "flowers", "limit": 7}).json()["results"]
    page = http.get("/api/v1/search", params={"q": "flowers", "limit": 3, "offset": 2}).json()["results"]
    assert [(h["rank"], h["path"]) for h in page] == [(h["rank"], h["path"]) for h in everything[2:5]]
    cut = everything[3]["score"]
    kept = http.get("/api/v1/search", params={"q": "flowers", "limit": 7, "min_score": cut}).json()["results"]
    assert [h["path"] for h in kept] == [h["path"] for h in everything if h["score"] >= cut]
    sub = str(library.photos / "sub")
    under = http.get("/api/v1/search", params={"q": "flowers", "folder": sub}).json()["results"]
    assert sorted(h["path"] for h in under) == sorted([str(library.files["china"]), str(library.files["flower"])])
    relative = http.get("/api/v1/search", params={"q": "flowers", "folder": "photos/sub"})
    assert relative.status_code == 422 and "absolute" in relative.json()["error"]["message"]


def test_post_queries_text_image_id_base64_and_multipart(library: Library, http: httpx.Client) -> None:
    by_text = http.post("/api/v1/search", json={"text": "a rocket", "limit": 3}).json()["results"]
    assert by_text == http.get("/api/v1/search", params={"q": "a rocket", "limit": 3}).json()["results"]

    ids = point_ids(http)
    rocket_id = ids[str(library.files["rocket"])]
    like = http.post("/api/v1/search", json={"image_id": rocket_id, "limit": 3}).json()["results"]
    assert like[0]["id"] == rocket_id and like[0]["score"] == pytest.approx(1.0, abs=1e-4)

    data = library.files["coffee"].read_bytes()
    by_bytes = http.post("/api/v1/search", json={"image": base64.b64encode(data).decode(), "limit": 3}).json()
    assert by_bytes["results"][0]["path"] == str(library.files["coffee"])
    assert by_bytes["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    cli = cli_search_json(library, "--image", str(library.files["coffee"]), "-n", "3", "--no-server")
    assert [h["score"] for h in by_bytes["results"]] == pytest.approx([h["score"] for h in cli], abs=1e-6)

    upload = http.post("/api/v1/search", files={"image": ("q.png", data, "image/png")}, data={"limit": "3"})
    assert upload.status_code == 200
    assert [h["path"] for h in upload.json()["results"]] == [h["path"] for h in by_bytes["results"]]


def test_bad_queries_are_4xx_with_one_line_errors(http: httpx.Client) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("text and image_id", {"text": "x", "image_id": "00000000-0000-0000-0000-000000000000"}),
        ("no query", {"limit": 3}),
        ("not base64", {"image": "%%%not base64%%%"}),
        ("not an image", {"image": base64.b64encode(b"GIF89a garbage").decode()}),
        ("limit", {"text": "x", "limit": 0}),
    ]
    for what, body in cases:
        answer = http.post("/api/v1/search", json=body)
        assert answer.status_code == 422, what
        message = answer.json()["error"]["message"]
        assert message and "\n" not in message, what
    unknown = http.post("/api/v1/search", json={"image_id": "00000000-0000-0000-0000-000000000000"})
    assert unknown.status_code == 404
    assert http.post(
        "/api/v1/search", content=b"{not json", headers={"content-type": "application/json"}
    ).status_code in (
        400,
        422,
    )


def test_uploads_over_the_cap_are_refused(http: httpx.Client) -> None:
    big = b"\xff" * (64 * 2**20 + 1)
    declared = http.post("/api/v1/search", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body streams
        for _ in range(65):
            yield b"\xff" * 2**20

    streamed = http.post("/api/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_a_long_query_warns_like_the_cli(library: Library, http: httpx.Client) -> None:
    answer = http.get("/api/v1/search", params={"q": "a very long query " * 40}).json()
    assert any("77 tokens" in warning for warning in answer["warnings"])
    run = clipindex(library, "search", "a very long query " * 40, "-n", "1")
    assert run.returncode == 0 and "Warning: the query is longer than 77 tokens" in run.stderr


# --- thumbnails and files -----------------------------------------------------------------------------------


def test_thumbnails_are_cached_with_etags(library: Library, http: httpx.Client) -> None:
    hit = http.get("/api/v1/search", params={"q": "a rocket", "limit": 7}).json()["results"][0]
    first = http.get(hit["thumbnail"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert "immutable" in first.headers["cache-control"]  # the URL names its content (v=)
    image = Image.open(__import__("io").BytesIO(first.content))
    assert min(image.size) == 256 or max(image.size) < 256 + 1
    etag = first.headers["etag"]
    again = http.get(hit["thumbnail"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag
    bare = http.get(f"/api/v1/thumbnails/{hit['id']}", params={"size": 64})
    assert bare.status_code == 200 and bare.headers["cache-control"] == "private, no-cache"
    assert min(Image.open(__import__("io").BytesIO(bare.content)).size) == 64
    cached = list((library.cache / "thumbnails").rglob("*.jpg"))
    assert len(cached) >= 2
    status = http.get("/api/v1/status").json()
    assert status["thumbnail_cache"]["bytes"] == sum(p.stat().st_size for p in cached)


def test_images_are_served_by_id_only(library: Library, http: httpx.Client) -> None:
    ids = point_ids(http)
    path = library.files["coffee"]
    answer = http.get(f"/api/v1/images/{ids[str(path)]}")
    assert answer.status_code == 200 and answer.content == path.read_bytes()
    assert answer.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "point_id",
    [
        "../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "abc%00def",
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "…",
    ],
)
def test_odd_ids_and_traversal_are_404_and_read_nothing(http: httpx.Client, point_id: str) -> None:
    for kind in ("thumbnails", "images"):
        answer = http.get(f"/api/v1/{kind}/{point_id}")
        assert answer.status_code == 404, (kind, point_id, answer.status_code)
        assert b"root:" not in answer.content


# --- status, clip-retrieval ---------------------------------------------------------------------------------


def test_status_equals_the_cli(library: Library, http: httpx.Client) -> None:
    served = http.get("/api/v1/status").json()
    run = clipindex(library, "status", "--json", "--model-dir", library.model)
    assert run.returncode == 0, run.stderr
    cli = json.loads(run.stdout)
    for key in ("points", "model", "collection", "collection_model", "last_ingest", "store", "failed_files"):
        assert served[key] == cli[key], key
    assert served["points"] == len(library.files)


def test_knn_service_answers_clip_retrievals_clients(library: Library, http: httpx.Client) -> None:
    assert http.get("/indices-list").json() == ["images"]
    text = http.post("/knn-service", json={"text": "a rocket", "modality": "image", "num_images": 4}).json()
    search = http.get("/api/v1/search", params={"q": "a rocket", "limit": 4}).json()["results"]
    assert [(r["id"], r["similarity"]) for r in text] == [(h["id"], h["score"]) for h in search]
    assert set(text[0]) == {"id", "similarity", "url", "caption"}
    assert http.get(text[0]["url"]).content == Path(search[0]["path"]).read_bytes()

    data = base64.b64encode(library.files["flower"].read_bytes()).decode()
    by_image = http.post("/knn-service", json={"image": data, "num_images": 2}).json()
    assert by_image[0]["caption"] == "flower.jpg" and by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)

    vectors = np.random.default_rng(0).normal(size=512).tolist()
    by_vector = http.post("/knn-service", json={"embedding_input": vectors, "num_images": 3}).json()
    assert len(by_vector) == 3
    assert http.post("/knn-service", json={"image_url": "http://169.254.169.254/"}).status_code == 422


# --- security ------------------------------------------------------------------------------------------------


def test_host_header_must_name_the_server(server: Served) -> None:
    port = server.url.rsplit(":", 1)[1].rstrip("/")
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
        answer = httpx.get(server.url + "api/v1/status", headers={"Host": host})
        assert answer.status_code in (400, 421), host
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(server.url + "api/v1/status", headers={"Host": host}).status_code == 200, host


def test_no_cors_unless_asked(http: httpx.Client) -> None:
    answer = http.get("/api/v1/status", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in answer.headers


def test_a_token_guards_every_api_call(library: Library, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    run = clipindex(library, "ingest", library.photos, "--model-dir", library.model, "--collection", "guarded")
    assert run.returncode == 0, run.stderr
    guarded = ("--collection", "guarded")
    with serving(library.data, library.model, tmp_path / "cache", "--token-file", str(token_file), *guarded) as served:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            for path in ("/api/v1/status", "/api/v1/search?q=cat", "/api/v1/openapi.json", "/indices-list"):
                assert http.get(path).status_code == 401, path
                assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            assert http.post("/knn-service", json={"text": "cat"}).status_code == 401
            good = {"Authorization": "Bearer s3cret-token"}
            assert http.get("/api/v1/status", headers=good).status_code == 200
            assert http.get("/api/v1/status", cookies={"clipindex_token": "s3cret-token"}).status_code == 200
            assert http.get("/").status_code == 200  # the page holds no data
        run = clipindex(library, "search", "a cat", "-n", "2", "--json", *guarded)  # with the recorded token
        assert run.returncode == 0, run.stderr
        assert len(json.loads(run.stdout)) == 2


def test_a_non_loopback_host_needs_a_token(library: Library) -> None:
    env = library.env()
    env.pop("CLIPINDEX_SERVE_TOKEN", None)
    run = clipindex(library, "serve", "--host", "0.0.0.0", "--port", "0", "--model-dir", library.model, env=env)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "token" in errors[0]


def test_one_server_per_store_and_a_clean_stop(library: Library, server: Served, tmp_path: Path) -> None:
    second = clipindex(library, "serve", "--port", "0", "--model-dir", library.model)
    assert second.returncode == 1 and "already served at " + server.url in second.stderr
    with serving(library.data, library.model, tmp_path / "c", "--collection", "other", env=None) as other:
        assert other.process.poll() is None  # another collection of the same store is served on its own
        assert other.stop() == 0


# --- clipindex search through the server ---------------------------------------------------------------------

_NO_ORT = """
import json, sys
from click.testing import CliRunner
from clipindex.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
heavy = [name for name in ("onnxruntime", "numpy", "fastapi", "qdrant_edge") if name in sys.modules]
print(json.dumps({"exit": result.exit_code, "out": result.output, "heavy": heavy}))
"""


def test_search_uses_the_running_server_without_loading_the_model_or_the_store(
    library: Library, server: Served
) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _NO_ORT, "search", "a cat", "-n", "5", "--json"],
        env=library.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["exit"] == 0 and result["heavy"] == []  # no model runtime, no store engine, no web stack
    assert json.loads(result["out"]) == cli_search_json(library, "a cat", "-n", "5", "--no-server")
    table = clipindex(library, "search", "a cat", "-n", "3")
    assert table.stdout == clipindex(library, "search", "a cat", "-n", "3", "--no-server").stdout
    image = clipindex(library, "search", "--image", str(library.files["rocket"]), "-n", "3", "--json")
    assert json.loads(image.stdout)[0]["path"] == str(library.files["rocket"])


def test_search_through_the_server_fails_like_in_process(library: Library, server: Served, tmp_path: Path) -> None:
    other = tmp_path / "other-model"
    shutil.copytree(library.model, other)
    for args in (("--path-prefix", "/nowhere"), ("--threshold", "0.99")):
        served = clipindex(library, "search", "a cat", *args)
        local = clipindex(library, "search", "a cat", *args, "--no-server")
        assert (served.returncode, served.stdout, served.stderr) == (local.returncode, local.stdout, local.stderr)
    empty = clipindex(library, "search", "a cat", "--collection", "empty", "--model-dir", library.model)
    assert empty.returncode == 1 and "nothing is indexed" in empty.stderr


def test_a_dead_servers_record_is_ignored(library: Library, tmp_path: Path) -> None:
    with serving(library.data, library.model, tmp_path / "c", "--collection", "dead") as served:
        record = library.data / "dead" / "ingest.lock.serve.json"
        assert record.is_file() and oct(record.stat().st_mode & 0o777) == "0o600"
        served.process.kill()  # no clean-up: the record stays, its lock goes with the process
        served.process.wait()
    assert record.is_file()
    from clipindex.web.discovery import find_serve

    assert find_serve(library.data / "dead" / "ingest.lock") is None
    run = clipindex(library, "search", "a cat", "--collection", "dead")
    assert run.returncode == 1 and "no model yet" in run.stderr  # searched in-process, where no model is found


def test_sigterm_removes_the_record(library: Library, tmp_path: Path) -> None:
    with serving(library.data, library.model, tmp_path / "c", "--collection", "term") as served:
        record = library.data / "term" / "ingest.lock.serve.json"
        assert record.is_file()
        assert served.stop() == 0
    assert not record.exists()


# --- living with ingest ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ingest_beside_serve_and_eight_clients(library: Library, tmp_path: Path, sample_photos: dict[str, Any]) -> None:
    """A cron ingest runs while serve answers 8 parallel clients: every answer is 200, the ingest never waits
    more than 1 s (--wait 1 would fail it), and the new photos show in the next query without a restart. The
    final store is exact."""
    data = tmp_path / "data"
    first = tmp_path / "first"
    first.mkdir()
    for name in ("astronaut", "chelsea"):
        sample_photos[name].save(first / f"{name}.jpg")
    env = serve_env(data, tmp_path / "cache")
    run = clipindex(library, "ingest", first, "--model-dir", library.model, env=env)
    assert run.returncode == 0, run.stderr
    more = tmp_path / "more"
    more.mkdir()
    rng = np.random.default_rng(1)
    names = list(sample_photos)
    for i in range(60):
        image = sample_photos[names[i % len(names)]].rotate(int(rng.integers(1, 359)), expand=True)
        image.save(more / f"p{i:03d}.jpg", quality=90)

    with serving(data, library.model, tmp_path / "cache", env=env) as served:
        stop = threading.Event()
        codes: list[int] = []
        counts: list[int] = []

        def client() -> None:
            with httpx.Client(base_url=served.url, timeout=60) as http:
                while not stop.is_set():
                    answer = http.get("/api/v1/search", params={"q": "a photo", "limit": 100})
                    codes.append(answer.status_code)
                    if answer.status_code == 200:
                        counts.append(len(answer.json()["results"]))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        try:
            ingest = clipindex(
                library, "ingest", more, "--model-dir", library.model, "--wait", "1", "--batch-size", "10", env=env
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert ingest.returncode == 0, ingest.stderr
        assert codes and set(codes) == {200}, sorted(set(codes))
        with httpx.Client(base_url=served.url, timeout=60) as http:
            after = http.get("/api/v1/search", params={"q": "a photo", "limit": 100}).json()["results"]
            status = http.get("/api/v1/status").json()
        assert len(after) == 62 and status["points"] == 62
        assert max(counts) == 62 or len(after) == 62
    summary = json.loads(ingest.stdout.strip().splitlines()[-1]) if ingest.stdout.strip().startswith("{") else None
    assert summary is None or summary["points"] == 62


# --- the page, in a real browser ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_in_headless_chromium(library: Library, server: Served, tmp_path: Path) -> None:
    """Type a query and see thumbnails; open one and ask for more like it; upload an image; a file named like
    markup is shown as text and runs nothing; ?q= in the address runs its search on load; keyboard only works."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    errors: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        # the test's own probes are evaluated scripts, which the page's CSP forbids; without the CSP the page must
        # still show hostile names as text (the CSP is checked on its own above)
        context = browser.new_context(bypass_csp=True, viewport={"width": 1200, "height": 800})
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
        page.goto(server.url)
        page.fill("#q", "a cat")
        page.wait_for_selector("#results li img")
        page.wait_for_function(
            "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        tiles = page.locator("#results li")
        assert tiles.count() == len(library.files)
        expected = http_search(server, "a cat", len(library.files))
        names = page.locator("#results .name").all_text_contents()
        assert names == [Path(h["path"]).name for h in expected]
        scores = page.locator("#results .score").all_text_contents()
        assert scores == [f"{h['score']:.3f}" for h in expected]
        assert HOSTILE in names  # the markup-like name shows as text
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#results img[src='x']").count() == 0
        assert not page.locator("#drop-zone").is_visible() and not page.locator("#token-form").is_visible()
        assert "q=a+cat" in page.url or "q=a%20cat" in page.url
        page.screenshot(path=str(tmp_path / "page.png"))

        rocket = next(i for i, h in enumerate(expected) if h["path"] == str(library.files["rocket"]))
        tiles.nth(rocket).locator("button").click()
        page.wait_for_selector("#viewer[open]")
        assert page.locator("#viewer-path").text_content() == str(library.files["rocket"])
        page.click("#more-like-this")
        page.wait_for_function("document.querySelector('#message').textContent.startsWith('7 results for images like')")
        assert page.locator("#results .name").first.text_content() == "rocket.jpg"
        assert page.locator("#results .score").first.text_content() == "1.000"

        page.set_input_files("#upload", str(library.files["flower"]))
        page.wait_for_function(
            "document.querySelector('#message').textContent.includes('results for the image flower.jpg')"
        )
        assert page.locator("#results .name").first.text_content() == "flower.jpg"

        page.fill("#folder", str(library.photos / "sub"))
        page.fill("#q", "")
        page.keyboard.press("Tab")
        page.focus("#q")
        page.keyboard.type("flowers")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelectorAll('#results li').length === 2")
        # to the folder box, the upload button, the four filters (after, before, camera, sort), the duplicates
        # button, then the first result
        for _ in range(8):
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.closest('#results') !== null")
        page.keyboard.press("Enter")
        page.wait_for_selector("#viewer[open]")
        page.keyboard.press("Escape")
        page.wait_for_selector("#viewer:not([open])", state="attached")

        page.fill("#folder", "")
        page.fill("#q", "a cat - 2:a cup of coffee")
        page.wait_for_function("document.querySelector('#message').textContent.includes('results for “a cat - 2:')")
        combined = httpx.post(
            server.url + "api/v1/search",
            json={"add": [{"text": "a cat"}], "subtract": [{"text": "a cup of coffee", "weight": 2}], "limit": 60},
            timeout=60,
        ).json()["results"]
        assert page.locator("#results .name").all_text_contents() == [Path(h["path"]).name for h in combined]

        linked = context.new_page()
        linked.goto(server.url + "?q=a%20rocket")
        linked.wait_for_selector("#results li")
        assert linked.locator("#q").input_value() == "a rocket"
        linked.wait_for_function("/photos/.test(document.querySelector('#status').textContent)")
        assert f"{len(library.files)} photos" in (linked.locator("#status").text_content() or "")
        browser.close()
    assert errors == []


def http_search(server: Served, text: str, limit: int) -> list[dict[str, Any]]:
    answer = httpx.get(server.url + "api/v1/search", params={"q": text, "limit": limit}, timeout=60)
    return list(answer.json()["results"])


def test_the_record_is_found_without_importing_the_store(tmp_path: Path) -> None:
    from clipindex.store.edge import EdgeStore
    from clipindex.web.discovery import embedded_lock_path

    for collection in ("images", "other.v2"):
        assert embedded_lock_path(tmp_path, collection) == EdgeStore(tmp_path, collection).lock_path


def test_query_arithmetic_through_the_api(library: Library, http: httpx.Client) -> None:
    """``add`` and ``subtract`` terms give the CLI's combined query: same ranks and scores."""
    rocket = library.files["rocket"]
    body = {
        "text": "a cat on a sofa",
        "add": [{"image": base64.b64encode(rocket.read_bytes()).decode(), "weight": 0.5}],
        "subtract": [{"text": "a cup of coffee", "weight": 2}],
        "limit": 7,
    }
    served = http.post("/api/v1/search", json=body).json()["results"]
    cli = cli_search_json(
        library, "a cat on a sofa", "+", f"0.5:{rocket}", "-", "2:a cup of coffee", "-n", "7", "--no-server"
    )
    assert [h["path"] for h in served] == [h["path"] for h in cli]
    assert [h["score"] for h in served] == pytest.approx([h["score"] for h in cli], abs=1e-5)
    ids = point_ids(http)
    by_id = http.post(
        "/api/v1/search", json={"add": [{"image_id": ids[str(rocket)]}, {"text": "night", "weight": 0.1}]}
    )
    assert by_id.status_code == 200 and by_id.json()["results"][0]["path"] == str(rocket)
    cancel = http.post("/api/v1/search", json={"text": "a cat", "subtract": [{"text": "a cat"}]})
    assert cancel.status_code == 422 and "cancel out" in cancel.json()["error"]["message"]
    assert http.post("/api/v1/search", json={"add": []}).status_code == 422
