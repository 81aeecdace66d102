"""The inference engines: ONNX Runtime (always there) and OpenVINO (the ``[openvino]`` extra), and ``auto``'s choice.

Both engines read the same ``vision.onnx`` and ``text.onnx``. OpenVINO's CPU plugin runs them in bfloat16 where
the CPU computes bfloat16 natively (``avx512_bf16`` or AMX), which is where it is faster than ONNX Runtime's
float32; elsewhere it runs float32. ``auto`` (:func:`plan_engine`) takes OpenVINO only where it is installed, the
towers are the float32 files on the CPU and the CPU has native bfloat16; then each tower must pass a fidelity
check at load (its vectors of the probe photos or texts against ONNX Runtime's, cosine at least
:data:`MIN_ENGINE_COSINE`), whose verdict is kept in the cache folder beside OpenVINO's compiled model
(:class:`OpenVinoTower`).

Importing this module imports neither engine; OpenVINO is imported only when an OpenVINO tower loads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.errors import DeviceError, ModelIntegrityError, ModelNotFoundError
from clipindex.model.similarity import l2_normalise
from clipindex.settings import ENGINE_AUTO, ENGINE_ONNXRUNTIME, ENGINE_OPENVINO, ENGINES, cache_dir

__all__ = [
    "BF16_FLAGS",
    "MIN_ENGINE_COSINE",
    "CheckVerdict",
    "EnginePlan",
    "OpenVinoTower",
    "cpu_flags",
    "native_bf16",
    "openvino_version",
    "plan_engine",
]

#: the least cosine, per probe input, between an OpenVINO tower's vector and ONNX Runtime's for ``auto`` to use it
MIN_ENGINE_COSINE = 0.9999
#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic: AVX-512 BF16, or AMX's bfloat16 tiles
BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
#: the texts the text tower's check embeds (one batch, padded to the context length)
CHECK_TEXTS: tuple[str, ...] = (
    "a photo of a cat",
    "a red car parked in the street at night",
    "",
    "An astronaut in a white suit in front of the American flag, photographed indoors with studio lighting",
    "Ein Hund läuft über die Straße",
    "日本語のテキスト、東京の夜景",
)
_INSTALL_HINT = "pip install 'clipindex[openvino]'"
#: OpenVINO's names of its inference precisions -> the names clipindex reports
_PRECISION_NAMES = {"bf16": "bf16", "bfloat16": "bf16", "f32": "fp32", "float32": "fp32", "f16": "fp16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"unknown"`` where there is none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (``flags``: :func:`cpu_flags`) computes bfloat16 natively (:data:`BF16_FLAGS`)."""
    return bool((cpu_flags() if flags is None else flags) & set(BF16_FLAGS))


def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version, or ``None`` when it is not installed (nothing is imported)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class EnginePlan:
    """The engine an :class:`~clipindex.model.encode.Embedder`'s towers load on, known before any loads.

    ``engine``: ``"onnxruntime"`` or ``"openvino"``; ``precision``: what the towers compute in (``fp32``,
    ``int8``, ``bf16``); ``reason``: why ``auto`` chose ONNX Runtime (``None`` otherwise); ``check``: each OpenVINO
    tower must pass the fidelity check at load, else it runs on ONNX Runtime.
    """

    requested: str
    engine: str
    precision: str
    reason: str | None = None
    check: bool = False

    @property
    def label(self) -> str:
        """``"<engine> <precision>"``, e.g. ``"openvino bf16"``: what the payload and ``status`` record."""
        return f"{self.engine} {self.precision}"


def check_engine(engine: str) -> str:
    """``engine`` lower-cased; :class:`DeviceError` unless it is one of :data:`clipindex.settings.ENGINES`."""
    text = str(engine).strip().lower()
    if text not in ENGINES:
        raise DeviceError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    return text


