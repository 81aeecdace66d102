"""Contender ``ingest``: ``clipindex ingest SET --quiet --json`` end to end, into a fresh embedded store.

Interpreter start and model load are counted; the run must index every image.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import clipindex_cmd, image_files, run_child


def measure(
    folder: Path, model_dir: Path, work: Path, *, precision: str, extra: list[str], name: str, label: str
) -> tuple[Any, dict[str, Any], float, int]:
    """(child result, its detail, timed seconds, images) for one run over ``folder``; ``name`` names the store."""
    files = len(image_files(folder))
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=runs))
    try:
        cmd = [*clipindex_cmd(), "ingest", str(folder), "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
        cmd += ["--precision", precision, "--quiet", "--json", *extra]
        result = run_child(cmd).check()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    report = result.json()
    failed = report.get("failed")
    if report.get("indexed") != files or failed:
        raise RuntimeError(f"{label}: indexed {report.get('indexed')} of {files}, failed {failed}")
    return result, {"in_run_s": report.get("seconds")}, result.wall_s, files
