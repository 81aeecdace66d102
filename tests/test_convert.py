"""`clipindex convert`: the real converter on a tiny random-weight checkpoint in the hub layout."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from reference import cosine_rows, features, image_features, normalise

from clipindex.cli.commands import cli
from clipindex.convert.api import convert_model
from clipindex.convert.checkpoint import write_random_checkpoint
from clipindex.convert.errors import ParityError
from clipindex.convert.export import export_towers
from clipindex.convert.verify import verify_towers
from clipindex.model.manifest import ModelManifest

EXPECTED_FILES = {
    "vision.onnx",
    "text.onnx",
    "tokenizer.json",
    "manifest.json",
    "vision.int8.onnx",
    "text.int8.onnx",
}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_cli_convert_writes_a_verified_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = CliRunner().invoke(
        cli, ["convert", "--model", str(tiny_checkpoint), "--output", str(out), "--quantize", "int8"]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    assert "parity vision_batch_n" in result.output and "cosine vs fp32" in result.output
    assert not list(tmp_path.glob(".model.*")), "staging folder left behind"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 512 and manifest["image_size"] == 224
    assert manifest["context_length"] == 77
    assert manifest["special_tokens"]["bos_token_id"] == 49406
    assert manifest["special_tokens"]["eos_token_id"] == 49407
    assert manifest["special_tokens"]["config_eos_token_id"] == 2
    assert manifest["text_pooling"] == "argmax_input_ids"
    assert manifest["vision_export"] == {"patch_embedding": "matmul", "last_layer": "class_token_only"}
    assert manifest["resize"] == {"shortest_edge": 224, "resample": "bicubic"}
    assert manifest["crop"] == {"height": 224, "width": 224}
    assert manifest["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert manifest["logit_scale"] == pytest.approx(100.0, rel=1e-5)
    assert manifest["opset"] >= 17
    for name, info in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"], name
    for key in ("vision_batch_1", "vision_batch_n", "text_batch_1_unpadded", "text_batch_n_padded"):
        assert manifest["parity"][key]["min_cosine"] >= 0.99999, key
        assert manifest["parity"][key]["max_abs_diff"] <= 1e-4, key
    assert manifest["parity"]["vision_batch_n"]["batch_size"] >= 11
    assert manifest["parity"]["text_batch_n_padded"]["batch_size"] >= 11
    for name in ("vision.int8.onnx", "text.int8.onnx"):
        assert 0.9 < manifest["quantization"][name]["min_cosine"] <= 1.0
    assert manifest["quantization"]["op_types"] == ["MatMul"]
    assert manifest["quantization"]["per_channel"] is True and manifest["quantization"]["reduce_range"] is True
    # int8 rewrites the MatMuls, the patch embedding's included (exported as one), and no Conv (ORT's ConvInteger
    # is slow on CPU): no float MatMul with a weight is left
    int8_graph = onnx.load(str(out / "vision.int8.onnx"), load_external_data=False).graph
    int8_ops = {node.op_type for node in int8_graph.node}
    assert not {"Conv", "ConvInteger"} & int8_ops
    assert {"MatMulInteger", "DynamicQuantizeMatMul"} & int8_ops
    weights = {init.name for init in int8_graph.initializer}
    assert not [n.name for n in int8_graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    assert ModelManifest.load(out).embedding_dim == 512


def test_parity_on_real_photos(tiny_model_dir: Path, torch_clip, sample_photos) -> None:  # type: ignore[no-untyped-def]
    model, _, processor = torch_clip
    images = list(sample_photos.values())
    pixels = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    got = normalise(_session(tiny_model_dir / "vision.onnx").run(None, {"pixel_values": pixels})[0])
    expected = image_features(model, processor, images)
    assert cosine_rows(got, expected).min() >= 0.99999
    assert np.abs(got - expected).max() <= 1e-4


def _weight_macs_per_image(model: onnx.ModelProto) -> int:
    """Multiply-accumulates per image of the graph's weight products (MatMul/Gemm with an initializer weight),
    from ONNX Runtime's symbolic shape inference: weight size times the token rows it runs on (1 for a 2-D input)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    weights = {init.name: int(np.prod(init.dims)) for init in inferred.graph.initializer}
    ranks = {
        info.name: [dim.dim_value or None for dim in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.value_info, *inferred.graph.input]
    }
    macs = 0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in weights:
            dims = ranks[node.input[0]]
            rows = 1 if len(dims) == 2 else dims[-2]
            assert rows is not None, f"{node.name}: token axis unknown"
            macs += rows * weights[node.input[1]]
    return macs


