"""The ``clipindex`` command line: thin Click wrappers over the library API.

Only this module turns :class:`clipindex.errors.ClipIndexError` into one-line messages and exit codes. The options
are :mod:`clipindex.cli.options`' shared decorators; their defaults live in :mod:`clipindex.settings`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from clipindex import settings
from clipindex.cli.options import (
    api_key_file_option,
    collection_option,
    collection_settings_options,
    data_dir_option,
    device_options,
    json_option,
    max_pixels_option,
    model_dir_option,
    new_collection_options,
    quiet_option,
    source_model_option,
    store_options,
    timeout_option,
    wait_option,
)
from clipindex.errors import ClipIndexError, StoreBusyError
from clipindex.version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager

    from clipindex.model.locate import ModelLocation
    from clipindex.ops.query import QueryTerm
    from clipindex.ops.results import SearchResult
    from clipindex.store.base import VectorStore
    from clipindex.store.sizing import CollectionSettings

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1, hints: tuple[str, ...] = ()) -> None:
    from clipindex.display import printable  # file names may hold newlines or escape sequences

    click.echo(f"Error: {printable(message)}", err=True)
    for hint in hints:  # the ways forward, one per line under the error
        click.echo("  " + printable(" ".join(hint.split())), err=True)
    sys.exit(code)


#: what Ctrl-C leaves behind, per command
INTERRUPTED = {
    "ingest": "interrupted; re-run the same command to resume (finished batches are kept)",
    "convert": "interrupted; nothing was written (the model folder is only put in place once verified); "
    "re-run the same command to convert again",
    "migrate": "interrupted; re-run the same clipindex migrate to finish (points already copied are kept and "
    "not copied twice)",
}


def handle_errors(func: F) -> F:
    """Turn library exceptions into ``Error: <one line>`` on stderr (then the error's hint lines, if any) and
    the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ClipIndexError as exc:
            message = " ".join(str(exc).split())  # always one line
            fail(message, exc.exit_code, hints=exc.hints)
        except KeyboardInterrupt:
            ctx = click.get_current_context(silent=True)
            name = ctx.info_name if ctx is not None else None
            fail(INTERRUPTED.get(name or "", "interrupted"), 130)

    return wrapper  # type: ignore[return-value]


def info(message: str) -> None:
    """One message on stderr, escaped like every other (:func:`clipindex.display.printable`)."""
    from clipindex.display import printable

    click.echo(printable(message), err=True)


class EscapingGroup(click.Group):
    """The command group, whose usage errors go through :func:`clipindex.display.printable` like every other
    message (a folder name given on the command line may hold escape sequences)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        def run() -> Any:
            return super(EscapingGroup, self).main(args, prog_name, complete_var, False, **extra)

        if not standalone_mode:
            return run()
        try:
            rv = run()
        except click.ClickException as exc:
            show_escaped(exc)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def show_escaped(exc: click.ClickException) -> None:
    """What click would print for ``exc`` (usage, hint, ``Error: ...``), each line escaped."""
    import io

    from clipindex.display import printable

    buffer = io.StringIO()
    exc.show(file=buffer)
    for line in buffer.getvalue().splitlines():
        click.echo(printable(line), err=True)


@click.group(cls=EscapingGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="clipindex")
def cli() -> None:
    """clipindex: index a folder of images with CLIP (ONNX Runtime) into Qdrant, then search it.

    \b
    clipindex convert                  # CLIP checkpoint -> ONNX, in ~/.local/share/clipindex/models/default
    clipindex ingest ./images          # embed every image into the embedded Qdrant store
    clipindex search "a red car"       # best matching images (from any folder, no flags)
    """


# --- convert ----------------------------------------------------------------------------------------------


@cli.command()
@click.argument("source_arg", metavar="[SOURCE]", required=False, default=None)
@source_model_option(
    "--model",
    "source",
    help="Hugging Face model id, or a local checkpoint folder in the hub's layout. Offline, pass a local folder. "
    "Same as the SOURCE argument.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=settings.ENV_MODEL_DIR,
    show_envvar=True,
    default=None,
    help="Folder to write the model into.  [default: $XDG_DATA_HOME/clipindex/models/default, where ingest, "
    "search and status look]",
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
def convert(source_arg: str | None, source: str, output: Path | None, quantize: str | None, force: bool) -> None:
    """Export CLIP's vision and text towers to ONNX, verified against PyTorch.

    SOURCE (or --model) is a Hugging Face model id or a local checkpoint folder; the default is
    openai/clip-vit-base-patch32. Writes vision.onnx, text.onnx (dynamic batch axis, projected embeddings),
    tokenizer.json and manifest.json. Before anything is written, ONNX Runtime is checked against
    transformers' CLIPModel on real photos and probe texts; a model whose embeddings diverge (cosine < 0.99999
    or max abs difference > 1e-4) is refused and nothing is left at the output folder. Needs the [convert]
    extra (torch, transformers, onnx).
    """
    from click.core import ParameterSource

    from clipindex.convert.auto import run_converter

    if source_arg is not None:  # the positional SOURCE; an explicit --model must name the same checkpoint
        given, positional = Path(source).expanduser(), Path(source_arg).expanduser()
        same = source_arg == source or (given.exists() and positional.exists() and os.path.samefile(given, positional))
        from_command_line = click.get_current_context().get_parameter_source("source") == ParameterSource.COMMANDLINE
        if from_command_line and not same:
            raise click.UsageError(f"SOURCE {source_arg!r} and --model {source!r} differ; give the checkpoint once")
        source = source_arg
    result = run_converter(source, output, quantize=quantize, force=force, progress=info)
    manifest = result.manifest
    next_command = next_ingest_command(result.output)
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
    click.echo(f"Next: {next_command}")


def next_ingest_command(output: Path) -> str:
    """The command that indexes with the model just converted (no --model-dir for the default folder)."""
    import shlex

    if os.path.abspath(output) == os.path.abspath(settings.default_model_dir()):
        return "clipindex ingest /path/to/photos"
    return f"clipindex ingest --model-dir {shlex.quote(os.path.abspath(output))} /path/to/photos"


# --- shared options ---------------------------------------------------------------------------------------


def locate_model(model_dir: Path | None, store: VectorStore | None = None) -> ModelLocation:
    """The model folder to use (:func:`clipindex.model.locate.resolve_model_dir`): --model-dir, CLIPINDEX_MODEL_DIR,
    the folder recorded by the collection's last ingest (when ``store`` is given), the per-user default."""
    from click.core import ParameterSource

    from clipindex.errors import StoreBusyError, StoreUnavailableError
    from clipindex.errors import StoreError as _StoreError
    from clipindex.model.locate import ModelOrigin, recorded_model_dir, resolve_model_dir

    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("model_dir") if ctx is not None else None
    origin = ModelOrigin.ENV if source == ParameterSource.ENVIRONMENT else ModelOrigin.FLAG
    summary = None
    if model_dir is None and store is not None:
        try:
            summary = store.load_summary()
        except (StoreUnavailableError, StoreBusyError):
            raise
        except _StoreError:  # an unreadable summary: the model recorded at the collection's creation
            summary = None
        if recorded_model_dir(summary) is None:  # no finished ingest yet (killed, still running) or no folder
            summary = store.model_record() or summary
    return resolve_model_dir(model_dir, origin, summary)


