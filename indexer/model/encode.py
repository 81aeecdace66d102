"""Inference for both CLIP towers, and the :class:`Embedder` library API.

One session per tower (ONNX Runtime's ``InferenceSession``, or OpenVINO's compiled model:
:mod:`clipindex.model.engines`), created on first use and reused for the whole run (a text search never
loads the vision tower). Outputs are L2-normalised float32 ``[batch, embedding_dim]``; cosine similarity is
then a dot product.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, overload

import numpy as np

from clipindex.errors import (
    DeviceError,
    DeviceFallbackWarning,
    EngineFallbackWarning,
    ImageError,
    ModelIntegrityError,
    ModelNotFoundError,
)
from clipindex.images.inputs import ImageInput, UrlPolicy, as_items, describe, load_input
from clipindex.images.prefetch import decode_ahead
from clipindex.model.classify import Classification, classify
from clipindex.model.devices import parse_device
from clipindex.model.engines import (
    CHECK_TEXTS,
    MIN_ENGINE_COSINE,
    CheckVerdict,
    EnginePlan,
    OpenVinoTower,
    plan_engine,
    probe_pixels,
    reference_identity,
)
from clipindex.model.manifest import ModelManifest, reconvert_hint
from clipindex.model.model_format import TEXT_FILE, TOKENIZER_FILE, VISION_FILE, quantized_name
from clipindex.model.similarity import TopK, l2_normalise, similarity, top_k
from clipindex.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_ENGINE,
    DEFAULT_MAX_URL_BYTES,
    DEFAULT_PRECISION,
    DEFAULT_URL_TIMEOUT_S,
    cache_dir,
)

Device = str  # "auto", "cpu", "cuda" or "cuda:N"
Precision = Literal["fp32", "int8"]
ErrorMode = Literal["raise", "none"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_fallback_noticed = False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cuda_device_count() -> tuple[int | None, str]:
    """``(count, detail)``: how many CUDA devices the CUDA runtime sees (``cudaGetDeviceCount``), or ``None``
    when no CUDA runtime library can be loaded; ``detail`` says why a count is 0 or unknown."""
    import ctypes
    import glob
    import sys

    names = ["libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "cudart64_12.dll"]
    for site in sys.path:  # the CUDA runtime that onnxruntime-gpu's pip dependencies install
        names += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    for name in names:
        try:
            runtime = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        status = runtime.cudaGetDeviceCount(ctypes.byref(count))
        if status == 0:
            return count.value, f"cudaGetDeviceCount found {count.value}"
        runtime.cudaGetErrorString.restype = ctypes.c_char_p
        message = (runtime.cudaGetErrorString(status) or b"").decode(errors="replace")
        return 0, f"cudaGetDeviceCount failed: {message or status} (driver missing or too old, or no GPU visible)"
    return None, "no CUDA runtime library (libcudart) could be loaded"


def resolve_providers(device: str) -> list[str]:
    """Execution providers for ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); see :class:`Embedder`.

    ``cuda``/``cuda:N`` raise :class:`DeviceError` saying why CUDA cannot run: this onnxruntime is not the GPU
    build, or no CUDA device (or not that many) is visible. ``auto`` takes CUDA when onnxruntime-gpu sees a device;
    when onnxruntime-gpu is installed but finds none, it runs on the CPU after one notice (a
    :class:`~clipindex.errors.DeviceFallbackWarning`, once per process). The plain CPU build means CPU, silently.
    """
    import onnxruntime as ort

    kind, index = parse_device(device)
    if kind == "cpu":
        return [CPU]
    if CUDA not in ort.get_available_providers():
        if kind == "cuda":
            raise DeviceError(
                f"--device {device}: no onnxruntime-gpu: this onnxruntime {ort.__version__} is the CPU build (it has "
                "no CUDAExecutionProvider); install the GPU build (pip install 'clipindex[gpu]' && pip uninstall -y "
                "onnxruntime) or use --device cpu"
            )
        return [CPU]
    count, detail = cuda_device_count()
    if count == 0 or (count is not None and kind == "cuda" and index >= count):
        if kind == "cuda":
            seen = "no CUDA device" if count == 0 else f"only {count} CUDA device(s) (cuda:0..cuda:{(count or 1) - 1})"
            raise DeviceError(
                f"--device {device}: onnxruntime-gpu is installed but sees {seen} ({detail}; check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES), or use --device cpu"
            )
        notice_cpu_fallback(f"onnxruntime-gpu is installed but no CUDA device is usable ({detail})")
        return [CPU]
    return [CUDA, CPU]


def notice_cpu_fallback(why: str) -> None:
    """``--device auto`` runs on the CPU although onnxruntime-gpu is installed: say so once per process."""
    global _fallback_noticed
    if not _fallback_noticed:
        _fallback_noticed = True
        warnings.warn(f"clipindex: --device auto runs on the CPU: {why}", DeviceFallbackWarning, stacklevel=3)


def provider_entries(providers: Sequence[str], cuda_device_id: int = 0) -> list[str | tuple[str, dict[str, str]]]:
    """What ``InferenceSession(providers=...)`` takes: the CUDA provider with its ``device_id`` option."""
    return [(name, {"device_id": str(cuda_device_id)}) if name == CUDA else name for name in providers]


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
    """Where optimised models are cached (:func:`clipindex.settings.cache_dir`); ``None``: no cache."""
    return cache_dir()


def _cached_session(path: Path, options: Any, verify: Callable[[], None], sha256: str | None = None) -> Any:
    """A CPU session from a cached, already optimised copy of ``path`` whose weights sit in an external file.

    ONNX Runtime loads a model whose initializers are inline in the protobuf by copying them, and one with
    external data several times faster, which matters for ``clipindex search``, a new process per query
    (docs/design.md). The copy is ORT's own ``optimized_model_filepath`` output
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


