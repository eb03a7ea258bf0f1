"""Collating the next batches on a background thread while the device works on the current one.

The loop tells the objective which examples come next; their batches are collated (and, on CUDA,
pinned) by one worker thread, and ``take`` hands a finished batch to the main thread, which copies
it to the device without blocking. A batch nobody asked for ahead of time is collated on the spot,
so a changed micro-batch size (an out-of-memory retry) or an evaluation pass only loses the overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

from .batching import Batch

KEEP = 32  # batches held at most; older ones were prefetched for a plan that changed


class Prefetcher:
    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._pool: ThreadPoolExecutor | None = None
        self._ready: dict[Hashable, Future[Batch]] = {}

    def _host_batch(self, collate: Callable[[], Batch]) -> Batch:
        batch = collate()
        return batch.pin_memory() if self.pin else batch

    def submit(self, key: Hashable, collate: Callable[[], Batch]) -> None:
        if key in self._ready:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunehouse-collate")
        self._ready[key] = self._pool.submit(self._host_batch, collate)
        while len(self._ready) > KEEP:
            self._ready.pop(next(iter(self._ready))).cancel()

    def take(self, key: Hashable, collate: Callable[[], Batch]) -> Batch:
        """The host batch for ``key``: the prefetched one if there is one, else collated now."""
        future = self._ready.pop(key, None)
        return future.result() if future is not None else self._host_batch(collate)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ready.clear()
