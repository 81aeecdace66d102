"""clipindex.ingest.walk on real trees: order, extensions, hidden entries, symlinks, odd names, errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import NOT_REGULAR, make_hostile_files
from PIL import Image

from clipindex.errors import ImageError, WalkError
from clipindex.images.decode import load_image
from clipindex.images.formats import BASE_EXTENSIONS, RAW_EXTENSIONS, supported_extensions
from clipindex.ingest.walk import FoundFile, iter_image_files

NOBODY = 65534


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def walk(root: Path, **kwargs: object) -> tuple[list[str], list[tuple[str, str]]]:
    """Relative paths found, and the (relative path, reason) pairs reported to on_error."""
    errors: list[tuple[str, str]] = []

    def on_error(path: str, reason: str) -> None:
        errors.append((os.path.relpath(path, root), reason))

    found = [
        os.path.relpath(f.path, root)
        for f in iter_image_files(root, on_error=on_error, **kwargs)  # type: ignore[arg-type]
    ]
    return found, errors


def test_order_is_depth_first_by_name_bytes(tmp_path: Path) -> None:
    for name in ["b.jpg", "B.jpg", "a/10.png", "a/2.png", "a/sub/x.gif", "a.jpg", "é.jpg", "z.png", "_.png"]:
        touch(tmp_path / name)
    found, errors = walk(tmp_path)
    # bytes order: 'B' (0x42) < '_' (0x5f) < 'a' < 'a.jpg' vs 'a/' : entries are compared by name only,
    # so folder "a" (b"a") sorts before file "a.jpg" (b"a.jpg"); "é" (0xc3 0xa9) sorts last.
    assert found == [
        "B.jpg",
        "_.png",
        "a/10.png",
        "a/2.png",
        "a/sub/x.gif",
        "a.jpg",
        "b.jpg",
        "z.png",
        "é.jpg",
    ]
    assert errors == []
    assert walk(tmp_path)[0] == found  # reproducible


def test_found_file_carries_size_and_mtime_of_the_target(tmp_path: Path) -> None:
    target = touch(tmp_path / "real" / "photo.jpg", b"0123456789")
    os.utime(target, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (tmp_path / "link.jpg").symlink_to(target)
    files = list(iter_image_files(tmp_path))
    assert files == [
        FoundFile(tmp_path / "link.jpg", 10, 1_600_000_000_123_456_789),
        FoundFile(tmp_path / "real" / "photo.jpg", 10, 1_600_000_000_123_456_789),
    ]
    assert all(isinstance(f.path, Path) for f in files)


def test_extensions_are_case_insensitive_and_filtered(tmp_path: Path) -> None:
    names = [
        "a.JPG", "b.Jpeg", "c.png", "d.PNG", "e.webp", "f.bmp", "g.gif", "h.TIF", "i.tiff",
        "notes.txt", "photo.jpg.bak", "jpg", "archive.tar.gz", "raw.cr2", "movie.mp4", "x.heic",
    ]  # fmt: skip
    for name in names:
        touch(tmp_path / name)
    found, _ = walk(tmp_path)
    # RAW files are always walked: without the clipindex[raw] extra each one fails with a reason naming it
    expected = ["a.JPG", "b.Jpeg", "c.png", "d.PNG", "e.webp", "f.bmp", "g.gif", "h.TIF", "i.tiff", "raw.cr2"]
    if "heic" in supported_extensions():  # only with the optional pillow_heif plugin
        expected.append("x.heic")
    assert found == expected
    only_png, _ = walk(tmp_path, extensions=frozenset({".PNG"}))
    assert only_png == ["c.png", "d.PNG"]


def test_supported_extensions() -> None:
    exts = supported_extensions()
    assert exts >= BASE_EXTENSIONS | RAW_EXTENSIONS
    try:
        import pillow_heif  # noqa: F401

        assert {"heic", "heif"} <= exts
    except ImportError:
        assert not {"heic", "heif"} & exts
    assert all(e == e.lower() and not e.startswith(".") for e in exts)


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / ".photos"  # the root itself may be hidden
    touch(root / "visible.jpg")
    touch(root / ".hidden.jpg")
    touch(root / ".thumbnails" / "thumb.jpg")
    touch(root / "album" / ".cache" / "c.png")
    touch(root / "album" / "ok.png")
    found, errors = walk(root)
    assert found == ["album/ok.png", "visible.jpg"]
    assert errors == []


@pytest.mark.timeout(20, method="signal")  # a blocking read of a special file fails the test
def test_symlinks_followed_and_loops_survived(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "far.jpg")
    root = tmp_path / "root"
    touch(root / "a" / "one.jpg")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a/loop -> root: a cycle
    (root / "a" / "self").symlink_to(".", target_is_directory=True)  # a/self -> a
    (root / "b").symlink_to(outside, target_is_directory=True)  # followed
    (root / "c").symlink_to(outside, target_is_directory=True)  # same folder again: walked once
    (root / "file_link.png").symlink_to(root / "a" / "one.jpg")
    found, errors = walk(root)
    assert found == ["a/one.jpg", "b/far.jpg", "file_link.png"]
    assert errors == []


@pytest.mark.timeout(20, method="signal")  # a blocking read of a special file fails the test
def test_links_to_folders_above_the_root_or_into_proc_are_reported_not_walked(tmp_path: Path) -> None:
    """A link to / (or to a folder holding the root) would walk and index the whole machine; /proc never ends."""
    outside = tmp_path / "outside"
    touch(outside / "far.jpg")
    root = tmp_path / "home" / "photos"
    touch(root / "a" / "one.jpg")
    (root / "a" / "slash").symlink_to("/", target_is_directory=True)
    (root / "a" / "home").symlink_to(tmp_path / "home", target_is_directory=True)
    (root / "proc").symlink_to("/proc", target_is_directory=True)
    (root / "sys_block").symlink_to("/sys/block", target_is_directory=True)
    virtual = {"proc", "sys_block"} if os.path.isdir("/sys/block") else {"proc"}  # (a sandbox may lack /sys)
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)  # a library on another disk: followed
    found, errors = walk(root)
    assert found == ["a/one.jpg", "elsewhere/far.jpg"]
    reasons = dict(errors)
    assert set(reasons) == {"a/slash", "a/home"} | virtual
    assert "contains the folder being indexed" in reasons["a/slash"] and reasons["a/home"].endswith(
        "a folder that contains the folder being indexed"
    )
    assert "virtual file system /proc" in reasons["proc"]
    assert "sys_block" not in virtual or "virtual file system /sys" in reasons["sys_block"]


def test_dangling_and_looping_symlinks_are_reported(tmp_path: Path) -> None:
    touch(tmp_path / "good.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "dangling_dir").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    found, errors = walk(tmp_path)
    assert found == ["good.jpg"]
    reasons = dict(errors)
    assert set(reasons) == {"dangling.jpg", "loop.jpg"}  # a dangling link without image name is ignored
    assert "dangling symlink" in reasons["dangling.jpg"]
    assert "loop" in reasons["loop.jpg"]


def test_non_utf8_names_work_end_to_end(tmp_path: Path) -> None:
    raw_root = os.fsencode(tmp_path)
    raw_dir = os.path.join(raw_root, b"caf\xe9")  # latin-1 folder name: not valid UTF-8
    os.mkdir(raw_dir)
    raw_file = os.path.join(raw_dir, b"\xff\xfephoto.JPG")
    Image.new("RGB", (8, 6), (10, 200, 30)).save(raw_file, format="JPEG")
    files = list(iter_image_files(tmp_path))
    assert len(files) == 1
    assert os.fsencode(str(files[0].path)) == raw_file  # surrogateescape round trip
    assert files[0].size == os.stat(raw_file).st_size
    image = load_image(files[0].path)
    assert image.size == (8, 6)
    assert image.mode == "RGB"


def test_folder_removed_during_the_walk_is_reported(tmp_path: Path) -> None:
    """A real error path that also works as root: the folder vanishes between listing and reading."""
    touch(tmp_path / "a" / "1.jpg")
    touch(tmp_path / "b" / "2.jpg")
    touch(tmp_path / "c" / "3.jpg")
    errors: list[tuple[str, str]] = []
    walker = iter_image_files(tmp_path, on_error=lambda p, r: errors.append((p, r)))
    first = next(walker)
    assert first.path == tmp_path / "a" / "1.jpg"
    shutil.rmtree(tmp_path / "b")
    rest = [f.path for f in walker]
    assert rest == [tmp_path / "c" / "3.jpg"]
    assert len(errors) == 1
    assert errors[0][0] == str(tmp_path / "b")
    assert "cannot read folder" in errors[0][1] or "cannot list folder" in errors[0][1]


def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(WalkError, match="cannot read"):
        list(iter_image_files(tmp_path / "missing"))
    touch(tmp_path / "file.jpg")
    with pytest.raises(WalkError, match=r"file\.jpg: is not a folder \(a file\)"):
        list(iter_image_files(tmp_path / "file.jpg"))


def test_deep_tree_has_no_recursion_limit(tmp_path: Path) -> None:
    depth = 1100  # deeper than Python's default recursion limit (os.makedirs/shutil.rmtree would hit it)
    fds = [os.open(tmp_path, os.O_RDONLY)]
    try:
        for _ in range(depth):  # relative to an open parent: linear time, no long-path lookups
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        os.close(os.open("bottom.png", os.O_WRONLY | os.O_CREAT, dir_fd=fds[-1]))
        files = list(iter_image_files(tmp_path))
        assert [f.path for f in files] == [tmp_path.joinpath(*["d"] * depth, "bottom.png")]
    finally:  # remove bottom-up without recursion, or pytest's own tmp cleanup would overflow later
        if len(fds) == depth + 1:
            os.unlink("bottom.png", dir_fd=fds[-1])
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir("d", dir_fd=fds[-1])
        os.close(fds[0])


@pytest.mark.slow
def test_many_files_are_cheap(tmp_path: Path) -> None:
    for folder in range(10):
        sub = tmp_path / f"f{folder:02d}"
        sub.mkdir()
        for index in range(400):
            (sub / f"{index:04d}.jpg").touch()
            if index % 5 == 0:
                (sub / f"{index:04d}.txt").touch()
    start = time.perf_counter()
    count = sum(1 for _ in iter_image_files(tmp_path))
    elapsed = time.perf_counter() - start
    assert count == 4_000
    assert elapsed < 1.0, f"walking 4,000 files took {elapsed:.2f} s"


@pytest.mark.timeout(20, method="signal")  # a blocking read of a special file fails the test
def test_hostile_folder_does_not_hang_and_reports_special_files(tmp_path: Path) -> None:
    expected = make_hostile_files(tmp_path)
    found, errors = walk(tmp_path)
    regular = sorted((n for n in expected if n not in NOT_REGULAR), key=os.fsencode)
    assert found == regular
    reported = {path for path, _ in errors}
    assert reported == NOT_REGULAR - {"folder.jpg"}  # a folder named x.jpg is walked into, not reported
    reasons = dict(errors)
    assert "FIFO" in reasons["fifo.png"]
    assert "character device" in reasons["dev_zero.jpg"]


# --- permission denied ---------------------------------------------------------------------------------


@pytest.fixture
def shared_tree() -> Iterator[Path]:
    """A tree under /tmp that another user can traverse (pytest's tmp_path is private to its owner)."""
    root = Path(tempfile.mkdtemp(prefix="clipindex-walk-"))
    try:
        root.chmod(0o755)
        touch(root / "a_open" / "1.jpg")
        touch(root / "b_locked" / "2.jpg")
        touch(root / "c_open" / "3.png")
        Image.new("RGB", (4, 4)).save(root / "c_open" / "4.jpg")
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "b_locked").chmod(0)
        (root / "c_open" / "4.jpg").chmod(0)
        yield root
    finally:
        (root / "b_locked").chmod(0o755)
        shutil.rmtree(root)