class Tower(Protocol):
    """What :class:`Embedder` needs of a tower, whichever engine runs it."""

    #: ``"onnxruntime"`` or ``"openvino"``
    engine: str
    #: what it computes in: ``fp32``, ``int8`` or ``bf16``
    precision: str
    #: where it runs: ONNX Runtime's execution provider, or ``"OpenVINO CPU"``
    provider: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxTower:
    """One tower's ONNX Runtime session: ``run(batch) -> [batch, D]`` normalised float32."""

    engine = "onnxruntime"

    def __init__(
        self,
        path: Path,
        providers: Sequence[str],
        *,
        intra_op_threads: int | None = None,
        sha256: str | None = None,
        vector_dim: int | None = None,
        cuda_device_id: int = 0,
        precision: str = "fp32",
    ) -> None:
        """``sha256``: the file's digest from the manifest, checked before the file is first loaded (or cached);
        ``vector_dim``: the manifest's embedding dimension, checked against the model's output shape;
        ``cuda_device_id``: the GPU of the CUDA provider (``cuda:N``); ``precision``: the file's (``fp32`` or
        ``int8``), as reported."""
        import onnxruntime as ort

        self.precision = precision
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
                self.session = ort.InferenceSession(
                    str(path), options, providers=provider_entries(providers, cuda_device_id)
                )
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
        self.cuda_device_id = cuda_device_id

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._on_gpu:
            # IO binding: copy the batch once to the device and bring the [batch, D] result back to the host,
            # avoiding ORT's per-run staging copies.
            import onnxruntime as ort

            binding = self.session.io_binding()
            on_device = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self.cuda_device_id)
            binding.bind_ortvalue_input(self.input_name, on_device)
            binding.bind_output(self.session.get_outputs()[0].name, "cpu")
            self.session.run_with_iobinding(binding)
            output = binding.copy_outputs_to_cpu()[0]
        else:
            output = self.session.run(None, {self.input_name: batch})[0]
        return l2_normalise(output)


class EncodedImage(NamedTuple):
    """One item's outcome in :meth:`Embedder.encode_images_detailed`: its vector, or the error that stopped it.

    ``vector``: float32 ``[D]``, L2-normalised, or ``None`` when the item failed; ``error``: ``None``, or the
    :class:`~clipindex.errors.ImageError` (``error.reason`` says why, ``error.path`` names the item).
    """

    vector: np.ndarray | None
    error: ImageError | None


class _Pixels(NamedTuple):
    pixels: np.ndarray | None  # float32 [3, H, W]
    error: ImageError | None


