"""Clean cron logs and remembered failures: odd TIFFs whose libtiff warnings must stay out of stderr, and failed
files that are not decoded again until they change. Real Pillow/libtiff files, the real CLI (a subprocess where
file descriptor 2 matters), the tiny exported model and the real embedded store."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image, TiffImagePlugin

import clipindex.ingest.pipeline as pipeline
from clipindex.cli.commands import cli
from clipindex.ingest.pipeline import IngestOptions, IngestReport, ingest
from clipindex.model.encode import Embedder
from clipindex.store.edge import EdgeStore

REPO = Path(__file__).resolve().parent.parent
ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d ")


# --- odd TIFFs ----------------------------------------------------------------------------------------------


def _strip(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return int(image.tag_v2[273][0]), int(image.tag_v2[279][0])


def make_odd_tiffs(folder: Path) -> dict[str, str]:
    """TIFFs like the ones real scanners and old software write, made with Pillow/libtiff and then damaged:
    ``{name: "ok" | "error"}``. libtiff prints warnings to fd 2 for the Fax4 and LZW ones."""
    folder.mkdir(parents=True, exist_ok=True)
    outcome: dict[str, str] = {}
    # Fax4 (CCITT group 4) whose code words are garbage: libtiff warns "Fax4Decode: Bad code word", decodes anyway
    fax = folder / "fax4_bad_code_words.tif"
    Image.new("1", (64, 64), 1).save(fax, compression="group4")
    data = bytearray(fax.read_bytes())
    offset, count = _strip(fax)
    for i in range(offset, offset + count):
        data[i] = 0x00 if i % 2 else 0xFF
    fax.write_bytes(bytes(data))
    outcome[fax.name] = "ok"
    # LZW with a damaged strip: libtiff says "Using code not yet in table." and the decode fails
    lzw = folder / "lzw_bad_strip.tif"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(lzw, compression="tiff_lzw")
    data = bytearray(lzw.read_bytes())
    offset, count = _strip(lzw)
    for i in range(offset + 2, offset + count):
        data[i] = 0xAB
    lzw.write_bytes(bytes(data))
    outcome[lzw.name] = "error"
    # unknown private tags and a ResolutionUnit with 5 values instead of 1
    tags = folder / "unknown_tags.tif"
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[65000] = "private maker note"
    info.tagtype[65000] = 2
    info[65001] = 7
    info.tagtype[65001] = 3
    Image.new("RGB", (40, 30), (10, 120, 30)).save(tags, tiffinfo=info, compression="tiff_lzw", dpi=(72, 72))
    data = bytearray(tags.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for n in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * n
        if struct.unpack_from("<H", data, entry)[0] == 296:  # ResolutionUnit
            struct.pack_into("<HI", data, entry + 2, 3, 5)
    tags.write_bytes(bytes(data))
    outcome[tags.name] = "ok"
    # Fax4 cut in the middle of its strip
    cut = folder / "fax4_truncated.tif"
    Image.new("1", (256, 256), 0).save(cut, compression="group4")
    offset, count = _strip(cut)
    cut.write_bytes(cut.read_bytes()[: offset + max(1, count // 3)])
    outcome[cut.name] = "error"
    return outcome


def run_cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_odd_tiffs_leave_only_the_start_line_and_failed_lines_on_stderr(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "scans"
    outcome = make_odd_tiffs(root)
    Image.new("RGB", (48, 48), (0, 0, 255)).save(root / "plain.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # without clipindex, libtiff does print to fd 2 on these files: the test below is not vacuous
    raw = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom PIL import Image\nImage.open(sys.argv[1]).load()",
            root / "fax4_bad_code_words.tif",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Fax4Decode" in raw.stderr

    args = ["ingest", root, "--model-dir", tiny_model_dir, "--data-dir", tmp_path / "data", "--workers", "3"]
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("clipindex: ") and "store embedded store" not in lines[0], result.stderr
    failed = lines[1:]
    assert all(line.startswith("failed: ") for line in failed), result.stderr
    expected_failures = sorted(name for name, what in outcome.items() if what == "error")
    assert sorted(Path(line.split(": ")[1]).name for line in failed) == expected_failures
    (lzw_line,) = [line for line in failed if "lzw_bad_strip" in line]
    assert "Using code not yet in table" in lzw_line and "tempfile.tif" not in lzw_line
    # not a TTY: the summary line starts with an ISO 8601 time
    (summary,) = result.stdout.splitlines()
    assert ISO_8601.match(summary) and "failed 2" in summary, summary

    # the next run decodes none of them again: only the summary, which counts them as known
    again = run_cli(*args, env=env)
    assert again.returncode == 0 and again.stderr.splitlines()[1:] == [], again.stderr
    assert "failed 2 (2 known)" in again.stdout


# --- remembered failures ------------------------------------------------------------------------------------


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The real decoder, counted per file name."""
    calls: Counter[str] = Counter()
    real = pipeline.decode_file

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls[os.path.basename(os.fspath(path))] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_file", counted)
    return calls