def _walk_as_nobody(root: Path) -> dict[str, object]:
    """Walk (and try to decode an unreadable file) in a forked child that dropped root privileges.

    Root ignores file permissions, so the only real way to exercise "permission denied" when the tests
    run as root is to become another user; a fork keeps the already-imported modules (no exec needed).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            errors: list[list[str]] = []
            found = [
                str(f.path.relative_to(root))
                for f in iter_image_files(root, on_error=lambda p, r: errors.append([p, r]))
            ]
            try:
                load_image(root / "c_open" / "4.jpg")
                load_error = ""
            except ImageError as exc:
                load_error = exc.reason
            payload = {"found": found, "errors": errors, "load_error": load_error}
        except BaseException as exc:
            payload = {"crash": repr(exc)}
            code = 1
        os.write(write_end, json.dumps(payload).encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    result: dict[str, object] = json.loads(b"".join(chunks))
    return result


def test_unreadable_folder_and_file_are_reported(shared_tree: Path) -> None:
    if os.geteuid() == 0:
        result = _walk_as_nobody(shared_tree)
    else:
        errors: list[list[str]] = []
        found = [
            str(f.path.relative_to(shared_tree))
            for f in iter_image_files(shared_tree, on_error=lambda p, r: errors.append([p, r]))
        ]
        try:
            load_image(shared_tree / "c_open" / "4.jpg")
            load_error = ""
        except ImageError as exc:
            load_error = exc.reason
        result = {"found": found, "errors": errors, "load_error": load_error}
    assert "crash" not in result, result
    # the walk never opens files, so the unreadable 4.jpg is still found; decoding it is what fails
    assert result["found"] == ["a_open/1.jpg", "c_open/3.png", "c_open/4.jpg"]
    assert result["errors"] == [[str(shared_tree / "b_locked"), "cannot list folder: permission denied"]]
    assert "Permission denied" in str(result["load_error"])
    assert stat.S_IMODE(os.stat(shared_tree / "b_locked").st_mode) == 0
