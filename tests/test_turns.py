"""Many processes on one embedded store: searches, status and an ingest take turns (clipindex.store.turns).

Real ``clipindex`` processes (``python -m clipindex``), the real Qdrant Edge engine, the real tiny model and real
photos. The ingest child runs through a small bootstrap (:data:`BOOT`) that writes a line to a pipe around a few
calls (``upsert``, ``_open_shard``, and the handover's ``let_in`` and ``take_back``), so that a test can kill it at
a chosen moment, and that can slow each upsert down so that a run lasts long enough for searches to land in the
middle of it. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from photos import RGB_PHOTO_NAMES, photos
from PIL import Image
from stored import stored_points

from clipindex.ingest.points import point_id

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
COLLECTION = "images"
posix_only = pytest.mark.skipif(os.name != "posix", reason="signals and fork: POSIX only")

#: runs the real CLI; writes "<call> begin|end" lines to $CLIPINDEX_TEST_TRACE_FD, sleeps in each upsert if asked
BOOT = r"""
import os, sys, time
fd = int(os.environ.get("CLIPINDEX_TEST_TRACE_FD", "-1"))
slow = float(os.environ.get("CLIPINDEX_TEST_SLOW_UPSERT_S", "0"))
from clipindex.store.edge import EdgeStore
from clipindex.store.turns import StoreTurns

def traced(cls, name, sleep_s=0.0):
    real = getattr(cls, name)
    def wrapper(self, *args, **kwargs):
        if fd >= 0:
            os.write(fd, f"{name} begin\n".encode())
        if sleep_s:
            time.sleep(sleep_s)
        result = real(self, *args, **kwargs)
        if fd >= 0:
            os.write(fd, f"{name} end\n".encode())
        return result
    return wrapper

EdgeStore.upsert = traced(EdgeStore, "upsert", slow)
EdgeStore._open_shard = traced(EdgeStore, "_open_shard")
StoreTurns.let_in = traced(StoreTurns, "let_in")
StoreTurns.take_back = traced(StoreTurns, "take_back")
from clipindex.cli import main
sys.argv[0] = "clipindex"
main()
"""

#: a process that holds the store (opened, as a search would) until its stdin closes
HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from clipindex.store import EdgeStore

    store = EdgeStore(Path(sys.argv[1]), "images", role="search", wait_s=60)
    store.collection_info()
    print("holding", flush=True)
    sys.stdin.read()
    store.close()
    """
)


# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "QDRANT_API_KEY" and not k.startswith("CLIPINDEX_")}
    out["CLIPINDEX_STATE_DIR"] = str(tmp_path / "state")
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), out.get("PYTHONPATH", "")])
    return out


def make_photos(root: Path, count: int, *, seed: int) -> list[Path]:
    """``count`` distinct small JPEGs: random crops of the real sample photos, in 4 sub-folders."""
    rng = np.random.default_rng(seed)
    sources = [np.asarray(p.convert("RGB")) for p in photos(RGB_PHOTO_NAMES).values()]
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        y, x = int(rng.integers(0, h - 96)), int(rng.integers(0, w - 128))
        crop = Image.fromarray(src[y : y + 96, x : x + 128])
        path = root / f"d{i % 4}" / f"photo_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def start_holder(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A :data:`HOLDER` process, once it holds the store (it lets go when its stdin closes)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def clipindex(*args: str | Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def search_cmd(model_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clipindex",
        "search",
        "a photo",
        "--model-dir",
        str(model_dir),
        "--data-dir",
        str(data_dir),
        "--json",
        *extra,
    ]


@dataclass
class Traced:
    """A traced ``clipindex ingest`` child; ``kill_on`` a marker (after ``delay_s``) or ``kill_after_s``."""

    proc: subprocess.Popen[str]
    markers: list[str] = field(default_factory=list)
    killed: bool = False
    #: the marker after which it was killed ("time" for a timed kill)
    killed_after: str = ""
    stdout: str = ""
    stderr: str = ""

    def wait(self, timeout: float = 180) -> int:
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