def read_api_key(api_key_file: Path | None) -> str | None:
    """The Qdrant API key: from --api-key-file, else $QDRANT_API_KEY. Never printed."""
    if api_key_file is not None:
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(
                f"{api_key_file}: cannot read ({exc.strerror})", param_hint="--api-key-file"
            ) from None
        return key or None
    return settings.api_key_from_env()


def make_store(
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    *,
    shards: int | None = None,
    replicas: int | None = None,
    collection_settings: CollectionSettings | None = None,
    timeout_s: float = settings.DEFAULT_TIMEOUT_S,
    wait_s: float = settings.DEFAULT_WAIT_S,
    role: str = "clipindex",
) -> Any:
    """The store the options name (:func:`clipindex.store.open_store`), warnings and waits told on stderr."""
    from clipindex.store import open_store

    return open_store(
        data_dir,
        qdrant_url,
        collection,
        read_api_key(api_key_file),
        timeout_s=timeout_s,
        shards=shards,
        replicas=replicas,
        settings=collection_settings,
        on_warning=lambda message: info(f"Warning: {message}"),
        on_wait=info,
        wait_s=wait_s,
        role=role,
    )


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k_text, n_text = value.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected K/N, e.g. 1/3", param_hint="--shard") from None
    if not 1 <= k <= n:
        raise click.BadParameter(f"{value!r}: K must be between 1 and N", param_hint="--shard")
    return (k, n)


# --- ingest -----------------------------------------------------------------------------------------------


def check_ingest_directory(directory: Path) -> None:
    """Usage errors (exit 2) before anything is loaded or created: no such folder, or a file (its folder is
    what ingest takes)."""
    import shlex

    if directory.is_dir():
        return
    if directory.exists():
        parent = directory.parent if str(directory.parent) else Path(".")
        raise click.BadParameter(
            f"{directory} is a file, not a folder; ingest indexes folders: clipindex ingest {shlex.quote(str(parent))}",
            param_hint="DIRECTORY",
        )
    raise click.BadParameter(f"{directory}: no such folder; check the path", param_hint="DIRECTORY")


def timestamp() -> str:
    """Now, in ISO 8601 with the local UTC offset (cron log lines)."""
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


def quiet_c_stderr() -> AbstractContextManager[None]:
    """Keep what C libraries print while files are decoded out of the terminal (:mod:`clipindex.cstderr`)."""
    from clipindex.cstderr import capture_c_stderr

    return capture_c_stderr()


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@model_dir_option
@store_options
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    envvar=settings.ENV_BATCH_SIZE,
    show_envvar=True,
    default=settings.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Images per inference batch (and per verified upsert).",
)
@device_options(settings.DEFAULT_DEVICE)
@click.option("--prune", is_flag=True, help="Delete points of files that are gone from under DIRECTORY (only there).")
@click.option(
    "--shard",
    metavar="K/N",
    envvar=settings.ENV_SHARD,
    show_envvar=True,
    default=None,
    help="Only index the paths hashing to shard K of N, so N machines split one tree without overlap.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    envvar=settings.ENV_WORKERS,
    show_envvar=True,
    default=None,
    help="Decode/preprocess threads.  [default: the CPU cores]",
)
@max_pixels_option
@click.option(
    "--draft/--no-draft",
    envvar=settings.ENV_DRAFT,
    show_envvar=True,
    default=None,
    help="DCT-scaled JPEG decoding: much faster on camera photos, the same embeddings to within rounding. "
    "--no-draft decodes exactly, bit-identical to transformers.  [default: --draft]",
)
@source_model_option(
    "--source-model",
    "source_model",
    help="When no model is named and the default model folder holds none, convert this checkpoint (hub id or "
    "local folder) into it first (the [convert] extra). A folder you name is never converted into.",
)
@new_collection_options
@wait_option
@click.option("--strict", is_flag=True, help="Exit 1 when any file failed (default: report them and exit 0).")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Decode again the files that failed before and have not changed since (they are skipped otherwise; "
    "a changed file is always retried). See `clipindex status --failed`.",
)
@click.option(
    "--store-gps",
    is_flag=True,
    help="Also store each photo's EXIF GPS position (payload gps: {lat, lon}). Off by default: where a photo was "
    "taken is personal; without this flag no position is stored.",
)
@click.option(
    "--reembed",
    is_flag=True,
    help="Switch the collection to the model of --model-dir: embed DIRECTORY with it into a new collection beside "
    "the old one (searches keep using the old one), then switch to it at once. Re-run the same command after a "
    "kill: it resumes. Embedded store only.",
)
@quiet_option("No progress bar and no start line; failed files and the summary still print.")
@json_option("the run's figures as one object")
@collection_settings_options
@handle_errors
def ingest(
    directory: Path,
    model_dir: Path | None,
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    timeout_s: float,
    batch_size: int,
    device: str,
    precision: str,
    engine: str,
    prune: bool,
    shard: str | None,
    workers: int | None,
    max_pixels: int | None,
    draft: bool | None,
    source_model: str,
    shards: int | None,
    replicas: int | None,
    wait_s: float,
    strict: bool,
    retry_failed: bool,
    store_gps: bool,
    reembed: bool,
    quiet: bool,
    as_json: bool,
    collection_settings: CollectionSettings,
) -> None:
    """Index every image under DIRECTORY into Qdrant.

    Walks DIRECTORY (jpg, jpeg, png, webp, bmp, gif, tif, tiff; avif when Pillow decodes it, as Pillow >= 11.3
    does; heic/heif with the [heif] extra), embeds new and changed images with the vision tower in batches,
    upserts them and checks the collection's point count after every batch. Re-runs are incremental:
    unchanged files (same size and mtime) cost one stat; renamed or duplicate files reuse their stored vector;
    files that failed and have not changed are not decoded again (--retry-failed). Warnings that C libraries
    (libtiff...) print while a file is decoded are kept out of the log; a failed file's one line carries them.

    \b
    Exit codes: 0 done (failed files are listed, see --strict); 1 the run failed or --strict saw failures;
    2 usage error (also: DIRECTORY missing, or a file); 69 Qdrant server unreachable; 75 another ingest holds
    the lock (at once), or the embedded store stayed in use by other processes for --wait seconds (try again
    later).
    """
    from clipindex.cli.output import json_line
    from clipindex.convert.auto import ensure_model
    from clipindex.errors import FailedFilesError
    from clipindex.ingest.pipeline import IngestOptions, ingest_lock
    from clipindex.model.encode import Embedder
    from clipindex.model.locate import ModelOrigin

    shard_spec = parse_shard(shard)
    check_ingest_directory(directory)
    store = make_store(
        data_dir,
        qdrant_url,
        api_key_file,
        collection,
        shards=shards,
        replicas=replicas,
        collection_settings=collection_settings,
        timeout_s=timeout_s,
        wait_s=wait_s,
        role="ingest",
    )
    target = store
    if reembed:
        target = reembed_target(store, model_dir, qdrant_url)
    location = locate_model(model_dir, store)
    if location.origin != ModelOrigin.DEFAULT:  # a named folder is never converted into: fail before the lock
        ensure_model(location, source_model)
    notice_ignored_source(location, source_model, quiet=quiet or as_json)
    options = IngestOptions(
        batch_size=batch_size,
        prune=prune,
        shard=shard_spec,
        decode_workers=workers,
        retry_failed=retry_failed,
        store_gps=store_gps,
    )
    lock = ingest_lock(store, shard_spec)
    made = missing_folders(lock.path.parent)
    lock.acquire()  # before any model work: a second ingest exits 75 at once, not after a conversion
    report = None
    try:
        ensure_model(location, source_model, progress=None if quiet or as_json else info)
        embedder = Embedder(
            location.path, device=device, precision=precision, engine=engine, draft=draft, max_pixels=max_pixels
        )
        embedder.tower_path("vision")  # fail fast on a missing model file; the session loads at the first batch
        plan = embedder.engine_plan
        where = "CPU" if plan.engine == "openvino" else embedder.planned_provider
        why = f" ({engine}: {plan.reason})" if plan.reason else ""
        if not quiet:
            info(f"clipindex: {embedder.model_name} on {where}, {plan.label}{why}; {store.describe()}")
        report = _run_ingest(directory, embedder, target, options, lock, progress_bar=not quiet)
        if target is not store:
            switch_to_reembedded(store, target, embedder.model_name, quiet=quiet or as_json)
            report.points = target_points(store)
    finally:
        lock.release()
        if report is None and made:  # failed before creating anything (no model): leave no store folder behind
            remove_empty(lock.path, made)
    assert report is not None
    if as_json:
        click.echo(json_line(report.as_json()))
    else:
        line = report.summary_line()
        click.echo(line if sys.stdout.isatty() else f"{timestamp()} {line}")
    if strict and report.failed:
        raise FailedFilesError(strict_message(report, directory))


