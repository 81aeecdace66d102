"""clipindex.images.prefetch.decode_ahead, the decode-ahead pool shared by ingest and Embedder.encode_images, on real
threads."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from clipindex.images.prefetch import LOOKAHEAD_BATCHES, decode_ahead


def test_batches_come_back_in_order_whatever_the_finishing_order() -> None:
    def slow_for_small(n: int) -> int:
        time.sleep(0.002 * (10 - n % 10))  # early items finish last
        return n * n

    batches = list(decode_ahead(range(23), slow_for_small, batch_size=5, workers=4))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert list(itertools.chain.from_iterable(batches)) == [n * n for n in range(23)]
    assert list(decode_ahead([], slow_for_small, batch_size=5, workers=2)) == []


def test_reads_at_most_lookahead_batches_ahead_of_the_consumer() -> None:
    pulled: list[int] = []

    def endless() -> Iterator[int]:
        for n in itertools.count():
            pulled.append(n)
            yield n

    batches = decode_ahead(endless(), lambda n: n, batch_size=4, workers=2)
    first = next(batches)
    assert first == [0, 1, 2, 3]
    assert len(pulled) == 4 * (LOOKAHEAD_BATCHES + 1)  # the one yielded plus the ones decoding ahead
    batches.close()


def test_a_failure_reaches_the_consumer_and_closing_cancels_the_rest() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        with lock:
            started.append(n)
        time.sleep(0.01)
        if n == 2:
            raise RuntimeError("item 2 failed")
        return n

    with pytest.raises(RuntimeError, match="item 2 failed"):
        for _ in decode_ahead(range(1000), work, batch_size=3, workers=2):
            pass
    assert len(started) <= 3 * (LOOKAHEAD_BATCHES + 1)  # the batches not submitted yet were never run

    started.clear()
    consumer = decode_ahead(range(1000), lambda n: work(n + 10), batch_size=10, workers=2, lookahead_batches=1)
    assert next(consumer) == list(range(10, 20))
    consumer.close()
    assert len(started) <= 20  # the batch yielded and the one ahead of it, nothing more


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(decode_ahead([1], lambda n: n, batch_size=0, workers=1))
    with pytest.raises(ValueError, match="workers"):
        next(decode_ahead([1], lambda n: n, batch_size=1, workers=0))
