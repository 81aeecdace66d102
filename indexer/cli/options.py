"""The command line's options, declared once per concept and shared as decorators.

Every option reads, in order: the flag, then its environment variable (shown in ``--help``), then the default;
names and defaults come from :mod:`clipindex.settings`. Each option hands its value to the command as a
parameter: nothing is kept on the click context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from clipindex import settings

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "DeviceType",
    "api_key_file_option",
    "collection_option",
    "collection_settings_options",
    "data_dir_option",
    "device_options",
    "json_option",
    "max_pixels_option",
    "model_dir_option",
    "new_collection_options",
    "quiet_option",
    "source_model_option",
    "store_options",
    "timeout_option",
    "wait_option",
]


def _stack(*options: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator applying ``options`` so that ``--help`` lists them in the order given."""

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


class DeviceType(click.ParamType):
    """``--device``: auto, cpu, cuda or cuda:N (checked by :func:`clipindex.model.devices.parse_device`)."""

    name = "[auto|cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from clipindex.errors import DeviceError
        from clipindex.model.devices import parse_device

        try:
            parse_device(str(value))
        except DeviceError:
            self.fail(f"{value!r} is not one of auto, cpu, cuda or cuda:N (N the GPU's index)", param, ctx)
        return str(value).strip().lower()


def source_model_option(flag: str, dest: str, help: str) -> Callable[[F], F]:
    """The checkpoint to convert: ``convert --model``, ``ingest --source-model``."""
    return click.option(
        flag,
        dest,
        envvar=settings.ENV_SOURCE_MODEL,
        show_envvar=True,
        default=settings.DEFAULT_MODEL_ID,
        show_default=True,
        help=help,
    )


model_dir_option = click.option(
    "--model-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=settings.ENV_MODEL_DIR,
    show_envvar=True,
    default=None,
    help="Converted model folder.  [default: the model that built the collection, else "
    "$XDG_DATA_HOME/clipindex/models/default]",
)


def data_dir_option(help: str = "Folder of the embedded Qdrant (Edge) store.") -> Callable[[F], F]:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=settings.ENV_DATA_DIR,
        show_envvar=True,
        default=None,
        help=f"{help}  [default: $XDG_DATA_HOME/clipindex]",
    )


def collection_option(
    help: str = "Collection name; created on first ingest with the model's dimension and cosine distance.",
) -> Callable[[F], F]:
    return click.option(
        "--collection",
        envvar=settings.ENV_COLLECTION,
        show_envvar=True,
        default=settings.DEFAULT_COLLECTION,
        show_default=True,
        help=help,
    )


api_key_file_option = click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=settings.ENV_API_KEY_FILE,
    show_envvar=True,
    default=None,
    help=f"File holding the Qdrant API key (else ${settings.ENV_API_KEY}).",
)

timeout_option = click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    envvar=settings.ENV_TIMEOUT,
    show_envvar=True,
    default=settings.DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Server only: seconds to keep retrying an unreachable Qdrant server before giving up (exit 69). "
    "A host name that does not resolve or a TLS certificate that does not verify fails at once.",
)

#: --data-dir, --qdrant-url, --api-key-file, --collection, --timeout: where the vectors live
store_options = _stack(
    data_dir_option(),
    click.option(
        "--qdrant-url",
        envvar=settings.ENV_QDRANT_URL,
        show_envvar=True,
        default=None,
        help="Use a Qdrant server (http://host:6333, https://...) instead of the embedded store. "
        f"The API key is read from ${settings.ENV_API_KEY} or --api-key-file, never from the command line.",
    ),
    api_key_file_option,
    collection_option(),
    timeout_option,
)

wait_option = click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    envvar=settings.ENV_WAIT,
    show_envvar=True,
    default=settings.DEFAULT_WAIT_S,
    show_default=True,
    help="Embedded store only: seconds to wait while another process has the store open (a search, or an "
    "ingest, which lets waiting commands in after its current batch); past that, exit 75.",
)

