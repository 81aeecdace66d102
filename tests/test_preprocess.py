"""clipindex.images.preprocess against transformers' CLIPImageProcessorPil, on real photos and real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile import make_hostile_files
from photos import PHOTO_NAMES, RGB_PHOTO_NAMES, camera_size, photo, photo_path
from PIL import Image, ImageFile, ImageOps

from clipindex.errors import ImageError, ImageTooLargeError, ModelNotFoundError
from clipindex.images.config import CLIP_DEFAULT, PreprocessConfig
from clipindex.images.crop_resize import crop_box, resample_filter, resize_size
from clipindex.images.decode import DecodedFile, decode_file, load_image, resolve_max_pixels, to_rgb
from clipindex.images.preprocess import Preprocessor, load_and_preprocess, preprocess, preprocess_batch
from clipindex.model.manifest import ModelManifest
from clipindex.settings import DEFAULT_MAX_PIXELS

PARITY = 1e-5


@pytest.fixture(scope="module")
def clip_processor() -> Any:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil()


def reference(processor: Any, image: Image.Image) -> np.ndarray:
    out: np.ndarray = processor(images=image, return_tensors="np")["pixel_values"][0]
    return out


def save(image: Image.Image, path: Path, fmt: str, **params: Any) -> Path:
    image.save(path, format=fmt, **params)
    return path


# --- parity with transformers --------------------------------------------------------------------------

SIZES = [
    None,  # as shipped
    (224, 224),  # already the target
    (225, 224),
    (223, 225),  # odd, just around the target
    (301, 901),  # odd portrait
    (901, 301),
    (97, 61),  # smaller than 224: upscaled
    (1, 1),
    (5, 3),
    (3000, 200),  # panorama
    (150, 2000),  # very tall
    (1001, 667),
]


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_parity_with_clip_image_processor_on_real_photos(clip_processor: Any, name: str) -> None:
    base = photo(name)
    worst = 0.0
    for size in SIZES:
        image = base if size is None else base.resize(size, Image.Resampling.LANCZOS)
        ours = preprocess(image)
        ref = reference(clip_processor, image)
        assert ours.shape == ref.shape == (3, 224, 224)
        assert ours.dtype == np.float32 and ours.flags.c_contiguous
        worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst <= PARITY


def test_parity_other_config_padding_and_filters(tmp_path: Path) -> None:
    """A crop larger than the resized image (zero padding), non-square crop, other mean/std/filter."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    config = PreprocessConfig(
        shortest_edge=100,
        crop_height=128,
        crop_width=161,
        resample="bilinear",
        rescale_factor=1 / 255,
        image_mean=(0.5, 0.25, 0.125),
        image_std=(0.2, 0.3, 0.4),
    )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 100},
        crop_size={"height": 128, "width": 161},
        resample=Image.Resampling.BILINEAR,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )
    for name in ("chelsea", "astronaut", "camera"):
        for size in (None, (640, 99), (99, 640), (333, 101)):
            image = photo(name) if size is None else photo(name).resize(size)
            ours = preprocess(image, config)
            ref = reference(processor, image)
            assert ours.shape == ref.shape == (3, 128, 161)
            assert float(np.abs(ours - ref).max()) <= PARITY


