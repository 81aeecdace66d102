"""``convert_model``: a CLIP checkpoint (hub id or local folder) -> a verified ONNX model folder.

Steps, each reported through ``progress``:

1. load the checkpoint (``CLIPModel`` in float32, ``CLIPTokenizer``, ``CLIPImageProcessor``) from a local folder in
   the hub's layout or from the hub, refusing what transformers would silently turn into a useless model (not CLIP,
   no tokenizer, missing weights, Git LFS pointers, a crop that is not the vision tower's image size);
2. export both towers to ONNX (:mod:`clipindex.convert.export`) into a temporary folder beside ``output``;
3. save the runtime tokenizer (``tokenizer.json``) and check its ids against ``CLIPTokenizer``;
4. verify ONNX Runtime against PyTorch (:mod:`clipindex.convert.verify`); on divergence raise ``ParityError``;
5. optionally quantize to int8 (dynamic, per-channel) and measure cosine against fp32;
6. write ``manifest.json`` (preprocessing, tokens, pooling, logit scale, sha256 of each file, parity figures)
   and rename the temporary folder into place. Nothing is left at ``output`` when any step fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipindex.convert.errors import ConvertError, MissingExtraError, SourceUnavailableError
from clipindex.convert.export import OPSET, VISION_EXPORT, export_towers, text_pooling_rule
from clipindex.model.model_format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    RUNTIME_VERSION,
    TEXT_FILE,
    TOKENIZER_FILE,
    VISION_FILE,
    quantized_name,
)
from clipindex.settings import DEFAULT_MODEL_ID, default_model_dir

QUANTIZATIONS = ("int8",)
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    manifest: dict[str, Any]
    file_sizes: dict[str, int]


#: a Hugging Face model id: ``name`` or ``org/name`` (anything else is taken as a local path)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
#: the first bytes of a Git LFS pointer file (a ``git clone`` without git-lfs leaves these instead of the files)
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
#: the weight files transformers 5 loads, in its order of preference
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: tokenizer files read besides tokenizer.json / vocab.json + merges.txt (optional)
_TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
#: the tokenizer must hold at least this fraction of ``text_config.vocab_size`` tokens (a real one holds all)
MIN_TOKENIZER_VOCAB_FRACTION = 0.5


def is_local_source(source: str) -> bool:
    """Whether ``source`` names a local folder (existing or not) rather than a Hugging Face model id."""
    if Path(source).expanduser().exists():
        return True
    return _HUB_ID.fullmatch(source) is None or source in (".", "..")


def _hub_cache_name(folder: Path) -> str | None:
    """``.../models--openai--clip-vit-base-patch32/snapshots/<commit>`` -> ``clip-vit-base-patch32``."""
    repo_folder = folder.parent.parent
    if folder.parent.name == "snapshots" and repo_folder.name.startswith("models--"):
        return repo_folder.name.split("--")[-1] or None
    return None


def model_name_for(source: str) -> str:
    """``openai/clip-vit-base-patch32``, ``/ckpts/clip-vit-base-patch32/`` or a hub-cache snapshot folder of it
    -> ``clip-vit-base-patch32``. A local path is named after the folder it resolves to (``.`` included)."""
    if is_local_source(source):
        folder = Path(source).expanduser().resolve()
        return _hub_cache_name(folder) or folder.name or "clip"
    return source.rsplit("/", 1)[-1] or "clip"


def default_output(source: str | None = None) -> Path:
    """Where ``convert`` writes unless told: the per-user model folder that ingest, search and status read
    (:func:`clipindex.settings.default_model_dir`), whatever the source and the current folder."""
    return default_model_dir()


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


def _refuse_lfs_pointer(path: Path, *, weights: bool = False) -> None:
    """Raise when ``path`` is a Git LFS pointer (about 130 bytes of text) instead of the file itself."""
    try:
        if path.stat().st_size > 1024:
            return
        with path.open("rb") as fh:
            head = fh.read(len(LFS_POINTER_PREFIX))
    except OSError:
        return  # unreadable: the loader reports it
    if head == LFS_POINTER_PREFIX:
        raise ConvertError(
            f"{path} is a Git LFS pointer, not the {'weights' if weights else 'file'}: run `git lfs pull` in "
            f"{path.parent} (or download the checkpoint again)"
        )


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers will read from ``folder`` (an index and its shards), checked for LFS pointers;
    raise when there are none."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        _refuse_lfs_pointer(path, weights=True)
        if not name.endswith(".index.json"):
            return [path]
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(shard) for shard in weight_map.values()})
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConvertError(f"{path}: unreadable weight index ({exc}); download the checkpoint again") from exc
        for shard in shards:
            if not (folder / shard).is_file():
                raise ConvertError(f"{folder / shard}: missing (listed in {name}); download the checkpoint again")
            _refuse_lfs_pointer(folder / shard, weights=True)
        return [path, *(folder / shard for shard in shards)]
    raise ConvertError(
        f"{folder}: no weights (model.safetensors, pytorch_model.bin or a sharded index of either); "
        "download the checkpoint's weight file into this folder"
    )


def _check_checkpoint_files(folder: Path, where: str) -> None:
    """The checks every checkpoint gets, local folder or hub snapshot, before transformers loads it: config.json
    says CLIP, preprocessor_config.json and a real tokenizer (tokenizer.json, or vocab.json + merges.txt) are
    there, and none of them is a Git LFS pointer. ``where`` names the checkpoint in messages."""
    needs = (
        "a checkpoint needs config.json, weights (model.safetensors or pytorch_model.bin), "
        "preprocessor_config.json and tokenizer files (tokenizer.json, or vocab.json and merges.txt)"
    )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"{where}: missing config.json; {needs}")
    _refuse_lfs_pointer(config_path)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{where}: config.json is unreadable ({exc}); is this a CLIP checkpoint?") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "clip":
        raise ConvertError(
            f"{where}: config.json has model_type {model_type!r}, not 'clip'; clipindex converts CLIP checkpoints "
            "(e.g. openai/clip-vit-base-patch32)"
        )
    if not (folder / "preprocessor_config.json").is_file():
        raise ConvertError(f"{where}: missing preprocessor_config.json; {needs}")
    _refuse_lfs_pointer(folder / "preprocessor_config.json")
    tokenizer_files = [folder / "tokenizer.json"]
    if not tokenizer_files[0].is_file():
        tokenizer_files = [folder / "vocab.json", folder / "merges.txt"]
        if not all(path.is_file() for path in tokenizer_files):
            raise ConvertError(
                f"{where}: no tokenizer (tokenizer.json, or vocab.json and merges.txt); copy the tokenizer files "
                "of the checkpoint's hub repository into the folder"
            )
    for path in [*tokenizer_files, *(folder / name for name in _TOKENIZER_EXTRAS)]:
        if path.is_file():
            _refuse_lfs_pointer(path)


def _hub_snapshot(repo_id: str) -> tuple[Path, bool]:
    """Fetch the small files of ``repo_id`` (config, preprocessor, tokenizer) into the hub cache; return the
    snapshot folder and whether to read the cache only.

    Without ``HF_HUB_OFFLINE``, one HEAD request (no retries) tells whether the hub answers. When it does not,
    everything is read from the cache (``local_files_only``) instead of letting huggingface_hub retry each
    uncached file with backoff for half a minute."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, is_offline_mode
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    local_only = is_offline_mode()
    why = "HF_HUB_OFFLINE is set"
    if not local_only:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, "config.json"))
        except HfHubHTTPError:
            pass  # the hub answered (unknown id, gated, no such file): hf_hub_download says which below
        except Exception:  # no network (DNS, refused, timeout, proxy): use the cache, fail fast without it
            local_only, why = True, "the hub is unreachable"
    unreachable = (
        f"could not load {repo_id!r} from the Hugging Face hub ({why if local_only else 'download failed'}, and it "
        "is not in the local cache). Two ways forward:"
    )

    def fetch(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=local_only))
        except EntryNotFoundError:  # not in the repository, or (cache only) not in the cache
            return None

    try:
        config = fetch("config.json")
        if config is None:
            if local_only:
                raise SourceUnavailableError(unreachable)
            raise ConvertError(f"{repo_id}: the hub repository has no config.json; it is not a CLIP checkpoint")
        for name in ("preprocessor_config.json", "tokenizer.json", *_TOKENIZER_EXTRAS):
            fetch(name)
        if not (config.parent / "tokenizer.json").is_file():
            fetch("vocab.json")
            fetch("merges.txt")
    except GatedRepoError as exc:
        raise ConvertError(
            f"{repo_id}: a gated repository on the Hugging Face hub; accept its terms on huggingface.co and log in "
            "(`hf auth login`), or pass a local folder"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ConvertError(
            f"{repo_id}: no such model on the Hugging Face hub (or a private one: log in with `hf auth login`); "
            "check the id, or pass a local checkpoint folder"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise SourceUnavailableError(unreachable) from exc
    return config.parent, local_only


def load_checkpoint(source: str) -> tuple[Any, Any, Any, str]:
    """Load (model, tokenizer, image_processor, resolved source) from a local folder or a hub id.

    Refuses what transformers would load silently into something useless: a config that is not CLIP, a missing
    tokenizer (transformers builds a 3-token one), missing weights (filled with random values), Git LFS pointers.
    The model is loaded in float32 whatever the checkpoint's dtype: the export and the parity check are fp32."""
    import logging

    import torch
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    try:  # transformers 5 without torchvision: the PIL backend is the reference
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor  # type: ignore[assignment]

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in logs; the steps are reported
    logging.getLogger("transformers").setLevel(logging.ERROR)
    local_only = False
    if is_local_source(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ConvertError(
                f"{source}: no such checkpoint directory; pass a folder in the Hugging Face layout "
                "(config.json, weights, preprocessor_config.json, tokenizer files) or a hub id like "
                "openai/clip-vit-base-patch32"
            )
        folder = path.resolve()
        target = where = str(folder)
        _check_checkpoint_files(folder, where)
        weights_name = _weight_files(folder)[0].name
    else:
        folder, local_only = _hub_snapshot(source)
        target = where = source
        _check_checkpoint_files(folder, where)
        weights_name = "the downloaded weights"
    try:
        tokenizer = CLIPTokenizer.from_pretrained(target, local_files_only=local_only)
        processor = CLIPImageProcessor.from_pretrained(target, local_files_only=local_only)
        loaded: Any = CLIPModel.from_pretrained(
            target, dtype=torch.float32, output_loading_info=True, local_files_only=local_only
        )
        model, loading = loaded
    except OSError as exc:
        if target == source:
            raise SourceUnavailableError(
                f"could not load {source!r} from the Hugging Face hub ({str(exc).splitlines()[0][:200]}). "
                "Two ways forward:"
            ) from exc
        raise ConvertError(f"{where}: cannot load the checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ConvertError(f"{where}: not a loadable CLIP checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise ConvertError(
            f"{where}: {len(missing)} of the model's weights are missing from {weights_name} "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), which transformers would fill with "
            "random values; the file is incomplete or from another architecture: download the checkpoint again"
        )
    vocab_size = int(model.config.text_config.vocab_size)
    if len(tokenizer) < vocab_size * MIN_TOKENIZER_VOCAB_FRACTION:
        raise ConvertError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but config.json's text_config.vocab_size is "
            f"{vocab_size}; the tokenizer files (tokenizer.json, or vocab.json and merges.txt) are not this model's"
        )
    return model.eval(), tokenizer, processor, target


def preprocessing_rules(processor: Any, where: str = "preprocessor_config.json") -> dict[str, Any]:
    """The manifest's image fields, read from the checkpoint's CLIPImageProcessor (``where`` names its file).

    ``do_normalize: false`` becomes mean 0 / std 1 and ``do_rescale: false`` a rescale factor of 1, so the runtime
    (which always rescales and normalises) computes what transformers does. The runtime batches fixed-size crops:
    ``do_resize: false`` or ``do_center_crop: false`` is refused, and so is a resize that is not shortest-edge."""
    do_resize = bool(getattr(processor, "do_resize", True))
    do_center_crop = bool(getattr(processor, "do_center_crop", True))
    if not do_resize or not do_center_crop:
        raise ConvertError(
            f"{where}: do_resize is {str(do_resize).lower()} and do_center_crop is {str(do_center_crop).lower()}; "
            "clipindex batches fixed-size crops and needs both true (CLIP's shortest-edge resize, then centre crop)"
        )
    size, crop = processor.size, processor.crop_size
    shortest = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
    if not shortest:
        raise ConvertError(
            f"{where}: unsupported resize size {_size_fields(size)}; clipindex supports "
            'CLIP\'s shortest-edge resize ("size": {"shortest_edge": N}) followed by a centre crop'
        )
    crop_h = crop["height"] if isinstance(crop, dict) else crop.height
    crop_w = crop["width"] if isinstance(crop, dict) else crop.width
    resample = int(processor.resample)
    do_normalize = bool(getattr(processor, "do_normalize", True))
    do_rescale = bool(getattr(processor, "do_rescale", True))
    return {
        "image_size": int(crop_h),
        "image_mean": [float(v) for v in processor.image_mean] if do_normalize else [0.0, 0.0, 0.0],
        "image_std": [float(v) for v in processor.image_std] if do_normalize else [1.0, 1.0, 1.0],
        "resize": {"shortest_edge": int(shortest), "resample": _RESAMPLE_NAMES.get(resample, str(resample))},
        "crop": {"height": int(crop_h), "width": int(crop_w)},
        "rescale_factor": float(processor.rescale_factor) if do_rescale else 1.0,
        "do_convert_rgb": bool(getattr(processor, "do_convert_rgb", True)),
    }


def _size_fields(size: Any) -> dict[str, Any]:
    """The set fields of a processor size (a dict, or transformers 5's ``SizeDict``), for messages."""
    fields = size if isinstance(size, dict) else getattr(size, "__dict__", {"size": size})
    return {key: value for key, value in fields.items() if value is not None}


def _check_image_size(rules: dict[str, Any], model: Any, where: str) -> None:
    """The crop must be the square the vision tower was built for (its position embeddings fix the patch count)."""
    image_size = int(model.config.vision_config.image_size)
    crop_h, crop_w = rules["crop"]["height"], rules["crop"]["width"]
    if crop_h != image_size or crop_w != image_size:
        raise ConvertError(
            f"{where}: crop_size is {crop_h}x{crop_w} but config.json's vision_config.image_size is {image_size}; "
            f"the preprocessor belongs to another model: use the checkpoint's own (crop_size {image_size})"
        )


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
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise ConvertError(f"{output.parent}: cannot create the output folder here ({exc.strerror or exc})") from exc
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
    source: str = DEFAULT_MODEL_ID,
    output: Path | None = None,
    *,
    quantize: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert ``source`` into a verified model folder at ``output`` (default: the per-user model folder,
    :func:`clipindex.settings.default_model_dir`, where ingest looks)."""
    say: Progress = progress or (lambda _msg: None)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConvertError(f"--quantize {quantize!r} is not supported; use one of {', '.join(QUANTIZATIONS)}")
    output = Path(output).expanduser() if output is not None else default_output(source)
    if output.exists() and not force:
        raise ConvertError(f"{output}: already exists; pass --force to replace it")
    if output.exists():
        _refuse_unsafe_replace(source, output)
    target = Path(os.path.abspath(output))  # "." and ".." have no name to stage beside
    require_convert_extra()
    from clipindex.convert import verify

    started = time.monotonic()
    total = 6 if quantize else 5
    say(f"[1/{total}] loading checkpoint {source}")
    model, tokenizer, processor, resolved = load_checkpoint(source)
    where = (
        str(Path(resolved, "preprocessor_config.json"))
        if is_local_source(source)
        else f"{source}: preprocessor_config.json"
    )
    rules = preprocessing_rules(processor, where)
    _check_image_size(rules, model, where)
    text_config = model.config.text_config
    context_length = int(text_config.max_position_embeddings)
    embedding_dim = int(model.config.projection_dim)
    special_tokens = {
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id),
        "config_eos_token_id": int(text_config.eos_token_id),
    }
    with _staging_dir(target) as staging:
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
                "clipindex": RUNTIME_VERSION,
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
        try:
            _replace_dir(staging, target)
        except OSError as exc:
            raise ConvertError(f"{output}: cannot move the converted model into place ({exc.strerror or exc})") from exc
    sizes = {name: int(info["bytes"]) for name, info in files.items()}
    sizes[MANIFEST_NAME] = (target / MANIFEST_NAME).stat().st_size
    return ConvertResult(output=output, manifest=manifest, file_sizes=sizes)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _refuse_unsafe_replace(source: str, output: Path) -> None:
    """Before ``--force`` touches anything: refuse to replace a folder that holds (or is) the checkpoint being
    converted, including the blobs a hub-cache snapshot links to, or a folder that is not a converted model."""
    target = output.resolve()
    source_path = Path(source).expanduser()
    if is_local_source(source) and source_path.exists():
        checkpoint = source_path.resolve()
        holds_source = _within(checkpoint, target)
        if not holds_source and checkpoint.is_dir():
            holds_source = any(_within(child.resolve(), target) for child in checkpoint.iterdir())
        if holds_source:
            raise ConvertError(
                f"--output {output} holds the checkpoint being converted ({checkpoint}); --force would delete it: "
                "choose another output folder"
            )
    if not target.is_dir():
        raise ConvertError(f"{output}: exists and is not a folder; choose another --output or remove it yourself")
    if any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise ConvertError(
            f"{output}: not a clipindex model folder (no {MANIFEST_NAME}); --force replaces only a converted model: "
            "choose another --output or remove the folder yourself"
        )


def _replace_dir(staging: Path, output: Path) -> None:
    """Move ``staging`` to ``output``; an existing ``output`` (``--force``) is swapped out, then removed."""
    if output.exists():
        retired = output.parent / f".{output.name}.old-{os.getpid()}"
        output.rename(retired)
        try:
            staging.rename(output)
        except OSError:
            retired.rename(output)  # put the old model back
            raise
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output)


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "unknown"
