"""IngestLock: exclusive across processes, refused at once, and gone when its holder is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipindex.errors import LockHeldError, StoreError
from clipindex.lock import FileLock, IngestLock, holder_note_path, server_lock_path
from clipindex.settings import default_state_dir

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from clipindex.lock import IngestLock

    lock = IngestLock(Path(sys.argv[1]), store="the-test-store")
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold until told (or killed)
    lock.release()
    print("released", flush=True)
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A child process holding the lock on tmp_path/ingest.lock."""
    path = tmp_path / "ingest.lock"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    yield proc, path
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_second_process_is_refused_at_once(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, path = holder
    t0 = time.monotonic()
    with pytest.raises(LockHeldError) as exc:
        IngestLock(path, store="the-test-store").acquire()
    assert time.monotonic() - t0 < 1.0  # non-blocking
    msg = str(exc.value)
    assert msg.startswith("another ingest is running on the-test-store")
    assert f"pid {proc.pid} " in msg and "since" in msg and str(path) in msg
    assert exc.value.exit_code == 75
    info = json.loads(holder_note_path(path).read_text())
    assert info["pid"] == proc.pid  # the holder's record was not clobbered by the refused attempt


def test_refusal_names_a_holder_that_has_not_written_its_note_yet(tmp_path: Path) -> None:
    """The holder writes its note just after taking the lock: a refusal in that window waits for the note."""
    import socket
    import threading

    path = tmp_path / "ingest.lock"
    note = holder_note_path(path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "since": "2026-01-01T00:00:00+0000", "host": socket.gethostname()}
    note.write_text(json.dumps(stale) + "\n")  # the note a killed holder left behind
    with FileLock(path):  # the new holder took the lock...

        def write_note() -> None:  # ...and writes its own note a moment later
            time.sleep(0.4)
            note.write_text(json.dumps({"pid": os.getpid(), "since": "now", "host": socket.gethostname()}) + "\n")

        writer = threading.Thread(target=write_note)
        writer.start()
        with pytest.raises(LockHeldError) as exc:
            IngestLock(path, store="s").acquire()
        writer.join()
    assert f"pid {os.getpid()} " in str(exc.value)


@pytest.mark.slow
def test_refusal_reports_the_note_it_read_when_no_live_holder_appears(tmp_path: Path) -> None:
    path = tmp_path / "ingest.lock"
    with FileLock(path):  # held, with no note at all
        t0 = time.monotonic()
        with pytest.raises(LockHeldError) as exc:
            IngestLock(path, store="s").acquire()
    assert 0.9 <= time.monotonic() - t0 < 5  # waited for a note (1 s), then gave up
    assert "pid ?" in str(exc.value)


def test_lock_is_released_when_the_holder_is_sigkilled(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, path = holder
    with pytest.raises(LockHeldError):
        IngestLock(path).acquire()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    with IngestLock(path, store="s") as lock:  # no stale lock, no cleanup needed
        assert lock.held
        assert json.loads(holder_note_path(path).read_text())["pid"] == os.getpid()
    assert not lock.held


def test_release_by_the_holder_frees_it(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, path = holder
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()  # the child releases and exits
    assert proc.stdout.readline().strip() == "released"
    assert proc.wait(timeout=10) == 0
    assert path.exists() and not holder_note_path(path).exists()  # holder record cleared, lock file kept
    IngestLock(path).acquire()


def test_same_process_second_lock_refused_and_reacquire(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ingest.lock"  # parent folders are created
    first = IngestLock(path, store="s")
    first.acquire()
    with pytest.raises(LockHeldError, match=f"pid {os.getpid()} "):
        IngestLock(path, store="s").acquire()
    with pytest.raises(RuntimeError):
        first.acquire()
    first.release()
    first.release()  # idempotent
    with IngestLock(path):
        pass
    with IngestLock(path):
        pass
    assert path.exists()


def test_a_file_where_the_store_folder_goes_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").write_text("not a folder")
    with pytest.raises(StoreError, match=r"data/images is a file where the store needs a folder"):
        IngestLock(tmp_path / "data" / "images" / "ingest.lock").acquire()
    assert (tmp_path / "data" / "images").read_text() == "not a folder"


def test_server_lock_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPINDEX_STATE_DIR", str(tmp_path / "state"))
    assert default_state_dir() == tmp_path / "state"
    a = server_lock_path("http://Qdrant.local:6333/", "images")
    assert a.parent == tmp_path / "state" / "locks" and a.name.startswith("images-")
    assert a == server_lock_path("http://qdrant.local:6333", "images")
    assert a == server_lock_path("http://key:secret@qdrant.local:6333", "images")
    assert "secret" not in str(a)
    assert a != server_lock_path("http://qdrant.local:6334", "images")
    assert a != server_lock_path("http://qdrant.local:6333", "images2")
    assert server_lock_path("http://q", "../x").parent == a.parent  # no path escape
    monkeypatch.delenv("CLIPINDEX_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "clipindex"
