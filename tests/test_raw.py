"""Camera RAW files through rawpy (LibRaw): real DNG files written here from real photos, decoded by LibRaw, then
ingested and searched by the real CLI; and the one ``failed:`` line a RAW file gets without the ``clipindex[raw]``
extra.

A DNG is a TIFF with CFA tags: :func:`write_dng` mosaics a photo (made linear, the inverse of sRGB's curve) into an
RGGB Bayer pattern of 14-bit samples and writes the DNG tags LibRaw needs, optionally with the usual layout of a
camera's file: a JPEG preview as IFD0 and the raw data in a SubIFD (NewSubFileType 0). Its "camera" sees linear
sRGB: ColorMatrix1 is XYZ -> linear sRGB (D65), AsShotNeutral (1, 1, 1), so LibRaw's rendering is the photo again.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipindex.cli import cli
from clipindex.errors import ImageError, ImageTooLargeError
from clipindex.images.decode import decode_file, load_image, load_image_bytes
from clipindex.images.raw import MISSING_EXTRA, flip_to_orientation, is_raw_name, looks_raw, raw_exif
from clipindex.store.edge import EdgeStore

rawpy = pytest.importorskip("rawpy", reason="the clipindex[raw] extra (rawpy) is not installed")
tifffile = pytest.importorskip("tifffile", reason="tifffile writes the test DNG files")

REPO = Path(__file__).resolve().parent.parent

#: XYZ (D65) -> linear sRGB: the ColorMatrix1 of a camera whose raw values are linear sRGB
XYZ_TO_LINEAR_SRGB = (
    (3.2406, -1.5372, -0.4986),
    (-0.9689, 1.8758, 0.0415),
    (0.0557, -0.2040, 1.0570),
)
WHITE_LEVEL = 16383  # 14-bit samples, stored in 16 bits

# TIFF field types
_BYTE, _ASCII, _SHORT, _RATIONAL, _SRATIONAL = 1, 2, 3, 5, 10
_JPEG = 7


def _rationals(values: Iterator[float] | tuple[float, ...], denominator: int = 10000) -> tuple[int, ...]:
    out: list[int] = []
    for value in values:
        out += [round(value * denominator), denominator]
    return tuple(out)


def mosaic(photo: Image.Image) -> np.ndarray:
    """``photo`` as an RGGB Bayer mosaic of linear 14-bit samples (even width and height)."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    values = np.rint(linear * WHITE_LEVEL).astype(np.uint16)
    cfa = np.empty(values.shape[:2], dtype=np.uint16)
    cfa[0::2, 0::2] = values[0::2, 0::2, 0]  # R
    cfa[0::2, 1::2] = values[0::2, 1::2, 1]  # G
    cfa[1::2, 0::2] = values[1::2, 0::2, 1]  # G
    cfa[1::2, 1::2] = values[1::2, 1::2, 2]  # B
    return cfa