@pytest.mark.slow
@pytest.mark.parametrize("size", [(3, 2000), (2000, 3), (700, 2400), (1, 5000), (5000, 11)])
def test_elongated_images_resize_only_the_crop_bit_for_bit(
    clip_processor: Any, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    """Past RESIZE_PIXEL_BUDGET only the crop's rows and columns are resampled (Pillow's two passes, in Pillow's
    order: (700, 2400) shrinks its height first): still transformers' result exactly."""
    import clipindex.images.crop_resize as pp

    rng = np.random.default_rng(size[0] * 7 + size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = reference(clip_processor, image)
    monkeypatch.setattr(pp, "RESIZE_PIXEL_BUDGET", 0)  # every image takes the crop-only path
    np.testing.assert_array_equal(preprocess(image), ref)
    config = PreprocessConfig(shortest_edge=100, crop_height=128, crop_width=161, resample="lanczos")
    full = image.resize(resize_size(*size, 100), Image.Resampling.LANCZOS)
    expected = np.asarray(full.crop(crop_box(*full.size, 161, 128)))  # zero padding past the edges
    ours = preprocess(image, config)
    mean, std = np.float32(config.image_mean), np.float32(config.image_std)
    table = (expected.astype(np.float32) * np.float32(config.rescale_factor) - mean) / std
    np.testing.assert_allclose(ours, table.transpose(2, 0, 1), atol=1e-6)


def test_extreme_aspect_ratio_stays_in_bounded_memory(tmp_path: Path) -> None:
    """1 x 60000: the plain resize would be 224 x 13,440,000 pixels (12 GB); the crop-only path needs ~nothing."""
    import resource

    path = save(Image.new("RGB", (1, 60000), (200, 30, 30)), tmp_path / "strip.png", "PNG")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pixels = load_and_preprocess(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert pixels.shape == (3, 224, 224)
    assert grown_mb < 200, f"peak RSS grew by {grown_mb:.0f} MB"
    np.testing.assert_allclose(pixels[:, 100, 100], preprocess(Image.new("RGB", (224, 224), (200, 30, 30)))[:, 0, 0])


def test_resize_and_crop_rounding_rules() -> None:
    # transformers truncates the long side: int(224 * 451 / 300) = int(336.746...) = 336
    assert resize_size(451, 300, 224) == (336, 224)
    assert resize_size(300, 451, 224) == (224, 336)
    assert resize_size(7, 7, 224) == (224, 224)
    assert resize_size(3000, 200, 224) == (3360, 224)
    # floor division, also when the crop is larger than the image
    assert crop_box(336, 224, 224, 224) == (56, 0, 280, 224)
    assert crop_box(337, 225, 224, 224) == (56, 0, 280, 224)
    assert crop_box(100, 100, 161, 128) == (-31, -14, 130, 114)


def test_batch_and_out_buffer() -> None:
    images = [photo(n) for n in RGB_PHOTO_NAMES[:3]]
    batch = preprocess_batch(images)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index], preprocess(image))
    buffer = np.zeros((3, 224, 224), dtype=np.float32)
    assert preprocess(images[0], out=buffer) is buffer
    np.testing.assert_array_equal(buffer, batch[0])
    with pytest.raises(ValueError, match="out must be"):
        preprocess(images[0], out=np.zeros((3, 224, 225), dtype=np.float32))
    assert preprocess_batch([]).shape == (0, 3, 224, 224)


def manifest_with(**preprocessing: Any) -> ModelManifest:
    fields: dict[str, Any] = {
        "model_dir": Path("model"),
        "source_model": "openai/clip-vit-base-patch32",
        "model_name": "clip-vit-base-patch32",
        "embedding_dim": 512,
        "image_size": 224,
        "image_mean": (0.48145466, 0.4578275, 0.40821073),
        "image_std": (0.26862954, 0.26130258, 0.27577711),
        "resize_shortest_edge": 224,
        "resample": "bicubic",
        "crop_height": 224,
        "crop_width": 224,
        "rescale_factor": 1 / 255,
        "context_length": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
        "text_pooling": "eos",
        "logit_scale": 100.0,
    }
    fields.update(preprocessing)
    return ModelManifest(**fields)


def test_config_from_manifest() -> None:
    assert PreprocessConfig.from_manifest(manifest_with()) == CLIP_DEFAULT
    big = PreprocessConfig.from_manifest(manifest_with(resize_shortest_edge=336, crop_height=336, crop_width=336))
    assert big.output_shape == (3, 336, 336)
    assert preprocess(photo("coffee"), big).shape == (3, 336, 336)
    with pytest.raises(ModelNotFoundError, match="resample"):
        PreprocessConfig.from_manifest(manifest_with(resample="magic"))
    assert resample_filter("BICUBIC") == Image.Resampling.BICUBIC
    assert resample_filter(3) == Image.Resampling.BICUBIC


def test_preprocessor_bundle(tmp_path: Path) -> None:
    path = save(photo("rocket"), tmp_path / "rocket.png", "PNG")
    bundle = Preprocessor.from_manifest(manifest_with(), draft=False, max_pixels=10_000_000)
    np.testing.assert_array_equal(bundle.load_and_preprocess(path), load_and_preprocess(path))
    np.testing.assert_array_equal(bundle.preprocess(bundle.load(path)), preprocess(load_image(path)))
    assert bundle.preprocess_batch([bundle.load(path)]).shape == (1, 3, 224, 224)
    with pytest.raises(ImageTooLargeError):
        Preprocessor(max_pixels=1000).load(path)


# --- decoding: modes, files, parity through files ------------------------------------------------------


def _with_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    width, height = rgba.size
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))
    rgba.putalpha(Image.fromarray(ramp.astype(np.uint8), "L"))
    return rgba


