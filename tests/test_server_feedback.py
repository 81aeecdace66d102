"""Server waits you can see: the wait is announced at once, and what waiting cannot cure (a host name that does not
resolve, a TLS certificate that does not verify, a refused API key) fails at once, naming the URL, never the key.
The real CLI in a subprocess against the local REST stand-in (tests/tcp_proxy.py: real qdrant-client, real HTTP)."""

from __future__ import annotations

import os
import queue
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from tcp_proxy import QdrantRestServer, TcpProxy

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-key-never-printed"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "QDRANT_API_KEY" and not k.startswith("CLIPINDEX_")}
    out.update(PYTHONPATH=str(REPO), CLIPINDEX_STATE_DIR=str(tmp_path / "state"), CLIPINDEX_CACHE_DIR="off")
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (80 * i, 20, 200)).save(root / f"p{i}.png")
    return root


def clipindex(*args: str | Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )
    return proc, time.monotonic() - started


@pytest.mark.slow
def test_the_wait_is_announced_at_once_and_the_run_goes_on_when_the_server_comes(
    photos: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    with QdrantRestServer() as server, TcpProxy(server.port) as proxy:
        proxy.cut()  # the server is down (connection refused) when the ingest starts
        args = ["ingest", photos, "--model-dir", tiny_model_dir, "--qdrant-url", proxy.url, "--timeout", "60"]
        child = subprocess.Popen(
            [sys.executable, "-m", "clipindex", *map(str, args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert child.stderr is not None
        stream = child.stderr
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        said = ""
        while "waiting for Qdrant" not in said and time.monotonic() < deadline:
            try:
                said = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
        assert said.strip() == f"waiting for Qdrant at {proxy.url} (up to 60 s)"
        assert child.poll() is None, "the message must come while waiting, not with the failure"
        proxy.restore()
        out, _ = child.communicate(timeout=90)
    reader.join(timeout=5)
    assert child.returncode == 0, list(lines.queue)
    assert "indexed 3" in out


@pytest.mark.slow
def test_a_host_name_that_does_not_resolve_fails_at_once(
    photos: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    url = "https://nonexistent.invalid:6333"
    args = ["ingest", photos, "--model-dir", tiny_model_dir, "--qdrant-url", url, "--timeout", "120"]
    result, elapsed = clipindex(*args, env=dict(env, QDRANT_API_KEY=SECRET))
    assert result.returncode == 69, result.stderr
    assert elapsed < 20, f"retried a name that does not resolve for {elapsed:.1f} s"
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error: ")]
    assert url in line and "does not resolve" in line
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_refused_api_key_fails_at_once_with_exit_1(photos: Path, tiny_model_dir: Path, env: dict[str, str]) -> None:
    with QdrantRestServer(api_key=SECRET) as server:
        url = server.url
        args = ["status", "--qdrant-url", url, "--timeout", "120"]
        result, elapsed = clipindex(*args, env=dict(env, QDRANT_API_KEY="wrong-" + SECRET))
    assert result.returncode == 1 and elapsed < 20, (result.stderr, elapsed)
    assert url in result.stderr and "check the API key" in result.stderr
    assert SECRET not in result.stdout + result.stderr and "waiting for Qdrant" not in result.stderr


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (no client trusts it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.slow
def test_a_tls_certificate_that_does_not_verify_fails_at_once(untrusted_tls_server: str, env: dict[str, str]) -> None:
    args = ["status", "--qdrant-url", untrusted_tls_server, "--timeout", "120"]
    result, elapsed = clipindex(*args, env=dict(env, QDRANT_API_KEY=SECRET))
    assert result.returncode == 69 and elapsed < 20, (result.stderr, elapsed)
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("Error: ")]
    assert untrusted_tls_server in line and "TLS certificate" in line
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.slow
def test_ctrl_c_during_migrate_has_its_own_message(
    photos: Path, tiny_model_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """SIGINT while migrate copies (its upserts slowed down by the server): migrate's message, which says that
    re-running finishes the copy (not ingest's "finished batches are kept"), and exit 130."""
    import signal

    from clipindex.ingest.pipeline import ingest
    from clipindex.model.encode import Embedder
    from clipindex.store.edge import EdgeStore

    data = tmp_path / "data"
    with EdgeStore(data, "images") as store:
        ingest(photos, Embedder(tiny_model_dir), store)
    upserting = threading.Event()

    def slow_upserts(route: str) -> None:
        if route == "upsert":
            upserting.set()
            time.sleep(1.0)

    with QdrantRestServer() as server:
        server.before_request = slow_upserts
        args = ["migrate", "--to", server.url, "--data-dir", str(data), "--batch-size", "1", "--quiet"]
        child = subprocess.Popen(
            [sys.executable, "-m", "clipindex", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert upserting.wait(60), "migrate never upserted"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "re-run the same clipindex migrate" in err and "finished batches" not in err


@pytest.mark.slow
def test_a_server_that_accepts_but_never_answers_is_announced_within_seconds(env: dict[str, str]) -> None:
    """Connections are accepted (by the kernel's backlog) but no reply ever comes: without the notice, nothing
    would be said for a whole request timeout (10 s)."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        child = subprocess.Popen(
            [sys.executable, "-m", "clipindex", "status", "--qdrant-url", url, "--timeout", "20"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stderr is not None
            started = time.monotonic()
            first = child.stderr.readline()
            elapsed = time.monotonic() - started
            assert first.strip() == f"waiting for Qdrant at {url} (up to 20 s)", first
            assert elapsed < 8 and child.poll() is None, elapsed
        finally:
            child.kill()
            child.communicate()