def write_dng(
    path: Path,
    photo: Image.Image,
    *,
    preview: Image.Image | None = None,
    orientation: int = 1,
    taken: str = "2024:05:17 08:30:00",
    cut_preview: bool = False,
) -> Path:
    """A real DNG of ``photo`` (see the module doc); with ``preview``, that image as a JPEG preview in IFD0."""
    cfa = mosaic(photo)
    dng_tags = [
        (36867, _ASCII, 0, taken, True),  # DateTimeOriginal (in IFD0, where TIFF/EP puts it)
        (50706, _BYTE, 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, _BYTE, 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, _ASCII, 0, "clipindex test camera", True),  # UniqueCameraModel
        (271, _ASCII, 0, "clipindex", True),  # Make
        (272, _ASCII, 0, "Test DNG", True),  # Model
        (274, _SHORT, 1, orientation, True),  # Orientation
        (50721, _SRATIONAL, 9, _rationals(v for row in XYZ_TO_LINEAR_SRGB for v in row), True),  # ColorMatrix1
        (50778, _SHORT, 1, 21, True),  # CalibrationIlluminant1: D65
        (50728, _RATIONAL, 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
    ]
    raw_tags = [
        (33421, _SHORT, 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, _BYTE, 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50714, _SHORT, 1, 0, True),  # BlackLevel
        (50717, _SHORT, 1, WHITE_LEVEL, True),  # WhiteLevel
    ]
    with tifffile.TiffWriter(path) as tif:
        if preview is None:  # the raw data is IFD0
            tif.write(cfa, photometric=32803, subfiletype=0, extratags=dng_tags + raw_tags)
        else:  # a camera's layout: IFD0 the JPEG preview, its SubIFD the raw data
            jpeg = io.BytesIO()
            preview.convert("RGB").save(jpeg, "JPEG", quality=92)
            strip = jpeg.getvalue()[: len(jpeg.getvalue()) // 2] if cut_preview else jpeg.getvalue()
            width, height = preview.size
            codecs = tifffile.TIFF.COMPRESSORS._codecs  # the strip is JPEG already: no encoder (imagecodecs) needed
            had = _JPEG in codecs
            codecs.setdefault(_JPEG, lambda data, *args, **kwargs: data)
            try:
                tif.write(
                    iter([strip]),
                    shape=(height, width, 3),
                    dtype=np.uint8,
                    photometric="rgb",
                    compression=_JPEG,
                    rowsperstrip=height,
                    subfiletype=1,
                    subifds=1,
                    extratags=dng_tags,
                )
            finally:
                if not had:
                    codecs.pop(_JPEG, None)
            tif.write(cfa, photometric=32803, subfiletype=0, extratags=raw_tags)
    return path


def mean_error(image: Image.Image, reference: Image.Image) -> float:
    """Mean absolute difference per channel value (0-255) after resizing ``reference`` to ``image``'s size."""
    ref = np.asarray(reference.convert("RGB").resize(image.size, Image.Resampling.BILINEAR), dtype=np.float64)
    return float(np.abs(np.asarray(image, dtype=np.float64) - ref).mean())


@pytest.fixture(scope="module")
def coffee(sample_photos: dict[str, Any]) -> Image.Image:
    photo: Image.Image = sample_photos["coffee"]  # 600x400
    return photo


def test_libraw_decodes_the_written_dng_with_the_photo_colours(tmp_path: Path, coffee: Image.Image) -> None:
    path = write_dng(tmp_path / "coffee.dng", coffee)
    with rawpy.imread(str(path)) as raw:
        assert (raw.sizes.width, raw.sizes.height) == coffee.size
        assert raw.raw_pattern.tolist() == [[0, 1], [3, 2]] and raw.color_desc == b"RGBG"  # RGGB
        rgb = raw.postprocess(use_camera_wb=True, output_bps=8)
        with pytest.raises(rawpy.LibRawNoThumbnailError):
            raw.extract_thumb()
    rendered = Image.fromarray(rgb)
    assert rendered.size == coffee.size
    assert mean_error(rendered, coffee) < 16
    means = np.asarray(rendered, dtype=np.float64).reshape(-1, 3).mean(0)
    expected = np.asarray(coffee, dtype=np.float64).reshape(-1, 3).mean(0)
    assert np.abs(means - expected).max() < 12, (means, expected)


def test_a_dng_without_a_preview_is_demosaiced_at_half_size(tmp_path: Path, coffee: Image.Image) -> None:
    path = write_dng(tmp_path / "coffee.dng", coffee)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (300, 200)
    assert mean_error(image, coffee) < 16
    decoded = decode_file(path)
    assert (decoded.width, decoded.height, decoded.format) == (600, 400, "DNG")  # the sensor's size
    assert decoded.image is not None and decoded.image.size == (300, 200)
    import hashlib

    assert decoded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and decoded.size == path.stat().st_size
    header = decode_file(path, decode_pixels=lambda sha: False)
    assert header.image is None and (header.width, header.height) == (600, 400)


def test_a_large_enough_preview_is_used_instead_of_a_demosaic(tmp_path: Path, coffee: Image.Image) -> None:
    # the preview is told apart from the raw data by a stripe the raw data does not have
    marked = coffee.copy()
    marked.paste((0, 255, 0), (0, 0, 600, 40))
    path = write_dng(tmp_path / "coffee.dng", coffee, preview=marked)
    with rawpy.imread(str(path)) as raw:
        assert raw.extract_thumb().format == rawpy.ThumbFormat.JPEG
    image = load_image(path, draft=False)
    assert image.size == (600, 400)  # the preview's size: no half-size demosaic
    assert mean_error(image, marked) < 6
    top = np.asarray(image, dtype=np.float64)[:30].reshape(-1, 3).mean(0)
    assert top[1] > 200 and top[0] < 60, top
    assert load_image_bytes(path.read_bytes(), name="x.DNG", draft=False).size == (600, 400)
    assert decode_file(path).format == "DNG"


def test_a_preview_smaller_than_the_crop_size_is_not_used(tmp_path: Path, coffee: Image.Image) -> None:
    small = coffee.resize((300, 200))  # short side 200 < 224
    path = write_dng(tmp_path / "small.dng", coffee, preview=small)
    image = load_image(path)
    assert image.size == (300, 200)
    # the demosaic, not the preview: the preview was painted red, the demosaic has the photo's colours
    red = Image.new("RGB", (300, 200), (255, 0, 0))
    path = write_dng(tmp_path / "red.dng", coffee, preview=red)
    assert mean_error(load_image(path), coffee) < 16


def test_a_damaged_preview_falls_back_to_the_demosaic(tmp_path: Path, coffee: Image.Image) -> None:
    path = write_dng(tmp_path / "cut.dng", coffee, preview=coffee, cut_preview=True)
    with rawpy.imread(str(path)) as raw:
        thumb = raw.extract_thumb()
    assert thumb.format == rawpy.ThumbFormat.JPEG
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(bytes(thumb.data))).load()
    image = load_image(path)
    assert image.size == (300, 200) and mean_error(image, coffee) < 16


@pytest.mark.parametrize("with_preview", [False, True])
def test_orientation_turns_both_the_demosaic_and_the_preview(
    tmp_path: Path, coffee: Image.Image, with_preview: bool
) -> None:
    path = write_dng(tmp_path / "turned.dng", coffee, preview=coffee if with_preview else None, orientation=6)
    with rawpy.imread(str(path)) as raw:
        assert flip_to_orientation(raw.sizes.flip) == 6
    image = load_image(path, draft=False)
    turned = coffee.transpose(Image.Transpose.ROTATE_270)  # EXIF 6: turn 90° clockwise to display
    assert image.size == ((400, 600) if with_preview else (200, 300))
    assert mean_error(image, turned) < 16
    decoded = decode_file(path, decode_pixels=lambda sha: False)
    assert (decoded.width, decoded.height) == (400, 600)


def test_flip_to_orientation_inverts_libraw_reading_of_exif_orientation() -> None:
    for orientation in range(1, 9):  # LibRaw (dcraw) reads EXIF orientation as flip = "50132467"[orientation & 7]
        assert flip_to_orientation(int("50132467"[orientation & 7])) == orientation


def test_the_pixel_limit_applies_to_the_sensor(tmp_path: Path, coffee: Image.Image) -> None:
    path = write_dng(tmp_path / "coffee.dng", coffee, preview=coffee)
    with pytest.raises(ImageTooLargeError, match="600x400"):
        load_image(path, max_pixels=100_000)
    with pytest.raises(ImageTooLargeError):
        decode_file(path, _Settings(max_pixels=100_000))


class _Settings:
    def __init__(self, max_pixels: int) -> None:
        from clipindex.images.config import CLIP_DEFAULT

        self.config = CLIP_DEFAULT
        self.draft = True
        self.max_pixels = max_pixels


def test_a_corrupt_raw_file_is_an_image_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nef"
    bad.write_bytes(b"not a raw file at all" * 100)
    with pytest.raises(ImageError, match=r"bad\.nef: "):
        load_image(bad)
    with pytest.raises(ImageError, match=r"bad\.nef: "):
        decode_file(bad)
    assert is_raw_name("a.CR2") and is_raw_name("b.arw") and not is_raw_name("c.jpg")


def test_raw_exif_reads_the_date_and_camera(tmp_path: Path, coffee: Image.Image) -> None:
    exif = raw_exif(write_dng(tmp_path / "a.dng", coffee, taken="2021:12:24 18:00:05"))
    assert exif.get(36867) == "2021:12:24 18:00:05"
    assert (exif.get(271), exif.get(272)) == ("clipindex", "Test DNG")
    exif = raw_exif(write_dng(tmp_path / "b.dng", coffee, preview=coffee))
    assert exif.get(36867) == "2024:05:17 08:30:00"
    bad = tmp_path / "bad.raf"
    bad.write_bytes(b"nothing")
    assert len(raw_exif(bad)) == 0


# --- the real CLI ---------------------------------------------------------------------------------------------


def _ingest(folder: Path, data: Path, model: Path) -> Any:
    return CliRunner().invoke(cli, ["ingest", str(folder), "--model-dir", str(model), "--data-dir", str(data), "-q"])


def _search(data: Path, model: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli,
        ["search", *args, "-n", "5", "--json", "--no-server", "--model-dir", str(model), "--data-dir", str(data)],
    )
    assert result.exit_code == 0, result.output
    found: list[dict[str, Any]] = json.loads(result.output)
    return found


def _paths(found: list[dict[str, Any]]) -> list[str]:
    return [Path(item["path"]).name for item in found]


def test_ingest_and_search_find_dng_files(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Any], coffee: Image.Image
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    write_dng(photos / "coffee.dng", coffee)  # demosaic
    write_dng(photos / "rocket.DNG", sample_photos["rocket"], preview=sample_photos["rocket"])  # preview
    sample_photos["chelsea"].save(photos / "chelsea.jpg")
    result = _ingest(photos, data, tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "failed 0," in result.output and "failed:" not in result.output, result.output

    for name in ("coffee.dng", "rocket.DNG"):
        found = _search(data, tiny_model_dir, "--image", str(photos / name))
        assert _paths(found)[0] == name, found
        assert found[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert sorted(_paths(found)) == ["chelsea.jpg", "coffee.dng", "rocket.DNG"]
    status = CliRunner().invoke(cli, ["status", "--data-dir", str(data), "--model-dir", str(tiny_model_dir)])
    assert status.exit_code == 0, status.output


def test_a_raw_files_date_and_camera_come_from_its_own_metadata(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Any], coffee: Image.Image
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    demosaiced = write_dng(photos / "coffee.dng", coffee, taken="2021:12:24 18:00:05")
    previewed = write_dng(photos / "rocket.dng", sample_photos["rocket"], preview=sample_photos["rocket"])
    for path in (demosaiced, previewed):
        os.utime(path, (978_307_200, 978_307_200))  # 2001-01-01: the file time is not the date taken
    assert _ingest(photos, data, tiny_model_dir).exit_code == 0
    with EdgeStore(data, "images") as store:
        store.collection_info()
        stored = {Path(p["path"]).name: p for _pid, p in store.iter_payloads()}
    assert stored["coffee.dng"]["taken_at"] == "2021-12-24T18:00:05"
    assert stored["rocket.dng"]["taken_at"] == "2024-05-17T08:30:00"
    for payload in stored.values():
        assert payload["taken_at_source"] == "exif"
        assert (payload["camera_make"], payload["camera_model"]) == ("clipindex", "Test DNG")
    assert _paths(_search(data, tiny_model_dir, "a photo", "--after", "2022")) == ["rocket.dng"]
    assert _paths(_search(data, tiny_model_dir, "a photo", "--before", "2022", "--camera", "test dng")) == [
        "coffee.dng"
    ]
    assert _search(data, tiny_model_dir, "a photo", "--camera", "nikon") == []


def test_raw_bytes_without_a_name_decode_as_the_file_does(tmp_path: Path, coffee: Image.Image) -> None:
    plain_tiff, jpeg = io.BytesIO(), io.BytesIO()
    coffee.save(plain_tiff, "TIFF")
    coffee.save(jpeg, "JPEG")
    assert not looks_raw(plain_tiff.getvalue()) and not looks_raw(jpeg.getvalue())
    assert not looks_raw(b"II*\x00garbage") and looks_raw(b"FUJIFILMCCD-RAW 0201" + bytes(100))
    for path in (write_dng(tmp_path / "a.dng", coffee), write_dng(tmp_path / "b.dng", coffee, preview=coffee)):
        data = path.read_bytes()
        assert looks_raw(data)
        from_bytes = load_image_bytes(data, name="an upload")  # no RAW extension to go by
        assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(path)))
    # a plain TIFF upload still decodes with Pillow
    assert load_image_bytes(plain_tiff.getvalue(), name="an upload").size == coffee.size


def _hide_rawpy(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import rawpy`` fails, as without the extra."""
    hidden = tmp_path / "no-rawpy"
    hidden.mkdir()
    (hidden / "rawpy.py").write_text('raise ImportError("rawpy hidden by the test")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(REPO)])}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_without_the_extra_a_raw_file_fails_once_naming_it(
    tmp_path: Path, tiny_model_dir: Path, coffee: Image.Image
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    write_dng(photos / "coffee.dng", coffee)
    coffee.save(photos / "coffee.jpg")
    env = _hide_rawpy(tmp_path)
    args = ["ingest", str(photos), "--model-dir", str(tiny_model_dir), "--data-dir", str(data)]
    first = _run(args, env)
    assert first.returncode == 0, first.stderr
    failed = [line for line in first.stderr.splitlines() if line.startswith("failed: ")]
    assert failed == [f"failed: {photos / 'coffee.dng'}: {MISSING_EXTRA}"], first.stderr
    assert "pip install 'clipindex[raw]'" in failed[0]
    assert "failed 1" in first.stdout

    # remembered like other failures: not tried again, no second failed: line
    again = _run(args, env)
    assert again.returncode == 0, again.stderr
    assert not [line for line in again.stderr.splitlines() if line.startswith("failed: ")], again.stderr
    assert "failed 1 (1 known)" in again.stdout

    # once the extra is there, the remembered file is tried again without --retry-failed, and indexed
    env_with = {**os.environ, "PYTHONPATH": str(REPO)}
    fixed = _run(args, env_with)
    assert fixed.returncode == 0, fixed.stderr
    assert "indexed 1 (reused 0)" in fixed.stdout and "failed 0," in fixed.stdout, fixed.stdout


def test_missing_extra_reason_without_rawpy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real_import: Callable[..., Any] = builtins.__import__

    def no_rawpy(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "rawpy":
            raise ImportError("hidden")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rawpy)
    path = tmp_path / "x.ORF"
    path.write_bytes(b"whatever")
    with pytest.raises(ImageError) as info:
        decode_file(path)
    assert info.value.reason == MISSING_EXTRA
    with pytest.raises(ImageError, match=r"clipindex\[raw\]"):
        load_image(path)
