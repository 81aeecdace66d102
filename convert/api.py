"""``convert_model``: a CLIP checkpoint (hub id or local folder) -> a verified ONNX model folder.

Steps, each reported through ``progress``:

1. load the checkpoint (``CLIPModel``, ``CLIPTokenizer``, ``CLIPImageProcessor``) from a local folder in the
   hub's layout or from the hub;
2. export both towers to ONNX (:mod:`convert.export`) into a temporary folder beside ``output``;
3. save the runtime tokenizer (``tokenizer.json``) and check its ids against ``CLIPTokenizer``;
4. verify ONNX Runtime against PyTorch (:mod:`convert.verify`); on divergence raise ``ParityError``;
5. optionally quantize to int8 (dynamic, per-channel) and measure cosine against fp32;
6. write ``manifest.json`` (preprocessing, tokens, pooling, logit scale, sha256 of each file, parity figures)
   and rename the temporary folder into place. Nothing is left at ``output`` when any step fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import indexer
from convert.export import OPSET, VISION_EXPORT, export_towers, text_pooling_rule
from indexer.errors import ConvertError, MissingExtraError
from indexer.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TEXT_FILE,
    TOKENIZER_FILE,
    VISION_FILE,
    quantized_name,
)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
QUANTIZATIONS = ("int8",)
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    manifest: dict[str, Any]
    file_sizes: dict[str, int]


def model_name_for(source: str) -> str:
    """``openai/clip-vit-base-patch32`` or ``/ckpts/clip-vit-base-patch32/`` -> ``clip-vit-base-patch32``."""
    name = Path(source.rstrip("/\\")).name
    return name or "clip"


def default_output(source: str, models_root: Path = Path("models")) -> Path:
    return models_root / model_name_for(source)


def require_convert_extra() -> None:
    """Fail with one line naming the extra when torch/transformers/onnx are missing."""
    missing = []
    for module in ("torch", "transformers", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"clipindex convert needs {', '.join(missing)}: install the extra with "
            "`pip install 'clipindex[convert]'` (torch>=2.4,<2.14)"
        )


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or os.sep in source.strip("/")


def load_checkpoint(source: str) -> tuple[Any, Any, Any, str]:
    """Load (model, tokenizer, image_processor, resolved source) from a local folder or a hub id."""
    import logging

    from transformers import CLIPModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    try:  # transformers 5 without torchvision: the PIL backend is the reference
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor  # type: ignore[assignment]

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    path = Path(source).expanduser()
    if path.exists() or (_is_local(source) and source.count("/") != 1):
        if not path.is_dir():
            raise ConvertError(f"{source}: no such checkpoint directory; pass a folder in the Hugging Face layout")
        for required in ("config.json", "preprocessor_config.json"):
            if not (path / required).is_file():
                raise ConvertError(
                    f"{path}: missing {required}; a checkpoint folder needs config.json, weights "
                    "(model.safetensors or pytorch_model.bin), preprocessor_config.json and tokenizer files"
                )
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConvertError(f"{path / 'config.json'}: unreadable ({exc}); is this a CLIP checkpoint?") from exc
        if config.get("model_type") != "clip":
            raise ConvertError(
                f"{path / 'config.json'}: model_type is {config.get('model_type')!r}, not 'clip'; "
                "clipindex converts CLIP checkpoints (e.g. openai/clip-vit-base-patch32)"
            )
        target = str(path.resolve())
    else:
        target = source
    try:
        model = CLIPModel.from_pretrained(target).eval()
        tokenizer = CLIPTokenizer.from_pretrained(target)
        processor = CLIPImageProcessor.from_pretrained(target)
    except OSError as exc:
        if target == source:
            raise ConvertError(
                f"could not load {source!r} from the Hugging Face hub (offline or unknown id); download it "
                "elsewhere and pass the local folder: clipindex convert --model /path/to/checkpoint "
                "(for ingest: CLIPINDEX_SOURCE_MODEL=/path/to/checkpoint)"
            ) from exc
        raise ConvertError(f"{source}: cannot load the checkpoint ({str(exc).splitlines()[0]})") from exc
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ConvertError(f"{source}: not a loadable CLIP checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    return model, tokenizer, processor, target


def preprocessing_rules(processor: Any) -> dict[str, Any]:
    """The manifest's image fields, read from the checkpoint's CLIPImageProcessor."""
    size, crop = processor.size, processor.crop_size
    shortest = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
    if not shortest or not processor.do_resize or not processor.do_center_crop:
        raise ConvertError(
            f"unsupported preprocessing (size={size}, do_center_crop={processor.do_center_crop}); clipindex "
            "supports CLIP's shortest-edge resize + centre crop"
        )
    crop_h = crop["height"] if isinstance(crop, dict) else crop.height
    crop_w = crop["width"] if isinstance(crop, dict) else crop.width
    resample = int(processor.resample)
    return {
        "image_size": int(crop_h),
        "image_mean": [float(v) for v in processor.image_mean],
        "image_std": [float(v) for v in processor.image_std],
        "resize": {"shortest_edge": int(shortest), "resample": _RESAMPLE_NAMES.get(resample, str(resample))},
        "crop": {"height": int(crop_h), "width": int(crop_w)},
        "rescale_factor": float(processor.rescale_factor),
        "do_convert_rgb": bool(getattr(processor, "do_convert_rgb", True)),
    }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: operators int8 quantization rewrites. Only MatMul: ONNX Runtime's ConvInteger took 15 % of the int8 vision
#: tower's time on CPU when the patch embedding was a Conv (~10 % slower overall). The export now writes the patch
#: embedding as a MatMul (convert/export.py), so it is quantized with the rest; a checkpoint exported with a Conv
#: would keep it fp32.
INT8_OP_TYPES: tuple[str, ...] = ("MatMul",)
#: 7-bit weights (ORT's ``reduce_range``). Without VNNI (AVX2, and AVX-512 before VNNI), ONNX Runtime multiplies
#: uint8 activations by int8 weights with ``vpmaddubsw``, which saturates pairs of products at 16 bits; full-range
#: per-channel weights hit that. On this project's AVX2 machine, with the full-size random-weight ViT-B/32 on 55
#: real photos, 7-bit weights raised the int8 tower's cosine to fp32 from min 0.99940 / mean 0.99964 to 0.99963 /
#: 0.99968, at the same speed; ONNX Runtime recommends it for per-channel models on such CPUs. A VNNI CPU loses
#: one bit of weight precision, which per-channel scales keep small.
INT8_REDUCE_RANGE = True
#: the int8 settings, as recorded in the manifest's ``quantization``
INT8_SETTINGS: dict[str, object] = {
    "method": "onnxruntime.quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": INT8_REDUCE_RANGE,
    "op_types": list(INT8_OP_TYPES),
}


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights in a 7-bit range, per channel, MatMul only (INT8_SETTINGS)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice goes to the root logger
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=INT8_REDUCE_RANGE,
        op_types_to_quantize=list(INT8_OP_TYPES),
    )


@contextlib.contextmanager
def _staging_dir(output: Path) -> Iterator[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with child.open("rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def convert_model(
    source: str = DEFAULT_MODEL,
    output: Path | None = None,
    *,
    quantize: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert ``source`` into a verified model folder at ``output`` (default ``models/<model-name>``)."""
    say: Progress = progress or (lambda _msg: None)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConvertError(f"--quantize {quantize!r} is not supported; use one of {', '.join(QUANTIZATIONS)}")
    output = Path(output) if output is not None else default_output(source)
    if output.exists() and not force:
        raise ConvertError(f"{output}: already exists; pass --force to replace it")
    require_convert_extra()
    from convert import verify

    started = time.monotonic()
    total = 6 if quantize else 5
    say(f"[1/{total}] loading checkpoint {source}")
    model, tokenizer, processor, resolved = load_checkpoint(source)
    rules = preprocessing_rules(processor)
    text_config = model.config.text_config
    context_length = int(text_config.max_position_embeddings)
    embedding_dim = int(model.config.projection_dim)
    special_tokens = {
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id),
        "config_eos_token_id": int(text_config.eos_token_id),
    }
    with _staging_dir(output) as staging:
        say(f"[2/{total}] exporting vision and text towers to ONNX (opset {OPSET}, dynamic batch axis)")
        export_towers(
            model,
            staging,
            image_size=rules["image_size"],
            context_length=context_length,
            eos_token_id=special_tokens["eos_token_id"],
        )
        say(f"[3/{total}] saving tokenizer.json and checking its ids against CLIPTokenizer")
        tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
        tokenizer_checked = verify.verify_tokenizer(tokenizer, staging / TOKENIZER_FILE, context_length)
        say(f"[4/{total}] verifying ONNX Runtime against PyTorch on real photos and probe texts")
        parity = verify.verify_towers(model, processor, tokenizer, staging, context_length=context_length)
        parity["tokenizer_texts_checked"] = tokenizer_checked
        quantization: dict[str, Any] | None = None
        if quantize == "int8":
            say(f"[5/{total}] quantizing to int8 (ONNX Runtime dynamic, per-channel) and measuring cosine vs fp32")
            quantization = json.loads(json.dumps(INT8_SETTINGS))  # a copy
            pixel_values = processor(images=verify.probe_images(), return_tensors="np")["pixel_values"]
            token_ids = tokenizer(
                list(verify.PROBE_TEXTS),
                truncation=True,
                max_length=context_length,
                padding="max_length",
                return_tensors="np",
            )["input_ids"]
            for fp32_file, inputs in (
                (VISION_FILE, {"pixel_values": pixel_values.astype("float32")}),
                (TEXT_FILE, {"input_ids": token_ids.astype("int64")}),
            ):
                int8_file = quantized_name(fp32_file)
                quantize_int8(staging / fp32_file, staging / int8_file)
                quantization[int8_file] = verify.int8_agreement(staging, fp32_file, int8_file, inputs)
        say(f"[{total}/{total}] writing manifest.json and moving the model into {output}")
        files: dict[str, dict[str, Any]] = {
            child.name: {"sha256": sha256_file(child), "bytes": child.stat().st_size}
            for child in sorted(staging.iterdir())
            if child.is_file()
        }
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "source_model": source if resolved == source else resolved,
            "model_name": model_name_for(source),
            "embedding_dim": embedding_dim,
            **rules,
            "context_length": context_length,
            "special_tokens": special_tokens,
            "text_pooling": text_pooling_rule(model),
            "vision_export": dict(VISION_EXPORT),
            "text_inputs": ["input_ids"],
            "normalized": False,
            "logit_scale": float(model.logit_scale.exp().item()),
            "opset": OPSET,
            "files": files,
            "parity": parity,
            "quantization": quantization,
            "converter": {
                "clipindex": indexer.__version__,
                "torch": _version("torch"),
                "transformers": _version("transformers"),
                "onnx": _version("onnx"),
                "onnxruntime": _version("onnxruntime"),
            },
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "convert_seconds": round(time.monotonic() - started, 2),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _fsync_dir(staging)
        _replace_dir(staging, output)
    sizes = {name: int(info["bytes"]) for name, info in files.items()}
    sizes[MANIFEST_NAME] = (output / MANIFEST_NAME).stat().st_size
    return ConvertResult(output=output, manifest=manifest, file_sizes=sizes)


def _replace_dir(staging: Path, output: Path) -> None:
    """Move ``staging`` to ``output``; an existing ``output`` (``--force``) is swapped out, then removed."""
    if output.exists():
        retired = output.parent / f".{output.name}.old-{os.getpid()}"
        output.rename(retired)
        staging.rename(output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output)


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "unknown"
