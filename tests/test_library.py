"""The library API of issue 14 on the real tiny model: every input kind against ingest's own vectors, per-item
failures, URLs from a real local HTTP server, async and threads, top-k, scaled similarity, classify, devices."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import io
import os
import socket
import struct
import termios
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image, ImageOps
from reference import cosine_rows

import clipindex.model.encode as encode_module
from clipindex.errors import DeviceError, DeviceFallbackWarning, ImageError, ImageTooLargeError
from clipindex.images.inputs import BASE64_MIN_CHARS, string_kind
from clipindex.ingest.pipeline import ingest
from clipindex.ingest.points import absolute, point_id
from clipindex.model.encode import CPU, CUDA, Embedder, OnnxTower, parse_device, provider_entries
from clipindex.model.similarity import top_k
from clipindex.store.edge import EdgeStore

#: photos small enough that JPEG draft decoding does not apply (so a PIL image or an array decodes like the file)
SMALL = ("chelsea.jpg", "rotated.jpg", "coffee.png", "rgba.png")
#: a 3 MP JPEG: draft decoding applies (1/4 scale), for every kind that carries the file's bytes
DRAFTED = "big.jpg"


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory, sample_photos: dict[str, Any]) -> Path:
    from photos import camera_size

    folder = tmp_path_factory.mktemp("library-photos")
    sample_photos["chelsea"].save(folder / "chelsea.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: ingest rotates it 90 degrees
    sample_photos["rocket"].save(folder / "rotated.jpg", quality=90, exif=exif.tobytes())
    sample_photos["coffee"].save(folder / "coffee.png")
    rgba = sample_photos["astronaut"].convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, rgba.size[0], dtype=np.uint8), (rgba.size[1], 1))
    rgba.putalpha(Image.fromarray(alpha, "L"))
    rgba.save(folder / "rgba.png")
    camera_size(sample_photos["china"], megapixels=3.0).save(folder / DRAFTED, quality=90)
    return folder


@pytest.fixture(scope="module")
def embedder(tiny_model_dir: Path) -> Embedder:
    return Embedder(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def ingested(photo_dir: Path, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """file name -> the vector `ingest` stored for it (the reference every input kind must match)."""
    with EdgeStore(tmp_path_factory.mktemp("library-store"), "images") as store:
        report = ingest(photo_dir, embedder, store)
        assert report.indexed == len(SMALL) + 1 and not report.failed
        ids = {name: point_id(absolute(photo_dir / name)) for name in (*SMALL, DRAFTED)}
        vectors = store.get_vectors(list(ids.values()))
    return {name: vectors[pid] for name, pid in ids.items()}


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/redirect-to-ftp":  # urllib alone would follow it
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/chelsea.jpg")
            self.end_headers()
            return
        if self.path.startswith("/chunked/"):  # no Content-Length: the size cap must hold while reading
            data = (Path(self.directory) / self.path.removeprefix("/chunked/")).read_bytes()
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def http_base(photo_dir: Path) -> Iterator[str]:
    """A real HTTP server on localhost serving ``photo_dir``."""

    def handler(*args: Any, **kwargs: Any) -> _Handler:
        return _Handler(*args, directory=str(photo_dir), **kwargs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def kinds_of(path: Path, http_base: str) -> dict[str, Any]:
    """The same image file as every kind of input the library accepts."""
    data = path.read_bytes()
    encoded = base64.b64encode(data).decode("ascii")
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    items: dict[str, Any] = {
        "Path": path,
        "str path": str(path),
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "file object": path.open("rb"),
        "BytesIO": io.BytesIO(data),
        "data URI": f"data:{mime};base64,{encoded}",
        "base64": encoded,
        "base64 with line breaks": "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)),
        "URL": f"{http_base}/{path.name}",
        "URL without Content-Length": f"{http_base}/chunked/{path.name}",
    }
    items["PIL image (Image.open, not loaded)"] = Image.open(path)  # decoded from its file, as ingest does
    items["PIL image (Image.open of a BytesIO, not loaded)"] = Image.open(io.BytesIO(data))
    if path.name != DRAFTED:  # decoded pixels: no draft decoding, so only files too small for it compare exactly
        items["PIL image (loaded)"] = Image.open(path).copy()  # copy() keeps the EXIF orientation tag
        upright = ImageOps.exif_transpose(Image.open(path))
        items["HWC uint8 array"] = np.asarray(upright)
    return items


@pytest.mark.slow
def test_every_input_kind_gives_ingests_vector(
    embedder: Embedder, photo_dir: Path, ingested: dict[str, np.ndarray], http_base: str
) -> None:
    for name in (*SMALL, DRAFTED):
        kinds = kinds_of(photo_dir / name, http_base)
        try:
            got = embedder.encode_images(list(kinds.values()), batch_size=5)
        finally:
            kinds["file object"].close()
        assert got.shape == (len(kinds), embedder.dimension)
        cosines = cosine_rows(got, np.repeat(ingested[name][None], len(kinds), axis=0))
        for kind, cosine in zip(kinds, cosines, strict=True):
            assert cosine >= 0.99999, f"{name} as {kind}: cosine {cosine} with ingest's vector"
    # the same bytes decode to the same pixels, so one at a time they are the same vector as ingest's
    alone = embedder.encode_images((photo_dir / "rotated.jpg").read_bytes())
    np.testing.assert_allclose(alone[0], ingested["rotated.jpg"], atol=1e-6)


def test_the_rule_that_tells_base64_from_a_path(photo_dir: Path) -> None:
    encoded = base64.b64encode((photo_dir / "chelsea.jpg").read_bytes()).decode()
    assert string_kind(encoded) == "base64"
    assert string_kind(f"data:image/jpeg;base64,{encoded}") == "data_uri"
    assert string_kind("DATA:image/png;base64,AAAA") == "data_uri"
    assert string_kind("HTTPS://example.com/a.jpg") == "url"
    long_name = "photos/" + "a" * BASE64_MIN_CHARS + ".jpg"  # a '.' is not base64
    for path in ("images/chelsea.jpg", str(photo_dir / "chelsea.jpg"), long_name, "AAAA", "a" * 65):
        assert string_kind(path) == "path", path  # (65 characters: not a multiple of 4)


def test_mixed_batch_with_three_corrupt_items(embedder: Embedder, photo_dir: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((photo_dir / "chelsea.jpg").read_bytes()[:2000])
    good = [photo_dir / "chelsea.jpg", (photo_dir / "coffee.png").read_bytes(), Image.open(photo_dir / "rgba.png")]
    items: list[Any] = [good[0], b"this is not an image", good[1], truncated, good[2], str(tmp_path / "missing.jpg")]
    expected = embedder.encode_images(good)
    vectors = embedder.encode_images(items, errors="none", batch_size=2)
    assert [v is None for v in vectors] == [False, True, False, True, False, True]
    got = np.stack([v for v in vectors if v is not None])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    detailed = embedder.encode_images_detailed(items, batch_size=4)
    assert [r.vector is None for r in detailed] == [v is None for v in vectors]
    reasons = [r.error.reason if r.error is not None else None for r in detailed]
    assert reasons[0] is None and reasons[2] is None and reasons[4] is None
    assert reasons[1] is not None and "not an image" in reasons[1]
    assert reasons[3] is not None and "truncated" in reasons[3]
    assert reasons[5] is not None and "cannot open" in reasons[5]
    error = detailed[1].error
    assert error is not None and error.path == "item 1 (bytes, 20 bytes)"
    vector, error = detailed[0]  # unpacks as (vector, error)
    assert vector is not None and error is None

    with pytest.raises(ImageError) as raised:  # the default: the first bad item raises, named
        embedder.encode_images(items)
    assert raised.value.path == "item 1 (bytes, 20 bytes)" and str(raised.value).startswith("item 1 (bytes")
    with pytest.raises(ValueError, match="errors"):
        embedder.encode_images(items, errors="ignore")  # type: ignore[call-overload]


def test_data_uris_and_base64_that_cannot_be_images(embedder: Embedder, photo_dir: Path) -> None:
    import urllib.parse

    data = (photo_dir / "coffee.png").read_bytes()
    percent = "data:image/png," + urllib.parse.quote_from_bytes(data)  # RFC 2397 without ;base64
    good = embedder.encode_images([percent, data])
    np.testing.assert_allclose(good[0], good[1], atol=1e-6)
    items = [
        "data:text/plain;base64," + base64.b64encode(data).decode(),
        "data:image/png;base64",  # no comma
        "data:image/png;base64,@@@@",
        "A" * 63 + "!" + "A" * 64,  # not base64 (a '!'), so a path, which does not exist
        base64.b64encode(b"x" * 96).decode(),  # base64, but of no image
    ]
    reasons = [r.error.reason if r.error else "" for r in embedder.encode_images_detailed(items)]
    assert "media type 'text/plain'" in reasons[0]
    assert "malformed data URI" in reasons[1]
    assert "invalid base64" in reasons[2]
    assert "cannot open" in reasons[3]
    assert "not an image" in reasons[4]


def test_bad_arrays_and_objects_are_item_errors(embedder: Embedder, sample_photos: dict[str, Any]) -> None:
    rgb = np.asarray(sample_photos["chelsea"])
    items: list[Any] = [
        rgb,
        rgb.transpose(2, 0, 1).copy(),  # CHW
        rgb.astype(np.float32),
        np.zeros((0, 10, 3), np.uint8),
        12345,
        io.StringIO("text"),
        rgb[:, :, :1],  # one channel: grey
    ]
    results = embedder.encode_images_detailed(items)
    reasons = [r.error.reason if r.error else "" for r in results]
    assert results[0].vector is not None and results[6].vector is not None
    assert "transpose(1, 2, 0)" in reasons[1]
    assert "dtype is float32" in reasons[2]
    assert "no pixels" in reasons[3]
    assert "unsupported input type builtins.int" in reasons[4]
    assert "text mode" in reasons[5]
    grey = embedder.encode_images(Image.fromarray(rgb[:, :, 0], "L"))
    np.testing.assert_allclose(results[6].vector, grey[0], atol=1e-6)
    batch = embedder.encode_images(np.stack([rgb, rgb[::-1]]))  # [N, H, W, C]: N images
    assert batch.shape == (2, embedder.dimension)
    np.testing.assert_allclose(batch[0], results[0].vector, atol=1e-6)


def test_the_pixel_limit_applies_to_every_kind(tiny_model_dir: Path, photo_dir: Path) -> None:
    small_limit = Embedder(tiny_model_dir, device="cpu", max_pixels=10_000)
    data = (photo_dir / "chelsea.jpg").read_bytes()
    items: list[Any] = [data, Image.open(photo_dir / "chelsea.jpg"), np.zeros((200, 200, 3), np.uint8)]
    for result in small_limit.encode_images_detailed(items):
        assert isinstance(result.error, ImageTooLargeError), result


@pytest.mark.slow
def test_urls_from_a_local_server(tiny_model_dir: Path, http_base: str, photo_dir: Path) -> None:
    embedder = Embedder(tiny_model_dir, device="cpu", url_timeout_s=1.0)
    url = f"{http_base}/chelsea.jpg"
    reference = embedder.encode_images(photo_dir / "chelsea.jpg")
    np.testing.assert_allclose(embedder.encode_images(url), reference, atol=1e-6)
    refused = embedder.encode_images_detailed([url], allow_urls=False)[0].error
    assert refused is not None and "allow_urls=False" in refused.reason
    assert Embedder(tiny_model_dir, allow_urls=False).encode_images_detailed(url)[0].error is not None

    def reason(item: str, on: Embedder = embedder) -> str:
        error = on.encode_images_detailed([item])[0].error
        assert error is not None, item
        return error.reason

    assert "HTTP 404" in reason(f"{http_base}/missing.jpg")
    assert "non-http(s)" in reason(f"{http_base}/redirect-to-ftp")
    capped = Embedder(tiny_model_dir, device="cpu", max_url_bytes=1000)
    assert "over the limit of 1,000 bytes" in reason(url, capped)  # declared by Content-Length
    assert "over the limit of 1,000 bytes" in reason(f"{http_base}/chunked/chelsea.jpg", capped)  # counted
    secret = f"{http_base}/missing.jpg?token=s3cret"
    error = embedder.encode_images_detailed([secret])[0].error
    assert error is not None and "s3cret" not in str(error) and error.path.endswith("/missing.jpg?…")

    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        started = time.monotonic()
        assert "timed out" in reason(f"http://127.0.0.1:{silent.getsockname()[1]}/x.jpg")
        assert time.monotonic() - started < 5
    finally:
        silent.close()


@pytest.mark.slow
def test_aencode_keeps_the_event_loop_responsive(tiny_model_dir: Path, photo_dir: Path) -> None:
    """A heartbeat coroutine ticks every <= 50 ms while 100 images are encoded on worker threads."""
    names = ("chelsea.jpg", "rotated.jpg", "coffee.png", "rgba.png")
    items: list[Any] = [(photo_dir / names[i % 4]).read_bytes() for i in range(100)]
    embedder = Embedder(tiny_model_dir, device="cpu")
    embedder.encode_text("warm")  # load the text tower; the vision tower loads during the run

    async def main() -> tuple[np.ndarray, np.ndarray, list[float]]:
        done = asyncio.Event()
        gaps: list[float] = []

        async def heartbeat() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.02)
        vectors, texts = await asyncio.gather(embedder.aencode_images(items), embedder.aencode_text(["a cat"] * 8))
        done.set()
        await beat
        return vectors, texts, gaps

    vectors, texts, gaps = asyncio.run(main())
    assert vectors.shape == (100, embedder.dimension) and texts.shape == (8, embedder.dimension)
    assert len(gaps) >= 10
    print(f"heartbeat: {len(gaps)} ticks, longest gap {max(gaps) * 1000:.1f} ms")
    assert max(gaps) <= 0.05, f"the event loop stalled for {max(gaps) * 1000:.0f} ms"
    np.testing.assert_allclose(vectors[:4], embedder.encode_images(items[:4]), atol=1e-5)


_FIRST_TEXT_QUERY = """
import asyncio, json, sys, time
import numpy as np
from clipindex import Embedder