#: --shards, --replicas: a new server collection's layout
new_collection_options = _stack(
    click.option("--shards", type=click.IntRange(1), default=None, help="Server only: shards of a new collection."),
    click.option(
        "--replicas", type=click.IntRange(1), default=None, help="Server only: replication factor of a new collection."
    ),
)

max_pixels_option = click.option(
    "--max-pixels",
    type=click.IntRange(0),
    envvar=settings.ENV_MAX_PIXELS,
    show_envvar=True,
    default=None,
    help="Refuse images declaring more pixels than this (decompression bombs); 0: no limit.  "
    f"[default: {settings.DEFAULT_MAX_PIXELS}]",
)


def device_options(default_device: str) -> Callable[[F], F]:
    """--device, --precision and --engine: where, how and by what the towers run."""
    return _stack(
        click.option(
            "--device",
            type=DeviceType(),
            envvar=settings.ENV_DEVICE,
            show_envvar=True,
            default=default_device,
            show_default=True,
            help="ONNX Runtime execution provider; auto takes CUDA when onnxruntime-gpu sees a GPU; cuda:N picks "
            "GPU N" + (" (one query starts sooner on the CPU)." if default_device == "cpu" else "."),
        ),
        click.option(
            "--precision",
            type=click.Choice(settings.PRECISIONS),
            envvar=settings.ENV_PRECISION,
            show_envvar=True,
            default=settings.DEFAULT_PRECISION,
            show_default=True,
            help="int8 runs the *.int8.onnx towers from `convert --quantize int8` (faster on CPU; convert "
            "reports their agreement with fp32).",
        ),
        click.option(
            "--engine",
            type=click.Choice(settings.ENGINES, case_sensitive=False),
            envvar=settings.ENV_ENGINE,
            show_envvar=True,
            default=settings.DEFAULT_ENGINE,
            show_default=True,
            help="What runs the towers: onnxruntime; openvino (the [openvino] extra, on the CPU, in bfloat16 where "
            "the CPU has it natively); auto takes openvino where it is installed, the CPU has native bfloat16 and "
            "each tower's vectors agree with ONNX Runtime's at load, else onnxruntime, saying why.",
        ),
    )


def json_option(what: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout.")


def quiet_option(help: str) -> Callable[[F], F]:
    return click.option("--quiet", "-q", is_flag=True, help=help)


def collection_settings_options(func: F) -> F:
    """--quantization, --hnsw-m, --hnsw-ef-construct: a new server collection's vector storage, handed to the
    command as one ``collection_settings`` parameter (:class:`clipindex.store.sizing.CollectionSettings`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, quantization: str, hnsw_m: int, hnsw_ef_construct: int, **kwargs: Any) -> Any:
        from clipindex.store.sizing import CollectionSettings

        kwargs["collection_settings"] = CollectionSettings(quantization, hnsw_m, hnsw_ef_construct)  # type: ignore[arg-type]
        return func(*args, **kwargs)

    return _stack(
        click.option(
            "--quantization",
            type=click.Choice(["int8", "none"]),
            envvar=settings.ENV_QUANTIZATION,
            show_envvar=True,
            default=settings.DEFAULT_QUANTIZATION,
            show_default=True,
            help="Server only, a new collection: int8 keeps a scalar-quantized copy of the vectors in RAM and the "
            "float32 originals on disk (results rescored in float32); none keeps float32 in RAM.",
        ),
        click.option(
            "--hnsw-m",
            type=click.IntRange(0, 128),
            envvar=settings.ENV_HNSW_M,
            show_envvar=True,
            default=settings.DEFAULT_HNSW_M,
            show_default=True,
            help="Server only, a new collection: HNSW edges per node (0: no graph, exact search).",
        ),
        click.option(
            "--hnsw-ef-construct",
            type=click.IntRange(4, 4096),
            envvar=settings.ENV_HNSW_EF_CONSTRUCT,
            show_envvar=True,
            default=settings.DEFAULT_HNSW_EF_CONSTRUCT,
            show_default=True,
            help="Server only, a new collection: HNSW candidates while building the graph.",
        ),
    )(wrapper)  # type: ignore[return-value]