def _run_ingest(
    directory: Path, embedder: Any, store: VectorStore, options: Any, lock: Any, *, progress_bar: bool
) -> Any:
    """The run itself, under the ``lock`` already held; ``failed:`` lines on stderr as files fail."""
    from clipindex.display import printable
    from clipindex.ingest.pipeline import FailedFile
    from clipindex.ingest.pipeline import ingest as run_ingest
    from clipindex.progress import TqdmProgress

    def on_failed(failed: FailedFile) -> None:
        if not failed.known:  # failed before, unchanged since: counted in the summary, not printed every run
            info(printable(f"failed: {failed.path}: {failed.reason}"))

    from clipindex.ops.status import expected_points

    expected = expected_points(store)  # the last run's count, read before this run replaces it
    progress = TqdmProgress(enabled=progress_bar and sys.stderr.isatty())
    with store, quiet_c_stderr():
        report = run_ingest(
            directory, embedder, store, options=options, on_failed=on_failed, progress=progress, held=lock
        )
    if expected is not None and report.points_before is not None and report.points_before != expected:
        info(
            f"Warning: {store.describe()} held {report.points_before:,} points when this run started, but the last "
            f"ingest left {expected:,}: the store was damaged; this run embedded the missing images again (run "
            "`clipindex check` to check the rest)"
        )
    return report


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, innermost first."""
    out: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def remove_empty(lock_file: Path, made: list[Path]) -> None:
    """Remove ``lock_file`` and the folders in ``made`` that hold nothing else (a run that created nothing)."""
    if not made or any(p.name != lock_file.name for p in made[0].iterdir()):
        return
    with contextlib.suppress(OSError):
        lock_file.unlink()
        for folder in made:
            folder.rmdir()


def reembed_target(store: VectorStore, model_dir: Path | None, qdrant_url: str | None) -> VectorStore:
    """``--reembed``: the collection beside ``store`` that the new model's vectors go into first."""
    from clipindex.store.edge import EdgeStore

    if qdrant_url or not isinstance(store, EdgeStore):
        raise click.UsageError("--reembed switches a collection of the embedded store; not with --qdrant-url")
    if model_dir is None:
        raise click.UsageError("--reembed needs --model-dir (or CLIPINDEX_MODEL_DIR): the model to switch to")
    return EdgeStore(store.data_dir, f"{store.collection}.reembed", wait_s=store.wait_s, role="ingest")


def switch_to_reembedded(store: VectorStore, staged: VectorStore, model: str, *, quiet: bool) -> None:
    """Switch ``store``'s collection to what ``staged`` holds (one step for every process)."""
    from clipindex.store.edge import EdgeStore

    assert isinstance(store, EdgeStore) and isinstance(staged, EdgeStore)
    before: int | None = None
    if store._shard_exists():
        with store:
            store.collection_info()
            before = store.count(exact=True)
    points = store.adopt(staged)
    if not quiet:
        was = f" (it held {before:,} points of the previous model)" if before is not None else ""
        info(f"switched collection {store.collection!r} to {model}: {points:,} points{was}")


def target_points(store: VectorStore) -> int:
    with store:
        store.collection_info()
        return store.count(exact=True)


def notice_ignored_source(location: ModelLocation, source_model: str, *, quiet: bool) -> None:
    """One notice line when a source model was asked for (flag or environment) but a model is there already."""
    from click.core import ParameterSource

    from clipindex.model.model_format import MANIFEST_NAME

    ctx = click.get_current_context(silent=True)
    asked = ctx is not None and ctx.get_parameter_source("source_model") != ParameterSource.DEFAULT
    if quiet or not asked or not (location.path / MANIFEST_NAME).is_file():
        return
    from clipindex.display import printable

    info(
        printable(
            f"notice: the source model {source_model} is not converted: {location.path} holds a model already "
            f"({location.origin.value}). To switch models: clipindex convert {source_model} --output NEW_DIR, then "
            "clipindex ingest DIR --model-dir NEW_DIR --reembed"
        )
    )


