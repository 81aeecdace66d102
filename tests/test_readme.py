"""The library examples (README's "The library" and docs/library.md) run as written, in order, on the tiny test
model."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
LIBRARY_DOC = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
#: the host:port of the `python -m http.server -d images 8000` the examples mention
EXAMPLE_HOST = "localhost:8000"


def readme_examples() -> list[str]:
    """The ```python blocks of the README's "The library" section."""
    section = README.split("\n## The library\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def library_examples() -> list[str]:
    """The ```python blocks of docs/library.md, in order."""
    return re.findall(r"```python\n(.*?)```", LIBRARY_DOC, flags=re.DOTALL)


def in_a_checkout_with_the_default_model(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples' world: a copy of the checkout's images/ as the current folder, the test model as the
    default model folder, and a store of the test's own."""
    from clipindex.settings import default_model_dir

    shutil.copytree(ROOT / "images", tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLIPINDEX_DATA_DIR", str(tmp_path / "data"))
    default_model_dir().parent.mkdir(parents=True)
    default_model_dir().symlink_to(tiny_model_dir, target_is_directory=True)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def images_server(tmp_path: Path) -> Iterator[str]:
    """The example's `python -m http.server -d images` on a free port: its host:port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(tmp_path / "images")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_there_are_examples_for_each_part_of_the_library() -> None:
    code = "\n".join(library_examples())
    for call in (
        "encode_images(",
        'errors="none"',
        "encode_images_detailed(",
        "progress=True",
        "aencode_images(",
        "aencode_text(",
        "scaled=True",
        "top_k(texts, images",
        "top_k(images, texts",
        ".classify(",
        'device="cuda:1"',
        EXAMPLE_HOST,
    ):
        assert call in code, call


def test_library_examples_run(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, images_server: str
) -> None:
    in_a_checkout_with_the_default_model(tmp_path, tiny_model_dir, monkeypatch)
    namespace: dict[str, Any] = {"__name__": "readme"}
    printed = io.StringIO()
    blocks = library_examples()
    assert len(blocks) >= 7
    with contextlib.redirect_stdout(printed):
        for number, block in enumerate(blocks, start=1):
            code = block.replace(EXAMPLE_HOST, images_server)  # the port the test's server got
            exec(compile(code, f"docs/library.md example {number}", "exec"), namespace)
    dimension = namespace["embedder"].dimension
    assert namespace["vectors"].shape == (len(list((tmp_path / "images").glob("*.jpg"))), dimension)
    assert namespace["async_images"].shape == (2, dimension)
    np.testing.assert_allclose(namespace["async_images"], namespace["images"], atol=1e-6)
    assert namespace["best_labels"].indices.shape == (2, 2)
    output = printed.getvalue()
    assert "failed: item 1 (bytes, 12 bytes)" in output
    assert "images/missing.jpg: cannot open" in output


def test_readme_library_example_runs(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from clipindex.cli import cli

    (block,) = readme_examples()
    in_a_checkout_with_the_default_model(tmp_path, tiny_model_dir, monkeypatch)

    result = CliRunner().invoke(cli, ["ingest", "images", "--collection", "images", "--quiet"])
    assert result.exit_code == 0, result.output
    namespace: dict[str, Any] = {"__name__": "readme"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md library example", "exec"), namespace)
    assert namespace["vectors"].shape == (2, namespace["embedder"].dimension)
    rows = printed.getvalue().splitlines()
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert all(row.split()[2].endswith(".jpg") for row in rows)


def test_the_url_example_says_it_needs_a_server() -> None:
    blocks = [block for block in library_examples() if EXAMPLE_HOST in block]
    assert blocks and all("needs" in block for block in blocks)
