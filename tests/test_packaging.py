"""One import name: a wheel installs ``clipindex`` and nothing else at the top of site-packages, and both an
editable install (this environment's) and a wheel install import, run the CLI, and carry the package data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib, importlib.util, sys
import clipindex, clipindex.cli, clipindex.convert, clipindex.convert.api
from clipindex.convert.verify import probe_images
print(clipindex.__file__)
print(clipindex.__version__)
print(len(probe_images()))  # what the converter verifies with, found through the installed package
print(callable(clipindex.Embedder), callable(clipindex.open_store))
for gone in ("indexer", "convert"):
    print(gone, importlib.util.find_spec(gone) is None)
"""


def probe(env: dict[str, str], cwd: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_editable_install_imports_one_name(tmp_path: Path) -> None:
    import importlib.metadata

    lines = probe(clean_env(), tmp_path)  # not the repository root: '' on sys.path must not find indexer/
    assert Path(lines[0]) == ROOT / "indexer" / "__init__.py"
    assert lines[1] == importlib.metadata.version("clipindex") and lines[1] != "0+unknown"
    assert int(lines[2]) >= 5  # the converter's probe photos
    assert lines[3] == "True True"
    assert lines[4:] == ["indexer True", "convert True"]


@pytest.mark.slow
def test_wheel_installs_only_clipindex(tmp_path: Path) -> None:
    def pip(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    dist = tmp_path / "dist"
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT))
    (wheel,) = dist.glob("clipindex-*.whl")
    site = tmp_path / "site"
    pip("install", "--no-deps", "--no-compile", "--target", str(site), str(wheel))
    (record,) = site.glob("clipindex-*.dist-info/RECORD")
    with record.open(newline="", encoding="utf-8") as fp:
        paths = [row[0] for row in csv.reader(fp) if row]
    top = {path.split("/", 1)[0] for path in paths if not path.startswith(("../", "bin/"))}
    assert top == {"clipindex", record.parent.name}, top
    assert "clipindex/convert/probe_images/chelsea.jpg" in paths
    assert "clipindex/py.typed" in paths
    assert sorted(p.name for p in site.iterdir() if p.name != "bin") == sorted(top)

    env = clean_env()
    env["PYTHONPATH"] = str(site)  # ahead of this environment's editable finder
    lines = probe(env, tmp_path)
    assert Path(lines[0]) == site / "clipindex" / "__init__.py"
    assert int(lines[2]) >= 5 and lines[3] == "True True"
    assert lines[4:] == ["indexer True", "convert True"]
    cli = subprocess.run(
        [sys.executable, "-m", "clipindex", "--version"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert cli.returncode == 0 and lines[1] in cli.stdout