def strict_message(report: Any, directory: Path) -> str:
    """``--strict``'s error: how many failed, how many of them are known (not printed again), and where to look."""
    known = report.known_failed
    new = len(report.failed) - known
    where = "see the lines above" if new else ""
    if known:
        where += (
            "; " if where else ""
        ) + f"{known} known ones are not printed again: `clipindex status --failed` lists them"
    return f"{len(report.failed)} file(s) failed under {directory} (--strict); {where}"


# --- search, classify, status -----------------------------------------------------------------------------


@cli.command()
@click.argument("query_words", nargs=-1, metavar="[QUERY]...")
@model_dir_option
@store_options
@click.option(
    "--image",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='Search by image instead of text ("more like this"): the file is decoded and preprocessed as ingest does.',
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 10_000),
    default=settings.DEFAULT_LIMIT,
    show_default=True,
    help="Number of results.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(-1.0, 1.0),
    default=None,
    metavar="S",
    help="Drop results scoring below S (cosine similarity; a score equal to S is kept).",
)
@click.option(
    "--path-prefix",
    metavar="FOLDER",
    default=None,
    help="Only files under FOLDER (or that one file); relative to the current directory. A Qdrant payload "
    "filter: /a/photos never matches /a/photos2.",
)
@click.option(
    "--after",
    metavar="DATE",
    default=None,
    help="Only photos taken at or after DATE (YYYY, YYYY-MM, YYYY-MM-DD or ISO 8601 date-time; no offset: UTC). "
    "taken_at is the EXIF DateTimeOriginal, else the file's mtime.",
)
@click.option(
    "--before",
    metavar="DATE",
    default=None,
    help="Only photos taken before DATE (its start: --before 2024 keeps 2023 and earlier); forms as --after.",
)
@click.option(
    "--camera",
    metavar="TEXT",
    default=None,
    help="Only photos whose EXIF camera make or model, or consecutive words of either, are TEXT (case-insensitive): "
    "--camera canon, --camera 'eos r5'.",
)
@click.option(
    "--sort",
    type=click.Choice(["score", "date"]),
    default="score",
    show_default=True,
    help="Order of the --limit best matches: by score (best first) or by date taken (oldest first).",
)
@json_option("the results as one array of {rank, score, path, width, height}, best first,")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also write a self-contained HTML contact sheet (embedded thumbnails, scores, paths) to FILE.",
)
@max_pixels_option
@device_options(settings.DEFAULT_QUERY_DEVICE)
@wait_option
@click.option(
    "--no-server",
    is_flag=True,
    envvar=settings.ENV_NO_SERVER,
    show_envvar=True,
    help="Search in this process even when a `clipindex serve` runs for the store (by default the running server "
    "answers: same results, no model load).",
)
@handle_errors
def search(
    query_words: tuple[str, ...],
    model_dir: Path | None,
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    timeout_s: float,
    image: Path | None,
    limit: int,
    threshold: float | None,
    path_prefix: str | None,
    after: str | None,
    before: str | None,
    camera: str | None,
    sort: str,
    as_json: bool,
    html_file: Path | None,
    max_pixels: int | None,
    device: str,
    precision: str,
    engine: str,
    wait_s: float,
    no_server: bool,
) -> None:
    """Find the indexed images that best match a text QUERY, or an image (--image).

    Scores are CLIP's cosine similarities between the query and each image (higher is closer; an image finds
    itself at 1.0). A text query runs
    only the text tower; text past the model's 77 tokens is truncated, with a warning. Prints a table (rank,
    score, path) or, with --json, one JSON array; --html writes a contact sheet to look at. --after, --before and
    --camera filter on what ingest read from EXIF (payload-indexed).

    \b
    Exit codes: 0 done (also when nothing matched); 1 nothing indexed yet, another model built the
    collection, or another error; 2 usage error; 69 Qdrant server unreachable; 75 the embedded store
    stayed in use by other processes for --wait seconds (a running ingest lets searches in between batches).
    """
    if bool(query_words) == (image is not None):
        raise click.UsageError("give a text QUERY or --image PATH (one of them)")
    query, term_image, terms = parse_query(query_words)
    image = image if image is not None else term_image
    if path_prefix is not None and not path_prefix:
        raise click.BadParameter("must not be empty", param_hint="--path-prefix")
    if threshold is not None and threshold != threshold:  # NaN passes FloatRange
        raise click.BadParameter("must be a number between -1 and 1", param_hint="--threshold")
    if image is not None and not image.is_file():
        what = "is not a file" if image.exists() else "no such file"
        raise click.BadParameter(f"{image}: {what}; give the image to search by", param_hint="--image")
    if camera is not None and not camera.strip():
        raise click.BadParameter("must not be empty", param_hint="--camera")
    bounds = (_when(after, "--after"), _when(before, "--before"))
    camera_lc = " ".join(camera.lower().split()) if camera else None
    served_where = {k: v for k, v in (("after", after), ("before", before), ("camera", camera)) if v is not None}
    if sort != "score":
        served_where["sort"] = sort
    if terms is None and not no_server and not _model_options_given():
        # the embedded store's record is found without importing the store (numpy, the engine)
        from clipindex.web.discovery import embedded_lock_path

        lock_path = embedded_lock_path(data_dir, collection) if qdrant_url is None else None
        if lock_path is None:
            lock_path = make_store(data_dir, qdrant_url, api_key_file, collection, timeout_s=timeout_s).lock_path
        served = search_through_server(
            lock_path, query, image, limit=limit, threshold=threshold, path_prefix=path_prefix, where=served_where
        )
        if served is not None:
            results_served, served_store = served
            print_search_results(results_served, as_json=as_json, threshold=threshold, path_prefix=path_prefix)
            if html_file is not None:
                from clipindex.cli.contact_sheet import write_contact_sheet

                title = query if query is not None else f"more like {image}"
                written = write_contact_sheet(
                    html_file, results_served, query=title, query_image=image, store=served_store
                )
                count = len(results_served)
                info(f"Wrote {written} ({count} result{'s' if count != 1 else ''})")
            exit_now_if_cli()
            return
    store = make_store(
        data_dir, qdrant_url, api_key_file, collection, timeout_s=timeout_s, wait_s=wait_s, role="search"
    )
    from clipindex.model.encode import Embedder  # only here: the served path above never imports them
    from clipindex.model.locate import require_model
    from clipindex.ops.search import search_image, search_terms, search_text
    from clipindex.store.base import SearchFilter

    filters = SearchFilter(bounds[0], bounds[1], camera_lc)

    location = require_model(locate_model(model_dir, store))
    embedder = Embedder(location.path, device=device, precision=precision, engine=engine, max_pixels=max_pixels)

    def on_truncate(text: str) -> None:
        from clipindex.ops.results import truncation_warning

        info(f"Warning: {truncation_warning(embedder.manifest.context_length)}")

    where: dict[str, Any] = {
        "limit": limit,
        "threshold": threshold,
        "path_prefix": path_prefix,
        "filters": filters,
        "sort": sort,
    }
    try:
        if terms is not None:
            results = search_terms(store, embedder, terms, on_truncate=on_truncate, **where)
        elif query is not None:
            results = search_text(store, embedder, query, on_truncate=on_truncate, **where)
        else:
            assert image is not None
            results = search_image(store, embedder, image, **where)
        print_search_results(results, as_json=as_json, threshold=threshold, path_prefix=path_prefix)
        if html_file is not None:
            from clipindex.cli.contact_sheet import write_contact_sheet

            title = " ".join(query_words) if terms is not None else query if query is not None else f"more like {image}"
            written = write_contact_sheet(
                html_file, results, query=title, query_image=image, model=embedder.model_name, store=store.describe()
            )
            info(f"Wrote {written} ({len(results)} result{'s' if len(results) != 1 else ''})")
        warn_on_contradiction(store)
        exit_now_if_cli()
    finally:
        store.close()


