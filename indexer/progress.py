"""Progress reporting of long runs (ingest, migrate): a protocol, and a tqdm bar that implements it."""

from __future__ import annotations

import sys
from typing import Any, Protocol

__all__ = ["Progress", "TqdmProgress"]


class Progress(Protocol):
    """What a long run (ingest, migrate) reports its progress to."""

    def start(self, total: int) -> None:
        """The number of items to process, once known: ingest calls it after the first ``advance`` calls when
        its walk outlasts the first batches."""

    def advance(self, count: int) -> None: ...
    def close(self) -> None: ...


class TqdmProgress:
    """:class:`Progress` as a tqdm bar on stderr, when ``enabled`` (the CLI: stderr is a terminal, not --quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.done = 0  # advanced before start(): ingest embeds while its walk still counts the files

    def start(self, total: int) -> None:
        if self.enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=self.done, unit="img", file=sys.stderr, dynamic_ncols=True, desc="embedding"
            )

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
