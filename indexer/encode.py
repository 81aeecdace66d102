"""ONNX Runtime inference for both CLIP towers, and the :class:`Embedder` library API.

One ``InferenceSession`` per tower, created on first use and reused for the whole run (a text search never
loads the vision tower). Outputs are L2-normalised float32 ``[batch, embedding_dim]``; cosine similarity is
then a dot product.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from indexer.errors import DeviceError, ModelIntegrityError, ModelNotFoundError
from indexer.manifest import (
    TEXT_FILE,
    TOKENIZER_FILE,
    VISION_FILE,
    ModelManifest,
    quantized_name,
    reconvert_hint,
)

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "int8"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def resolve_providers(device: str) -> list[str]:
    """Execution providers for ``device``; ``auto`` takes CUDA when onnxruntime-gpu sees a GPU."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise DeviceError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider; install the GPU build "
            "(pip install 'clipindex[gpu]' && pip uninstall -y onnxruntime) or use --device cpu"
        )
    return [CPU]


def _session_options(intra_op_threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def ort_cache_dir() -> Path | None:
    """Where optimised models are cached: ``$CLIPINDEX_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipindex``.

    ``CLIPINDEX_CACHE_DIR=off`` disables the cache.
    """
    explicit = os.environ.get("CLIPINDEX_CACHE_DIR")
    if explicit == "off":
        return None
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clipindex"


def _cached_session(path: Path, options: Any, verify: Callable[[], None], sha256: str | None = None) -> Any:
    """A CPU session from a cached, already optimised copy of ``path`` whose weights sit in an external file.

    ONNX Runtime loads a model whose initializers are inline in the protobuf by copying them (about 0.6 s for
    ViT-B/32's 250 MB text tower here); from external data it takes about 0.16 s, which matters for
    ``clipindex search``, a new process per query. The copy is ORT's own ``optimized_model_filepath`` output
    (level EXTENDED, portable across CPUs; layout-specific optimisations still run at load), written once per
    model *content* (``sha256``, from the manifest: every copy of one model shares one entry) and ONNX Runtime
    version. ``verify`` (the sha256 check against the manifest) runs before an entry is written or first used
    for a file (path, size, mtime: listed in the entry's ``sources``), so a cached copy always stands for a
    verified file. Returns None when the cache is off or unusable (read-only home...), and the caller loads
    ``path`` directly. The cache may be deleted at any time (``rm -rf ~/.cache/clipindex``).
    """
    import hashlib

    import onnxruntime as ort

    root = ort_cache_dir()
    if root is None:
        return None
    st = path.stat()
    resolved = str(path.resolve())
    source = f"{resolved}|{st.st_size}|{st.st_mtime_ns}"
    if sha256:  # one entry per model content, whatever the number of copies of the model folder
        key = f"sha256:{sha256.lower()}|{path.name}|{ort.__version__}"
        name = sha256.lower()[:24]
    else:  # no digest in the manifest: one entry per model file
        key = f"{source}|{ort.__version__}"
        name = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    folder = root / "ort" / name
    model = folder / path.name
    stamp = folder / "key"
    sources = folder / "sources"
    try:
        hit = model.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == key
        known = hit and source in sources.read_text(encoding="utf-8", errors="replace").splitlines()
    except (OSError, UnicodeDecodeError):
        hit = known = False
    if not known:
        verify()  # raises ModelIntegrityError: never cache, nor load, a corrupted model
    try:
        if not hit:
            _write_optimised_copy(path, folder, key)
        if not known:
            with sources.open("a", encoding="utf-8", errors="surrogateescape") as out:
                out.write(source + "\n")
        return ort.InferenceSession(str(model), options, providers=[CPU])
    except Exception:  # a broken or unwritable cache must never cost the run: load the model directly
        import shutil

        with contextlib.suppress(Exception):
            shutil.rmtree(folder)
        return None


def _write_optimised_copy(path: Path, folder: Path, key: str) -> None:
    import shutil
    import tempfile

    import onnxruntime as ort

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    retired = folder.parent / f".retired-{os.getpid()}-{folder.name}"
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(staging / path.name)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", path.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), options, providers=[CPU])
        (staging / "key").write_text(key, encoding="utf-8")
        if folder.exists():
            folder.rename(retired)  # processes that loaded the old copy keep their open files
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`ModelIntegrityError` unless ``path``'s sha256 is ``expected`` (from the manifest)."""
    import hashlib

    try:
        with path.open("rb") as handle:
            actual = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise ModelNotFoundError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"{path}: corrupted (its sha256 is not the one manifest.json recorded at conversion); "
            "re-run `clipindex convert --force` or copy the model folder again"
        )


