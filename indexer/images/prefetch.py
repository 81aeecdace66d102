"""Decode-ahead: run a per-item function on a small thread pool, a few batches ahead of their consumer.

What ``clipindex ingest`` and :meth:`clipindex.model.encode.Embedder.encode_images` share: while the caller runs the
model
on batch *i*, the pool decodes and preprocesses batches *i + 1 .. i + lookahead* (Pillow's decoders, its resize and
ONNX Runtime all release the GIL, so the threads really overlap)::

    for prepared in decode_ahead(paths, prepare, batch_size=25):
        run_the_model(prepared)        # prepared: [prepare(p) for p in the next 25 paths], in order

Items are read from the iterable lazily (at most ``lookahead + 1`` batches are in flight), so an endless stream
works. ``work`` should catch the failures it expects and return them as values: an exception it raises is
re-raised in the consumer, and the batches still decoding are cancelled or waited for before the pool closes.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: batches decoded ahead of the one being consumed
LOOKAHEAD_BATCHES = 2


def decode_ahead(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    batch_size: int,
    workers: int,
    lookahead_batches: int = LOOKAHEAD_BATCHES,
    thread_name_prefix: str = "clipindex-decode",
) -> Iterator[list[R]]:
    """Yield ``[work(item) for item in batch]`` for consecutive batches of ``items``, computed on ``workers``
    threads up to ``lookahead_batches`` batches ahead of the one yielded. Order is kept. Closing the generator
    early (``break``, an exception in the consumer) cancels the batches not started yet."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix)
    try:
        queue: deque[list[Future[R]]] = deque()
        while True:
            batch = list(itertools.islice(source, batch_size))
            if batch:
                queue.append([pool.submit(work, item) for item in batch])
            if not queue:
                break
            if batch and len(queue) <= lookahead_batches:
                continue
            yield [future.result() for future in queue.popleft()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