embedder = Embedder(sys.argv[1], device="cpu")


async def main():
    done, gaps = asyncio.Event(), []

    async def heartbeat():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    vectors = await embedder.aencode_text(["a photo of a cat"])
    done.set()
    await beat
    return vectors, gaps


vectors, gaps = asyncio.run(main())
same = bool(np.allclose(vectors, embedder.encode_text(["a photo of a cat"]), atol=1e-6))
print(json.dumps({"ticks": len(gaps), "longest_gap_s": max(gaps), "same": same}))
"""


def test_the_first_aencode_text_keeps_the_event_loop_responsive(tiny_model_dir: Path) -> None:
    """A cold embedder's first text query loads the tokenizer and the text tower on a worker thread without
    holding the GIL for more than 50 ms at a time: a heartbeat coroutine keeps ticking. In a fresh process, as
    an application has it (not pytest's heap, whose garbage collections would be measured too)."""
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _FIRST_TEXT_QUERY, str(tiny_model_dir)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout)
    assert measured["same"] and measured["ticks"] >= 10
    assert measured["longest_gap_s"] <= 0.05, f"the event loop stalled for {measured['longest_gap_s'] * 1000:.0f} ms"


class _CountingTower(OnnxTower):
    """The real tower, counting how many sessions get created."""

    created: ClassVar[list[str]] = []

    def __init__(self, path: Path, *args: Any, **kwargs: Any) -> None:
        _CountingTower.created.append(path.name)
        time.sleep(0.05)  # widen the window in which a second thread could start its own load
        super().__init__(path, *args, **kwargs)