class OnnxTower:
    """One tower's ONNX Runtime session: ``run(batch) -> [batch, D]`` normalised float32."""

    def __init__(
        self,
        path: Path,
        providers: Sequence[str],
        *,
        intra_op_threads: int | None = None,
        sha256: str | None = None,
        vector_dim: int | None = None,
    ) -> None:
        """``sha256``: the file's digest from the manifest, checked before the file is first loaded (or cached);
        ``vector_dim``: the manifest's embedding dimension, checked against the model's output shape."""
        import onnxruntime as ort

        if not path.is_file():
            raise ModelNotFoundError(
                f"{path}: missing; run `clipindex convert` (add `--quantize int8` for the int8 files)"
            )
        # hashed at most once (a cache miss, then a direct load after a cache failure, both ask)
        verify = functools.cache(functools.partial(verify_sha256, path, sha256)) if sha256 else lambda: None
        options = _session_options(intra_op_threads)
        self.session: Any = _cached_session(path, options, verify, sha256) if list(providers) == [CPU] else None
        if self.session is None:
            verify()
            try:
                self.session = ort.InferenceSession(str(path), options, providers=list(providers))
            except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
                raise ModelNotFoundError(
                    f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:160]}); "
                    "re-run `clipindex convert --force`"
                ) from exc
        self.input_name = self.session.get_inputs()[0].name
        output_dim = self.session.get_outputs()[0].shape[-1]
        if vector_dim is not None and isinstance(output_dim, int) and output_dim != vector_dim:
            raise ModelIntegrityError(
                f"{path}: the model outputs {output_dim}-dim vectors but manifest.json says embedding_dim "
                f"{vector_dim}; re-run `clipindex convert --force`"
            )
        self.provider = self.session.get_providers()[0]
        self._on_gpu = self.provider == CUDA

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._on_gpu:
            # IO binding: copy the batch once to the device and bring the [batch, D] result back to the host,
            # avoiding ORT's per-run staging copies.
            import onnxruntime as ort

            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
            binding.bind_output(self.session.get_outputs()[0].name, "cpu")
            self.session.run_with_iobinding(binding)
            output = binding.copy_outputs_to_cpu()[0]
        else:
            output = self.session.run(None, {self.input_name: batch})[0]
        return l2_normalise(output)


