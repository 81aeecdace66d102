"""The Embedder library API on real ONNX Runtime sessions, against transformers' CLIPModel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from reference import cosine_rows, image_features, text_features

from clipindex.cli.commands import cli
from clipindex.convert.api import convert_model
from clipindex.convert.checkpoint import write_random_checkpoint
from clipindex.errors import DeviceError, ModelIntegrityError, ModelNotFoundError
from clipindex.model.encode import Embedder
from clipindex.store.edge import EdgeStore


def test_encode_images_paths_and_pil_match_transformers(
    tiny_model_dir: Path, torch_clip, sample_photos, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    model, _, processor = torch_clip
    names = sorted(sample_photos)
    paths = []
    for name in names:
        path = tmp_path / f"{name}.png"
        sample_photos[name].save(path)
        paths.append(path)
    embedder = Embedder(tiny_model_dir, device="cpu")
    from_paths = embedder.encode_images(paths, batch_size=4)
    from_pil = embedder.encode_images([sample_photos[n] for n in names])
    reference = image_features(model, processor, [sample_photos[n] for n in names])
    assert from_paths.shape == (len(names), embedder.dimension) == (len(names), 512)
    assert cosine_rows(from_paths, reference).min() >= 0.9999
    np.testing.assert_allclose(from_paths, from_pil, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(from_paths, axis=1), 1.0, atol=1e-5)
    assert embedder.provider("vision") == "CPUExecutionProvider"


def test_encode_text_and_similarity_match_transformers(tiny_model_dir: Path, torch_clip, sample_photos) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, processor = torch_clip
    texts = ["a photo of a cat", "a rocket on the launch pad", "", "日本語 " * 60]
    embedder = Embedder(tiny_model_dir)
    truncated: list[str] = []
    got = embedder.encode_text(texts, on_truncate=truncated.append)
    reference = text_features(model, tokenizer, texts)
    assert cosine_rows(got, reference).min() >= 0.9999
    assert truncated == [texts[3]]
    assert embedder.encode_text("a cat").shape == (1, 512)
    images = embedder.encode_images([sample_photos["chelsea"]])
    sims = embedder.similarity(images, got)
    expected = image_features(model, processor, [sample_photos["chelsea"]]) @ reference.T
    np.testing.assert_allclose(sims, expected, atol=1e-4)
    assert "vision" in embedder._towers and "text" in embedder._towers


def test_text_only_use_never_loads_the_vision_tower(tiny_model_dir: Path) -> None:
    embedder = Embedder(tiny_model_dir)
    embedder.encode_text(["a red car"])
    assert set(embedder._towers) == {"text"}


def test_int8_precision_is_close_to_fp32(tiny_model_dir: Path, sample_photos) -> None:  # type: ignore[no-untyped-def]
    images = list(sample_photos.values())
    fp32 = Embedder(tiny_model_dir, precision="fp32").encode_images(images)
    int8 = Embedder(tiny_model_dir, precision="int8").encode_images(images)
    assert cosine_rows(fp32, int8).min() > 0.98


def test_cuda_without_gpu_and_bad_options_are_clear_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="--device cpu"):
        Embedder(tiny_model_dir, device="cuda")
    with pytest.raises(DeviceError):
        Embedder(tiny_model_dir, precision="fp16")
    no_int8 = tmp_path / "m"
    shutil.copytree(tiny_model_dir, no_int8)
    (no_int8 / "vision.int8.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match="--quantize int8"):
        Embedder(no_int8, precision="int8").encode_images([Image.new("RGB", (10, 10))])
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "vision.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelIntegrityError, match="convert --force"):  # its sha256 is not the recorded one
        Embedder(broken).encode_images([Image.new("RGB", (10, 10))])
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["files"]["vision.onnx"]  # no digest to check: ONNX Runtime's refusal is the error
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelNotFoundError, match="convert --force"):
        Embedder(broken).encode_images([Image.new("RGB", (10, 10))])
    (broken / "manifest.json").write_text("{")
    with pytest.raises(ModelNotFoundError, match="manifest"):
        Embedder(broken)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_a_corrupted_model_file_is_refused_not_used(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: str
) -> None:
    """Same size, a few flipped bytes: ONNX Runtime would load it and write wrong vectors; the manifest's sha256
    catches it, also after a good run has cached the model (the cache entry is keyed on size and mtime)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    monkeypatch.setenv("CLIPINDEX_CACHE_DIR", str(tmp_path / "cache") if cache == "on" else "off")
    image = Image.new("RGB", (40, 30), (10, 120, 200))
    good = Embedder(model).encode_images([image])
    data = bytearray((model / "vision.onnx").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    (model / "vision.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"vision\.onnx: corrupted"):
        Embedder(model).encode_images([image])
    shutil.copy2(tiny_model_dir / "vision.onnx", model / "vision.onnx")  # restored: works again
    np.testing.assert_allclose(Embedder(model).encode_images([image]), good, atol=1e-6)


def test_manifest_values_that_cannot_be_right_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    original = json.loads((model / "manifest.json").read_text())

    def with_changes(**changes: Any) -> None:
        manifest = json.loads(json.dumps(original))
        for dotted, value in changes.items():
            *parents, key = dotted.split("__")
            target = manifest
            for parent in parents:
                target = target[parent]
            target[key] = value
        (model / "manifest.json").write_text(json.dumps(manifest))

    with_changes(resize__shortest_edge=0)
    with pytest.raises(ModelNotFoundError, match="shortest_edge is 0"):
        Embedder(model)
    with_changes(image_std=[0.2, 0.0, 0.3])
    with pytest.raises(ModelNotFoundError, match="image_std"):
        Embedder(model)
    with_changes(embedding_dim=original["embedding_dim"] // 2)  # parses, but the model says otherwise
    with pytest.raises(ModelIntegrityError, match="embedding_dim"):
        Embedder(model).encode_images([Image.new("RGB", (10, 10))])
    with pytest.raises(ModelIntegrityError, match="embedding_dim"):
        Embedder(model).encode_text(["a cat"])


@pytest.mark.slow
def test_embedding_dim_comes_from_the_checkpoint(tmp_path: Path, sample_photos) -> None:  # type: ignore[no-untyped-def]
    """A 768-d model (like ViT-L/14) goes through convert, ingest and the store: nothing assumes 512."""
    ckpt = write_random_checkpoint(tmp_path / "clip-768", arch="tiny", projection_dim=768)
    model_dir = tmp_path / "model"
    convert_model(str(ckpt), model_dir)
    assert json.loads((model_dir / "manifest.json").read_text())["embedding_dim"] == 768
    photos = tmp_path / "photos"
    photos.mkdir()
    sample_photos["coffee"].save(photos / "coffee.jpg")
    result = CliRunner().invoke(
        cli, ["ingest", str(photos), "--model-dir", str(model_dir), "--data-dir", str(tmp_path / "d"), "-q"]
    )
    assert result.exit_code == 0, result.output
    with EdgeStore(tmp_path / "d", "images") as store:
        info = store.collection_info()
        assert info.vector_dim == 768
        (vector,) = store.get_vectors([pid for pid, _ in store.iter_payloads()]).values()
        assert vector.shape == (768,)
    assert Embedder(model_dir).encode_text("a cup of coffee").shape == (1, 768)


def test_optimised_model_cache_gives_identical_vectors_and_survives_damage(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_photos
) -> None:  # type: ignore[no-untyped-def]
    images = list(sample_photos.values())
    monkeypatch.setenv("CLIPINDEX_CACHE_DIR", "off")
    direct = Embedder(tiny_model_dir).encode_images(images)
    monkeypatch.setenv("CLIPINDEX_CACHE_DIR", str(tmp_path / "cache"))
    first = Embedder(tiny_model_dir).encode_images(images)  # writes the cache
    cached = sorted((tmp_path / "cache" / "ort").rglob("vision.onnx*"))
    assert [p.name for p in cached] == ["vision.onnx", "vision.onnx.data"]
    assert len(list((tmp_path / "cache" / "ort").iterdir())) == 1
    second = Embedder(tiny_model_dir).encode_images(images)  # loads from it
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, direct, atol=1e-6)
    cached[1].write_bytes(b"damaged")  # a broken cache is dropped and the model loads directly
    third = Embedder(tiny_model_dir).encode_images(images)
    np.testing.assert_allclose(third, direct, atol=1e-6)
    assert not cached[1].exists() or cached[1].read_bytes() != b"damaged"


def test_draft_decoding_keeps_embeddings_within_cosine_0999(tiny_model_dir: Path, tmp_path: Path) -> None:
    """JPEG DCT draft decoding vs the exact path, measured at the embedding on camera-size real photos."""
    from photos import camera_size, photo

    paths = []
    for name in ("rocket", "chelsea", "coffee"):
        path = tmp_path / f"{name}.jpg"
        camera_size(photo(name), megapixels=12.0).save(path, format="JPEG", quality=90)
        paths.append(path)
    exact = Embedder(tiny_model_dir, draft=False).encode_images(paths)
    draft = Embedder(tiny_model_dir, draft=True).encode_images(paths)
    assert cosine_rows(exact, draft).min() >= 0.999
