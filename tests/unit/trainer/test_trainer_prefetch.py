"""Batches collated ahead on the background thread are the batches the step would collate itself,
and bucketing pads rows without adding targets or letting real tokens see the padding."""

from __future__ import annotations

import threading

import torch

from tunehouse.trainer.batching import Batch, collate, collate_varlen, pad_to_multiple
from tunehouse.trainer.forward import Forward
from tunehouse.trainer.prefetch import Prefetcher
from tunehouse.trainer.tokenization import IGNORE_INDEX, Example

CPU = torch.device("cpu")
EXAMPLES = [Example([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5]), Example([6, 7, 8], [6, 7, 8])]


def same(a: Batch, b: Batch) -> bool:
    fields = ("input_ids", "labels", "attention_mask", "position_ids", "cu_seq_lens")
    tensors = all(
        (getattr(a, f) is None and getattr(b, f) is None) or torch.equal(getattr(a, f), getattr(b, f))
        for f in fields
    )
    return tensors and (a.real_tokens, a.max_length) == (b.real_tokens, b.max_length)


def test_a_prefetched_batch_is_collated_on_the_worker_and_equals_one_collated_on_the_spot() -> None:
    threads: list[str] = []
    forward = Forward(CPU, False, True, False, 0, 64)

    def collate_here(examples: list[Example]) -> Batch:
        threads.append(threading.current_thread().name)
        return forward.host_batch(examples)

    prefetcher = Prefetcher(pin=False)
    prefetcher.submit("next", lambda: collate_here(EXAMPLES))
    ahead = prefetcher.take("next", lambda: collate_here(EXAMPLES))
    assert threads == ["tunehouse-collate_0"]  # the worker collated it; take did not collate again
    assert same(ahead, forward.host_batch(EXAMPLES))
    prefetcher.close()

    forward.prefetch([EXAMPLES])
    assert same(forward.batch(EXAMPLES), forward.host_batch(EXAMPLES))
    assert same(forward.batch(EXAMPLES), forward.host_batch(EXAMPLES))  # not asked ahead: collated now


def test_bucketing_a_varlen_row_adds_the_padding_as_a_sequence_of_its_own() -> None:
    row = pad_to_multiple(collate_varlen(EXAMPLES), 16, 0)
    assert row.input_ids.shape == (1, 16) and row.real_tokens == 8
    assert row.cu_seq_lens.tolist() == [0, 5, 8, 16] and row.max_length == 8
    assert row.position_ids[0, 8:].tolist() == list(range(8))
    assert (row.labels[0, 8:] == IGNORE_INDEX).all()


def test_bucketing_padded_rows_masks_the_padding() -> None:
    rows = pad_to_multiple(collate(EXAMPLES, 0), 8, 0)
    assert rows.input_ids.shape == (2, 8)
    assert rows.attention_mask.tolist() == [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5]
    assert (rows.labels[:, 5:] == IGNORE_INDEX).all()
    assert pad_to_multiple(rows, 8, 0) is rows  # already a multiple