class Embedder:
    """CLIP image and text embeddings from a converted model folder, on ONNX Runtime.

    >>> embedder = Embedder("models/clip-vit-base-patch32")
    >>> images = embedder.encode_images(["images/chelsea.jpg"])   # [1, D], L2-normalised
    >>> texts = embedder.encode_text(["a cat", "a rocket"])       # [2, D]
    >>> embedder.similarity(images, texts)                       # [1, 2] cosine
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "auto",
        precision: str = "fp32",
        intra_op_threads: int | None = None,
        draft: bool | None = None,
        max_pixels: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise DeviceError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.manifest = ModelManifest.load(model_dir)
        self.model_dir = Path(model_dir)
        self.device = device
        self.precision = precision
        self.providers = resolve_providers(device)
        self.intra_op_threads = intra_op_threads
        self.draft = draft
        self.max_pixels = max_pixels
        self._towers: dict[str, OnnxTower] = {}
        self._tokenizer: Any = None
        self._preprocessor: Any = None

    # --- properties -------------------------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        """Embedding dimension D (512 for ViT-B/32, 768 for ViT-L/14): read from the manifest."""
        return self.manifest.embedding_dim

    @property
    def model_name(self) -> str:
        return self.manifest.model_name

    def tower_path(self, kind: Literal["vision", "text"]) -> Path:
        """The ONNX file of a tower at this precision; raises ModelNotFoundError when it is missing."""
        base = VISION_FILE if kind == "vision" else TEXT_FILE
        path = self.model_dir / (quantized_name(base) if self.precision == "int8" else base)
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: missing; {reconvert_hint(self.manifest, int8=self.precision == 'int8')}")
        return path

    def tower(self, kind: Literal["vision", "text"]) -> OnnxTower:
        """The tower's session, created on first use (a run that embeds nothing never loads it)."""
        if kind not in self._towers:
            path = self.tower_path(kind)
            recorded = self.manifest.files.get(path.name)
            self._towers[kind] = OnnxTower(
                path,
                self.providers,
                intra_op_threads=self.intra_op_threads,
                sha256=recorded.get("sha256") if isinstance(recorded, dict) else None,
                vector_dim=self.manifest.embedding_dim,
            )
        return self._towers[kind]

    @property
    def planned_provider(self) -> str:
        """The execution provider sessions ask for first (``auto`` resolved), known without loading a model."""
        return self.providers[0]

    def provider(self, kind: Literal["vision", "text"] = "vision") -> str:
        """The execution provider the tower actually runs on (after ORT's own fallbacks)."""
        return self.tower(kind).provider

    @property
    def preprocessor(self) -> Any:
        if self._preprocessor is None:
            from indexer.preprocess import Preprocessor

            self._preprocessor = Preprocessor.from_manifest(self.manifest, draft=self.draft, max_pixels=self.max_pixels)
        return self._preprocessor

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from indexer.tokenize import TextTokenizer

            self._tokenizer = TextTokenizer(
                self.model_dir / TOKENIZER_FILE,
                context_length=self.manifest.context_length,
                pad_token_id=self.manifest.pad_token_id,
            )
        return self._tokenizer

    # --- encoding ---------------------------------------------------------------------------------------

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """``pixel_values`` float32 [batch, 3, S, S] (already preprocessed) -> [batch, D] normalised."""
        return self.tower("vision").run(np.ascontiguousarray(pixel_values, dtype=np.float32))

    def encode_images(self, images: Sequence[str | Path | Image.Image], *, batch_size: int = 25) -> np.ndarray:
        """Paths or PIL images -> [N, D] normalised; decoding and preprocessing as ``clipindex ingest`` does."""
        rows: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = np.stack([self._pixels(item) for item in chunk])
            rows.append(self.encode_pixels(pixels))
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(rows)

    def _pixels(self, item: str | Path | Image.Image) -> np.ndarray:
        pre = self.preprocessor
        image = item if isinstance(item, Image.Image) else pre.load(Path(item))
        result: np.ndarray = pre.preprocess(image)
        return result

    def encode_text(
        self, texts: str | Sequence[str], *, on_truncate: Callable[[str], None] | None = None
    ) -> np.ndarray:
        """One text or a list -> [N, D] normalised. Texts past the context length are truncated."""
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batch = self.tokenizer.encode(items)
        if on_truncate is not None:
            for text, cut in zip(items, batch.truncated, strict=True):
                if cut:
                    on_truncate(text)
        return self.tower("text").run(batch.input_ids)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix [len(a), len(b)] of two sets of vectors (normalised or not)."""
        return np.asarray(l2_normalise(np.atleast_2d(a)) @ l2_normalise(np.atleast_2d(b)).T, dtype=np.float32)