def test_last_vision_layer_computes_only_the_class_token(tiny_model_dir: Path, tiny_checkpoint: Path) -> None:
    """The exported vision tower does the work of every encoder layer on every token except the last layer's
    query, output projection and MLP, which run on the class token alone (the only row the embedding uses); the
    patch embedding is a MatMul on the image's patches (no Conv left for int8 to skip)."""
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    vision, projection_dim = config["vision_config"], config["projection_dim"]
    width, inner, layers = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    patch = vision["patch_size"]
    tokens = (vision["image_size"] // patch) ** 2 + 1
    per_token_layer = 4 * width * width + 2 * width * inner  # q, k, v, out; fc1, fc2
    patch_embedding = (tokens - 1) * 3 * patch * patch * width  # the Conv as a MatMul: one row per patch
    full = patch_embedding + layers * tokens * per_token_layer + width * projection_dim
    pruned = full - (tokens - 1) * (2 * width * width + 2 * width * inner)  # q, out, fc1, fc2 on 1 row, not tokens
    vision_graph = onnx.load(str(tiny_model_dir / "vision.onnx"))
    assert _weight_macs_per_image(vision_graph) == pruned
    assert "Conv" not in {node.op_type for node in vision_graph.graph.node}


@pytest.mark.parametrize("batch_size", [1, 2, 11, 26])
def test_dynamic_batch_axis(tiny_model_dir: Path, batch_size: int) -> None:
    rng = np.random.default_rng(batch_size)
    pixels = rng.standard_normal((batch_size, 3, 224, 224)).astype(np.float32)
    vision = _session(tiny_model_dir / "vision.onnx")
    batched = vision.run(None, {"pixel_values": pixels})[0]
    assert batched.shape == (batch_size, 512)
    one_by_one = np.concatenate([vision.run(None, {"pixel_values": pixels[i : i + 1]})[0] for i in range(batch_size)])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)

    ids = np.full((batch_size, 77), 49407, dtype=np.int64)
    ids[:, 0] = 49406
    ids[:, 1] = rng.integers(0, 49000, batch_size)
    assert _session(tiny_model_dir / "text.onnx").run(None, {"input_ids": ids})[0].shape == (batch_size, 512)


def test_text_padding_does_not_change_the_vector(tiny_model_dir: Path, torch_clip) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, tokenizer, _ = torch_clip
    text = _session(tiny_model_dir / "text.onnx")
    unpadded = np.asarray([tokenizer("a photo of a cat")["input_ids"]], dtype=np.int64)
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="np")["input_ids"]
    a = text.run(None, {"input_ids": unpadded})[0]
    b = text.run(None, {"input_ids": padded.astype(np.int64)})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.no_grad():
        ref = features(model.get_text_features(input_ids=torch.from_numpy(unpadded)))
    np.testing.assert_allclose(a, ref, atol=1e-4)


