"""Shared fixtures: a tiny random-weight CLIP checkpoint in the hub layout, exported once per session by the
real converter, and real photos."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The tests never reach the hub: fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ONNX Runtime's optimised-model cache (clipindex.model.encode) goes to a scratch folder, not the user's ~/.cache, and
# the
# folder goes when the session ends.
if "CLIPINDEX_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="clipindex-test-cache-")
    os.environ["CLIPINDEX_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
# The per-user defaults (the model folder, the embedded store) of any test that does not name its own go to a
# scratch folder too: the suite never writes into the user's ~/.local/share.
_data_home = tempfile.mkdtemp(prefix="clipindex-test-data-")
os.environ["XDG_DATA_HOME"] = _data_home
atexit.register(shutil.rmtree, _data_home, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight CLIP (tiny transformer, real vocabulary, 512-d projection) in the hub's exact layout."""
    from clipindex.convert.checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip-tiny-test", arch="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_checkpoint`` converted by the real converter, with the int8 files. Treat it as read-only."""
    from clipindex.convert.api import convert_model

    out = tmp_path_factory.mktemp("models") / "clip-tiny-test"
    convert_model(str(tiny_checkpoint), out, quantize="int8")
    return out


@pytest.fixture(scope="session")
def torch_clip(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    """The PyTorch reference: transformers' CLIPModel, CLIPTokenizer and CLIPImageProcessor(Pil)."""
    from transformers import CLIPModel, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    model = CLIPModel.from_pretrained(str(tiny_checkpoint)).eval()
    return (
        model,
        CLIPTokenizer.from_pretrained(str(tiny_checkpoint)),
        Processor.from_pretrained(str(tiny_checkpoint)),
    )


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, object]:
    """Real RGB photos from scikit-image and scikit-learn (name -> PIL image)."""
    from photos import RGB_PHOTO_NAMES, photos

    return dict(photos(RGB_PHOTO_NAMES))
