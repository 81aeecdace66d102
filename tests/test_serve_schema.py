"""schemathesis against ``clipindex serve``'s own OpenAPI document, over a real server and store: no 5xx, and
every answer (status code, content type, headers, body) matches the document."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from serving import serve_env, serving

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Any]
) -> None:
    schemathesis = shutil.which("schemathesis") or shutil.which("st")
    if schemathesis is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "rocket", "coffee"):
        sample_photos[name].save(photos / f"{name}.jpg")
    env = serve_env(tmp_path / "data", tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, "-m", "clipindex", "ingest", str(photos), "--model-dir", str(tiny_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    with serving(tmp_path / "data", tiny_model_dir, tmp_path / "cache", env=env) as served:
        fuzz = subprocess.run(
            [schemathesis, "run", served.url + "api/v1/openapi.json", "-c", CHECKS, "-n", "30", "--seed", "1"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert fuzz.returncode == 0, fuzz.stdout[-4000:]
    assert "passed" in fuzz.stdout
