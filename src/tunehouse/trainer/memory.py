"""Running out of accelerator memory: retry once with half the micro-batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def with_oom_retry(
    step: Callable[[int], T], micro_batch: int, on_retry: Callable[[int], None]
) -> tuple[T, int]:
    """Run ``step(micro_batch)``; on out-of-memory, call ``on_retry(smaller)`` (which drops what it holds
    of the failed attempt, e.g. gradients) and run it once more with half the micro-batch. The step's
    example count is fixed by the caller, so halving the micro-batch doubles the accumulation.
    Returns (result, micro-batch that worked)."""
    try:
        return step(micro_batch), micro_batch
    except torch.OutOfMemoryError:
        if micro_batch <= 1:
            raise
    # Retried only here, past the except block: while the exception is being handled its traceback
    # keeps the failed attempt's frames, and with them its activations, alive.
    smaller = micro_batch // 2
    on_retry(smaller)
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # hand the freed blocks back so the retry can allocate them
    return step(smaller), smaller


class NoGradRetry:
    """No-grad passes (evaluation, the DPO reference) in micro-batches of at most the training size.

    On out-of-memory a pass is retried once with half, and later passes keep the smaller size; the
    results do not depend on it, because every pass sums over examples.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.micro: int | None = None  # set lower than the training micro-batch once a pass ran out

    def run(self, what: str, work: Callable[[int], T], train_micro: int) -> T:
        size = min(self.micro or train_micro, train_micro)

        def on_retry(smaller: int) -> None:
            self.log(f"out of memory during {what}: retrying with micro-batch {smaller} (was {size})")

        result, used = with_oom_retry(work, size, on_retry)
        if used != size:
            self.micro = used
        return result