def _palette_with_transparency() -> Image.Image:
    image = photo("chelsea").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    image.info["transparency"] = int(np.asarray(image)[150, 200])  # the colour under the cat's nose
    return image


MODE_FILES: dict[str, tuple[Any, str, str]] = {
    # name: (make the image, format, extension)
    "rgba_png": (lambda: _with_alpha(photo("astronaut")), "PNG", "png"),
    "la_png": (lambda: _with_alpha(photo("camera")).convert("LA"), "PNG", "png"),
    "palette_png": (lambda: photo("coffee").convert("P", palette=Image.Palette.ADAPTIVE), "PNG", "png"),
    "palette_transparency_png": (_palette_with_transparency, "PNG", "png"),
    "palette_transparency_gif": (_palette_with_transparency, "GIF", "gif"),
    "grey_png": (lambda: photo("camera"), "PNG", "png"),
    "grey_jpeg": (lambda: photo("camera"), "JPEG", "jpg"),
    "bilevel_png": (lambda: photo("camera").convert("1"), "PNG", "png"),
    "cmyk_jpeg": (lambda: photo("china").convert("CMYK"), "JPEG", "jpg"),
    "cmyk_tiff": (lambda: photo("flower").convert("CMYK"), "TIFF", "tif"),
    "rgb_webp": (lambda: photo("rocket"), "WEBP", "webp"),
    "rgba_webp": (lambda: _with_alpha(photo("rocket")), "WEBP", "webp"),
    "rgb_bmp": (lambda: photo("chelsea"), "BMP", "bmp"),
    "rgb_tiff": (lambda: photo("chelsea"), "TIFF", "tiff"),
}


@pytest.mark.parametrize("kind", sorted(MODE_FILES))
def test_file_to_tensor_parity_across_modes(clip_processor: Any, tmp_path: Path, kind: str) -> None:
    """File -> load_image -> preprocess equals transformers fed the same file opened by Pillow."""
    make, fmt, ext = MODE_FILES[kind]
    path = save(make(), tmp_path / f"{kind}.{ext}", fmt)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    with Image.open(path) as raw:
        ref = reference(clip_processor, raw)
    assert float(np.abs(preprocess(loaded) - ref).max()) <= PARITY


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P", "L", "1", "CMYK", "YCbCr", "RGBa", "HSV", "LAB"])
def test_in_memory_mode_parity(clip_processor: Any, mode: str) -> None:
    source = _with_alpha(photo("chelsea"))
    image = source.convert("P").convert("PA") if mode == "PA" else source.convert(mode)
    assert image.mode == mode
    assert float(np.abs(preprocess(image) - reference(clip_processor, image)).max()) <= PARITY


def test_premultiplied_la_is_handled(clip_processor: Any) -> None:
    """transformers cannot convert ``La`` at all (Pillow refuses La -> RGB); we unpremultiply first."""
    image = _with_alpha(photo("camera")).convert("La")
    with pytest.raises(ValueError):
        reference(clip_processor, image)
    expected = reference(clip_processor, image.convert("LA"))
    assert float(np.abs(preprocess(image) - expected).max()) <= PARITY


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 255, 0))
    rgb = np.asarray(to_rgb(rgba))
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # fully transparent -> white
    assert tuple(rgb[1, 1]) == (255, 127, 127)  # half red over white
    palette = _palette_with_transparency()
    transparent = np.asarray(palette) == palette.info["transparency"]
    assert transparent.any()
    assert (np.asarray(to_rgb(palette))[transparent] == 255).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    camera8 = np.asarray(photo("camera"))
    camera16 = camera8.astype(np.uint16) * 257  # exact 16-bit version of the photo
    camera16[0, :3] = (1000, 65535, 128)  # 1000/257 = 3.9 -> 4 ; clipping would give 255
    path = save(Image.fromarray(camera16), tmp_path / "camera16.png", "PNG")
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
        assert raw.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # what Pillow's convert would do
    rgb = np.asarray(load_image(path))
    expected = camera8.copy()
    expected[0, :3] = (4, 255, 0)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    big_endian = Image.fromarray(camera16.astype(">u2"))
    assert big_endian.mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(to_rgb(big_endian))[..., 0], expected)