class Embedder:
    """CLIP image and text embeddings from a converted model folder, on ONNX Runtime (or OpenVINO).

    >>> embedder = Embedder("models/clip-vit-base-patch32")
    >>> images = embedder.encode_images(["images/chelsea.jpg"])   # [1, D], L2-normalised
    >>> texts = embedder.encode_text(["a cat", "a rocket"])       # [2, D]
    >>> embedder.similarity(images, texts)                       # [1, 2] cosine

    **Threads.** One ``Embedder`` may be shared by any number of threads (and by the ``aencode_*`` coroutines,
    which run on worker threads): each tower's ONNX Runtime session is created once, under a lock, by the first
    call that needs it, and ``InferenceSession.run`` is thread-safe; the tokenizer and preprocessor are likewise
    created once. Concurrent calls give the vectors a single thread gives.

    **Devices.** ``device``: ``"auto"`` (CUDA when onnxruntime-gpu sees a GPU, else the CPU), ``"cpu"``,
    ``"cuda"`` (GPU 0) or ``"cuda:N"`` (the CUDA provider's ``device_id`` N). See :func:`resolve_providers` for
    the errors and the one notice of ``auto``'s fallback.

    **Engines.** ``engine``: ``"onnxruntime"`` (default), ``"openvino"`` (the ``[openvino]`` extra, on the CPU) or
    ``"auto"`` (OpenVINO in bfloat16 where the CPU computes it natively and each tower's vectors agree with ONNX
    Runtime's at load, else ONNX Runtime): :func:`clipindex.model.engines.plan_engine`. :attr:`engine_plan` is the
    plan, known before a tower loads; :meth:`engine` the label of the engine a tower actually runs on
    (``"openvino bf16"``); a tower that fails ``auto``'s check runs on ONNX Runtime after one
    :class:`~clipindex.errors.EngineFallbackWarning`.

    **URLs.** ``allow_urls`` (default on): whether ``http(s)://`` strings given to ``encode_images`` are fetched;
    ``url_timeout_s`` and ``max_url_bytes`` bound each download (:mod:`clipindex.images.inputs`).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = DEFAULT_DEVICE,
        precision: str = DEFAULT_PRECISION,
        engine: str = DEFAULT_ENGINE,
        intra_op_threads: int | None = None,
        draft: bool | None = None,
        max_pixels: int | None = None,
        decode_workers: int | None = None,
        allow_urls: bool = True,
        url_timeout_s: float = DEFAULT_URL_TIMEOUT_S,
        max_url_bytes: int = DEFAULT_MAX_URL_BYTES,
    ) -> None:
        if precision not in PRECISIONS:
            raise DeviceError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.manifest = ModelManifest.load(model_dir)
        self.model_dir = Path(model_dir)
        self.device = device
        self.precision = precision
        self.providers = resolve_providers(device)
        self.cuda_device_id = parse_device(device)[1]
        #: the engine the towers load on (``auto`` resolved as far as it can be before loading)
        self.engine_plan: EnginePlan = plan_engine(
            engine, on_cuda=self.providers[0] == CUDA, device_kind=parse_device(device)[0], precision=precision
        )
        #: ``auto``'s load-time check of each OpenVINO tower, by tower kind, once it loaded
        self.checks: dict[str, CheckVerdict] = {}
        self.intra_op_threads = intra_op_threads
        self.draft = draft
        self.max_pixels = max_pixels
        #: decode/preprocess threads of ``encode_images`` (default: the cores)
        self.decode_workers = decode_workers
        self.urls = UrlPolicy(allow=allow_urls, timeout_s=url_timeout_s, max_bytes=max_url_bytes)
        self._towers: dict[str, Tower] = {}
        self._tokenizer: Any = None
        self._preprocessor: Any = None
        # one lock per tower (a text search loads the tokenizer while the text session loads), one for the rest
        self._tower_locks = {"vision": threading.Lock(), "text": threading.Lock()}
        self._lazy_lock = threading.Lock()

    # --- properties -------------------------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        """Embedding dimension D (512 for ViT-B/32, 768 for ViT-L/14): read from the manifest."""
        return self.manifest.embedding_dim

    @property
    def model_name(self) -> str:
        return self.manifest.model_name

    @property
    def logit_scale(self) -> float:
        """CLIP's temperature, already exponentiated (100 for the OpenAI checkpoints), from the manifest."""
        return self.manifest.logit_scale

    def tower_path(self, kind: Literal["vision", "text"]) -> Path:
        """The ONNX file of a tower at this precision; raises ModelNotFoundError when it is missing."""
        base = VISION_FILE if kind == "vision" else TEXT_FILE
        path = self.model_dir / (quantized_name(base) if self.precision == "int8" else base)
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: missing; {reconvert_hint(self.manifest, int8=self.precision == 'int8')}")
        return path

    def tower(self, kind: Literal["vision", "text"]) -> Tower:
        """The tower's session, created on first use (a run that embeds nothing never loads it), once: threads
        that ask at the same time wait for the one that creates it."""
        tower = self._towers.get(kind)
        if tower is not None:
            return tower
        with self._tower_locks[kind]:
            tower = self._towers.get(kind)
            if tower is None:
                tower = self._load_tower(kind)
                self._towers[kind] = tower
        return tower

    def _load_tower(self, kind: Literal["vision", "text"]) -> Tower:
        plan = self.engine_plan
        if plan.engine != "openvino":
            return self._onnx_tower(kind)
        path = self.tower_path(kind)
        sha256 = self._sha256(path)
        tower = OpenVinoTower(
            path,
            precision=plan.precision,
            threads=self.intra_op_threads or available_cores(),
            sha256=sha256,
            vector_dim=self.manifest.embedding_dim,
            verify=functools.partial(verify_sha256, path, sha256) if sha256 else None,
        )
        if not plan.check:
            return tower
        reference: list[OnnxTower] = []

        def run_reference(batch: np.ndarray) -> np.ndarray:
            reference.append(self._onnx_tower(kind))
            return reference[0].run(batch)

        verdict = tower.check_against(run_reference, lambda: self._check_inputs(kind), identity=reference_identity())
        self.checks[kind] = verdict
        if verdict.passed:
            return tower
        warnings.warn(
            f"clipindex: --engine auto runs the {kind} tower on ONNX Runtime: OpenVINO {tower.precision}'s vectors "
            f"of the probe {'photos' if kind == 'vision' else 'texts'} reach cosine {verdict.min_cosine:.6f} against "
            f"ONNX Runtime's, under the {MIN_ENGINE_COSINE} required",
            EngineFallbackWarning,
            stacklevel=4,
        )
        return reference[0] if reference else self._onnx_tower(kind)

    def _check_inputs(self, kind: Literal["vision", "text"]) -> np.ndarray:
        if kind == "vision":
            return probe_pixels(self.preprocessor.preprocess)
        return np.asarray(self.tokenizer.encode(list(CHECK_TEXTS)).input_ids)

    def _sha256(self, path: Path) -> str | None:
        recorded = self.manifest.files.get(path.name)
        return recorded.get("sha256") if isinstance(recorded, dict) else None

    def _onnx_tower(self, kind: Literal["vision", "text"]) -> OnnxTower:
        path = self.tower_path(kind)
        tower = OnnxTower(
            path,
            self.providers,
            intra_op_threads=self.intra_op_threads,
            sha256=self._sha256(path),
            vector_dim=self.manifest.embedding_dim,
            cuda_device_id=self.cuda_device_id,
            precision=self.precision,
        )
        if self.providers[0] == CUDA and tower.provider != CUDA:  # ORT could not start CUDA and fell back
            why = (
                f"ONNX Runtime could not start CUDA on cuda:{self.cuda_device_id} "
                "(the CUDA or cuDNN libraries failed to load)"
            )
            if parse_device(self.device)[0] == "cuda":
                raise DeviceError(f"--device {self.device}: {why}; see ONNX Runtime's log, or use --device cpu")
            notice_cpu_fallback(why)
        return tower

    @property
    def planned_provider(self) -> str:
        """The execution provider sessions ask for first (``auto`` resolved), known without loading a model."""
        return self.providers[0]

    def provider(self, kind: Literal["vision", "text"] = "vision") -> str:
        """The execution provider the tower actually runs on (after ORT's own fallbacks)."""
        return self.tower(kind).provider

    def engine(self, kind: Literal["vision", "text"] = "vision") -> str:
        """The engine and precision the tower actually runs on, e.g. ``"openvino bf16"`` or ``"onnxruntime
        fp32"`` (loads the tower)."""
        tower = self.tower(kind)
        return f"{tower.engine} {tower.precision}"

    @property
    def preprocessor(self) -> Any:
        if self._preprocessor is None:
            from clipindex.images.preprocess import Preprocessor

            with self._lazy_lock:
                if self._preprocessor is None:
                    self._preprocessor = Preprocessor.from_manifest(
                        self.manifest, draft=self.draft, max_pixels=self.max_pixels
                    )
        return self._preprocessor

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from clipindex.model.tokens import TextTokenizer

            with self._lazy_lock:
                if self._tokenizer is None:
                    self._tokenizer = TextTokenizer(
                        self.model_dir / TOKENIZER_FILE,
                        context_length=self.manifest.context_length,
                        pad_token_id=self.manifest.pad_token_id,
                    )
        return self._tokenizer

    # --- images -----------------------------------------------------------------------------------------

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        """``pixel_values`` float32 [batch, 3, S, S] (already preprocessed) -> [batch, D] normalised."""
        return self.tower("vision").run(np.ascontiguousarray(pixel_values, dtype=np.float32))

    @overload
    def encode_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = ...,
        errors: Literal["raise"] = ...,
        progress: bool = ...,
        allow_urls: bool | None = ...,
    ) -> np.ndarray: ...

    @overload
    def encode_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = ...,
        errors: Literal["none"],
        progress: bool = ...,
        allow_urls: bool | None = ...,
    ) -> list[np.ndarray | None]: ...

    def encode_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        errors: ErrorMode = "raise",
        progress: bool = False,
        allow_urls: bool | None = None,
    ) -> np.ndarray | list[np.ndarray | None]:
        """Images of any kind (:mod:`clipindex.images.inputs`: paths, bytes, file objects, data URIs, base64, URLs, PIL
        images, HWC uint8 arrays, mixed freely) -> vectors, decoded and preprocessed exactly as ``clipindex
        ingest`` does, on the same decode-ahead thread pool (:mod:`clipindex.images.prefetch`).

        ``errors="raise"`` (default): float32 ``[N, D]``, L2-normalised; the first item that cannot be read raises
        :class:`~clipindex.errors.ImageError` naming it. ``errors="none"``: a list of N ``[D]`` vectors with ``None``
        where an item failed (:meth:`encode_images_detailed` says why). ``progress``: a tqdm bar on stderr when it
        is a terminal. ``allow_urls``: overrides the embedder's setting for this call. One item (not in a list) is
        a batch of one.
        """
        if errors not in ("raise", "none"):
            raise ValueError(f"errors must be 'raise' or 'none', not {errors!r}")
        if errors == "none":
            detailed = self.encode_images_detailed(
                images, batch_size=batch_size, progress=progress, allow_urls=allow_urls
            )
            return [result.vector for result in detailed]
        rows: list[np.ndarray] = []
        for batch in self._encode_batches(images, batch_size, progress, allow_urls, stop_on_error=True):
            for result in batch:
                if result.error is not None:
                    raise result.error
            rows.append(np.stack([r.vector for r in batch if r.vector is not None]))
        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(rows)

    def encode_images_detailed(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        allow_urls: bool | None = None,
    ) -> list[EncodedImage]:
        """Like ``encode_images(errors="none")``, with the reason: one :class:`EncodedImage` ``(vector, error)``
        per item, in order. Never raises for an item; model and device errors still raise."""
        return [r for batch in self._encode_batches(images, batch_size, progress, allow_urls) for r in batch]

    def _encode_batches(
        self,
        images: ImageInput | Iterable[ImageInput],
        batch_size: int,
        progress: bool,
        allow_urls: bool | None,
        *,
        stop_on_error: bool = False,
    ) -> Iterator[list[EncodedImage]]:
        """Per batch, each item's outcome; decoding runs ``LOOKAHEAD_BATCHES`` ahead on the decode threads."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        items = as_items(images)
        urls = self.urls if allow_urls is None else replace(self.urls, allow=allow_urls)
        preprocessor = self.preprocessor

        def prepare(entry: tuple[int, Any]) -> _Pixels:
            index, item = entry
            name = describe(item, index)
            try:
                image = load_input(item, preprocessor, name=name, urls=urls)
                return _Pixels(preprocessor.preprocess(image), None)
            except ImageError as exc:
                return _Pixels(None, exc)
            except MemoryError:
                return _Pixels(None, ImageError(name, "not enough memory to decode this image (lower max_pixels)"))

        workers = max(1, min(self.decode_workers or available_cores(), len(items)))
        bar = _progress_bar(len(items), progress)
        try:
            for prepared in decode_ahead(enumerate(items), prepare, batch_size=batch_size, workers=workers):
                if stop_on_error and any(p.error is not None for p in prepared):
                    yield [EncodedImage(None, p.error) for p in prepared]
                    return
                ok = [p.pixels for p in prepared if p.pixels is not None]
                vectors = iter(self.encode_pixels(np.stack(ok)) if ok else ())
                yield [EncodedImage(next(vectors) if p.pixels is not None else None, p.error) for p in prepared]
                if bar is not None:
                    bar.update(len(prepared))
        finally:
            if bar is not None:
                bar.close()

    # --- text -------------------------------------------------------------------------------------------

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

    # --- async ------------------------------------------------------------------------------------------

    async def aencode_images(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        errors: ErrorMode = "raise",
        progress: bool = False,
        allow_urls: bool | None = None,
    ) -> np.ndarray | list[np.ndarray | None]:
        """:meth:`encode_images` on a worker thread (decoding on the decode threads, inference in ONNX Runtime's
        own): the event loop keeps running. Concurrent calls share this embedder's sessions. Cancelling the
        awaiting task does not stop the work already handed to the thread: it finishes and its result is dropped."""
        import asyncio

        return await asyncio.to_thread(
            self.encode_images,  # type: ignore[arg-type]
            images,
            batch_size=batch_size,
            errors=errors,
            progress=progress,
            allow_urls=allow_urls,
        )

    async def aencode_images_detailed(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        allow_urls: bool | None = None,
    ) -> list[EncodedImage]:
        """:meth:`encode_images_detailed` on a worker thread."""
        import asyncio

        return await asyncio.to_thread(
            self.encode_images_detailed, images, batch_size=batch_size, progress=progress, allow_urls=allow_urls
        )

    async def aencode_text(
        self, texts: str | Sequence[str], *, on_truncate: Callable[[str], None] | None = None
    ) -> np.ndarray:
        """:meth:`encode_text` on a worker thread."""
        import asyncio

        return await asyncio.to_thread(self.encode_text, texts, on_truncate=on_truncate)

    # --- comparing vectors ------------------------------------------------------------------------------

    def similarity(self, a: np.ndarray, b: np.ndarray, *, scaled: bool = False) -> np.ndarray:
        """Cosine similarity matrix ``[len(a), len(b)]`` of two sets of vectors (normalised or not);
        ``scaled=True`` multiplies it by the model's :attr:`logit_scale` (CLIP's logits)."""
        return similarity(a, b, logit_scale=self.logit_scale if scaled else None)

    @staticmethod
    def top_k(queries: np.ndarray, candidates: np.ndarray, k: int) -> TopK:
        """For each query vector, the ``k`` most similar candidate vectors, best first:
        :func:`clipindex.model.similarity.top_k`
        (texts -> images with text queries, images -> texts the other way round)."""
        return top_k(queries, candidates, k)

    def classify(
        self,
        images: ImageInput | Iterable[ImageInput],
        labels: str | Sequence[str],
        *,
        template: str | None = None,
        on_error: Callable[[ImageError], None] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Classification]:
        """Zero-shot labels per image, no store needed: :func:`clipindex.model.classify.classify` (what
        ``clipindex classify`` runs), returning :class:`~clipindex.model.classify.Classification` rows."""
        return classify(self, images, labels, template=template, on_error=on_error, batch_size=batch_size)


def _progress_bar(total: int, wanted: bool) -> Any:
    """A tqdm bar on stderr when ``wanted`` and stderr is a terminal, else None."""
    import sys

    if not wanted or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)
