"""Fault injection: real ``clipindex ingest`` processes, the real Qdrant Edge engine, a real HTTP client and server.

Every scenario ends in one of two ways: the run completes, or it stops with a one-line error and a documented exit
code; and the next run converges to the exact index (the set of valid files: ids, paths, vectors). Each loop is
bounded in count and in time. docs/operations.md lists these tests in its reliability table.

How a kill lands where it should: the ingest child runs the real CLI through a small bootstrap (:data:`TRACE_BOOT`)
that writes one line to a pipe before and after each store write (``upsert``, ``delete``, ``flush``, ``close``).
The test watches that pipe and sends SIGKILL after the chosen marker, after a random delay drawn from a seeded RNG
(so a kill lands inside the engine call, or in the decoding/embedding between two calls); other kills come at
random moments spread over the duration of a full run measured first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from stored import stored_vectors
from tcp_proxy import QdrantRestServer, TcpProxy, closed_port

from clipindex.errors import StoreUnavailableError
from clipindex.ingest.points import point_id
from clipindex.store.base import Point
from clipindex.store.edge import OPEN_MIN_FREE_BYTES, EdgeStore
from clipindex.store.server import ServerStore

COLLECTION = "images"
SECRET = "s3cr3t-api-key-do-not-print"

#: runs the real CLI; before/after each store write it writes "<method> begin|end" to $CLIPINDEX_TEST_TRACE_FD
TRACE_BOOT = r"""
import os, sys
fd = int(os.environ["CLIPINDEX_TEST_TRACE_FD"])
from clipindex.store.edge import EdgeStore

def traced(name):
    real = getattr(EdgeStore, name)
    def wrapper(self, *args, **kwargs):
        os.write(fd, f"{name} begin\n".encode())
        result = real(self, *args, **kwargs)
        os.write(fd, f"{name} end\n".encode())
        return result
    return wrapper

for name in ("upsert", "delete", "flush", "close"):
    setattr(EdgeStore, name, traced(name))
from clipindex.cli import main
sys.argv[0] = "clipindex"
main()
"""


# --- helpers ------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The child's environment: a private lock/state folder, no API key unless a test sets one."""
    out = {k: v for k, v in os.environ.items() if k not in ("QDRANT_API_KEY",) and not k.startswith("CLIPINDEX_")}
    out["CLIPINDEX_STATE_DIR"] = str(tmp_path / "state")
    return out


def make_tree(root: Path, count: int, *, seed: int, duplicates: int = 0, broken: bool = True) -> list[Path]:
    """``count`` distinct small PNGs in 8 sub-folders, ``duplicates`` byte copies, and two broken files.

    Returns the valid image paths (copies included)."""
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for i in range(count):
        folder = root / f"d{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for i in range(duplicates):
        copy = root / "copies" / f"copy_{i:03d}.png"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(paths[i * 7 % count].read_bytes())
        paths.append(copy)
    if broken:
        (root / "broken.jpg").write_bytes(b"this is not a jpeg")
        (root / "truncated.png").write_bytes(paths[0].read_bytes()[:60])
    return paths


@dataclass
class Index:
    payloads: dict[str, dict[str, Any]]
    exact: int

    @property
    def paths(self) -> list[str]:
        return sorted(str(p["path"]) for p in self.payloads.values())


def read_index(data_dir: Path) -> Index:
    store = EdgeStore(data_dir, COLLECTION)
    try:
        store.collection_info()
        return Index(dict(store.iter_payloads()), store.count(exact=True))
    finally:
        store.close()


def assert_exact_index(data_dir: Path, valid: list[Path], reference: dict[str, np.ndarray] | None = None) -> None:
    """The index is exactly ``valid``: one point per file (ids and paths), nothing else; vectors as the reference."""
    index = read_index(data_dir)
    want_paths = sorted(str(p.absolute()) for p in valid)
    assert index.paths == want_paths, "index paths differ from the valid files"
    assert set(index.payloads) == {point_id(str(p)) for p in valid}
    assert index.exact == len(index.payloads) == len(valid), "duplicates or stale points"
    if reference is not None:
        got = stored_vectors(data_dir, list(index.payloads))
        assert set(got) == set(index.payloads)
        worst = max(float(np.abs(got[i] - reference[i]).max()) for i in got)
        assert worst <= 1e-6, worst


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