def test_int32_and_float_modes() -> None:
    camera8 = np.asarray(photo("camera"))
    as_i16_range = Image.fromarray(camera8.astype(np.int32) * 257, "I")
    np.testing.assert_array_equal(np.asarray(to_rgb(as_i16_range))[..., 0], camera8)
    negative = Image.fromarray(camera8.astype(np.int32) * 1000 - 100_000, "I")  # min-max stretched
    np.testing.assert_array_equal(np.asarray(to_rgb(negative))[..., 1], camera8)
    unit_float = Image.fromarray((camera8 / 255.0).astype(np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(unit_float))[..., 2], camera8)
    byte_float = Image.fromarray(camera8.astype(np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(byte_float))[..., 0], camera8)
    with_nan = camera8.astype(np.float32) / 255.0
    with_nan[0, 0] = np.nan
    assert np.asarray(to_rgb(Image.fromarray(with_nan, "F")))[0, 0, 0] == 0


def test_grayscale_photo_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = photo_path("camera") or save(photo("camera"), tmp_path / "camera.png", "PNG")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (512, 512, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], np.asarray(photo("camera")))


def test_cmyk_jpeg_decodes_close_to_the_original(tmp_path: Path) -> None:
    original = photo("china")
    path = save(original.convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    rgb = np.asarray(load_image(path)).astype(np.int16)
    assert float(np.abs(rgb - np.asarray(original)).mean()) < 3.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(photo("chelsea"), tmp_path / f"o{orientation}.jpg", "JPEG", exif=exif.tobytes())
    loaded = load_image(path)
    with Image.open(path) as raw:
        expected = ImageOps.exif_transpose(raw).convert("RGB")
    assert loaded.size == ((300, 451) if orientation >= 5 else (451, 300))
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # stored: red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(image, tmp_path / "rotated.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top, bottom = np.asarray(loaded)[5, 10], np.asarray(loaded)[35, 10]
    assert top[0] > 200 and top[2] < 60  # the left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_images_give_the_first_frame(tmp_path: Path, clip_processor: Any) -> None:
    frames = [Image.new("RGB", (32, 24), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    for fmt, ext in (("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")):
        path = tmp_path / f"anim.{ext}"
        frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        with Image.open(path) as raw:
            assert getattr(raw, "n_frames", 1) == 3
        pixel = np.asarray(load_image(path))[12, 16].astype(int)
        assert pixel[0] > 230 and pixel[1] < 20 and pixel[2] < 20, (fmt, pixel)
    real_gif = Path(str(photo_path("astronaut"))).parent / "no_time_for_that_tiny.gif"
    if real_gif.is_file():  # a real animated GIF shipped with scikit-image
        with Image.open(real_gif) as raw:
            assert getattr(raw, "n_frames", 1) > 1
            ref = reference(clip_processor, raw)
        assert float(np.abs(preprocess(load_image(real_gif)) - ref).max()) <= PARITY


def test_wrong_extension_still_decodes(tmp_path: Path) -> None:
    path = save(photo("coffee"), tmp_path / "actually_png.jpg", "PNG")
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(photo("coffee")))


# --- refusals --------------------------------------------------------------------------------------------


def test_decompression_bomb_refused_and_limit_adjustable(tmp_path: Path) -> None:
    path = save(photo("astronaut").resize((1200, 900)), tmp_path / "big.png", "PNG", compress_level=1)
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(path, max_pixels=1_000_000)
    assert "--max-pixels 1080000" in caught.value.reason
    assert isinstance(caught.value, ImageError)
    assert load_image(path, max_pixels=1_080_000).size == (1200, 900)
    assert load_image(path, max_pixels=0).size == (1200, 900)  # 0: no limit
    # None is the default limit, never "unlimited": an unset option must not disable the guard
    assert resolve_max_pixels(None) == DEFAULT_MAX_PIXELS
    assert resolve_max_pixels(0) == resolve_max_pixels(-5) == 0
    assert Preprocessor(max_pixels=None).max_pixels == DEFAULT_MAX_PIXELS
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= DEFAULT_MAX_PIXELS // 2
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    make_hostile_files(hostile)
    bomb = hostile / "bomb_header.png"  # 100000 x 100000 declared, 1 KB on disk
    with pytest.raises(ImageTooLargeError, match="--max-pixels"):
        load_image(bomb)
    assert DEFAULT_MAX_PIXELS >= 108_000_000  # a 108 MP phone photo passes by default


@pytest.mark.parametrize("name", ["china", "astronaut"])
@pytest.mark.parametrize("draft", [False, True])
def test_truncated_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, draft: bool) -> None:
    source = photo_path(name)
    data = source.read_bytes() if source is not None else b""
    assert data, "sample photo missing"
    path = tmp_path / f"cut{source.suffix if source else ''}"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path, draft=draft)
    # even if some other code turned Pillow's "load truncated images" on, nothing half grey gets out
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        load_image(path, draft=draft)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.timeout(60, method="signal")  # a blocking read of a special file fails the test
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_hostile_files(tmp_path: Path) -> None:
    expected = make_hostile_files(tmp_path)
    assert len(expected) >= 22
    assert sum(outcome == "error" for outcome in expected.values()) >= 22

    def decode_all() -> dict[str, str]:
        got: dict[str, str] = {}
        for name in expected:
            for draft in (False, True):
                try:
                    image = load_image(tmp_path / name, draft=draft)
                    assert image.mode == "RGB" and image.size[0] > 0 and image.size[1] > 0
                    outcome = "ok"
                except ImageError as exc:
                    assert exc.path == str(tmp_path / name) and exc.reason
                    outcome = "error"
                if got.setdefault(name, outcome) != outcome:
                    got[name] = "draft-dependent"
        return got

    assert decode_all() == expected


