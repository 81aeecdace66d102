"""What the commands print, for the cases where it used to mislead: usage errors with hostile bytes, paths that are
not UTF-8, a refused run, ``--strict`` on a re-run, and library errors. The real CLI, the tiny exported model, the
real embedded store, real files with hostile names."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from clipindex.cli.commands import cli
from clipindex.errors import ImageError, ImageTooLargeError
from clipindex.images.decode import decode_file
from clipindex.model.encode import Embedder


def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """The real ``clipindex`` process, its output as bytes (what reaches a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *[os.fsencode(a) if isinstance(a, Path) else a for a in args]],
        capture_output=True,
        timeout=120,
    )


def test_usage_errors_escape_hostile_bytes_like_every_other_message(tmp_path: Path) -> None:
    hostile = tmp_path / "\x1b]0;pwned\x07x"
    result = run("ingest", hostile)
    assert result.returncode == 2
    assert b"\x1b" not in result.stderr and b"\x07" not in result.stderr
    assert b"\\x1b]0;pwned\\x07x: no such folder" in result.stderr
    unknown = run("search", "--no-such-\x1b[31m-flag")
    assert unknown.returncode == 2 and b"\x1b" not in unknown.stderr and b"\\x1b[31m" in unknown.stderr
    assert run("--version").returncode == 0 and run("status", "--help").returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_a_path_that_is_not_utf8_has_path_bytes_in_json(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The bytes ``\\xff\\xfe.jpg`` and the 12 characters ``\\xff\\xfe.jpg`` show the same ``path``; ``path_bytes``
    (base64 of the name's bytes) tells them apart, in search, in ingest's failures and in ``status --failed``."""
    root = tmp_path / "photos"
    root.mkdir()
    raw = os.fsencode(root) + b"/\xff\xfe.jpg"
    Image.new("RGB", (30, 20), (200, 0, 0)).save(os.fsdecode(raw), format="JPEG")
    Image.new("RGB", (30, 20), (0, 200, 0)).save(root / "\\xff\\xfe.jpg", format="JPEG")
    broken = os.fsencode(root) + b"/bad\xff.png"
    with open(broken, "wb") as f:
        f.write(b"not a png")
    data = tmp_path / "data"
    ingest = run("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", data, "--json")
    assert ingest.returncode == 0, ingest.stderr
    (failed,) = json.loads(ingest.stdout)["failed"]
    assert failed["path"].endswith("/bad\\xff.png") and base64.b64decode(failed["path_bytes"]) == broken

    found = run("search", "a photo", "--data-dir", data, "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 2 and hits[0]["path"] == hits[1]["path"]  # the same text...
    with_bytes = [h for h in hits if "path_bytes" in h]
    assert len(with_bytes) == 1 and base64.b64decode(with_bytes[0]["path_bytes"]) == raw  # ...told apart

    listed = run("status", "--failed", "--json", "--data-dir", data)
    (entry,) = json.loads(listed.stdout)
    assert entry["path"] == failed["path"] and base64.b64decode(entry["path_bytes"]) == broken


def test_a_refused_ingest_is_not_shown_as_killed(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(photos / "a.png")
    data = tmp_path / "data"
    assert (
        CliRunner()
        .invoke(cli, ["ingest", str(photos), "--model-dir", str(tiny_model_dir), "--data-dir", str(data)])
        .exit_code
        == 0
    )
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_name"] = "other-model"
    (other / "manifest.json").write_text(json.dumps(manifest))
    refused = CliRunner().invoke(cli, ["ingest", str(photos), "--model-dir", str(other), "--data-dir", str(data)])
    assert refused.exit_code == 1 and "was built with model" in refused.stderr
    status = CliRunner().invoke(cli, ["status", "--data-dir", str(data), "--json"])
    report = json.loads(status.stdout)
    assert report["interrupted_ingest"] is None and report["running_ingest"] is None
    text = CliRunner().invoke(cli, ["status", "--data-dir", str(data)]).stdout
    assert "interrupted" not in text and "killed" not in text


def test_strict_on_a_rerun_points_at_the_known_failures(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(photos / "a.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["ingest", str(photos), "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "data")]
    first = CliRunner().invoke(cli, [*args, "--strict"])
    assert first.exit_code == 1 and "failed: " in first.stderr and "see the lines above" in first.stderr
    again = CliRunner().invoke(cli, [*args, "--strict"])
    assert again.exit_code == 1 and "failed: " not in again.stderr
    (line,) = [x for x in again.stderr.splitlines() if x.startswith("Error:")]
    assert "1 file(s) failed" in line and "clipindex status --failed" in line and "lines above" not in line


def test_library_errors_name_the_library_parameter(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (9, 9, 9)).save(path)
    embedder = Embedder(tiny_model_dir, max_pixels=1000)
    with pytest.raises(ImageTooLargeError) as caught:
        decode_file(str(path), embedder.preprocessor)
    assert "max_pixels=60000" in caught.value.reason


def test_a_redirect_loop_is_a_one_line_reason(tiny_model_dir: Path) -> None:
    """A real HTTP server on loopback that redirects every request to itself."""
    import http.server
    import threading

    class Loop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", self.path)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Loop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/loop.jpg"
        with pytest.raises(ImageError) as caught:
            Embedder(tiny_model_dir).encode_images([url])
    finally:
        server.shutdown()
    assert "\n" not in str(caught.value) and "redirect" in caught.value.reason
