"""A real ``clipindex serve`` for tests: the CLI in a subprocess on a free loopback port, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

URL_LINE = re.compile(r"at (http://\S+/)")


@dataclass
class Served:
    url: str  # with the trailing slash
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def serve_env(data_dir: Path, cache_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CLIPINDEX_DATA_DIR": str(data_dir), "CLIPINDEX_CACHE_DIR": str(cache_dir), **extra})
    return env


@contextmanager
def serving(
    data_dir: Path, model_dir: Path, cache_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """``clipindex serve --port 0`` on the store in ``data_dir``; yields once it prints its URL."""
    command: Sequence[str] = [
        sys.executable,
        "-m",
        "clipindex",
        "serve",
        "--port",
        "0",
        "--model-dir",
        str(model_dir),
        *args,
    ]
    process = subprocess.Popen(
        command,
        env=env or serve_env(data_dir, cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = URL_LINE.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("clipindex serve printed no URL in 120 s:\n" + "".join(lines))
    if not found:
        process.wait(timeout=10)
        raise AssertionError(f"clipindex serve exited {process.returncode}:\n" + "".join(lines))
    served = Served(found[0], process, lines)
    try:
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_cli(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m clipindex ARGS`` in a subprocess with ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


def chromium_path() -> str:
    """Debian's chromium; in CI (env CI set) its absence is a failure, elsewhere a skip."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must test the page (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe
