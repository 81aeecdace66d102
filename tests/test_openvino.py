"""The OpenVINO engine (the [openvino] extra): its vectors against ONNX Runtime's, ``auto``'s choice and its
fallback on a model whose bfloat16 vectors diverge, the engine in payloads and status, and no torch on its path.

Every test runs the real engines on the real tiny model exported by the converter, and real photos; the ones that
need OpenVINO skip where it is not installed, the ones about bfloat16 where the CPU lacks it natively.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipindex.cli.commands import cli
from clipindex.errors import DeviceError, EngineFallbackWarning, ModelIntegrityError
from clipindex.model.encode import Embedder
from clipindex.model.engines import (
    BF16_FLAGS,
    CHECK_TEXTS,
    MIN_ENGINE_COSINE,
    native_bf16,
    openvino_version,
    plan_engine,
)
from clipindex.store.edge import EdgeStore

needs_openvino = pytest.mark.skipif(
    openvino_version() is None, reason="OpenVINO is not installed (pip install 'clipindex[openvino]')"
)
needs_bf16 = pytest.mark.skipif(
    not native_bf16(), reason=f"this CPU has no native bfloat16 ({', '.join(BF16_FLAGS)}): auto keeps ONNX Runtime"
)
AVX512_NO_BF16 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


# --- auto's plan, on CPUs described by their flags ---------------------------------------------------------


def test_auto_plans_openvino_only_with_native_bf16_on_the_cpu_in_fp32() -> None:
    plan = plan_engine("auto", on_cuda=False, device_kind="cpu", precision="fp32", flags=SAPPHIRE_RAPIDS, installed="x")
    assert (plan.engine, plan.precision, plan.check, plan.reason) == ("openvino", "bf16", True, None)
    assert plan.label == "openvino bf16"
    cases = {
        "no native bfloat16": dict(flags=AVX512_NO_BF16, installed="x"),
        "not installed": dict(flags=SAPPHIRE_RAPIDS, installed=None),
    }
    for why, kwargs in cases.items():
        plan = plan_engine("auto", on_cuda=False, device_kind="cpu", precision="fp32", **kwargs)  # type: ignore[arg-type]
        assert (plan.engine, plan.precision) == ("onnxruntime", "fp32") and plan.reason, why
        assert why.split()[-1] in plan.reason
    int8 = plan_engine("auto", on_cuda=False, device_kind="cpu", precision="int8", flags=SAPPHIRE_RAPIDS, installed="x")
    assert (int8.label, "int8" in (int8.reason or "")) == ("onnxruntime int8", True)
    cuda = plan_engine("auto", on_cuda=True, device_kind="auto", precision="fp32", flags=SAPPHIRE_RAPIDS, installed="x")
    assert cuda.engine == "onnxruntime" and "CUDA" in (cuda.reason or "")


def test_explicit_engines_and_their_errors() -> None:
    ort = plan_engine("onnxruntime", on_cuda=False, device_kind="cpu", precision="int8", flags=SAPPHIRE_RAPIDS)
    assert (ort.label, ort.reason, ort.check) == ("onnxruntime int8", None, False)
    f32 = plan_engine(
        "openvino", on_cuda=False, device_kind="cpu", precision="fp32", flags=AVX512_NO_BF16, installed="x"
    )
    assert (f32.label, f32.check) == ("openvino fp32", False)
    with pytest.raises(DeviceError, match=r"clipindex\[openvino\]"):
        plan_engine("openvino", on_cuda=False, device_kind="cpu", precision="fp32", installed=None)
    with pytest.raises(DeviceError, match="CUDA runs on ONNX Runtime"):
        plan_engine("openvino", on_cuda=True, device_kind="cuda", precision="fp32", installed="x")
    with pytest.raises(DeviceError, match="choose one of onnxruntime, openvino, auto"):
        plan_engine("tensorrt", on_cuda=False, device_kind="cpu", precision="fp32")


def test_the_engine_option_rejects_an_unknown_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "x.jpg"), "--labels", "a,b", "--engine", "tensorrt"])
    assert result.exit_code == 2 and "tensorrt" in result.output


# --- fidelity -------------------------------------------------------------------------------------------------


@needs_openvino
def test_openvino_agrees_with_onnx_runtime_per_photo_and_per_text(
    tiny_model_dir: Path, sample_photos: dict[str, Image.Image]
) -> None:
    reference = Embedder(tiny_model_dir, device="cpu", engine="onnxruntime")
    openvino = Embedder(tiny_model_dir, device="cpu", engine="openvino")
    photos = list(sample_photos.values())
    images = cosines(reference.encode_images(photos), openvino.encode_images(photos))
    assert len(images) == len(photos) and images.min() >= MIN_ENGINE_COSINE, images
    texts = [*CHECK_TEXTS, "a cat on a sofa", "a rocket on the launch pad"]
    text = cosines(reference.encode_text(texts), openvino.encode_text(texts))
    assert text.min() >= MIN_ENGINE_COSINE, text
    expected = "bf16" if native_bf16() else "fp32"
    assert openvino.engine("vision") == openvino.engine("text") == f"openvino {expected}"
    assert openvino.provider("vision") == "OpenVINO CPU" and reference.engine() == "onnxruntime fp32"


@needs_openvino
def test_openvino_runs_the_int8_files_when_asked(tiny_model_dir: Path, sample_photos: dict[str, Image.Image]) -> None:
    photos = list(sample_photos.values())[:3]
    fp32 = Embedder(tiny_model_dir, device="cpu").encode_images(photos)
    int8 = Embedder(tiny_model_dir, device="cpu", engine="openvino", precision="int8")
    assert int8.engine() == "openvino int8"
    assert cosines(fp32, int8.encode_images(photos)).min() > 0.99


@needs_openvino
def test_the_compiled_model_is_cached_and_a_corrupted_file_never_loads(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    Embedder(model, device="cpu", engine="openvino").tower("vision")
    cache = Path(os.environ["CLIPINDEX_CACHE_DIR"]) / "openvino"
    digest = json.loads((model / "manifest.json").read_text())["files"]["vision.onnx"]["sha256"]
    folder = cache / f"{digest[:24]}-vision.onnx"
    assert list((folder / "compiled").iterdir()), "OpenVINO's CACHE_DIR holds the compiled model"
    assert str((model / "vision.onnx").resolve()) in (folder / "sources").read_text()
    data = bytearray((model / "vision.onnx").read_bytes())
    data[-100] ^= 0xFF
    (model / "vision.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="corrupted"):
        Embedder(model, device="cpu", engine="openvino").tower("vision")


# --- auto: its check, and its fallback on a model that diverges ------------------------------------------------


def diverging_model(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model folder with a vision tower whose float32 output is the small difference of two large
    products: bfloat16 rounds the large weights by more than the difference, so its vectors diverge."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shutil.copytree(tiny_model_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    dim = int(manifest["embedding_dim"])
    rng = np.random.default_rng(0)
    large = (rng.standard_normal((3 * 49, dim)) * 1000).astype(np.float32)
    near = (large + rng.standard_normal((3 * 49, dim))).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "near"], ["a"]),
        helper.make_node("MatMul", ["flat", "large"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "diverging",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(near, "near"), numpy_helper.from_array(large, "large")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "vision.onnx"))
    data = (out / "vision.onnx").read_bytes()
    manifest["files"]["vision.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@needs_openvino
@needs_bf16
def test_auto_checks_each_tower_and_keeps_the_verdict(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    first = Embedder(model, device="cpu", engine="auto")
    assert first.engine_plan.label == "openvino bf16" and first.engine_plan.check
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineFallbackWarning)
        assert first.engine("vision") == first.engine("text") == "openvino bf16"
    vision, text = first.checks["vision"], first.checks["text"]
    assert vision.passed and not vision.cached and len(vision.cosines) == 5  # the five probe photos
    assert text.passed and len(text.cosines) == len(CHECK_TEXTS)
    assert vision.min_cosine >= MIN_ENGINE_COSINE and vision.seconds > 0
    again = Embedder(model, device="cpu", engine="auto")
    again.tower("vision")
    assert again.checks["vision"].cached and again.checks["vision"].cosines == vision.cosines


@needs_openvino
@needs_bf16
def test_auto_falls_back_to_onnx_runtime_when_the_vectors_diverge(
    tiny_model_dir: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    model = diverging_model(tiny_model_dir, tmp_path / "diverging")
    photos = list(sample_photos.values())[:3]
    reference = Embedder(model, device="cpu").encode_images(photos)
    forced = Embedder(model, device="cpu", engine="openvino").encode_images(photos)
    assert cosines(reference, forced).max() < 0.99, "the model diverges in bfloat16"
    auto = Embedder(model, device="cpu", engine="auto")
    with pytest.warns(EngineFallbackWarning, match=r"vision tower on ONNX Runtime.*cosine 0\.\d+"):
        assert auto.engine("vision") == "onnxruntime fp32"
    assert not auto.checks["vision"].passed
    np.testing.assert_allclose(auto.encode_images(photos), reference, atol=1e-5)
    with warnings.catch_warnings():  # the text tower is the tiny model's own: it passes
        warnings.simplefilter("error", EngineFallbackWarning)
        assert auto.engine("text") == "openvino bf16"
    with pytest.warns(EngineFallbackWarning):  # the kept verdict falls back at once
        assert Embedder(model, device="cpu", engine="auto").engine("vision") == "onnxruntime fp32"


# --- the CLI: start line, payloads, status of a mixed collection ------------------------------------------------


def ingest(photos: Path, model: Path, data: Path, *extra: str) -> Any:
    args = ["ingest", str(photos), "--model-dir", str(model), "--data-dir", str(data), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def payloads(data: Path, model: Path) -> dict[str, dict[str, Any]]:
    embedder = Embedder(model)
    with EdgeStore(data, "images") as store:
        store.ensure_collection(embedder.dimension, embedder.model_name, create=False)
        return {Path(p["path"]).name: p for _, p in store.iter_payloads(["path", "model", "engine", "precision"])}


@needs_openvino
def test_a_collection_written_by_both_engines_is_reported_mixed(
    tiny_model_dir: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    names = sorted(sample_photos)
    for name in names[:3]:
        sample_photos[name].save(photos / f"{name}.jpg", quality=92)
    first = ingest(photos, tiny_model_dir, data, "--engine", "onnxruntime")
    assert first.exit_code == 0, first.output
    assert "onnxruntime fp32" in first.stderr
    status = json.loads(
        CliRunner()
        .invoke(cli, ["status", "--model-dir", str(tiny_model_dir), "--data-dir", str(data), "--json"])
        .stdout
    )
    assert (status["engines"], status["mixed_engines"]) == (["onnxruntime fp32"], False)

    for name in names[3:]:
        sample_photos[name].save(photos / f"{name}.jpg", quality=92)
    shutil.copy(photos / f"{names[0]}.jpg", photos / "copy.jpg")  # a copy reuses the ONNX Runtime vector
    second = ingest(photos, tiny_model_dir, data, "--engine", "openvino")
    assert second.exit_code == 0, second.output
    label = f"openvino {'bf16' if native_bf16() else 'fp32'}"
    assert f"on CPU, {label};" in second.stderr

    stored = payloads(data, tiny_model_dir)
    for name in names[:3]:
        assert (stored[f"{name}.jpg"]["engine"], stored[f"{name}.jpg"]["precision"]) == ("onnxruntime", "fp32")
    for name in names[3:]:
        assert f"{stored[f'{name}.jpg']['engine']} {stored[f'{name}.jpg']['precision']}" == label
    assert stored["copy.jpg"]["engine"] == "onnxruntime"
    result = CliRunner().invoke(cli, ["status", "--model-dir", str(tiny_model_dir), "--data-dir", str(data)])
    assert f"mixed: onnxruntime fp32, {label}" in result.stdout
    status = json.loads(
        CliRunner()
        .invoke(cli, ["status", "--model-dir", str(tiny_model_dir), "--data-dir", str(data), "--json"])
        .stdout
    )
    assert status["mixed_engines"] and status["engines"] == ["onnxruntime fp32", label]
    found = CliRunner().invoke(
        cli,
        ["search", "a cat", "--model-dir", str(tiny_model_dir), "--data-dir", str(data), "--engine", "auto", "--json"],
    )
    assert found.exit_code == 0 and len(json.loads(found.stdout)) == len(names) + 1


@needs_openvino
def test_auto_names_why_it_keeps_onnx_runtime(
    tiny_model_dir: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    next(iter(sample_photos.values())).save(photos / "one.jpg")
    result = ingest(photos, tiny_model_dir, tmp_path / "data", "--engine", "auto", "--precision", "int8")
    assert result.exit_code == 0, result.output
    assert "onnxruntime int8 (auto: the int8 towers are fastest on ONNX Runtime)" in result.stderr


# --- no torch on the path --------------------------------------------------------------------------------------


@needs_openvino
def test_the_openvino_path_never_imports_torch(tiny_model_dir: Path) -> None:
    code = (
        "import sys\n"
        "from clipindex.model.encode import Embedder\n"
        f"e = Embedder({str(tiny_model_dir)!r}, device='cpu', engine='auto')\n"
        "e.encode_text('a cat'); e.encode_pixels(__import__('numpy').zeros((1, 3, 224, 224), 'float32'))\n"
        "print(e.engine('vision'), 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.split()[-2:] == ["False", "False"], done.stdout + done.stderr


def test_status_counts_vectors_of_runs_that_recorded_no_engine(
    tiny_model_dir: Path, tmp_path: Path, sample_photos: dict[str, Image.Image]
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    first, second = sorted(sample_photos)[:2]
    sample_photos[first].save(photos / "one.jpg")
    assert ingest(photos, tiny_model_dir, data).exit_code == 0
    embedder = Embedder(tiny_model_dir)
    with EdgeStore(data, "images") as store:  # the summary a run wrote before summaries recorded engines
        store.ensure_collection(embedder.dimension, embedder.model_name, create=False)
        summary = store.load_summary()
        assert summary is not None and summary.pop("engines") == ["onnxruntime fp32"]
        store.save_summary(summary)
    sample_photos[second].save(photos / "two.jpg")
    assert ingest(photos, tiny_model_dir, data, "--engine", "onnxruntime").exit_code == 0
    args = ["status", "--model-dir", str(tiny_model_dir), "--data-dir", str(data), "--json"]
    status = json.loads(CliRunner().invoke(cli, args).stdout)
    assert status["engines"] == ["onnxruntime fp32", "unrecorded"] and status["mixed_engines"]