@pytest.mark.timeout(10, method="signal")  # a blocking read of a special file fails the test
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_special_files_refused_with_reason(tmp_path: Path) -> None:
    make_hostile_files(tmp_path)
    reasons = {}
    for name in ("fifo.png", "dev_zero.jpg", "folder.jpg", "zero_bytes.jpg"):
        with pytest.raises(ImageError) as caught:
            load_image(tmp_path / name)
        reasons[name] = caught.value.reason
    assert "FIFO" in reasons["fifo.png"]
    assert "character device" in reasons["dev_zero.jpg"]
    assert "directory" in reasons["folder.jpg"]
    assert "empty" in reasons["zero_bytes.jpg"]


# --- draft mode ------------------------------------------------------------------------------------------

# Measured on these fixtures (DRAFT_OVERSAMPLE = 1.5: a 1/8 DCT scale for the 12 MP rocket, 1/4 for the 4 MP
# astronaut): 8-bit max |diff| 10 and 5, mean 0.38 and 0.35 levels; pixel_values max |diff| 0.142 and 0.075.
# On 7 photos at 12 MP: at most 14 levels, 0.21 in pixel_values (indexer/decode.py, DRAFT_OVERSAMPLE; docs/design.md).
DRAFT_MAX_LEVELS = 12
DRAFT_MEAN_LEVELS = 0.5
DRAFT_MAX_PIXEL_VALUES = 0.18


def _crop_u8(image: Image.Image) -> np.ndarray:
    new_size = resize_size(*image.size, 224)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    return np.asarray(image.crop(crop_box(*new_size, 224, 224))).astype(np.int16)


@pytest.fixture(scope="module")
def camera_jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("camera")
    paths = []
    for name, megapixels in (("rocket", 12.0), ("astronaut", 4.0)):
        path = folder / f"{name}.jpg"
        camera_size(photo(name), megapixels=megapixels).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def test_draft_is_close_to_exact(camera_jpegs: list[Path]) -> None:
    for path in camera_jpegs:
        exact_image = load_image(path, draft=False)
        draft_image = load_image(path, draft=True)
        # draft returns the image already at the resize size (the exact path keeps the full size)
        assert draft_image.size == resize_size(*exact_image.size, 224)
        diff = np.abs(_crop_u8(draft_image) - _crop_u8(exact_image))
        assert 0 < int(diff.max()) <= DRAFT_MAX_LEVELS  # > 0: the two paths really differ (draft was applied)
        assert float(diff.mean()) <= DRAFT_MEAN_LEVELS
        values = np.abs(load_and_preprocess(path, draft=True) - load_and_preprocess(path, draft=False))
        assert float(values.max()) <= DRAFT_MAX_PIXEL_VALUES


