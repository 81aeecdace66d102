"""The ``clipindex`` command line: thin Click wrappers over the library API.

Only this module turns :class:`indexer.errors.ClipIndexError` into one-line messages and exit codes.
Options read, in order: the flag, then its environment variable (shown in ``--help``), then the default.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from indexer import __version__
from indexer.errors import ClipIndexError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODEL_ID = "openai/clip-vit-base-patch32"
DEFAULT_MODEL_DIR = Path("models") / "clip-vit-base-patch32"
DEFAULT_COLLECTION = "images"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/clipindex`` (``~/.local/share/clipindex``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clipindex"


def fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn library exceptions into ``Error: <one line>`` on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ClipIndexError as exc:
            message = " ".join(str(exc).split())  # always one line
            fail(message, exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; re-run the same command to resume (finished batches are kept)", 130)

    return wrapper  # type: ignore[return-value]


def info(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="clipindex")
def cli() -> None:
    """clipindex: index a folder of images with CLIP (ONNX Runtime) into Qdrant, then search it.

    \b
    clipindex convert                  # CLIP checkpoint -> models/clip-vit-base-patch32 (ONNX)
    clipindex ingest ./images          # embed every image into the embedded Qdrant store
    clipindex search "a red car"       # best matching images
    """


# --- convert ----------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--model",
    "source",
    envvar="CLIPINDEX_SOURCE_MODEL",
    show_envvar=True,
    default=DEFAULT_MODEL_ID,
    show_default=True,
    help="Hugging Face model id, or a local checkpoint folder in the hub's layout (config.json, weights, "
    "preprocessor_config.json, tokenizer files). Offline, pass a local folder.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CLIPINDEX_MODEL_DIR",
    show_envvar=True,
    default=None,
    help="Folder to write the model into.  [default: models/<model-name>]",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="Also write vision.int8.onnx and text.int8.onnx (ONNX Runtime dynamic quantization, per-channel) "
    "and report their cosine against fp32. Use them with `ingest --precision int8`.",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder (atomically, once verified).")
@handle_errors
def convert(source: str, output: Path | None, quantize: str | None, force: bool) -> None:
    """Export CLIP's vision and text towers to ONNX, verified against PyTorch.

    Writes vision.onnx, text.onnx (dynamic batch axis, projected embeddings), tokenizer.json and
    manifest.json. Before anything is written, ONNX Runtime is checked against transformers' CLIPModel on
    real photos and probe texts; a model whose embeddings diverge (cosine < 0.99999 or max abs difference
    > 1e-4) is refused and nothing is left at the output folder. Needs the [convert] extra
    (torch, transformers, onnx).
    """
    from convert.api import convert_model, require_convert_extra

    require_convert_extra()
    result = convert_model(source, output, quantize=quantize, force=force, progress=info)
    manifest = result.manifest
    click.echo(f"Converted {manifest['source_model']} -> {result.output}  (embedding_dim {manifest['embedding_dim']})")
    for name, size in sorted(result.file_sizes.items()):
        click.echo(f"  {name:<18} {size / 1e6:9.1f} MB")
    parity = manifest["parity"]
    for key in ("vision_batch_1", "vision_batch_n", "text_batch_1_unpadded", "text_batch_n_padded"):
        fig = parity[key]
        batch = f" (batch {fig['batch_size']})" if "batch_size" in fig else ""
        click.echo(f"  parity {key:<22} cosine >= {fig['min_cosine']:.8f}  max|diff| {fig['max_abs_diff']:.1e}{batch}")
    quantization = manifest.get("quantization") or {}
    for name in ("vision.int8.onnx", "text.int8.onnx"):
        if name in quantization:
            fig = quantization[name]
            click.echo(
                f"  int8   {name:<22} cosine vs fp32: min {fig['min_cosine']:.5f}  mean {fig['mean_cosine']:.5f}"
            )


def main() -> None:
    cli(prog_name="clipindex")


if __name__ == "__main__":
    main()