def parse_query(words: tuple[str, ...]) -> tuple[str | None, Path | None, list[QueryTerm] | None]:
    """QUERY's words (:mod:`clipindex.ops.query`) as ``(text, image, terms)``: one plain text, one plain image
    file, or terms to combine. Usage errors (exit 2) for a bad expression or a term naming a missing file."""
    if not words:
        return None, None, None
    from clipindex.errors import ImageError
    from clipindex.ops.query import parse_terms

    try:
        terms = parse_terms(words)
    except ImageError as exc:
        raise click.BadParameter(str(exc), param_hint="QUERY") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="QUERY") from None
    if len(terms) == 1 and terms[0].sign == 1 and terms[0].weight == 1:
        if terms[0].kind == "text":
            return terms[0].value, None, None
        return None, Path(terms[0].value), None
    return None, None, terms


def print_search_results(
    results: Sequence[SearchResult], *, as_json: bool, threshold: float | None, path_prefix: str | None
) -> None:
    from clipindex.cli.output import format_results, json_document

    if as_json:
        click.echo(json_document([r.as_json() for r in results]))
    elif results:
        click.echo(format_results(results))
    else:
        scoring = f" scoring {threshold} or more" if threshold is not None else ""
        info(f"No results{scoring}" + (f" under {path_prefix}" if path_prefix is not None else ""))


