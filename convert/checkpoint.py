"""A tool, not part of the conversion: random-weight CLIP checkpoints in the Hugging Face hub's layout.

Tests, benchmarks and the README's offline trial use it (``python -m clipindex.convert.checkpoint OUT_DIR``); nothing in
``clipindex.convert.api`` or the runtime imports it. Its one setting, ``CLIPINDEX_BPE_VOCAB``, is read here only.

No package ships real CLIP weights and the hub is not always reachable, so tests and benchmarks build a
checkpoint folder that looks exactly like ``openai/clip-vit-base-patch32`` on the hub::

    config.json               CLIPConfig, legacy text ids (bos 0, eos 2, pad 1) like the hub's
    model.safetensors         random weights (logit_scale set to ln(100) like the trained model)
    preprocessor_config.json  the hub's legacy form: "size": 224, "crop_size": 224, "resample": 3
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.json, merges.txt

The tokenizer is built from the real CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``, shipped in the
``open_clip_torch`` wheel), so token ids are the real ones: "a photo of a cat" ->
[49406, 320, 1125, 539, 320, 2368, 49407].

``python -m clipindex.convert.checkpoint OUT_DIR [--arch tiny|vit-b-32]`` writes one.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipindex.convert.errors import ConvertError

BPE_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Architectures. "vit-b-32" is openai/clip-vit-base-patch32's; "tiny" keeps its interfaces (224 px input,
# 77 tokens, real vocabulary, 512-d projection) with a small transformer so tests run in seconds.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit-b-32": {
        "projection_dim": 512,
        "text": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
        },
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "patch_size": 32,
        },
    },
    "tiny": {
        "projection_dim": 512,
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
        },
        "vision": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "patch_size": 32,
        },
    },
}


def find_bpe_vocab(download: bool = True) -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz`` without importing open_clip.

    Looks at ``$CLIPINDEX_BPE_VOCAB``, an installed ``open_clip`` package, and the cache
    (``~/.cache/clipindex``). With ``download``, fetches the ``open_clip_torch`` wheel from the package index
    (``pip download --no-deps``) and extracts just that file into the cache.
    """
    env = os.environ.get("CLIPINDEX_BPE_VOCAB")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConvertError(f"{path}: CLIPINDEX_BPE_VOCAB does not name a file")
        return path
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / BPE_VOCAB_NAME
            if candidate.is_file():
                return candidate
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipindex"
    cached = cache_dir / BPE_VOCAB_NAME
    if cached.is_file():
        return cached
    if not download:
        raise ConvertError(f"{BPE_VOCAB_NAME} not found: `pip install open_clip_torch` or set CLIPINDEX_BPE_VOCAB")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "open_clip_torch"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("open_clip_torch-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ConvertError(
                f"could not download open_clip_torch for {BPE_VOCAB_NAME} ({proc.stderr.strip()[-200:]}); "
                "set CLIPINDEX_BPE_VOCAB to the file"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(f"open_clip/{BPE_VOCAB_NAME}")
    partial = cached.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(cached)
    return cached


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Build CLIP's 49,408-entry vocabulary and 48,894 merges exactly as OpenAI's tokenizer does."""
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    vocab_list += ["".join(merge.split(" ")) for merge in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab_list)}, merges


def write_tokenizer_files(out_dir: Path, bpe_path: Path | None = None) -> None:
    """Write the hub's tokenizer files (vocab.json, merges.txt, tokenizer*.json, special_tokens_map.json)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bpe_path or find_bpe_vocab())
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    merge_pairs = [(left, right) for left, right in (m.split(" ") for m in merges)]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merge_pairs, model_max_length=77)  # type: ignore[arg-type]
    tokenizer.save_pretrained(str(out_dir))
    # The hub's tokenizer_config.json, whose fields transformers still honours.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(
        {
            "model_max_length": 77,
            "do_lower_case": True,
            "add_prefix_space": False,
            "errors": "replace",
            "name_or_path": "openai/clip-vit-base-patch32",
            "tokenizer_class": "CLIPTokenizer",
        }
    )
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {
        "bos_token": {
            "content": "<|startoftext|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
        },
        "eos_token": {
            "content": "<|endoftext|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
        },
        "unk_token": {
            "content": "<|endoftext|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
        },
        "pad_token": "<|endoftext|>",
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def write_random_checkpoint(
    out_dir: str | Path,
    arch: str = "tiny",
    seed: int = 0,
    bpe_path: Path | None = None,
    projection_dim: int | None = None,
) -> Path:
    """Save a random-weight CLIP checkpoint in the hub layout and return its folder.

    ``projection_dim`` overrides the architecture's embedding size (e.g. 768 like ViT-L/14).
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    if arch not in ARCHITECTURES:
        raise ConvertError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    dim = int(projection_dim or spec["projection_dim"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Legacy special-token ids, exactly as openai/clip-vit-base-patch32's config.json carries them:
    # with eos_token_id == 2 transformers pools the text tower at argmax(input_ids).
    text_config = {
        **spec["text"],
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "projection_dim": dim,
    }
    vision_config = {
        **spec["vision"],
        "image_size": 224,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "projection_dim": dim,
    }
    config = CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=dim,
        logit_scale_init_value=math.log(100.0),
    )
    config.architectures = ["CLIPModel"]
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        # Trained CLIP saturates logit_scale at ln(100); mirror it so classify behaves like the real model.
        model.logit_scale.fill_(math.log(100.0))
    model.save_pretrained(str(out))
    write_tokenizer_files(out, bpe_path)
    preprocessor = {
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "size": 224,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a random-weight CLIP checkpoint in the hub's layout (a trial: its rankings are "
        "meaningless), then print its folder."
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint into")
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default="tiny",
        help="architecture (default: tiny, a small transformer with ViT-B/32's interfaces: 224 px, 77 tokens, "
        "512-d; vit-b-32 is the full-size openai/clip-vit-base-patch32 shape)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line of output: the folder
    path = write_random_checkpoint(args.out_dir, args.arch, args.seed)
    print(path)


if __name__ == "__main__":
    main()