def test_concurrent_calls_share_one_model(
    tiny_model_dir: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode_module, "OnnxTower", _CountingTower)
    _CountingTower.created = []
    embedder = Embedder(tiny_model_dir, device="cpu")
    paths = [photo_dir / name for name in SMALL]

    async def many() -> list[Any]:
        calls = [embedder.aencode_images([p]) for p in paths] + [embedder.aencode_text(["a cat"]) for _ in range(4)]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(many())
    assert sorted(_CountingTower.created) == ["text.onnx", "vision.onnx"]
    single = Embedder(tiny_model_dir, device="cpu").encode_images(paths, batch_size=1)
    np.testing.assert_allclose(np.concatenate(results[: len(paths)]), single, atol=1e-6)


def test_two_threads_encoding_at_once_get_one_threads_vectors(
    tiny_model_dir: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [photo_dir / name for name in (*SMALL, *SMALL, *SMALL)]
    texts = ["a cat", "a rocket", "a cup of coffee"]
    expected = Embedder(tiny_model_dir, device="cpu").encode_images(items, batch_size=4)
    expected_text = Embedder(tiny_model_dir, device="cpu").encode_text(texts)
    monkeypatch.setattr(encode_module, "OnnxTower", _CountingTower)
    _CountingTower.created = []
    shared = Embedder(tiny_model_dir, device="cpu")  # nothing loaded yet: both threads race for the sessions
    start = threading.Barrier(2)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    failures: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            start.wait()
            out[number] = (shared.encode_images(items, batch_size=4), shared.encode_text(texts))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and set(out) == {0, 1}
    assert sorted(_CountingTower.created) == ["text.onnx", "vision.onnx"]  # one session per tower
    for images, text in out.values():
        np.testing.assert_allclose(images, expected, atol=1e-6)
        np.testing.assert_allclose(text, expected_text, atol=1e-6)


def brute_force_top_k(queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's cosine, each row sorted by (-score, index) in plain Python."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    indices, scores = [], []
    for row in q:
        pairs = sorted(((-float(np.float32(row @ cand)), j) for j, cand in enumerate(c)))[:k]
        indices.append([j for _, j in pairs])
        scores.append([-s for s, _ in pairs])
    return np.array(indices), np.array(scores)


def test_top_k_both_ways_against_brute_force(embedder: Embedder, photo_dir: Path) -> None:
    rng = np.random.default_rng(7)
    candidates = rng.standard_normal((40, 16)).astype(np.float32)
    candidates[[5, 17, 33]] = candidates[9]  # ties: the lower index comes first
    queries = np.concatenate([rng.standard_normal((5, 16)).astype(np.float32), candidates[9:10] * 3])
    for k in (1, 3, 10, 40, 100):
        for q, c in ((queries, candidates), (candidates, queries)):  # both directions
            got = top_k(q, c, k)
            want_indices, want_scores = brute_force_top_k(q, c, k)
            np.testing.assert_array_equal(got.indices, want_indices)
            np.testing.assert_allclose(got.scores, want_scores, atol=1e-6)
    assert list(top_k(queries[5], candidates, 4).indices[0]) == [5, 9, 17, 33]

    images = embedder.encode_images([photo_dir / name for name in SMALL])
    texts = embedder.encode_text(["a cat", "a rocket", "coffee", "an astronaut", "a dog", "a red car"])
    for q, c in ((texts, images), (images, texts)):  # texts -> images, images -> texts
        got = embedder.top_k(q, c, 3)
        want_indices, want_scores = brute_force_top_k(q, c, 3)
        assert got.indices.shape == (len(q), 3) and got.indices.dtype == np.int64
        np.testing.assert_array_equal(got.indices, want_indices)
        np.testing.assert_allclose(got.scores, want_scores, atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        top_k(queries, candidates, 0)


def test_scaled_similarity_and_classify_equal_transformers(embedder: Embedder, torch_clip, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tokenizer, processor = torch_clip
    labels = ["a cat", "a rocket", "a cup of coffee", "an astronaut"]
    texts = [f"a photo of {label}" for label in labels]
    names = ("chelsea.jpg", "coffee.png")
    pil = [Image.open(photo_dir / name).convert("RGB") for name in names]
    ids = tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=processor(images=pil, return_tensors="pt")["pixel_values"])
    reference_logits = logits.logits_per_image.numpy()
    reference_probabilities = logits.logits_per_image.softmax(dim=-1).numpy()

    image_vectors = embedder.encode_images([photo_dir / name for name in names])
    text_vectors = embedder.encode_text(texts)
    assert embedder.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    np.testing.assert_allclose(
        embedder.similarity(image_vectors, text_vectors, scaled=True), reference_logits, atol=5e-3
    )
    np.testing.assert_allclose(
        embedder.similarity(image_vectors, text_vectors, scaled=True),
        embedder.logit_scale * embedder.similarity(image_vectors, text_vectors),
        rtol=1e-6,
    )
    # the library's classify: paths, bytes and a PIL image, no store
    items: list[Any] = [photo_dir / names[0], (photo_dir / names[1]).read_bytes()]
    results = embedder.classify(items, labels, template="a photo of {}")
    assert [r.image for r in results] == [
        str(photo_dir / names[0]),
        f"item 1 (bytes, {len(items[1]):,} bytes)",
    ]
    got = np.array([[{s.label: s.probability for s in r.labels}[label] for label in labels] for r in results])
    np.testing.assert_allclose(got, reference_probabilities, atol=1e-4, rtol=0)


def test_devices(tiny_model_dir: Path) -> None:
    assert parse_device("auto") == ("auto", 0)
    assert parse_device("cuda") == ("cuda", 0)
    assert parse_device("CUDA:1") == ("cuda", 1)
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0"):
        with pytest.raises(DeviceError, match="cuda:N"):
            parse_device(bad)
    assert provider_entries([CUDA, CPU], 1) == [(CUDA, {"device_id": "1"}), CPU]
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu: the CPU-build errors below do not apply")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="no onnxruntime-gpu") as raised:
            Embedder(tiny_model_dir, device=device)
        assert f"--device {device}:" in str(raised.value) and "--device cpu" in str(raised.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeviceFallbackWarning)  # the CPU build: auto is the CPU, without a notice
        auto = Embedder(tiny_model_dir, device="auto")
        assert auto.planned_provider == CPU and auto.provider("text") == CPU
    # ONNX Runtime takes the provider list with cuda:1's device_id (and, without CUDA, runs on the CPU)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Specified provider 'CUDAExecutionProvider'", UserWarning)
        tower = OnnxTower(tiny_model_dir / "text.onnx", [CUDA, CPU], cuda_device_id=1)
    assert tower.provider == CPU


def test_devices_with_onnxruntime_gpu_and_no_usable_gpu(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu installed, no GPU (or no driver): cuda says so; auto runs on the CPU after one notice."""
    import onnxruntime as ort

    from clipindex.model.encode import cuda_device_count

    if CUDA not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (this onnxruntime is the CPU build: see test_devices)")
    count, detail = cuda_device_count()
    if count:
        pytest.skip(f"a CUDA device is usable here ({detail})")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="onnxruntime-gpu is installed but") as raised:
            Embedder(tiny_model_dir, device=device).encode_text("a cat")
        assert f"--device {device}:" in str(raised.value) and "--device cpu" in str(raised.value)
    monkeypatch.setattr(encode_module, "_fallback_noticed", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            auto = Embedder(tiny_model_dir, device="auto")
            assert auto.encode_text("a cat").shape == (1, auto.dimension) and auto.provider("text") == CPU
    notices = [w for w in caught if issubclass(w.category, DeviceFallbackWarning)]
    assert len(notices) == 1 and "runs on the CPU" in str(notices[0].message)


def _read_all(fd: int) -> str:
    """Everything written to the terminal so far: a pty hands it over in chunks."""
    import select

    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def test_progress_bar_only_on_a_terminal(
    embedder: Embedder, photo_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [photo_dir / name for name in SMALL]
    embedder.encode_images(items, progress=True)
    assert capfd.readouterr().err == ""  # not a terminal: no bar
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns, not 0
    with os.fdopen(terminal, "w") as tty:
        monkeypatch.setattr("sys.stderr", tty)
        embedder.encode_images(items, progress=True, batch_size=2)
        tty.flush()
        shown = _read_all(controller)
    os.close(controller)
    assert "4/4" in shown and "img" in shown


def test_cli_device_option_takes_cuda_n(tiny_model_dir: Path, photo_dir: Path) -> None:
    import onnxruntime as ort
    from click.testing import CliRunner

    from clipindex.cli.commands import cli

    args = ["classify", str(photo_dir / "chelsea.jpg"), "--labels", "a cat,a dog", "--model-dir", str(tiny_model_dir)]
    bad = CliRunner().invoke(cli, [*args, "--device", "gpu"])
    assert bad.exit_code == 2 and "cuda:N" in bad.output
    assert CliRunner().invoke(cli, [*args, "--device", "cpu"]).exit_code == 0
    if CUDA not in ort.get_available_providers():
        result = CliRunner().invoke(cli, [*args, "--device", "cuda:1"])
        assert result.exit_code == 1 and "--device cuda:1: no onnxruntime-gpu" in result.output


# --- the URL deadline holds however slowly a server sends ----------------------------------------------------

#: how each slow server misbehaves: what it sends at once, then what it drips one byte every 50 ms
SLOW_SERVERS = {
    "a body slower than the deadline": (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 100000),
    "headers slower than the deadline": (b"", b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * 100000),
    "a chunked body slower than the deadline": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"".join(b"1\r\nx\r\n" for _ in range(20000)),
    ),
}


@pytest.fixture
def slow_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A loopback server that answers every connection by dripping bytes: its URL."""
    head, drip = SLOW_SERVERS[request.param]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                if head:
                    conn.sendall(head)
                for i in range(len(drip)):
                    if stop.wait(0.05):
                        return
                    conn.sendall(drip[i : i + 1])
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.jpg"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("slow_server", sorted(SLOW_SERVERS), indirect=True)
def test_the_url_deadline_covers_headers_and_body_however_slow(slow_server: str) -> None:
    from clipindex.images.inputs import UrlPolicy, fetch_url

    started = time.monotonic()
    with pytest.raises(ImageError) as caught:
        fetch_url(slow_server, UrlPolicy(allow=True, timeout_s=1.0, max_bytes=1 << 26))
    elapsed = time.monotonic() - started
    assert "timed out after 1 s (url_timeout_s)" in caught.value.reason
    assert "\n" not in caught.value.reason
    assert 0.9 <= elapsed < 3.0, elapsed  # the drip alone would take 100 s or more
