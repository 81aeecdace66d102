"""Server collection settings and sizing (issue 16): what ``ingest --qdrant-url`` creates, and what it costs.

:class:`CollectionSettings` is the vector storage a new server collection gets: by default scalar int8
quantization kept in RAM (``always_ram``), the float32 originals on disk (memory-mapped, read back only to rescore
the best candidates) and an HNSW graph with Qdrant's defaults (``m=16``, ``ef_construct=100``). ``--quantization
none`` keeps the float32 vectors in RAM instead; ``--hnsw-m`` / ``--hnsw-ef-construct`` override the graph. The
settings only apply when clipindex creates the collection: an existing one keeps its own (change it with Qdrant's
``PATCH /collections/<name>``).

:func:`estimate` sizes a collection with Qdrant's documented formula (capacity planning:
``memory = vectors * dimension * 4 bytes * 1.5``, the 1.5 covering metadata and the temporary segments of an
optimisation) applied to each part that lives in RAM, plus this project's own per-point figures (the constants
below, measured on a 1M-point store). :func:`sizing_table` renders the table in docs/operations.md
(``python -m clipindex.store.sizing``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from clipindex.settings import DEFAULT_HNSW_EF_CONSTRUCT, DEFAULT_HNSW_M, DEFAULT_QUANTIZATION

__all__ = ["CollectionSettings", "Estimate", "estimate", "sizing_table"]

Quantization = Literal["int8", "none"]

#: Qdrant's factor for metadata and optimisation headroom (capacity planning docs)
OVERHEAD = 1.5
#: bytes per point of clipindex's payload, as stored (measured: 1M points, 537 MB of payload pages)
PAYLOAD_BYTES = 540
#: bytes per point of the keyword indexes on ``path`` and ``dirs`` (measured at 1M points)
PAYLOAD_INDEX_BYTES = 170
#: bytes per point of the id tracker (UUID <-> internal id, versions; measured at 1M points)
ID_TRACKER_BYTES = 44
#: quantile of the int8 scalar quantization (the same as the embedded store's)
QUANTILE = 0.99
#: candidates rescored with the float32 vectors, as a multiple of the limit, on a quantized server collection
OVERSAMPLING = 2.0
#: points per shard past which the table suggests one more shard (room to move shards between nodes)
POINTS_PER_SHARD = 10_000_000


@dataclass(frozen=True)
class CollectionSettings:
    """Vector storage of a new server collection (module doc)."""

    quantization: Quantization = DEFAULT_QUANTIZATION
    hnsw_m: int = DEFAULT_HNSW_M
    hnsw_ef_construct: int = DEFAULT_HNSW_EF_CONSTRUCT

    def __post_init__(self) -> None:
        if self.quantization not in ("int8", "none"):
            raise ValueError(f"quantization must be 'int8' or 'none', not {self.quantization!r}")
        if self.hnsw_m < 0 or self.hnsw_ef_construct < 4:
            raise ValueError("hnsw_m must be >= 0 and hnsw_ef_construct >= 4")

    @property
    def quantized(self) -> bool:
        return self.quantization == "int8"

    def create_kwargs(self, vector_dim: int) -> dict[str, Any]:
        """``vectors_config``, ``hnsw_config`` and ``quantization_config`` for qdrant-client's ``create_collection``."""
        from qdrant_client import models

        kwargs: dict[str, Any] = {
            "vectors_config": models.VectorParams(
                size=vector_dim, distance=models.Distance.COSINE, on_disk=self.quantized
            ),
            "hnsw_config": models.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct, on_disk=False),
        }
        if self.quantized:
            kwargs["quantization_config"] = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=QUANTILE, always_ram=True)
            )
        return kwargs

    def search_params(self) -> Any:
        """Query parameters: rescore ``OVERSAMPLING`` x the limit with the float32 vectors (quantized collections)."""
        from qdrant_client import models

        return models.SearchParams(
            quantization=models.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
        )


@dataclass(frozen=True)
class Estimate:
    """RAM and disk of one collection, over all its replicas (bytes), and the suggested shards."""

    points: int
    ram_bytes: int
    disk_bytes: int
    shards: int
    replicas: int


def estimate(
    points: int,
    vector_dim: int = 512,
    *,
    quantization: Quantization = DEFAULT_QUANTIZATION,
    hnsw_m: int = DEFAULT_HNSW_M,
    replicas: int = 1,
) -> Estimate:
    """Size a collection of ``points`` (module doc). RAM: what must stay resident for fast search (the int8 copy, or
    the float32 vectors without quantization; the HNSW graph; payload indexes; id tracker), times
    :data:`OVERHEAD`. Disk: everything, the float32 originals and payloads included, times :data:`OVERHEAD`."""
    if points < 0 or replicas < 1:
        raise ValueError("points must be >= 0 and replicas >= 1")
    floats = points * vector_dim * 4
    int8 = points * vector_dim if quantization == "int8" else 0
    graph = points * hnsw_m * 2 * 4  # level-0 links: 2m neighbours of 4 bytes
    common = points * (PAYLOAD_INDEX_BYTES + ID_TRACKER_BYTES)
    resident = (int8 if quantization == "int8" else floats) + graph + common
    stored = floats + int8 + graph + common + points * PAYLOAD_BYTES
    shards = max(1, math.ceil(points / POINTS_PER_SHARD))
    return Estimate(
        points=points,
        ram_bytes=int(resident * OVERHEAD) * replicas,
        disk_bytes=int(stored * OVERHEAD) * replicas,
        shards=shards,
        replicas=replicas,
    )


def _gb(value: int) -> str:
    return f"{value / 1e9:.1f} GB" if value >= 1e8 else f"{value / 1e6:.0f} MB"


def sizing_table(points: tuple[int, ...] = (100_000, 1_000_000, 10_000_000, 100_000_000), vector_dim: int = 512) -> str:
    """The markdown sizing table of docs/operations.md."""
    rows = [
        "| points | RAM, int8 (default) | RAM, float32 (`--quantization none`) | disk | shards | "
        "RAM, int8, 2 replicas | disk, 2 replicas |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in points:
        q = estimate(n, vector_dim)
        f = estimate(n, vector_dim, quantization="none")
        r = estimate(n, vector_dim, replicas=2)
        rows.append(
            f"| {n:,} | {_gb(q.ram_bytes)} | {_gb(f.ram_bytes)} | {_gb(q.disk_bytes)} | {q.shards} | "
            f"{_gb(r.ram_bytes)} | {_gb(r.disk_bytes)} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(sizing_table())
