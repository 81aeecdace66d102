"""Issue 16: ingest streams its walk into the decode pool, and prune waits for the whole walk.

Real parts throughout: the tiny model on ONNX Runtime, the real Qdrant Edge store (a subclass that also records
its deletes), the real walk. ``Progress.start(total)`` is called when the walk has counted the files to embed,
so an ``advance`` before it is a batch embedded and verified while the walk was still going.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from clipindex.ingest.pipeline import IngestOptions, ingest
from clipindex.ingest.points import point_id
from clipindex.model.encode import Embedder
from clipindex.store.edge import EdgeStore

COLLECTION = "images"


class Events:
    """A Progress that records what ingest reports, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.walk_done = False

    def start(self, total: int) -> None:
        self.walk_done = True
        self.log.append(("start", total))

    def advance(self, count: int) -> None:
        self.log.append(("advance", count))

    def close(self) -> None:
        self.log.append(("close", None))


class RecordingStore(EdgeStore):
    """The real embedded store, which also notes each delete and whether the walk had ended by then."""

    def __init__(self, data_dir: Path, events: Events) -> None:
        super().__init__(data_dir, COLLECTION)
        self.events = events
        self.deletes: list[tuple[bool, list[str]]] = []

    def delete(self, ids: Iterable[str]) -> None:
        wanted = list(ids)
        self.deletes.append((self.events.walk_done, wanted))
        super().delete(wanted)


def crops(sample_photos: dict[str, Image.Image], folder: Path, count: int, offset: int = 0) -> list[Path]:
    photos = list(sample_photos.values())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(offset, offset + count):
        image = photos[i % len(photos)].convert("RGB")
        x, y = (i * 5) % max(1, image.width - 64), (i * 9) % max(1, image.height - 64)
        path = folder / f"{i:04d}.jpg"
        image.crop((x, y, x + 64, y + 64)).save(path, quality=90)
        paths.append(path)
    return paths


def test_embedding_starts_before_the_walk_ends(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image]
) -> None:
    root = tmp_path / "photos"
    for name in ("a", "b", "c", "d"):
        crops(sample_photos, root / name, 20, offset=ord(name) * 100)
    events = Events()
    options = IngestOptions(batch_size=5)
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        report = ingest(root, Embedder(tiny_model_dir), store, options=options, progress=events)
    assert report.indexed == 80 and report.points == 80
    kinds = [kind for kind, _ in events.log]
    first_batch, walk_end = kinds.index("advance"), kinds.index("start")
    assert first_batch < walk_end  # a batch was embedded, upserted and verified before the walk had ended
    assert events.log[walk_end] == ("start", 80)
    before = sum(n for kind, n in events.log[:walk_end] if kind == "advance")
    assert 5 <= before < 80
    assert sum(n for kind, n in events.log if kind == "advance") == 80


def test_prune_never_deletes_a_file_the_walk_has_not_reached(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image]
) -> None:
    root = tmp_path / "photos"
    early = crops(sample_photos, root / "a", 12)
    late = crops(sample_photos, root / "z", 12, offset=500)
    embedder = Embedder(tiny_model_dir)
    data_dir = tmp_path / "data"
    with EdgeStore(data_dir, COLLECTION) as store:
        assert ingest(root, embedder, store).indexed == 24

    gone = early[:4]
    for path in gone:
        path.unlink()
    crops(sample_photos, root / "a", 15, offset=1000)  # new files early in the walk: embedding starts at once
    events = Events()
    store = RecordingStore(data_dir, events)
    with store:
        report = ingest(root, embedder, store, options=IngestOptions(batch_size=5, prune=True), progress=events)
        remaining = {payload["path"] for _, payload in store.iter_payloads(["path"])}
    assert (report.indexed, report.removed, report.points) == (15, 4, 35)
    kinds = [kind for kind, _ in events.log]
    assert kinds.index("advance") < kinds.index("start")  # streaming: a batch went in while walking
    assert store.deletes, "the gone files were pruned"
    assert all(walk_done for walk_done, _ in store.deletes)  # ...only once the walk had reached every file
    deleted = {pid for _, ids in store.deletes for pid in ids}
    assert deleted == {point_id(str(p)) for p in gone}
    assert {str(p) for p in late} <= remaining  # the files the walk reaches last are all still there


@pytest.mark.parametrize("total", [0, 3])
def test_progress_starts_when_nothing_or_little_is_to_embed(
    tmp_path: Path, tiny_model_dir: Path, sample_photos: dict[str, Image.Image], total: int
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    crops(sample_photos, root, total)
    events = Events()
    with EdgeStore(tmp_path / "data", COLLECTION) as store:
        report = ingest(root, Embedder(tiny_model_dir), store, progress=events)
    assert report.indexed == total
    assert ("start", total) in events.log
    assert events.log[-1] == ("close", None)