@pytest.mark.slow
def test_perturbed_onnx_model_is_refused(tiny_checkpoint: Path, torch_clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import onnx
    from onnx import numpy_helper

    model, tokenizer, processor = torch_clip
    export_towers(model, tmp_path, image_size=224, context_length=77, eos_token_id=49407)
    verify_towers(model, processor, tokenizer, tmp_path, context_length=77)  # the honest export passes

    proto = onnx.load(str(tmp_path / "vision.onnx"))
    largest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(largest).copy()
    weights += np.random.default_rng(0).normal(0, 0.05, weights.shape).astype(weights.dtype)
    largest.CopyFrom(numpy_helper.from_array(weights, largest.name))
    onnx.save(proto, str(tmp_path / "vision.onnx"))
    with pytest.raises(ParityError, match="diverges"):
        verify_towers(model, processor, tokenizer, tmp_path, context_length=77)


@pytest.mark.slow
def test_broken_checkpoint_is_refused_and_nothing_written(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-ckpt"
    shutil.copytree(tiny_checkpoint, broken)
    weights = load_file(str(broken / "model.safetensors"))
    key = next(k for k in weights if k.endswith("visual_projection.weight"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", "--model", str(broken), "--output", str(out)])
    assert result.exit_code == 1
    assert "diverges" in result.output and "nothing was written" in result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken-ckpt"], "staging folder left behind"


def _invalid_sources(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "preprocessor_config.json").write_text("{}")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    (garbage / "preprocessor_config.json").write_text("{}")
    return {
        str(tmp_path / "does-not-exist"): "no such checkpoint directory",
        str(empty): "missing config.json",
        str(other): "not 'clip'",
        str(garbage): "unreadable",
        "openai/clip-vit-base-patch32": "Two ways forward",
    }


def test_missing_or_invalid_source_gives_one_clear_line(tmp_path: Path) -> None:
    for source, expected in _invalid_sources(tmp_path).items():
        out = tmp_path / "out"
        result = CliRunner().invoke(cli, ["convert", "--model", source, "--output", str(out)])
        assert result.exit_code == 1, (source, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and expected in errors[0], (source, result.output)
        assert "Traceback" not in result.output
        assert not out.exists()


@pytest.mark.slow
def test_existing_output_needs_force(tiny_model_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "marker").write_text("old")
    result = CliRunner().invoke(cli, ["convert", "--model", str(tiny_checkpoint), "-o", str(out)])
    assert result.exit_code == 1 and "--force" in result.output
    assert (out / "marker").exists()
    result = CliRunner().invoke(cli, ["convert", "--model", str(tiny_checkpoint), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "marker").exists() and (out / "vision.onnx").is_file()


@pytest.mark.slow
def test_default_output_is_the_per_user_model_folder(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the current folder: the one ingest, search and status read (clipindex.model.locate.default_model_dir)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIPINDEX_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    result = convert_model(str(tiny_checkpoint))
    assert result.output == tmp_path / "xdg" / "clipindex" / "models" / "default"
    assert (result.output / "vision.onnx").is_file() and not (tmp_path / "models").exists()
    assert json.loads((result.output / "manifest.json").read_text())["model_name"] == tiny_checkpoint.name


@pytest.mark.slow
def test_missing_convert_extra_names_the_extra(tmp_path: Path) -> None:
    """Run the real CLI in a subprocess where `import torch` fails, as on a runtime-only install."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('No module named torch')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "clipindex", "convert", "--model", str(tmp_path), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(blocker)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "pip install 'clipindex[convert]'" in proc.stderr and "torch" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_full_size_vit_b_32_converts(tmp_path: Path) -> None:
    """The full ViT-B/32 architecture (random weights) converts and verifies offline."""
    ckpt = write_random_checkpoint(tmp_path / "clip-vit-base-patch32", arch="vit-b-32")
    result = convert_model(str(ckpt), tmp_path / "out")
    parity = result.manifest["parity"]
    assert parity["vision_batch_n"]["min_cosine"] >= 0.99999
    assert parity["text_batch_n_padded"]["min_cosine"] >= 0.99999
    assert result.manifest["model_name"] == "clip-vit-base-patch32"
    assert result.file_sizes["vision.onnx"] > 300e6


# --- checkpoints that transformers loads silently into a useless model, and other refusals ----------------------


def _copy_checkpoint(tiny_checkpoint: Path, dest: Path) -> Path:
    shutil.copytree(tiny_checkpoint, dest)
    return dest


def _convert_error(source: str, out: Path, *extra: str) -> str:
    """Run `clipindex convert` expecting a refusal; return its one `Error:` line."""
    result = CliRunner().invoke(cli, ["convert", "--model", source, "--output", str(out), *extra])
    assert result.exit_code == 1, (source, result.output)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_checkpoint_without_a_real_tokenizer_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """transformers 5 builds a 3-token CLIPTokenizer when the tokenizer files are missing: every text would get the
    same embedding. No tokenizer.json and no vocab.json + merges.txt is refused, and so is a tokenizer far smaller
    than the text tower's vocabulary (the check hub ids get too)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    no_tokenizer = _copy_checkpoint(tiny_checkpoint, tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):  # tokenizer_config + special_tokens_map stay
        (no_tokenizer / name).unlink()
    error = _convert_error(str(no_tokenizer), tmp_path / "out")
    assert str(no_tokenizer) in error and "no tokenizer" in error and "vocab.json and merges.txt" in error

    vocab_only = _copy_checkpoint(tiny_checkpoint, tmp_path / "vocab-only")
    for name in ("tokenizer.json", "merges.txt"):
        (vocab_only / name).unlink()
    assert "no tokenizer" in _convert_error(str(vocab_only), tmp_path / "out")

    tiny_vocab = _copy_checkpoint(tiny_checkpoint, tmp_path / "tiny-vocab")
    for name in ("vocab.json", "merges.txt"):
        (tiny_vocab / name).unlink()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}
    bpe = BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>", end_of_word_suffix="</w>")
    Tokenizer(bpe).save(str(tiny_vocab / "tokenizer.json"))
    error = _convert_error(str(tiny_vocab), tmp_path / "out")
    assert "the tokenizer has 3 tokens" in error and "vocab_size is 49408" in error
    assert not (tmp_path / "out").exists()


def test_missing_weights_are_refused_not_filled_with_random_values(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    partial = _copy_checkpoint(tiny_checkpoint, tmp_path / "partial")
    weights = load_file(str(partial / "model.safetensors"))
    vision_only = {key: value for key, value in weights.items() if not key.startswith("text_model.")}
    assert len(vision_only) < len(weights)
    save_file(vision_only, str(partial / "model.safetensors"), metadata={"format": "pt"})
    error = _convert_error(str(partial), tmp_path / "out")
    assert "missing from model.safetensors" in error and "text_model." in error and "random values" in error
    assert not (tmp_path / "out").exists()


def _hub_cache_repo(cache: Path, repo_id: str, checkpoint: Path | None = None) -> Path:
    """A repository in the Hugging Face hub cache's layout (refs/main -> snapshots/<commit>); returns the snapshot."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if checkpoint is not None:
        shutil.copytree(checkpoint, snapshot)
    else:
        snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


_HUB_SCRIPT = """
import json, sys, time
from click.testing import CliRunner
from clipindex.cli import cli

results = {}
for repo_id, out in json.loads(sys.argv[1]):
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["convert", "--model", repo_id, "--output", out])
    results[repo_id] = [result.exit_code, result.output, time.monotonic() - started]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_hub_ids_get_the_checks_of_local_folders_and_fail_fast_offline(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Hub ids, read from a hub cache with the hub unreachable (no HF_HUB_OFFLINE): a cached BERT or Chinese-CLIP
    or a repository without tokenizer is refused like a local folder; an uncached id fails at once instead of
    huggingface_hub's retries with backoff (about 25 s per file); a cached CLIP converts from the cache."""
    cache = tmp_path / "hub"
    (_hub_cache_repo(cache, "acme/bert") / "config.json").write_text(json.dumps({"model_type": "bert"}))
    chinese = _hub_cache_repo(cache, "acme/chinese-clip", tiny_checkpoint)
    config = json.loads((chinese / "config.json").read_text())
    (chinese / "config.json").write_text(json.dumps({**config, "model_type": "chinese_clip"}))
    no_tokenizer = _hub_cache_repo(cache, "acme/clip-no-tokenizer", tiny_checkpoint)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink()
    _hub_cache_repo(cache, "acme/clip-tiny-test", tiny_checkpoint)

    repos = ["acme/bert", "acme/chinese-clip", "acme/clip-no-tokenizer", "acme/not-cached", "acme/clip-tiny-test"]
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update({"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": "http://127.0.0.1:9"})
    jobs = json.dumps([[repo, str(tmp_path / repo.split("/")[1])] for repo in repos])
    proc = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, jobs], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected_errors = {
        "acme/bert": "acme/bert: config.json has model_type 'bert', not 'clip'",
        "acme/chinese-clip": "acme/chinese-clip: config.json has model_type 'chinese_clip', not 'clip'",
        "acme/clip-no-tokenizer": "acme/clip-no-tokenizer: no tokenizer",
        "acme/not-cached": "could not load 'acme/not-cached' from the Hugging Face hub (the hub is unreachable",
    }
    for repo, expected in expected_errors.items():
        code, output, seconds = results[repo]
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert code == 1 and len(errors) == 1 and expected in errors[0], (repo, output)
        assert "Traceback" not in output and seconds < 10, (repo, seconds, output)
        assert not (tmp_path / repo.split("/")[1]).exists()
    code, output, _ = results["acme/clip-tiny-test"]
    assert code == 0, output
    manifest = json.loads((tmp_path / "clip-tiny-test" / "manifest.json").read_text())
    assert manifest["source_model"] == "acme/clip-tiny-test" and manifest["model_name"] == "clip-tiny-test"


@pytest.mark.slow
def test_fp16_checkpoint_in_a_hub_cache_snapshot_converts_in_fp32(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 weights with "torch_dtype": "float16" crashed the export (transformers 5 loads dtype="auto"); they are
    loaded in fp32 and verified in fp32. The snapshot folder's model name is the repository's, not the commit's."""
    import torch
    from safetensors.torch import load_file, save_file

    snapshot = _hub_cache_repo(tmp_path / "hub", "acme/clip-tiny-fp16", tiny_checkpoint)
    weights = load_file(str(snapshot / "model.safetensors"))
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, str(snapshot / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16", "dtype": "float16"}))

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIPINDEX_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(cli, ["convert", "--model", str(snapshot)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "xdg" / "clipindex" / "models" / "default"  # the default output, named after the snapshot
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_name"] == "clip-tiny-fp16"
    assert manifest["source_model"] == str(snapshot.resolve())
    for key in ("vision_batch_n", "text_batch_n_padded"):
        assert manifest["parity"][key]["min_cosine"] >= 0.99999, key
    vision_input = onnx.load(str(out / "vision.onnx"), load_external_data=False).graph.input[0]
    assert vision_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_git_lfs_pointer_files_are_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 605247071\n".format("ab" * 32)
    for name, what in (("model.safetensors", "the weights"), ("tokenizer.json", "the file")):
        clone = _copy_checkpoint(tiny_checkpoint, tmp_path / f"clone-{name}")
        (clone / name).write_text(pointer)
        error = _convert_error(str(clone), tmp_path / "out")
        assert f"{clone / name} is a Git LFS pointer, not {what}: run `git lfs pull` in {clone}" in error


def test_model_name_of_hub_cache_snapshots_and_relative_folders(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipindex.convert.api import default_output, model_name_for

    snapshot = _hub_cache_repo(tmp_path / "hub", "openai/clip-vit-base-patch32")
    assert model_name_for(str(snapshot)) == "clip-vit-base-patch32"
    assert model_name_for(str(snapshot) + "/") == "clip-vit-base-patch32"
    assert default_output(str(snapshot)).name == "default"
    assert model_name_for("openai/clip-vit-base-patch32") == "clip-vit-base-patch32"
    folder = tmp_path / "my-clip" / "sub"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    assert model_name_for(".") == "sub" and model_name_for("..") == "my-clip" and model_name_for("./") == "sub"


def test_force_never_deletes_the_checkpoint_or_a_folder_that_is_no_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    files_before = sorted(p.name for p in checkpoint.iterdir())
    snapshot = _hub_cache_repo(tmp_path / "hub", "acme/clip")
    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir()
    for child in checkpoint.iterdir():  # the cache's layout: snapshot files are links to blobs
        shutil.copy(child, blobs / child.name)
        (snapshot / child.name).symlink_to(Path("..", "..", "blobs", child.name))
    cases = [
        (checkpoint, checkpoint),  # the output is the checkpoint
        (checkpoint, tmp_path),  # ... or contains it
        (checkpoint, checkpoint / ".." / "ckpt"),
        (snapshot, blobs),  # a snapshot's files live in blobs/
        (snapshot, snapshot.parent.parent),
    ]
    for source, out in cases:
        error = _convert_error(str(source), out, "--force")
        assert "holds the checkpoint being converted" in error and "--force would delete it" in error, (source, out)
    assert sorted(p.name for p in checkpoint.iterdir()) == files_before
    assert all((snapshot / name).is_file() for name in files_before)

    someones_files = tmp_path / "photos"
    someones_files.mkdir()
    (someones_files / "cat.jpg").write_bytes(b"not a model")
    error = _convert_error(str(checkpoint), someones_files, "--force")
    assert "not a clipindex model folder (no manifest.json)" in error
    assert (someones_files / "cat.jpg").is_file()


def test_crop_size_other_than_the_vision_image_size_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    preprocessor = json.loads((checkpoint / "preprocessor_config.json").read_text())
    (checkpoint / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "crop_size": 160, "size": 160}))
    error = _convert_error(str(checkpoint), tmp_path / "out")
    assert str(checkpoint / "preprocessor_config.json") in error
    assert "crop_size is 160x160" in error and "vision_config.image_size is 224" in error


def test_source_as_a_positional_argument() -> None:
    runner = CliRunner()
    for args in (["/nonexistent/ckpt"], ["/nonexistent/ckpt", "--model", "/nonexistent/ckpt"]):
        result = runner.invoke(cli, ["convert", *args])
        assert result.exit_code == 1, result.output
        assert "Error: /nonexistent/ckpt: no such checkpoint directory" in result.output
    result = runner.invoke(cli, ["convert", "/nonexistent/a", "--model", "/nonexistent/b"])
    assert result.exit_code == 2 and "differ" in result.output
    result = runner.invoke(cli, ["convert", "/nonexistent/a"], env={"CLIPINDEX_SOURCE_MODEL": "/nonexistent/b"})
    assert result.exit_code == 1 and "/nonexistent/a: no such checkpoint directory" in result.output
    assert "[SOURCE]" in runner.invoke(cli, ["convert", "--help"]).output


def test_preprocessor_flags_match_transformers(
    tiny_checkpoint: Path, tiny_model_dir: Path, tmp_path: Path, sample_photos: dict[str, object]
) -> None:
    """do_normalize / do_rescale false become mean 0, std 1 / rescale factor 1 in the manifest, and the runtime's
    preprocessing then equals CLIPImageProcessorPil's exactly; do_resize / do_center_crop false are refused."""
    from transformers import CLIPImageProcessorPil

    from clipindex.convert.api import preprocessing_rules
    from clipindex.convert.errors import ConvertError
    from clipindex.images.preprocess import Preprocessor

    images = list(sample_photos.values())
    base = json.loads((tiny_checkpoint / "preprocessor_config.json").read_text())
    for flags in ({"do_normalize": False}, {"do_rescale": False}, {"do_normalize": False, "do_rescale": False}):
        folder = tmp_path / "-".join(flags)
        folder.mkdir()
        (folder / "preprocessor_config.json").write_text(json.dumps({**base, **flags}))
        processor = CLIPImageProcessorPil.from_pretrained(str(folder))
        rules = preprocessing_rules(processor)
        assert rules["image_mean"] == ([0.0] * 3 if "do_normalize" in flags else pytest.approx(base["image_mean"]))
        assert rules["rescale_factor"] == (1.0 if "do_rescale" in flags else pytest.approx(1 / 255))
        # a model folder with these rules in its manifest, read back by the runtime
        model_dir = tmp_path / f"model-{folder.name}"
        model_dir.mkdir()
        for name in ("vision.onnx", "text.onnx", "tokenizer.json"):
            (model_dir / name).symlink_to(tiny_model_dir / name)
        manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
        (model_dir / "manifest.json").write_text(json.dumps({**manifest, **rules}))
        runtime = Preprocessor.from_manifest(ModelManifest.load(model_dir), draft=False)
        expected = processor(images=images, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(runtime.preprocess_batch(images), expected)
    for flag in ("do_resize", "do_center_crop"):
        (folder / "preprocessor_config.json").write_text(json.dumps({**base, flag: False}))
        with pytest.raises(ConvertError, match=f"{flag} is false"):
            preprocessing_rules(CLIPImageProcessorPil.from_pretrained(str(folder)), "preprocessor_config.json")


def test_paths_are_never_taken_for_hub_ids(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clipindex.convert.errors import ConvertError

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for source in ("/nonexistent", "./nope", "~/nope", "../nope", "two words"):
        error = _convert_error(source, tmp_path / "out")
        assert f"Error: {source}: no such checkpoint directory" in error, error
        assert "hub" not in error.split(";")[0]
    # `..` and `.` are the folders they resolve to
    nested = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt") / "sub"
    nested.mkdir()
    monkeypatch.chdir(nested)
    error = _convert_error(".", tmp_path / "out")
    assert f"{nested}: missing config.json" in error
    # an output folder that cannot be created is one line, not an OSError traceback
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConvertError, match="cannot create the output folder"):
        convert_model("..", tmp_path / "a-file" / "out")