def _model_options_given() -> bool:
    """Options only an in-process search honours (the server has its own model and device): any given by flag or
    environment makes the search run here."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    chosen = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    options = ("model_dir", "device", "precision", "engine", "max_pixels")
    return any(ctx.get_parameter_source(name) in chosen for name in options)


def _when(text: str | None, option: str) -> float | None:
    """``--after``/``--before``: epoch seconds, or a usage error naming the formats."""
    if text is None:
        return None
    from clipindex.dates import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


#: fields of a served hit that ``clipindex search`` shows, kept as the in-process search's payload would hold them
SERVED_PAYLOAD = ("path_bytes", "taken_at", "taken_at_source", "camera_make", "camera_model")


def search_through_server(
    lock_path: Path,
    query: str | None,
    image: Path | None,
    *,
    limit: int,
    threshold: float | None,
    path_prefix: str | None,
    where: dict[str, str] | None = None,
) -> tuple[list[SearchResult], str] | None:
    """The results of a running ``clipindex serve`` for the store whose ingest lock is ``lock_path``
    (:mod:`clipindex.web.client`) and the store it names, or None when none runs or it does not answer (then the
    search runs in-process). Never loads a model."""
    from clipindex.ops.results import SearchResult, resolve_path_prefix
    from clipindex.web import client
    from clipindex.web.discovery import find_serve

    record = find_serve(lock_path)
    if record is None:
        return None
    data: bytes | None = None
    if image is not None:
        try:
            data = image.read_bytes()
        except OSError as exc:
            from clipindex.errors import ImageError

            raise ImageError(str(image), f"cannot read: {exc.strerror or exc}") from None
    try:
        answer = client.search(
            record,
            text=query,
            image=data,
            limit=limit,
            min_score=threshold,
            folder=resolve_path_prefix(path_prefix),
            where=where,
        )
    except client.ServeUnreachable:
        return None
    for warning in answer.get("warnings") or []:
        info(f"Warning: {warning}")
    results = [
        SearchResult(
            rank=int(hit["rank"]),
            score=float(hit["score"]),
            path=str(hit["path"]),
            width=hit.get("width"),
            height=hit.get("height"),
            id=str(hit["id"]),
            payload={k: hit[k] for k in SERVED_PAYLOAD if hit.get(k) is not None},
        )
        for hit in answer.get("results") or []
    ]
    return results, record.store


def warn_on_contradiction(store: VectorStore) -> None:
    """``Warning:`` on stderr when the collection's count contradicts the last ingest's (a damaged store)."""
    from clipindex.display import printable
    from clipindex.errors import StoreError as _StoreError
    from clipindex.ops.status import count_contradiction

    try:
        warning = count_contradiction(store)
    except _StoreError:
        return  # the search itself worked; check says more
    if warning is not None:
        info(f"Warning: {printable(warning)}")


#: set by :func:`main`: this process is the ``clipindex`` command (not a caller running a command in-process)
_standalone = False


def exit_now_if_cli() -> None:
    """End a finished read-only command's process at once, skipping the teardown of the store and the model.

    Nothing was written, so nothing is lost (the engine's lock goes with the process). Only when this process is
    the ``clipindex`` command (:func:`main`), never when a caller runs a command in-process (CliRunner, scripts).
    """
    if not _standalone:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # stdout closed early (`| head`): the usual exit code for that
        os._exit(1)
    os._exit(0)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@model_dir_option
@click.option(
    "--labels",
    "-l",
    multiple=True,
    required=True,
    help="Candidate labels, comma-separated: 'cat,dog,a red car' (repeat the option to add more).",
)
@click.option(
    "--template",
    default=None,
    help="Text around each label, '{}' marking the label: 'a photo of {}' (often more accurate with CLIP).  "
    "[default: the labels as given]",
)
@json_option("the results as one array of {image, labels: [{label, probability, similarity}]}")
@max_pixels_option
@device_options(settings.DEFAULT_DEVICE)
@handle_errors
def classify(
    images: tuple[Path, ...],
    model_dir: Path | None,
    labels: tuple[str, ...],
    template: str | None,
    as_json: bool,
    max_pixels: int | None,
    device: str,
    precision: str,
    engine: str,
) -> None:
    """Zero-shot labels for IMAGE...: the probability of each --labels label, most probable first.

    Probabilities are CLIP's: a softmax over the labels of logit_scale (from the model's manifest, 100 for
    the OpenAI models) times the cosine similarity of image and label text. They are relative to the labels
    given: always offer an alternative ("a cat", "a dog", "something else"). Needs no Qdrant.

    \b
    Exit codes: 0 done; 1 an image could not be read (the others are still printed) or another error;
    2 usage error.
    """
    from clipindex.cli.output import format_classifications, json_document
    from clipindex.display import printable
    from clipindex.errors import FailedFilesError, ImageError
    from clipindex.model.classify import classify as run_classify
    from clipindex.model.classify import label_texts, parse_labels
    from clipindex.model.encode import Embedder
    from clipindex.model.locate import require_model

    try:
        names = parse_labels(labels)
        label_texts(names, template)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--template" if "template" in str(exc) else "--labels") from None
    location = require_model(locate_model(model_dir))
    embedder = Embedder(location.path, device=device, precision=precision, engine=engine, max_pixels=max_pixels)
    failed: list[ImageError] = []

    def on_error(exc: ImageError) -> None:
        failed.append(exc)
        info(printable(f"failed: {exc.path}: {exc.reason}"))

    results = run_classify(embedder, list(images), names, template=template, on_error=on_error)
    if as_json:
        click.echo(json_document([r.as_json() for r in results]))
    elif results:
        click.echo(format_classifications(results))
    if failed:
        raise FailedFilesError(f"{len(failed)} of {len(images)} image(s) could not be read; see the lines above")


@cli.command()
@model_dir_option
@store_options
@json_option("the status as one object (model, store, collection, points, last_ingest, running_ingest...)")
@wait_option
@click.option(
    "--failed",
    "list_failed",
    is_flag=True,
    help="List the remembered failed files (path and reason), which ingest skips until they change.",
)
@handle_errors
def status(
    model_dir: Path | None,
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    timeout_s: float,
    as_json: bool,
    list_failed: bool,
    wait_s: float,
) -> None:
    """Show the model, the store, the collection's point count and the last ingest.

    Reports the model (from --model-dir, else the one that built the collection, else the default folder:
    name, embedding dimension), where the vectors live (the embedded store's folder or the server URL; never
    the API key), the collection and the model that built it, its exact point count, the time and summary of
    the last finished ingest, the remembered failed files (--failed lists them) and the size of the
    optimised-model cache. Works before any ingest, and without a model.

    \b
    Exit codes: 0 done; 1 the store failed; 69 Qdrant server unreachable; 75 the embedded store stayed in use
    by other processes for --wait seconds.
    """
    from clipindex.cli.output import json_document
    from clipindex.display import printable
    from clipindex.ops.status import collect_report

    store = make_store(
        data_dir, qdrant_url, api_key_file, collection, timeout_s=timeout_s, wait_s=wait_s, role="status"
    )
    location = locate_model(model_dir, store)
    with store:
        report = collect_report(location, store)
    if list_failed:
        from clipindex.ingest.points import display_path, path_bytes

        if as_json:
            listed: list[dict[str, str]] = []
            for e in report.failed:
                item = {"path": display_path(e.path), "reason": e.reason}
                raw = path_bytes(e.path)
                if raw is not None:
                    item["path_bytes"] = raw
                listed.append(item)
            click.echo(json_document(listed))
        else:
            for entry in report.failed:
                click.echo(printable(f"{display_path(entry.path)}: {entry.reason}"))
            if not report.failed:
                info("no remembered failures")
        return
    click.echo(json_document(report.as_json()) if as_json else report.format())
    if report.busy:  # everything else was shown; the exit code says the store could not be read
        sys.exit(StoreBusyError.exit_code)


# --- duplicates -------------------------------------------------------------------------------------------


@cli.command()
@store_options
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1.0, 1.0),
    default=settings.DEFAULT_MIN_SIMILARITY,
    show_default=True,
    metavar="S",
    help="Near-duplicates: cosine similarity S or more (0.99 is a cosine distance of 0.01). Files with the same "
    "content (sha256) are always grouped.",
)
@click.option(
    "--folder",
    metavar="FOLDER",
    default=None,
    help="Only files under FOLDER (or that one file), as search's --path-prefix: /a/photos never matches /a/photos2.",
)
@json_option(
    "the groups as one object {min_similarity, path_prefix, scanned, method, sampled_recall, groups: [{kind, best, "
    "members}]}"
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Also write a self-contained HTML page of the groups side by side (the best of each outlined) to FILE.",
)
@click.option(
    "--print0",
    is_flag=True,
    help="Print only the paths of the copies (every member but the best of its group), each ended by a NUL, "
    "for `xargs -0`.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "exact", "cells"]),
    default="auto",
    show_default=True,
    metavar="METHOD",
    help="How to compare. exact: every pair (time grows with the square of the files); cells: only pairs that share a "
    "cell of a k-means index (linear, may miss a few pairs: the summary says how many of a sampled exact check "
    "it found); auto: exact up to 150,000 files, cells above.",
)
@wait_option
@handle_errors
def duplicates(
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    timeout_s: float,
    min_similarity: float,
    folder: str | None,
    as_json: bool,
    html_file: Path | None,
    print0: bool,
    method: str,
    wait_s: float,
) -> None:
    """Find groups of exact copies (same sha256) and near-duplicates (cosine similarity >= --min-similarity).

    Reads every indexed vector once; deletes nothing. A group is a chain of linked files (a~b and b~c make one
    group). The best file of a group, the one to keep, has the most pixels, then the oldest mtime, then the
    smallest path. Prints a table (group, kind, similarity to the best, path; * marks the best), or --json, or
    with --print0 the copies' paths for `xargs -0`. Groups and members come sorted by path.

    \b
    Exit codes: 0 done (also when there are no duplicates); 1 nothing indexed yet or another error; 2 usage
    error; 69 Qdrant server unreachable; 75 the embedded store stayed in use for --wait seconds.
    """
    if folder is not None and not folder:
        raise click.BadParameter("must not be empty", param_hint="--folder")
    if min_similarity != min_similarity:  # NaN passes FloatRange
        raise click.BadParameter("must be a number between -1 and 1", param_hint="--min-similarity")
    if sum((as_json, print0)) > 1:
        raise click.UsageError("give at most one of --json and --print0")
    from clipindex.ops.duplicates import Method, find_duplicates

    store = make_store(
        data_dir, qdrant_url, api_key_file, collection, timeout_s=timeout_s, wait_s=wait_s, role="duplicates"
    )
    with store:
        report = find_duplicates(
            store,
            min_similarity=min_similarity,
            path_prefix=folder,
            method=cast(Method, method),
            on_progress=info if sys.stderr.isatty() and not (as_json or print0) else None,
        )
        described = store.describe()
    if print0:
        import base64

        for member in report.copies:  # the file's own bytes, also for a name that is not UTF-8
            raw = base64.b64decode(member.path_bytes) if member.path_bytes else member.path.encode("utf-8")
            click.echo(raw + b"\0", nl=False)
    elif as_json:
        from clipindex.cli.output import json_document

        click.echo(json_document(report.as_json()))
    else:
        print_duplicates(report)
    if html_file is not None:
        written = write_duplicates_sheet(html_file, report, store=described)
        info(f"Wrote {written} ({len(report.groups)} group{'s' if len(report.groups) != 1 else ''})")


def print_duplicates(report: Any) -> None:
    from clipindex.display import printable

    if not report.groups:
        where = f" under {report.path_prefix}" if report.path_prefix is not None else ""
        info(f"No duplicates among {report.scanned:,} files{where} (similarity {report.min_similarity} or more)")
        return
    for number, group in enumerate(report.groups, start=1):
        for member in group.members:
            mark = "*" if member is group.best else " "
            click.echo(printable(f"{number:>5}  {group.kind:<5}  {member.similarity:.4f} {mark} {member.path}"))
    copies = len(report.copies)
    info(f"{len(report.groups)} groups, {copies} cop{'ies' if copies != 1 else 'y'} among {report.scanned:,} files")
    check = report.sampled_recall
    if check is not None:
        info(
            f"Compared by cells: of the {check.expected:,} pairs an exact check of {check.sampled:,} sampled files "
            f"found, the cells found {check.found:,} ({check.recall:.2%}); --method exact compares every pair"
        )


def write_duplicates_sheet(path: Path, report: Any, *, store: str) -> Path:
    from clipindex.cli.contact_sheet import render_contact_sheet, write_document
    from clipindex.ops.results import SearchResult

    groups = [
        (
            f"{number}: {group.kind}, {len(group.members)} files",
            [
                SearchResult(rank, m.similarity, m.path, m.width, m.height, m.id, {})
                for rank, m in enumerate(group.members, start=1)
            ],
        )
        for number, group in enumerate(report.groups, start=1)
    ]
    best = frozenset(g.best.path for g in report.groups)
    title = f"duplicates (similarity {report.min_similarity} or more)"
    return write_document(path, render_contact_sheet([], query=title, store=store, groups=groups, best=best))


# --- serve ------------------------------------------------------------------------------------------------


def read_serve_token(token_file: Path | None) -> str | None:
    """The serve token: from --token-file, else $CLIPINDEX_SERVE_TOKEN. Never printed, never an argument."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(f"{token_file}: cannot read ({exc.strerror})", param_hint="--token-file") from None
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return token
    return os.environ.get(settings.ENV_SERVE_TOKEN) or None