def test_draft_follows_exif_orientation(camera_jpegs: list[Path], tmp_path: Path) -> None:
    with Image.open(camera_jpegs[0]) as raw:
        raw.load()
        exif = Image.Exif()
        exif[0x0112] = 8
        path = save(raw, tmp_path / "rotated.jpg", "JPEG", quality=90, exif=exif.tobytes())
    exact_image, draft_image = load_image(path, draft=False), load_image(path, draft=True)
    assert exact_image.size[0] < exact_image.size[1]  # landscape photo displayed as portrait
    assert draft_image.size == resize_size(*exact_image.size, 224)
    diff = np.abs(_crop_u8(draft_image) - _crop_u8(exact_image))
    assert int(diff.max()) <= DRAFT_MAX_LEVELS and float(diff.mean()) <= DRAFT_MEAN_LEVELS


def test_draft_is_exact_when_it_cannot_help(tmp_path: Path) -> None:
    small_jpeg = photo_path("china")  # 640x427: too small to scale down and keep 2 x 224
    png = save(photo("astronaut").resize((1200, 1200)), tmp_path / "big.png", "PNG", compress_level=1)
    for path in (small_jpeg, png):
        assert path is not None
        np.testing.assert_array_equal(load_and_preprocess(path, draft=True), load_and_preprocess(path, draft=False))


def test_draft_larger_model_keeps_its_margin(camera_jpegs: list[Path]) -> None:
    config = PreprocessConfig(shortest_edge=336, crop_height=336, crop_width=336)
    path = camera_jpegs[0]
    exact = load_and_preprocess(path, config, draft=False)
    drafted = load_and_preprocess(path, config, draft=True)
    assert drafted.shape == exact.shape == (3, 336, 336)
    assert float(np.abs(drafted - exact).max()) <= DRAFT_MAX_PIXEL_VALUES


# --- decode_file (what ingest uses: one read, hash, optional decode) -------------------------------------


def test_decode_file_hashes_and_decodes_the_same_bytes(tmp_path: Path) -> None:
    import hashlib

    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(photo("chelsea"), tmp_path / "cat.jpg", "JPEG", quality=90, exif=exif.tobytes())
    data = path.read_bytes()
    decoded = decode_file(path)
    assert isinstance(decoded, DecodedFile)
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert decoded.size == len(data)
    assert (decoded.width, decoded.height, decoded.format) == (300, 451, "JPEG")  # as displayed
    assert decoded.image is not None
    np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(load_image(path)))

    seen: list[str] = []

    def already_stored(sha: str) -> bool:
        seen.append(sha)
        return False

    header_only = decode_file(path, decode_pixels=already_stored)
    assert seen == [decoded.sha256]
    assert header_only.image is None
    assert (header_only.width, header_only.height, header_only.format) == (300, 451, "JPEG")

    camera_path = save(camera_size(photo("rocket"), megapixels=3), tmp_path / "r.jpg", "JPEG")
    drafted = decode_file(camera_path, Preprocessor(draft=True))
    assert drafted.image is not None
    assert drafted.image.size == resize_size(drafted.width, drafted.height, 224)  # draft: already resized
    with Image.open(camera_path) as raw:
        assert (drafted.width, drafted.height) == raw.size


@pytest.mark.timeout(10, method="signal")  # a blocking read of a special file fails the test
def test_decode_file_checks_the_header_before_reading_the_file(tmp_path: Path) -> None:
    """A huge sparse file named .jpg is refused from its first bytes, not read and hashed in full."""
    big = tmp_path / "sparse.jpg"
    with big.open("wb") as handle:
        handle.truncate(64 * 1024**3)  # 64 GiB of holes: reading it all would take minutes
    with pytest.raises(ImageError) as info:
        decode_file(big)
    assert "sparse.jpg" in str(info.value)


@pytest.mark.timeout(10, method="signal")  # a blocking read of a special file fails the test
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_decode_file_refuses_like_load_image(tmp_path: Path) -> None:
    expected = make_hostile_files(tmp_path)

    def outcome(name: str, wanted: bool) -> str:
        try:
            decode_file(tmp_path / name, decode_pixels=lambda _: wanted)
            return "ok"
        except ImageError:
            return "error"

    for name, result in expected.items():
        assert outcome(name, True) == result, name
        if result == "ok":
            assert outcome(name, False) == "ok", name
    # without decoding, the header is still checked: special files, non-images, bombs are refused
    header_refused = ["fifo.png", "dev_zero.jpg", "zero_bytes.jpg", "html_page.jpg", "bomb_header.png"]
    assert [outcome(name, False) for name in header_refused] == ["error"] * len(header_refused)
    with pytest.raises(ImageTooLargeError):
        decode_file(tmp_path / "bomb_header.png", decode_pixels=lambda _: False)