@dataclass
class Run:
    returncode: int
    markers: list[str] = field(default_factory=list)
    #: seconds from the start at which each marker was read
    times: list[float] = field(default_factory=list)
    #: markers written before the kill was sent (None: not killed by the test)
    before_kill: list[str] | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def inside_call(self) -> bool:
        """Killed after a store write began and before it returned (no marker came after the kill)."""
        return bool(self.before_kill) and self.before_kill == self.markers and self.markers[-1].endswith("begin")

    @property
    def phase(self) -> str:
        """Where the kill landed, from the last marker written before it."""
        if not self.before_kill:
            return "startup/index/walk"
        name, state = self.before_kill[-1].split()
        if state == "begin":
            return {"upsert": "mid-upsert", "delete": "mid-prune", "flush": "mid-flush", "close": "mid-close"}[name]
        return {"upsert": "mid-batch", "delete": "mid-prune"}.get(name, "finishing")


def run_ingest(
    args: list[str],
    env: dict[str, str],
    *,
    kill_on: str | None = None,
    occurrence: int = 1,
    delay_s: float = 0.0,
    kill_after_s: float | None = None,
    timeout_s: float = 120.0,
) -> Run:
    """Run ``clipindex ingest ARGS`` (traced); SIGKILL it after the ``occurrence``-th ``kill_on`` marker plus
    ``delay_s``, or ``kill_after_s`` seconds after the start."""
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", TRACE_BOOT, "ingest", *args],
        env=dict(env, CLIPINDEX_TEST_TRACE_FD=str(write_fd)),
        pass_fds=(write_fd,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_fd)
    run = Run(returncode=0)
    seen = 0
    buffer = b""
    deadline = started + timeout_s
    kill_at = started + kill_after_s if kill_after_s is not None else None
    with selectors.DefaultSelector() as sel, os.fdopen(read_fd, "rb", buffering=0) as pipe:
        sel.register(pipe, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now > deadline:
                proc.kill()
                raise AssertionError(f"ingest ran over {timeout_s} s: {args}")
            if kill_at is not None and run.before_kill is None and now >= kill_at:
                proc.send_signal(signal.SIGKILL)
                run.before_kill = list(run.markers)
            wait = min(deadline, kill_at if kill_at is not None and run.before_kill is None else deadline) - now
            if not sel.select(max(0.0, min(wait, 0.5))):
                continue
            chunk = pipe.read(65536)
            if not chunk:
                break  # the child is gone (exit or kill)
            buffer += chunk
            *lines, rest = buffer.split(b"\n")
            buffer = rest
            for raw in lines:
                marker = raw.decode()
                run.markers.append(marker)
                run.times.append(time.monotonic() - started)
                if kill_on is not None and run.before_kill is None and marker == kill_on:
                    seen += 1
                    if seen == occurrence:
                        if delay_s:
                            time.sleep(delay_s)
                        proc.send_signal(signal.SIGKILL)
                        run.before_kill = list(run.markers)
    run.stdout, run.stderr = proc.communicate(timeout=30)
    run.returncode = proc.returncode
    run.seconds = time.monotonic() - started
    return run


def cli(*args: str | Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipindex", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


# --- SIGKILL at random moments ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_mid_batch_flush_and_prune_then_rerun_converges(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    rng = random.Random(20240605)
    root = tmp_path / "tree"
    valid = make_tree(root, 1040, seed=1, duplicates=12)
    data = tmp_path / "data"
    args = [str(root), "--model-dir", str(tiny_model_dir), "--data-dir", str(data), "-q"]

    # a clean run on a scratch store: the reference vectors, and how long a whole run takes
    reference_dir = tmp_path / "reference"
    ref = run_ingest([*args[:-3], "--data-dir", str(reference_dir), "-q", "--json"], env)
    assert ref.returncode == 0, ref.stderr
    assert json.loads(ref.stdout)["points"] == len(valid)
    reference = stored_vectors(reference_dir, [point_id(str(p)) for p in valid])
    total_batches = -(-len(valid) // 25)
    assert ref.markers.count("upsert end") == total_batches
    startup_s = ref.times[ref.markers.index("upsert begin")]  # imports, model, open, index, walk, first batch
    batch_s = (ref.times[-1] - startup_s) / total_batches

    runs: list[Run] = []
    batches_left = total_batches

    def upsert_kill() -> dict[str, Any]:
        # somewhere in the first third of what is left; the delay lands inside the upsert or in the next batch
        delay = rng.choice([0.0, rng.uniform(0, 0.004), rng.uniform(0.004, 0.08)])
        return {"kill_on": "upsert begin", "occurrence": rng.randint(1, max(1, batches_left // 3)), "delay_s": delay}

    def time_kill() -> dict[str, Any]:
        # a moment spread over what is left of the run, from the interpreter's start to a third of the batches
        return {"kill_after_s": rng.uniform(0.1, 1.0) * (startup_s + batches_left * batch_s / 3)}

    # phase A: indexing, killed again and again, each run resuming the previous one's store
    plan = itertools.cycle([time_kill, upsert_kill, upsert_kill])
    while sum(r.killed for r in runs) < 8 and len(runs) < 14 and batches_left > 3:
        run = run_ingest(args, env, **next(plan)())
        runs.append(run)
        batches_left -= run.markers.count("upsert end")
        assert run.killed or run.returncode == 0, run.stderr
    for marker in ("flush begin", "close begin"):  # the end-of-run flush and the close (a flush too)
        runs.append(run_ingest(args, env, kill_on=marker, delay_s=rng.uniform(0, 0.002)))
    final = run_ingest([*args, "--json"], env)
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["points"] == len(valid) and {f["path"] for f in report["failed"]} == {
        str(root / "broken.jpg"),
        str(root / "truncated.png"),
    }
    assert_exact_index(data, valid, reference)

    # phase B: most files deleted, --prune killed while it deletes (1000 per call) and while it flushes
    keep = set(rng.sample(range(len(valid)), 40))
    for i, path in enumerate(valid):
        if i not in keep:
            path.unlink()
    valid = [p for i, p in enumerate(valid) if i in keep]
    prune_args = [*args, "--prune"]
    for make_kill in (
        lambda: {"kill_on": "delete begin", "delay_s": rng.uniform(0, 0.003)},
        lambda: {"kill_on": "delete begin", "delay_s": rng.uniform(0, 0.003)},
        lambda: {"kill_on": "flush begin", "delay_s": rng.uniform(0, 0.002)},
    ):
        run = run_ingest(prune_args, env, **make_kill())
        runs.append(run)
        assert run.killed or run.returncode == 0, run.stderr
    final = run_ingest([*prune_args, "--json"], env)
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["points"] == len(valid)
    assert_exact_index(data, valid, reference)

    killed = [r for r in runs if r.killed]
    phases = Counter(r.phase for r in killed)
    inside = sum(r.inside_call for r in killed)
    print(f"\n{len(killed)} kills of {len(runs)} runs by phase: {dict(phases)}, {inside} inside a store write call")
    assert len(killed) >= 10, phases
    assert phases["mid-upsert"] + phases["mid-batch"] >= 2, phases
    assert phases["mid-flush"] + phases["mid-close"] >= 2, phases
    assert phases["mid-prune"] >= 1, phases


# --- server unreachable, connection dropped -----------------------------------------------------------------


@pytest.mark.slow
def test_unreachable_server_fails_within_the_timeout_with_exit_69(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "tree"
    make_tree(root, 3, seed=2, broken=False)
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = cli(
        "ingest",
        root,
        "--model-dir",
        tiny_model_dir,
        "--qdrant-url",
        url,
        "-q",
        env=dict(env, CLIPINDEX_TIMEOUT="2", QDRANT_API_KEY=SECRET),
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 69, result.stderr
    errors = error_lines(result.stderr)
    # even with -q: the wait, said at once, then one Error: line
    assert result.stderr.strip().splitlines() == [f"waiting for Qdrant at {url} (up to 2 s)", errors[0]], result.stderr
    assert url in errors[0] and "unreachable" in errors[0] and "Traceback" not in result.stderr
    attempts, seconds = re.search(r"failed (\d+) times in ([\d.]+)s", errors[0]).groups()  # type: ignore[union-attr]
    assert int(attempts) >= 3 and 1.9 <= float(seconds) <= 3.5  # retried with backoff, then gave up
    assert elapsed < 30
    assert SECRET not in result.stderr + result.stdout


@pytest.fixture
def rest_server() -> Iterator[QdrantRestServer]:
    with QdrantRestServer() as server:
        yield server


@pytest.mark.slow
def test_connection_drop_mid_run_stops_cleanly_then_next_run_resumes(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str], rest_server: QdrantRestServer
) -> None:
    root = tmp_path / "tree"
    valid = make_tree(root, 300, seed=3, broken=False)
    with TcpProxy(rest_server.port) as proxy:

        def cut_on_fifth_upsert(route: str) -> None:
            # the 5th upsert reaches the server, which applies it, but its reply is lost with the connection
            if route == "upsert" and rest_server.calls["upsert"] == 4:
                proxy.cut()

        rest_server.before_request = cut_on_fifth_upsert
        args = ["ingest", root, "--model-dir", tiny_model_dir, "--qdrant-url", proxy.url, "--batch-size", "20", "-q"]
        result = cli(*args, "--timeout", "1.5", env=env, timeout=60)
        assert result.returncode == 69, result.stderr
        errors = error_lines(result.stderr)
        waiting = f"waiting for Qdrant at {proxy.url} (up to 1.5 s)"
        assert result.stderr.strip().splitlines() == [waiting, errors[0]], result.stderr
        done, total = map(int, re.search(r"(\d+) of (\d+) images indexed", errors[0]).groups())  # type: ignore[union-attr]
        assert (done, total) == (80, 300), errors[0]
        assert "re-run to resume" in errors[0] and proxy.url in errors[0]
        assert rest_server.calls["upsert"] == 5  # the lost reply's batch was applied all the same

        rest_server.before_request = None
        proxy.restore()
        result = cli(*args, "--json", env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["unchanged"] == 100 and report["indexed"] == 200 and report["points"] == 300

    store = ServerStore(client=rest_server.local, collection=COLLECTION)
    store.collection_info()
    payloads = dict(store.iter_payloads())
    assert store.count() == len(payloads) == len(valid)
    assert sorted(p["path"] for p in payloads.values()) == sorted(str(p) for p in valid)
    assert set(payloads) == {point_id(str(p)) for p in valid}


# --- full disk, file size limit, read-only data dir ---------------------------------------------------------


def _can_loop_mount(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mkfs.ext4"):
        return False
    image, mnt = tmp_path / "probe.img", tmp_path / "probe"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(8 * 2**20)
    ok = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True).returncode == 0
    ok = ok and subprocess.run(["unshare", "-m", "mount", "-o", "loop", str(image), str(mnt)]).returncode == 0
    image.unlink()
    return ok


@pytest.mark.slow
def test_full_disk_stops_with_a_clear_error_and_the_store_survives(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    """A real full filesystem (a 64 MB ext4 image, loop-mounted in a private mount namespace, no root reserve).

    Without the store's free-space guard, the engine's mmap writes die with SIGBUS ("Bus error", exit 135). The
    guard is set just above what opening a store needs (``OPEN_MIN_FREE_BYTES``), so the run opens the store and
    stops in the middle of its writes."""
    if not _can_loop_mount(tmp_path):
        if os.environ.get("CI"):
            pytest.fail("CI must be able to loop-mount an ext4 image (root, unshare, mkfs.ext4)")
        pytest.skip("needs root, unshare and mkfs.ext4 to loop-mount a small ext4 filesystem")
    root = tmp_path / "tree"
    first = make_tree(root / "first", 30, seed=4, broken=False)
    valid = [*first, *make_tree(root / "second", 300, seed=5, broken=False)]
    image, mnt, copy = tmp_path / "disk.img", tmp_path / "mnt", tmp_path / "after"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True, capture_output=True)
    guard_mb = OPEN_MIN_FREE_BYTES // 2**20 + 2
    ingest = f"{sys.executable} -m clipindex ingest {{}} --model-dir {tiny_model_dir} --data-dir {mnt}/data -q"
    script = "\n".join(
        [
            "set -e",
            f"mount -o loop {image} {mnt}",
            ingest.format(root / "first"),  # a store that works
            f"avail=$(df -k --output=avail {mnt} | tail -1); "
            f"fallocate -l $(( (avail - {guard_mb * 1024 + 1500}) * 1024 )) {mnt}/filler",
            "set +e",
            ingest.format(root) + " --batch-size 10; echo rc=$?",  # fills the disk
            f"cp -a {mnt}/data {copy}",  # what the failed run left, to examine outside
        ]
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        env=dict(env, CLIPINDEX_MIN_FREE_MB=str(guard_mb)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "rc=1" in result.stdout, (result.stdout, result.stderr)
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "no space left" in errors[0] and "MB free" in errors[0], result.stderr
    assert "Bus error" not in result.stderr

    # the store the failed run left behind opens, counts, searches, and a later run (with space) converges
    partial = read_index(copy)
    assert len(first) < partial.exact == len(partial.payloads) < len(valid)
    store = EdgeStore(copy, COLLECTION)
    with store:
        store.collection_info()
        some_id = next(iter(partial.payloads))
        hits = store.search(store.get_vectors([some_id])[some_id], limit=3)
        assert hits[0].id == some_id
    done = cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", copy, "-q", env=env)
    assert done.returncode == 0, done.stderr
    assert_exact_index(copy, valid)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    mnt = tmp_path / "probe-tmpfs"
    mnt.mkdir()
    return subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode == 0


@pytest.mark.slow
def test_a_nearly_full_tmpfs_is_a_clear_error_never_a_bus_error(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    """A real tmpfs (mounted in a private mount namespace) with 4 MB left: opening a healthy store there used to
    die with SIGBUS ("Bus error", exit 135, nothing printed), for search and status too, and for an ingest with
    the write guard off (``CLIPINDEX_MIN_FREE_MB=0``). Each is now one ``Error: no space left`` line, and with
    space again everything works."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs root and unshare to mount a small tmpfs in a private mount namespace")
    root = tmp_path / "tree"
    make_tree(root, 40, seed=6, broken=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    clip = f"{sys.executable} -m clipindex"
    store = f"--data-dir {mnt}/data"
    script = "\n".join(
        [
            "set -e",
            f"mount -t tmpfs -o size=200m tmpfs {mnt}",
            f"{clip} ingest {root} --model-dir {tiny_model_dir} {store} -q",
            f"avail=$(df -k --output=avail {mnt} | tail -1); fallocate -l $(( (avail - 4096) * 1024 )) {mnt}/filler",
            "set +e",
            f"{clip} search 'a photo' {store}; echo search=$?",
            f"{clip} status {store}; echo status=$?",
            f"CLIPINDEX_MIN_FREE_MB=0 {clip} ingest {root} {store} -q; echo ingest=$?",
            f"{clip} check {store}; echo check=$?",
            f"rm {mnt}/filler",
            f"{clip} search 'a photo' {store} -n 3; echo search_after=$?",
        ]
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "Bus error" not in result.stderr, result.stderr
    for name in ("search", "status", "ingest", "check"):
        assert f"{name}=1" in result.stdout, (name, result.stdout, result.stderr)
    errors = error_lines(result.stderr)
    assert len(errors) == 4, result.stderr
    for line in errors:
        assert "no space left for embedded store" in line and "MB free" in line and "to open it safely" in line
    assert "search_after=0" in result.stdout, result.stderr


@pytest.mark.slow
def test_file_size_limit_is_a_clear_error_and_leaves_nothing_broken(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    """RLIMIT_FSIZE (works without root): writing past it fails with EFBIG instead of killing the run."""
    import resource

    root = tmp_path / "tree"
    valid = make_tree(root, 5, seed=6, broken=False)
    data = tmp_path / "data"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 2**20, 4 * 2**20))

    cmd = [sys.executable, "-m", "clipindex", "ingest", str(root), "--model-dir", str(tiny_model_dir)]
    result = subprocess.run(
        [*cmd, "--data-dir", str(data), "-q"],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "File too large" in errors[0] and str(data) in errors[0], result.stderr
    done = cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", data, "-q", env=env)
    assert done.returncode == 0, done.stderr
    assert_exact_index(data, valid)


@pytest.mark.slow
def test_read_only_data_dir_is_a_clear_error_and_the_store_is_untouched(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    """The data dir bind-mounted read-only in a private user+mount namespace (root cannot write there either)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces)")
    root = tmp_path / "tree"
    first = make_tree(root / "a", 8, seed=7, broken=False)
    valid = [*first, *make_tree(root / "b", 8, seed=8, broken=False)]
    data = tmp_path / "data"
    done = cli("ingest", root / "a", "--model-dir", tiny_model_dir, "--data-dir", data, "-q", env=env)
    assert done.returncode == 0, done.stderr
    before = read_index(data)
    script = (
        f"mount --bind {data} {data} && mount -o remount,bind,ro {data} && "
        f"{sys.executable} -m clipindex ingest {root} --model-dir {tiny_model_dir} --data-dir {data} -q"
    )
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "Read-only file system" in errors[0] and str(data) in errors[0], result.stderr
    assert read_index(data) == before
    done = cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", data, "-q", env=env)
    assert done.returncode == 0, done.stderr
    assert_exact_index(data, valid)


# --- two ingests at once; no stale lock after SIGKILL -------------------------------------------------------


@pytest.mark.slow
def test_two_ingests_at_once_exactly_one_runs_and_a_killed_holder_leaves_no_lock(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "tree"
    valid = make_tree(root, 400, seed=9, broken=False)
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "clipindex", "ingest", str(root), "--model-dir", str(tiny_model_dir)]
    cmd += ["--data-dir", str(data), "--batch-size", "5", "--workers", "1", "-q"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(p, *p.communicate(timeout=120)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 75], [(p.returncode, err) for p, _, err in results]
    loser = next(err for p, _, err in results if p.returncode == 75)
    winner = next(p for p, _, _ in results if p.returncode == 0)
    assert error_lines(loser) == [loser.strip()] and "another ingest is running" in loser and str(winner.pid) in loser
    assert_exact_index(data, valid)

    # a holder killed in the middle of its run leaves no lock: the next run starts at once and completes
    for path in valid[:200]:
        path.unlink()
    killed = run_ingest([*cmd[4:], "--prune"], env, kill_on="delete begin")
    assert killed.killed
    assert json.loads((data / COLLECTION / "ingest.lock.json").read_text())["pid"]  # its note is left, not its lock
    started = time.monotonic()
    again = cli(*cmd[3:], "--prune", env=env)
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 60
    assert_exact_index(data, valid[200:])


# --- orphan temp_segments after an interrupted optimisation ---------------------------------------------------

OPTIMIZE_CHILD = r"""
import sys, uuid
import numpy as np
from clipindex.store import EdgeStore
from clipindex.store.base import Point
data_dir, model, dim, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = EdgeStore(data_dir, "images")
store.ensure_collection(dim, model)
rng = np.random.default_rng(0)
for start in range(0, count, 1000):
    vectors = rng.standard_normal((1000, dim)).astype(np.float32)
    ids = [str(uuid.UUID(int=start + i + 1, version=4)) for i in range(1000)]
    store.upsert([Point(ids[i], vectors[i], {"path": f"/elsewhere/{start + i}.jpg"}) for i in range(1000)])
store.flush()
print("optimizing", flush=True)
store.optimize()
print("optimized", flush=True)
"""


@pytest.mark.slow
def test_orphan_temp_segments_of_an_interrupted_optimisation_are_removed_on_open(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "tree"
    valid = make_tree(root, 6, seed=10, broken=False)
    data = tmp_path / "data"
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    manifest["dim"] = manifest["embedding_dim"]
    extra = 20000  # above the indexing threshold: optimize() seals them into a new segment (~1 s here)
    child = subprocess.Popen(
        [sys.executable, "-c", OPTIMIZE_CHILD, str(data), manifest["model_name"], str(manifest["dim"]), str(extra)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    temp = data / COLLECTION / "shard" / "temp_segments"
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "optimizing"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            builders = list(temp.glob("segment_builder_*")) if temp.is_dir() else []
            if builders and any(p.is_file() for p in builders[0].rglob("*")):
                break
            time.sleep(0.01)
        assert child.poll() is None, "optimize() finished before it could be interrupted"
        child.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()
    orphans = list(temp.iterdir())
    assert orphans and all(p.name.startswith("segment_builder_") for p in orphans)
    orphan_bytes = sum(f.stat().st_size for p in orphans for f in p.rglob("*") if f.is_file())
    assert orphan_bytes > 0

    # the next ingest (a plain CLI run) opens the store: the orphan goes, the data stays
    result = cli("ingest", root, "--model-dir", tiny_model_dir, "--data-dir", data, "-q", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["points"] == extra + len(valid)
    assert not temp.exists() or not any(temp.iterdir())
    index = read_index(data)
    assert index.exact == len(index.payloads) == extra + len(valid)
    store = EdgeStore(data, COLLECTION)
    with store:
        store.collection_info()
        pid = point_id(str(valid[0]))
        assert store.search(store.get_vectors([pid])[pid], limit=1)[0].id == pid


# --- security: the API key, plain http, TLS -----------------------------------------------------------------


@pytest.mark.slow
def test_api_key_is_never_printed_even_in_errors(tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]) -> None:
    root = tmp_path / "tree"
    valid = make_tree(root, 4, seed=11, broken=False)
    key_file = tmp_path / "api-key"
    key_file.write_text(SECRET + "\n")
    with QdrantRestServer(api_key=SECRET) as server:
        args = ["ingest", root, "--model-dir", tiny_model_dir, "--qdrant-url", server.url, "--timeout", "2"]
        wrong = cli(*args, env=dict(env, QDRANT_API_KEY="wrong-" + SECRET))  # refused: 401
        assert wrong.returncode == 1 and "check the API key" in wrong.stderr, wrong.stderr
        assert SECRET not in wrong.stdout + wrong.stderr
        from_file = cli(*args, "--api-key-file", key_file, "--json", env=env)  # the key from a file works
        assert from_file.returncode == 0, from_file.stderr
        assert json.loads(from_file.stdout)["points"] == len(valid)
        from_env = cli(*args, env=dict(env, QDRANT_API_KEY=SECRET))  # and from the environment
        assert from_env.returncode == 0 and SECRET not in from_env.stdout + from_env.stderr
    # a key in the URL's user:password part is not echoed either
    url = f"http://user:{SECRET}@127.0.0.1:{closed_port()}"
    gone = cli(*args[:5], url, "--timeout", "0.5", env=dict(env, QDRANT_API_KEY=SECRET))
    assert gone.returncode == 69 and SECRET not in gone.stdout + gone.stderr, gone.stderr
    help_text = cli("ingest", "--help", env=dict(env, QDRANT_API_KEY=SECRET)).stdout
    assert SECRET not in help_text and "--api-key " not in help_text  # no flag that would put it in `ps`


@pytest.mark.slow
def test_api_key_over_plain_http_to_a_remote_host_warns_through_the_cli(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "tree"
    make_tree(root, 2, seed=12, broken=False)
    port = closed_port()
    # 0.0.0.0 is not a loopback name (so the key would travel in clear), and connecting to it fails at once
    remote = cli(
        "ingest",
        root,
        "--model-dir",
        tiny_model_dir,
        "--qdrant-url",
        f"http://0.0.0.0:{port}",
        "--timeout",
        "0.5",
        env=dict(env, QDRANT_API_KEY=SECRET),
    )
    warnings = [line for line in remote.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "clear text" in warnings[0] and "https://" in warnings[0], remote.stderr
    assert SECRET not in remote.stderr
    local = cli(
        "ingest",
        root,
        "--model-dir",
        tiny_model_dir,
        "--qdrant-url",
        f"http://localhost:{port}",
        "--timeout",
        "0.5",
        env=dict(env, QDRANT_API_KEY=SECRET),
    )
    assert local.returncode == 69 and "Warning:" not in local.stderr, local.stderr


@pytest.mark.slow
def test_https_urls_reach_the_client(tmp_path: Path) -> None:
    """An https URL is accepted and used as is: the unreachable error names the https URL (TLS is wired)."""
    port = closed_port()
    store = ServerStore(f"https://localhost:{port}", COLLECTION, SECRET, timeout_s=0.5, state_dir=tmp_path)
    assert store._client.init_options["url"] == f"https://localhost:{port}"
    with pytest.raises(StoreUnavailableError) as caught:
        store.ensure_collection(8, "m")
    message = str(caught.value)
    assert f"https://localhost:{port}" in message and SECRET not in message
    store.close()
    # and a plain store on the same data works the same over a live local connection (control)
    with QdrantRestServer() as server:
        live = ServerStore(server.url, COLLECTION, None, timeout_s=2, state_dir=tmp_path)
        live.ensure_collection(8, "m")
        live.upsert([Point("00000000-0000-4000-8000-000000000001", np.ones(8, np.float32), {"path": "/x.jpg"})])
        assert live.count() == 1
        live.close()


def test_the_reliability_table_names_existing_tests_and_every_fault_test() -> None:
    """docs/operations.md's reliability table: each test it names exists, and it names every test of this file."""
    repo = Path(__file__).resolve().parent.parent
    doc = (repo / "docs" / "operations.md").read_text(encoding="utf-8")
    table = doc.split("## Reliability", 1)[1]
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?(?:\[[^\]]*\])?`", table)
    assert len(named) >= 15
    for path, name in named:
        source = (repo / path).read_text(encoding="utf-8")
        assert not name or re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
    mine = re.findall(r"^def (test_\w+)\(", Path(__file__).read_text(encoding="utf-8"), re.M)
    listed = {name for path, name in named if path == "tests/test_faults.py"}
    assert set(mine) - listed == {"test_the_reliability_table_names_existing_tests_and_every_fault_test"}