@cli.command()
@model_dir_option
@store_options
@click.option(
    "--host",
    envvar=settings.ENV_SERVE_HOST,
    show_envvar=True,
    default=settings.DEFAULT_SERVE_HOST,
    show_default=True,
    help="Address to listen on. Any address other than loopback needs a token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar=settings.ENV_SERVE_PORT,
    show_envvar=True,
    default=settings.DEFAULT_SERVE_PORT,
    show_default=True,
    help="TCP port; 0 picks a free one (the printed URL shows it).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=settings.ENV_SERVE_TOKEN_FILE,
    show_envvar=True,
    default=None,
    help=f"File holding the token every API call must carry (Authorization: Bearer TOKEN); else "
    f"${settings.ENV_SERVE_TOKEN}. Required with a non-loopback --host.",
)
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another name the Host header may carry (a reverse proxy's); repeatable. The bound names always work.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    envvar=settings.ENV_SERVE_CORS_ORIGIN,
    show_envvar=True,
    metavar="ORIGIN",
    help="Let pages from ORIGIN (https://example.org) call the API; repeatable. Off by default.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser once serving.")
@max_pixels_option
@device_options(settings.DEFAULT_QUERY_DEVICE)
@wait_option
@handle_errors
def serve(
    model_dir: Path | None,
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    timeout_s: float,
    host: str,
    port: int,
    token_file: Path | None,
    allowed_hosts: tuple[str, ...],
    cors_origins: tuple[str, ...],
    open_browser: bool,
    max_pixels: int | None,
    device: str,
    precision: str,
    engine: str,
    wait_s: float,
) -> None:
    """Serve a search page and a JSON API for the store, with the model and the store kept warm.

    Prints the URL to open (http://127.0.0.1:8765/). The page searches as you type, shows thumbnails, finds
    "more like this", and searches by a dropped or pasted image; the API is under /api/v1 (OpenAPI document at
    /api/v1/openapi.json), and /knn-service answers clip-retrieval's clients. `clipindex search` for the same
    store asks the running server (--no-server to search in-process). A cron ingest runs beside it: the server
    hands the embedded store over whenever the ingest waits for it, and its next query sees the new points.
    Ctrl-C or SIGTERM stops it.

    \b
    Exit codes: 0 stopped cleanly; 1 could not start (a non-loopback --host without a token, the port in use,
    another serve for this store, no model); 2 usage error.
    """
    from clipindex.model.encode import Embedder
    from clipindex.model.locate import require_model
    from clipindex.ops.status import thumbnail_cache_dir
    from clipindex.web.config import ServeSettings
    from clipindex.web.server import serve as run_server
    from clipindex.web.service import SearchService
    from clipindex.web.thumbnails import ThumbnailCache

    serve_settings = ServeSettings(
        host=host,
        port=port,
        token=read_serve_token(token_file),
        allowed_hosts=allowed_hosts,
        cors_origins=tuple(o for value in cors_origins for o in value.split()),
        thumbnail_cache_dir=thumbnail_cache_dir(),
        thumbnail_cache_bytes=settings.thumbnail_cache_bytes_from_env(),
        max_pixels=max_pixels,
    )
    if not serve_settings.loopback and not serve_settings.token:
        raise click.UsageError(
            f"--host {host} is reachable from other machines: give a token (--token-file FILE or "
            f"${settings.ENV_SERVE_TOKEN}), or serve on 127.0.0.1"
        )
    store = make_store(data_dir, qdrant_url, api_key_file, collection, timeout_s=timeout_s, wait_s=wait_s, role="serve")
    location = require_model(locate_model(model_dir, store))
    embedder = Embedder(location.path, device=device, precision=precision, engine=engine, max_pixels=max_pixels)
    thumbnails = ThumbnailCache(
        serve_settings.thumbnail_cache_dir, serve_settings.thumbnail_cache_bytes, max_pixels=max_pixels
    )
    service = SearchService(store, embedder, location, thumbnails)

    def ready(url: str) -> None:
        click.echo(f"Serving {store.describe()} at {url}  (Ctrl-C stops)")

    run_server(service, serve_settings, on_ready=ready, open_browser=open_browser)