def make_tree(root: Path) -> list[Path]:
    root.mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40 + i, 30), color).save(root / f"good{i}.png")
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40)
    truncated = root / "truncated.png"
    Image.new("RGB", (300, 200), (9, 9, 9)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:120])
    return [broken, truncated]


def run(root: Path, data: Path, model: Path, **options: Any) -> IngestReport:
    with EdgeStore(data, "images") as store:
        return ingest(root, Embedder(model), store, options=IngestOptions(**options))


def test_failed_files_are_not_decoded_again_until_they_change(
    tmp_path: Path, tiny_model_dir: Path, decode_calls: Counter[str]
) -> None:
    root, data = tmp_path / "photos", tmp_path / "data"
    broken, truncated = make_tree(root)
    names = {broken.name, truncated.name}

    first = run(root, data, tiny_model_dir)
    assert {Path(f.path).name for f in first.failed} == names and first.known_failed == 0
    assert all(decode_calls[n] >= 1 for n in names)

    decode_calls.clear()
    second = run(root, data, tiny_model_dir)
    assert {Path(f.path).name for f in second.failed} == names and all(f.known for f in second.failed)
    assert all(decode_calls[n] == 0 for n in names), decode_calls
    assert "failed 2 (2 known)" in second.summary_line()
    assert [f.reason for f in second.failed] == [f.reason for f in first.failed]

    decode_calls.clear()
    retried = run(root, data, tiny_model_dir, retry_failed=True)
    assert all(decode_calls[n] >= 1 for n in names) and retried.known_failed == 0 and len(retried.failed) == 2

    # a changed file is always tried again (and fixed here); the unchanged one stays known
    Image.new("RGB", (30, 30), (1, 2, 3)).save(truncated, format="PNG")
    decode_calls.clear()
    changed = run(root, data, tiny_model_dir)
    assert decode_calls[truncated.name] >= 1 and decode_calls[broken.name] == 0
    assert [(Path(f.path).name, f.known) for f in changed.failed] == [(broken.name, True)]
    assert changed.indexed == 1

    # a failed file deleted is forgotten
    broken.unlink()
    gone = run(root, data, tiny_model_dir)
    assert gone.failed == []
    memory = json.loads((data / "images" / "failed.json").read_text())
    assert memory["failed"] == []