def plan_engine(
    requested: str,
    *,
    on_cuda: bool,
    device_kind: str,
    precision: str,
    flags: frozenset[str] | None = None,
    installed: str | bool | None = True,
) -> EnginePlan:
    """Which engine runs the towers: ``requested`` (``onnxruntime``, ``openvino`` or ``auto``).

    ``on_cuda``: the towers would run on ONNX Runtime's CUDA provider; ``device_kind``: ``--device``'s kind
    (``auto``, ``cpu``, ``cuda``); ``precision``: ``fp32`` or ``int8``; ``flags``: the CPU's (:func:`cpu_flags`);
    ``installed``: OpenVINO's version or ``None`` (default: looked up, :func:`openvino_version`).

    - ``onnxruntime``: always ONNX Runtime.
    - ``openvino``: OpenVINO on the CPU, in its default precision there (bfloat16 with native bfloat16, else
      float32; ``int8`` runs the ``*.int8.onnx`` files). :class:`DeviceError` when OpenVINO is not installed or
      ``--device`` is ``cuda``.
    - ``auto``: OpenVINO in bfloat16 only where it is installed, the towers are the fp32 files, the device is the
      CPU and the CPU computes bfloat16 natively; each tower then passes the load-time check or falls back. Else
      ONNX Runtime, and ``reason`` says why.
    """
    requested = check_engine(requested)
    onnx = "int8" if precision == "int8" else "fp32"
    if requested == ENGINE_ONNXRUNTIME:  # nothing looked up: the default costs nothing
        return EnginePlan(requested, ENGINE_ONNXRUNTIME, onnx)
    flags = cpu_flags() if flags is None else flags
    version = openvino_version() if installed is True else installed
    if requested == ENGINE_OPENVINO:
        if device_kind == "cuda":
            raise DeviceError(
                "--engine openvino runs on the CPU; CUDA runs on ONNX Runtime: use --engine onnxruntime with --device "
                "cuda, or --device cpu with --engine openvino"
            )
        if not version:
            raise DeviceError(f"--engine openvino: OpenVINO is not installed; {_INSTALL_HINT}, or use --engine auto")
        return EnginePlan(requested, ENGINE_OPENVINO, "int8" if precision == "int8" else _default_precision(flags))
    assert requested == ENGINE_AUTO
    if on_cuda:
        why = "the towers run on CUDA, which ONNX Runtime drives"
    elif precision == "int8":
        why = "the int8 towers are fastest on ONNX Runtime"
    elif not version:
        why = f"OpenVINO is not installed ({_INSTALL_HINT})"
    elif not native_bf16(flags):
        why = f"this CPU has no native bfloat16 ({' or '.join(BF16_FLAGS)}); OpenVINO float32 gains too little here"
    else:
        return EnginePlan(requested, ENGINE_OPENVINO, "bf16", check=True)
    return EnginePlan(requested, ENGINE_ONNXRUNTIME, onnx, reason=why)


def _default_precision(flags: frozenset[str]) -> str:
    return "bf16" if native_bf16(flags) else "fp32"


@dataclass(frozen=True)
class CheckVerdict:
    """The load-time check of one OpenVINO tower: the least cosine against ONNX Runtime over the probe inputs
    (``cosines``, one per input), and whether it passed; ``seconds``: what running the check cost (0 when the
    verdict was read from the cache); ``cached``: read from the cache."""

    min_cosine: float
    cosines: tuple[float, ...]
    passed: bool
    seconds: float
    cached: bool