def start_ingest(
    args: list[str],
    env: dict[str, str],
    *,
    slow_upsert_s: float = 0.0,
    kill_on: str | None = None,
    delay_s: float = 0.0,
    kill_after_s: float | None = None,
) -> Traced:
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", BOOT, "ingest", *args],
        env=dict(env, CLIPINDEX_TEST_TRACE_FD=str(write_fd), CLIPINDEX_TEST_SLOW_UPSERT_S=str(slow_upsert_s)),
        pass_fds=(write_fd,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_fd)
    run = Traced(proc)

    def kill(after: str) -> None:
        if proc.poll() is None and not run.killed:
            proc.send_signal(signal.SIGKILL)
            run.killed, run.killed_after = True, after

    if kill_after_s is not None:
        threading.Timer(kill_after_s, kill, args=("time",)).start()

    def read() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                marker = raw.decode().strip()
                run.markers.append(marker)
                if kill_on is not None and marker == kill_on and not run.killed:
                    time.sleep(delay_s)
                    kill(marker)

    threading.Thread(target=read, daemon=True).start()
    return run


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_progress(data_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((data_dir / COLLECTION / "ingest.progress.json").read_text())
    except (OSError, ValueError):
        return None
    return data


@pytest.fixture
def indexed(tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]) -> Path:
    """A store holding the 8 photos of images/."""
    data = tmp_path / "data"
    result = clipindex("ingest", IMAGES, "--model-dir", tiny_model_dir, "--data-dir", data, "-q", env=env)
    assert result.returncode == 0, result.stderr
    return data


# --- portability --------------------------------------------------------------------------------------------