def test_known_failures_in_json_and_status(tmp_path: Path, tiny_model_dir: Path) -> None:
    root, data = tmp_path / "photos", tmp_path / "data"
    broken, truncated = make_tree(root)
    runner = CliRunner()
    args = ["ingest", str(root), "--model-dir", str(tiny_model_dir), "--data-dir", str(data), "--json"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert [f["known"] for f in json.loads(first.stdout)["failed"]] == [False, False]
    second = runner.invoke(cli, args)
    assert [f["known"] for f in json.loads(second.stdout)["failed"]] == [True, True]
    assert "failed:" not in second.stderr  # known failures are counted, not printed again every night

    status = runner.invoke(cli, ["status", "--data-dir", str(data)])
    assert status.exit_code == 0, status.output
    assert re.search(r"^failed files\s+2 remembered", status.stdout, re.M), status.stdout
    assert json.loads(runner.invoke(cli, ["status", "--data-dir", str(data), "--json"]).stdout)["failed_files"] == 2
    listed = runner.invoke(cli, ["status", "--data-dir", str(data), "--failed"])
    assert listed.exit_code == 0
    rows = listed.stdout.splitlines()
    assert [row.split(": ", 1)[0] for row in rows] == sorted([str(broken), str(truncated)])
    assert all(len(row.split(": ", 1)[1]) > 5 for row in rows)

    retried = runner.invoke(cli, [*args, "--retry-failed"])
    assert [f["known"] for f in json.loads(retried.stdout)["failed"]] == [False, False]


# --- header chatter, reasons, broken links ------------------------------------------------------------------


def _tiff_with_samples_per_pixel(path: Path, compression: str, samples: int) -> None:
    """A real TIFF whose header then declares ``samples`` samples per pixel (tag 277), as odd real files do."""
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path, compression=compression)
    data = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for n in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * n
        if struct.unpack_from("<H", data, entry)[0] == 277:
            struct.pack_into("<HIHH", data, entry + 2, 3, 1, samples, 0)
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_tiff_headers_with_65535_samples_per_pixel_stay_out_of_stderr(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Pillow logs ``More samples per pixel than can be decoded: 65535`` while it reads such a header (before any
    decode): it must not reach the cron log, and the file's one ``failed:`` line carries it as its detail."""
    root = tmp_path / "scans"
    root.mkdir()
    for compression in ("raw", "tiff_lzw", "tiff_deflate"):
        _tiff_with_samples_per_pixel(root / f"spp_{compression}.tif", compression, 65535)
    Image.new("RGB", (48, 48), (0, 0, 255)).save(root / "plain.png")
    raw = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom PIL import Image\nImage.open(sys.argv[1])", root / "spp_raw.tif"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "More samples per pixel than can be decoded" in raw.stderr  # not vacuous: Pillow does print it

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = run_cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", tmp_path / "data", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("clipindex: ")
    failed = lines[1:]
    assert len(failed) == 3 and all(line.startswith("failed: ") for line in failed), result.stderr
    for line in failed:
        reason = line.split(": ", 2)[2]
        assert reason.startswith("not an image Pillow can read"), reason  # the decisive error first
        assert reason.endswith("the decoder said: More samples per pixel than can be decoded: 65535"), reason
        assert len(reason) < 200


def test_a_reason_keeps_the_decisive_error_and_one_line_of_library_detail() -> None:
    """What libtiff prints before a failed strip: warnings about custom tags, then the error. The reason keeps the
    error, one line, under 200 characters; a reason with newlines (a redirect loop's) becomes one line."""
    from clipindex import cstderr

    said = "\n".join(
        [
            *(f"TIFFFetchNormalTag: Incorrect value for custom tag {t}; tag ignored. ... not read" for t in range(9)),
            "TIFFReadDirectory: Warning, Unknown field with tag 65000 (0xfde8) encountered.",
            "TIFFFillStrip: Read error on strip 0; got 4294966296 bytes, expected 155.",
            "TIFFFillStrip: Read error on strip 0; got 4294966296 bytes, expected 155.",
        ]
    )
    detail = cstderr._tidy(said)
    assert detail == "TIFFFillStrip: Read error on strip 0; got 4294966296 bytes, expected 155."
    reason = cstderr.short_reason("corrupt or unreadable image (OSError: decoder error -2)", detail)
    assert reason.startswith("corrupt or unreadable image (OSError: decoder error -2); the decoder said: TIFFFill")
    assert len(reason) < 200
    long = cstderr.short_reason("corrupt or unreadable image", "x" * 500)
    assert long.startswith("corrupt or unreadable image; the decoder said: xxx") and long.endswith("...")
    assert len(long) < 200
    assert cstderr.short_reason("too many redirects:\n  a -> b\n  b -> a") == "too many redirects: a -> b b -> a"
    from clipindex.errors import ImageError

    assert "\n" not in str(ImageError("http://x/", "redirect loop:\nhttp://x/ ->\nhttp://x/"))


@pytest.mark.slow
def test_a_dangling_symlink_is_remembered_like_a_failed_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Keyed by the link's own lstat: not news on the next run (``failed 1 (1 known)``, no ``failed:`` line), listed
    by ``status --failed``; a link made again is reported again, and a link whose target appears is indexed."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "good.png")
    link = root / "gone.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    args = ["ingest", root, "--model-dir", tiny_model_dir, "--data-dir", tmp_path / "data"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    (line,) = [x for x in first.stderr.splitlines() if x.startswith("failed: ")]
    assert "gone.jpg" in line and "dangling" in line
    again = run_cli(*args, env=env)
    assert [x for x in again.stderr.splitlines() if x.startswith("failed: ")] == [], again.stderr
    assert "failed 1 (1 known)" in again.stdout
    listed = run_cli("status", "--failed", "--data-dir", tmp_path / "data", env=env)
    assert "gone.jpg" in listed.stdout and "dangling" in listed.stdout

    link.unlink()
    os.symlink(tmp_path / "elsewhere.jpg", link)
    os.utime(link, ns=(1, 1), follow_symlinks=False)  # another link: another lstat
    remade = run_cli(*args, env=env)
    assert any("gone.jpg" in x for x in remade.stderr.splitlines() if x.startswith("failed: ")), remade.stderr
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "elsewhere.jpg")
    fixed = run_cli(*args, env=env)
    assert fixed.returncode == 0 and "failed 0" in fixed.stdout, fixed.stdout
    assert run_cli("status", "--failed", "--data-dir", tmp_path / "data", env=env).stdout.strip() == ""