# --- migrate ----------------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--to",
    "to_url",
    required=True,
    envvar=settings.ENV_MIGRATE_TO,
    show_envvar=True,
    help="Qdrant server URL to copy into (http://host:6333, https://...). "
    f"The API key is read from ${settings.ENV_API_KEY} or --api-key-file.",
)
@data_dir_option("Folder of the embedded store to copy from.")
@collection_option("Embedded collection to copy.")
@click.option("--to-collection", default=None, help="Collection on the server.  [default: --collection]")
@api_key_file_option
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10000),
    default=settings.DEFAULT_MIGRATE_BATCH_SIZE,
    show_default=True,
    help="Points per page read and per upsert.",
)
@new_collection_options
@timeout_option
@quiet_option("No progress bar; only errors and the summary.")
@json_option("the figures as one object")
@collection_settings_options
@handle_errors
def migrate(
    to_url: str,
    data_dir: Path | None,
    collection: str,
    to_collection: str | None,
    api_key_file: Path | None,
    batch_size: int,
    shards: int | None,
    replicas: int | None,
    timeout_s: float,
    quiet: bool,
    as_json: bool,
    collection_settings: CollectionSettings,
) -> None:
    """Copy the embedded collection to a Qdrant server: same ids, vectors and payloads, no re-embedding.

    The server collection is created with the same model and dimension (with --shards/--replicas for a
    cluster), or must have been built by the same model. Counts are verified and a sample of vectors is read
    back; the run is idempotent, so an interrupted migration is finished by running it again. Then point
    ingest and search at the server with --qdrant-url (CLIPINDEX_QDRANT_URL).

    \b
    Exit codes: 0 copied and verified; 1 failed (no collection to copy, another model built the target,
    verification failed); 69 Qdrant server unreachable; 75 the embedded store or the target is busy.
    """
    from clipindex.cli.output import json_line
    from clipindex.ops.migrate import migrate as run_migrate
    from clipindex.progress import TqdmProgress
    from clipindex.store.edge import EdgeStore

    source = EdgeStore(data_dir if data_dir is not None else settings.default_data_dir(), collection, role="migrate")
    target = make_store(
        None,
        to_url,
        api_key_file,
        to_collection or collection,
        shards=shards,
        replicas=replicas,
        collection_settings=collection_settings,
        timeout_s=timeout_s,
    )
    progress = TqdmProgress(enabled=not quiet and not as_json and sys.stderr.isatty())
    with source, target:
        report = run_migrate(
            source,
            target,
            batch_size=batch_size,
            progress=progress,
            on_created=None if quiet or as_json else lambda where: info(f"created {where}"),
        )
    click.echo(json_line(report.as_json()) if as_json else report.summary_line())


# --- optimize ---------------------------------------------------------------------------------------------


@cli.command()
@store_options
@json_option("the figures as one object (points, segments, quantized_segments, seconds...)")
@wait_option
@handle_errors
def optimize(
    data_dir: Path | None,
    qdrant_url: str | None,
    api_key_file: Path | None,
    collection: str,
    timeout_s: float,
    as_json: bool,
    wait_s: float,
) -> None:
    """Bring the collection's storage up to date now instead of at the next ingest.

    For the embedded store: seal and merge segments, drop deleted points, and give a store written by an older
    clipindex the int8 copy of its vectors that makes search fast at a million photos (a one-time rewrite of
    the store). Searches work meanwhile on what is not rewritten yet, and before
    the upgrade too (slower). A Qdrant server optimises by itself: there this only reports.

    \b
    Exit codes: 0 done; 1 nothing indexed yet, or the store failed; 69 Qdrant server unreachable; 75 an ingest
    holds the store, or other processes kept it for --wait seconds (try again later).
    """
    from clipindex.cli.output import json_line
    from clipindex.ops.optimize import optimize_collection

    store = make_store(
        data_dir, qdrant_url, api_key_file, collection, timeout_s=timeout_s, wait_s=wait_s, role="optimize"
    )
    with store:
        report = optimize_collection(store)
    click.echo(json_line(report.as_json()) if as_json else report.format())


# --- check ------------------------------------------------------------------------------------------------


@cli.command()
@data_dir_option()
@collection_option("Collection to check.")
@click.option(
    "--repair",
    is_flag=True,
    help="When a problem is found, copy every readable point into a fresh shard and put it in place (the old "
    "shard is kept aside); the next ingest embeds the rest again.",
)
@json_option("the findings as one object (points, listed, readable, expected, problems, repair...)")
@wait_option
@handle_errors
def check(data_dir: Path | None, collection: str, repair: bool, as_json: bool, wait_s: float) -> None:
    """Check that the embedded store can serve what the last ingest wrote.

    Reads every point's payload and vector, compares the exact count with the count the last ingest saved,
    and searches for a stored vector, which must come back first. Writes nothing without --repair. With
    --repair (it takes the ingest lock), a damaged store is rebuilt from what still reads back: the new shard
    is complete before the old one is moved aside, and the lines say what was kept and lost.

    \b
    Exit codes: 0 no problem (or none left after --repair); 1 problems found (run with --repair), or the
    store failed; 75 an ingest holds the store, or other processes kept it for --wait seconds.
    """
    from clipindex.cli.output import json_document
    from clipindex.display import printable
    from clipindex.ops.check import check_store
    from clipindex.store.edge import EdgeStore

    folder = data_dir if data_dir is not None else settings.default_data_dir()
    store = EdgeStore(folder, collection, wait_s=wait_s, role="check")
    with store:
        report = check_store(store, repair=repair, on_progress=None if as_json else info)
    if as_json:
        click.echo(json_document(report.as_json()))
    else:
        for line in report.lines():
            click.echo(printable(line))
    if not report.healthy_now:
        hint = "" if repair else f"; `{store.check_command()}` rebuilds it from what still reads back"
        fail(f"{store.describe()} has problems{hint}")


def main() -> None:
    """The ``clipindex`` command (also ``python -m clipindex``)."""
    import warnings

    global _standalone
    _standalone = True
    # Pillow warns (e.g. "Corrupt EXIF data") about files it still decodes; ingest reports real failures itself.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    cli(prog_name="clipindex")


if __name__ == "__main__":
    main()