NO_FCNTL = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
    import clipindex
    names = sorted(m.name for m in pkgutil.walk_packages(clipindex.__path__, "clipindex."))
    for name in names:
        if name != "clipindex.__main__":
            importlib.import_module(name)
    print("imported", len(names))

    from pathlib import Path
    from clipindex.errors import LockHeldError, StoreBusyError
    from clipindex.lock import FileLock, IngestLock, is_locked
    from clipindex.store import EdgeStore
    from clipindex.store.turns import StoreTurns

    root = Path(sys.argv[1])
    a, b = FileLock(root / "x.lock"), FileLock(root / "x.lock")
    assert a.try_acquire() and not b.try_acquire() and is_locked(root / "x.lock")
    a.release()
    assert b.acquire(timeout_s=1) and not a.acquire(timeout_s=0.1)
    b.release()
    with IngestLock(root / "ingest.lock", store="s"):
        try:
            IngestLock(root / "ingest.lock", store="s").acquire()
            raise SystemExit("a second IngestLock was granted")
        except LockHeldError as exc:
            assert "another ingest is running" in str(exc)
    writer, reader = StoreTurns(root, role="ingest", store="s"), StoreTurns(root, role="search", store="s")
    writer.take(1)
    assert writer.waiting_readers() == []
    try:
        reader.take(0.2)
        raise SystemExit("a second turn was granted")
    except StoreBusyError as exc:
        assert "in use by ingest" in str(exc), exc
    writer.give_back()
    reader.take(0.2)
    reader.give_back()
    store = EdgeStore(root / "data", "images", wait_s=0.5)
    store.ensure_collection(8, "m")
    other = EdgeStore(root / "data", "images", wait_s=0.2)
    try:
        other.collection_info()
        raise SystemExit("the store was opened twice")
    except StoreBusyError:
        pass
    store.close()
    assert other.collection_info().vector_dim == 8
    other.close()
    print("locks ok")
    """
)


@pytest.mark.slow
def test_every_runtime_module_imports_and_the_locks_work_without_fcntl(tmp_path: Path, env: dict[str, str]) -> None:
    """As on Windows, where there is no fcntl: every runtime module imports, and the portable lock API works (on a
    platform with neither flock nor LockFileEx it falls back to marker files)."""
    result = subprocess.run(
        [sys.executable, "-c", NO_FCNTL, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "locks ok" in result.stdout
    assert int(result.stdout.split()[1]) >= 20  # it really walked the package


# --- searches and status share the store --------------------------------------------------------------------


@pytest.mark.slow
def test_eight_searches_started_together_all_print_results(
    indexed: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    procs = [
        subprocess.Popen(search_cmd(tiny_model_dir, indexed), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    outcomes = [(p.wait(timeout=180), p.stdout.read() if p.stdout else b"", p.stderr) for p in procs]
    for code, out, err in outcomes:
        assert code == 0, err.read() if err else b""
        assert len(json.loads(out)) == 8
    assert not list((indexed / COLLECTION / "waiting").glob("*.lock"))  # every waiter cleaned up after itself


@pytest.mark.slow
@posix_only
def test_wait_runs_out_on_a_stuck_reader_with_exit_75_naming_it(
    indexed: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    holder = start_holder(indexed, env)
    try:
        started = time.monotonic()
        result = subprocess.run(
            search_cmd(tiny_model_dir, indexed, "--wait", "1"), env=env, capture_output=True, text=True, timeout=60
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 75, result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert f"is in use by search (pid {holder.pid}, since " in error and "waited 1 s" in error, error
        assert 1.0 <= elapsed < 15, elapsed  # about 1 s of waiting plus the process start
        status = clipindex("status", "--data-dir", indexed, "--model-dir", tiny_model_dir, "--wait", "0.5", env=env)
        assert status.returncode == 75 and f"pid {holder.pid}" in status.stdout
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(timeout=30)
    ok = subprocess.run(search_cmd(tiny_model_dir, indexed, "--wait", "1"), env=env, capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
@posix_only
def test_searches_and_status_during_an_ingest_see_what_it_verified(
    indexed: Path, tiny_model_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    tree = tmp_path / "tree"
    make_photos(tree, 240, seed=7)
    before = set(stored_points(indexed))
    assert len(before) == 8
    args = [str(tree), "--model-dir", str(tiny_model_dir), "--data-dir", str(indexed), "--batch-size", "10", "--json"]
    ingest = start_ingest(args, env, slow_upsert_s=0.2)  # 24 batches of >= 0.2 s: searches land in the middle

    def progress_done() -> int:
        progress = read_progress(indexed)
        return int(progress["done"]) if progress and progress.get("phase") == "embedding" else -1

    wait_for(lambda: progress_done() >= 30, what="the ingest's first batches")
    status = clipindex("status", "--data-dir", indexed, "--model-dir", tiny_model_dir, "--json", env=env)
    assert status.returncode == 0, status.stderr
    running = json.loads(status.stdout)["running_ingest"]
    assert running["pid"] == ingest.proc.pid and running["todo"] == 240 and 30 <= running["done"] < 240
    assert running["root"] == str(tree) and running["started_at_iso"] and running["images_per_s"] > 0

    done_before = progress_done()
    result = subprocess.run(
        search_cmd(tiny_model_dir, indexed, "--limit", "1000"), env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = {point_id(hit["path"]) for hit in json.loads(result.stdout)}
    assert before <= found  # what was there before the ingest
    assert len(found) >= len(before) + done_before  # and every batch verified before the search started
    assert ingest.proc.poll() is None, "the ingest ended before the search: nothing shared"

    assert ingest.wait() == 0, ingest.stderr
    report = json.loads(ingest.stdout)
    assert report["points"] == 248 and report["handoffs"] >= 2  # let status and the search in
    assert ingest.markers.count("_open_shard begin") == 1 + report["handoffs"]  # reopened only to hand over
    assert read_progress(indexed) is None  # a finished run leaves no progress behind
    assert len(stored_points(indexed)) == 248


@pytest.mark.slow
@posix_only
def test_an_ingest_started_while_searches_hold_the_store_waits_and_completes(
    indexed: Path, tiny_model_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    tree = tmp_path / "tree"
    make_photos(tree, 30, seed=3)
    holder = start_holder(indexed, env)
    searches = [
        subprocess.Popen(search_cmd(tiny_model_dir, indexed), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    args = [str(tree), "--model-dir", str(tiny_model_dir), "--data-dir", str(indexed), "--json"]
    ingest = start_ingest(args, env)
    wait_for(lambda: len(list((indexed / COLLECTION / "waiting").glob("*.lock"))) >= 5, what="5 waiting processes")
    progress = read_progress(indexed)
    assert progress is not None and progress["phase"] == "waiting for the store"
    assert holder.stdin is not None
    holder.stdin.close()  # the stuck reader lets go: the searches and the ingest get their turns
    assert holder.wait(timeout=30) == 0
    assert ingest.wait() == 0, ingest.stderr
    assert json.loads(ingest.stdout)["points"] == 38
    for search in searches:
        assert search.wait(timeout=120) == 0, search.stderr.read() if search.stderr else b""


@pytest.mark.slow
@posix_only
def test_sigkill_of_ingests_and_searches_at_random_moments_then_the_rerun_is_exact(
    indexed: Path, tiny_model_dir: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """Ingests killed at random moments (also while handing the store over or taking it back) and searches killed
    while they hold it, with searches running in a loop: no search fails before its --wait, nothing waits on a
    dead process, and a final run leaves exactly one point per photo."""
    rng = random.Random(1205)
    tree = tmp_path / "tree"
    valid = make_photos(tree, 160, seed=11)
    args = [str(tree), "--model-dir", str(tiny_model_dir), "--data-dir", str(indexed), "--batch-size", "10", "-q"]
    wait_s = 30.0
    outcomes: list[tuple[int, float]] = []
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            proc = subprocess.run(
                search_cmd(tiny_model_dir, indexed, "--wait", str(wait_s)), env=env, capture_output=True, timeout=120
            )
            outcomes.append((proc.returncode, time.monotonic() - started))
            assert proc.returncode in (0, 75), proc.stderr

    def killed_search() -> bool:
        """A search killed while it holds the store (its note names it), if it gets the store within 30 s."""
        proc = subprocess.Popen(search_cmd(tiny_model_dir, indexed), env=env, stdout=subprocess.PIPE)
        note = indexed / COLLECTION / "store.lock.json"
        deadline = time.monotonic() + 30
        holding = False
        while proc.poll() is None and time.monotonic() < deadline and not holding:
            with contextlib.suppress(OSError, ValueError):
                holding = json.loads(note.read_text()).get("pid") == proc.pid
            time.sleep(0.005)
        proc.kill()
        proc.wait(timeout=30)
        return holding

    loop = threading.Thread(target=search_loop)
    loop.start()
    kills = searches_killed = 0
    killed_in: list[str] = []
    try:
        for attempt in range(16):
            for path in rng.sample(valid, 60):  # changed mtimes: every run has batches to write (vectors reused)
                os.utime(path, ns=(time.time_ns(), time.time_ns() + attempt))
            plan = ["let_in end", "time", "take_back end", "_open_shard end"][attempt % 4]
            if plan == "time":
                run = start_ingest(args, env, slow_upsert_s=0.1, kill_after_s=rng.uniform(1.0, 4.0))
            else:
                run = start_ingest(args, env, slow_upsert_s=0.1, kill_on=plan, delay_s=rng.uniform(0, 0.05))
            if attempt % 4 == 1:
                searches_killed += killed_search()
            code = run.wait()
            assert run.killed or code == 0, run.stderr
            kills += run.killed
            if run.killed:
                killed_in.append(run.killed_after)
            if kills >= 10:
                break
        status = clipindex("status", "--data-dir", indexed, "--model-dir", tiny_model_dir, "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["running_ingest"] is None  # a killed run never reads as running
    finally:
        stop.set()
        loop.join(timeout=300)
    print(f"\n{kills} ingests killed: {sorted(killed_in)}; {searches_killed} searches killed holding the store")
    assert kills >= 10 and searches_killed >= 1
    handing_over = [where for where in killed_in if where.startswith(("let_in", "take_back"))]
    assert handing_over, killed_in  # killed while handing the store over or taking it back, too
    final = clipindex(*["ingest", *args[:-1], "--json"], env=env)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["points"] == 8 + len(valid)
    points = stored_points(indexed)
    assert {point_id(str(p)) for p in valid} <= set(points) and len(points) == 8 + len(valid)
    assert outcomes, "the search loop never ran"
    for code, elapsed in outcomes:
        assert code == 0 or elapsed >= wait_s, (code, elapsed)  # 75 only once its --wait ran out


def test_a_lone_ingest_never_hands_over_nor_reopens(tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]) -> None:
    args = [str(IMAGES), "--model-dir", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"), "--batch-size", "2"]
    run = start_ingest([*args, "--json"], env)
    assert run.wait() == 0, run.stderr
    assert json.loads(run.stdout)["handoffs"] == 0
    assert run.markers.count("_open_shard begin") == 0  # created, never (re)opened
    assert "let_in begin" not in run.markers