class OpenVinoTower:
    """One tower compiled by OpenVINO's CPU plugin: ``run(batch) -> [batch, D]`` normalised float32.

    The compiled model is cached in ``<cache folder>/openvino/<model digest>/`` (OpenVINO's ``CACHE_DIR``), so a
    later process skips compiling. Before a file is first compiled (or first used from the cache) its sha256 is
    checked against the manifest's, as :class:`~clipindex.model.encode.OnnxTower` does. Safe to share between
    threads: each thread runs its own infer request.
    """

    engine = ENGINE_OPENVINO

    def __init__(
        self,
        path: Path,
        *,
        precision: str,
        threads: int,
        sha256: str | None = None,
        vector_dim: int | None = None,
        verify: Callable[[], None] | None = None,
    ) -> None:
        """``precision``: ``bf16``, ``fp32`` or ``int8`` (the ``*.int8.onnx`` files, run as OpenVINO compiles
        them); ``threads``: OpenVINO's inference threads; ``sha256`` and ``verify``: the manifest's digest of the
        file and the check that raises :class:`ModelIntegrityError` when it differs."""
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: missing; run `clipindex convert`")
        try:
            import openvino as ov
        except ImportError as exc:
            raise DeviceError(f"--engine openvino: OpenVINO cannot be imported ({exc}); {_INSTALL_HINT}") from exc
        self.path = path
        self.cache_folder = _cache_folder(path, sha256)
        core = ov.Core()
        if self.cache_folder is None:
            if verify is not None:
                verify()
        elif _verified(self.cache_folder, path, verify):
            with contextlib.suppress(Exception):  # an unusable cache costs a compile, never the run
                core.set_property({"CACHE_DIR": str(self.cache_folder / "compiled")})
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
        }
        try:
            self.compiled: Any = core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors for bad files
            raise ModelNotFoundError(
                f"{path}: OpenVINO cannot compile it ({str(exc).splitlines()[0][:160] if str(exc) else exc!r}); "
                "re-run `clipindex convert --force`, or use --engine onnxruntime"
            ) from exc
        hint_type = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = str(getattr(hint_type, "get_type_name", lambda: hint_type)()).lower()  # an ov.Type: "bf16", "f32"
        self.precision = "int8" if precision == "int8" else _PRECISION_NAMES.get(hint, hint)
        self.provider = "OpenVINO CPU"
        output_dim = self.compiled.outputs[0].get_partial_shape()[-1]
        if vector_dim is not None and output_dim.is_static and output_dim.get_length() != vector_dim:
            raise ModelIntegrityError(
                f"{path}: the model outputs {output_dim.get_length()}-dim vectors but manifest.json says "
                f"embedding_dim {vector_dim}; re-run `clipindex convert --force`"
            )
        self._local = threading.local()

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: batch})
        return l2_normalise(request.get_output_tensor(0).data)  # a new array: the request reuses its buffer

    def check_against(
        self, reference: Callable[[np.ndarray], np.ndarray], inputs: Callable[[], np.ndarray], *, identity: str
    ) -> CheckVerdict:
        """Compare this tower's vectors of ``inputs()`` with ``reference``'s (ONNX Runtime's), or read the verdict
        kept for this file, precision, CPU and both engines' versions (``identity`` names ONNX Runtime's)."""
        import time

        key = json.dumps(
            {
                "openvino": openvino_version(),
                "reference": identity,
                "precision": self.precision,
                "cpu": cpu_model(),
                "bf16": sorted(cpu_flags() & set(BF16_FLAGS)),
                "threshold": MIN_ENGINE_COSINE,
            },
            sort_keys=True,
        )
        stamp = self.cache_folder / f"check-{self.precision}.json" if self.cache_folder is not None else None
        if stamp is not None:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                kept = json.loads(stamp.read_text(encoding="utf-8"))
                if kept["key"] == key:
                    cosines = tuple(float(c) for c in kept["cosines"])
                    return CheckVerdict(min(cosines), cosines, min(cosines) >= MIN_ENGINE_COSINE, 0.0, True)
        started = time.perf_counter()
        batch = inputs()
        expected = reference(batch)
        actual = self.run(batch)
        cosines = tuple(float(c) for c in np.sum(expected * actual, axis=1))
        seconds = time.perf_counter() - started
        if stamp is not None:
            with contextlib.suppress(OSError):
                stamp.write_text(json.dumps({"key": key, "cosines": cosines, "seconds": seconds}), encoding="utf-8")
        return CheckVerdict(min(cosines), cosines, min(cosines) >= MIN_ENGINE_COSINE, seconds, False)


def _cache_folder(path: Path, sha256: str | None) -> Path | None:
    """``<cache>/openvino/<key>``: one folder per model content (the manifest's sha256), else per file."""
    root = cache_dir()
    if root is None:
        return None
    if sha256:
        name = f"{sha256.lower()[:24]}-{path.name}"
    else:
        st = path.stat()
        source = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        name = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:24] + f"-{path.name}"
    return root / "openvino" / name


def _verified(folder: Path, path: Path, verify: Callable[[], None] | None) -> bool:
    """Run ``verify`` unless this file (path, size, mtime) was verified for ``folder`` before; record it. False
    when the cache folder cannot be written (then the file is verified and compiled without the cache)."""
    st = path.stat()
    source = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    sources = folder / "sources"
    try:
        known = source in sources.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        known = False
    if known:
        return True
    if verify is not None:
        verify()  # raises ModelIntegrityError: never compile a corrupted model into the cache
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with sources.open("a", encoding="utf-8", errors="surrogateescape") as out:
            out.write(source + "\n")
    except OSError:
        return False
    return True


def probe_pixels(preprocess: Callable[[Any], np.ndarray]) -> np.ndarray:
    """The vision check's inputs: the probe photos shipped with the converter's package data, as ``preprocess``
    (the model's own :class:`~clipindex.images.preprocess.Preprocessor`) makes them, ``[N, 3, S, S]``."""
    from importlib import resources

    from PIL import Image

    folder = resources.files("clipindex.convert") / "probe_images"
    rows: list[np.ndarray] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".jpg"):
            with entry.open("rb") as handle, Image.open(handle) as image:
                rows.append(preprocess(image.convert("RGB")))
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def reference_identity() -> str:
    """ONNX Runtime's version: part of the key of a kept check verdict."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"
