"""Turning examples into model inputs: dynamic padding or packing without cross-contamination.

Packing puts several examples in one row, each with position ids starting again at 0, and passes
no attention mask. How examples are then kept apart depends on the attention implementation
(see attention.py): SDPA, eager and flex derive a block-diagonal causal mask from the position ids
of any number of rows (``collate_packed``); flash attention takes no mask and separates examples by
cumulative sequence lengths, which transformers only uses for a batch of one row, so it gets every
example of the micro-batch in a single row with its ``cu_seq_lens`` (``collate_varlen``). A step
sees the same examples packed or not; packing only changes the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from itertools import accumulate
from typing import Any

import torch

from .tokenization import IGNORE_INDEX, Example


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    real_tokens: int = 0  # non-pad tokens
    # Varlen layout only: example boundaries in the single row, and the longest example.
    cu_seq_lens: torch.Tensor | None = None
    max_length: int = 0

    @property
    def positions(self) -> int:
        """Token slots computed on, pad included."""
        return self.input_ids.numel()

    @property
    def tokens(self) -> int:
        return self.real_tokens

    def _map(self, fn: Any) -> Batch:
        moved = {
            f.name: fn(getattr(self, f.name))
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Page-locked host copies, so that ``to(..., non_blocking=True)`` overlaps with compute."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def model_inputs(self) -> dict[str, Any]:
        # No KV cache: transformers only derives the packed block mask when there is none.
        inputs: dict[str, Any] = {"input_ids": self.input_ids, "use_cache": False}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.cu_seq_lens is not None:
            # transformers would derive the same boundaries from the position ids, at the cost of a
            # device sync in every layer; passed explicitly, flash goes straight to its varlen kernel.
            inputs.update(
                cu_seq_lens_q=self.cu_seq_lens,
                cu_seq_lens_k=self.cu_seq_lens,
                max_length_q=self.max_length,
                max_length_k=self.max_length,
            )
        return inputs


def collate(examples: list[Example], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Dynamic padding: each batch is only as long as its longest example."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    real = sum(len(e.input_ids) for e in examples)
    return Batch(ids.to(device), labels.to(device), attention_mask=mask.to(device), real_tokens=real)


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into bins whose lengths sum to at most ``capacity``.

    Deterministic (ties keep input order), so a resumed run packs a batch exactly as before.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def plan_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """The packing of a micro-batch with the fewest computed positions (rows x widest row).

    Rows are as wide as their fullest bin, so filling one row to ``max_len`` and leaving the next
    half empty wastes as much as padding; trying each row count k with capacity about total/k finds
    a balanced layout. Ties go to more, shorter rows, whose attention is cheaper.
    """
    total, longest = sum(lengths), max(lengths)
    best: tuple[int, int] | None = None
    best_bins: list[list[int]] = []
    for k in range(1, len(lengths) + 1):
        capacity = min(max_len, max(longest, -(-total // k)))
        if capacity < longest:
            continue
        bins = pack_bins(lengths, capacity)
        cost = (len(bins) * max(sum(lengths[i] for i in b) for b in bins), -len(bins))
        if best is None or cost < best:
            best, best_bins = cost, bins
    return best_bins


def collate_packed(
    examples: list[Example], max_len: int, pad_id: int, device: torch.device | str = "cpu"
) -> Batch:
    bins = plan_rows([len(e.input_ids) for e in examples], max_len)
    width = max(sum(len(examples[i].input_ids) for i in b) for b in bins)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    labels = torch.full((len(bins), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    real = 0
    for row, members in enumerate(bins):
        at = _fill_row(ids[row], labels[row], positions[row], [examples[i] for i in members])
        real += at
        # The padded tail is a sequence of its own (positions restart), so nothing real attends to it.
        positions[row, at:] = torch.arange(width - at)
    return Batch(ids.to(device), labels.to(device), position_ids=positions.to(device), real_tokens=real)


def collate_varlen(examples: list[Example], device: torch.device | str = "cpu") -> Batch:
    """Every example of the micro-batch in one row, for flash (varlen) attention: no padding at all,
    position ids restarting per example, and the boundaries as ``cu_seq_lens``."""
    lengths = [len(e.input_ids) for e in examples]
    total = sum(lengths)
    ids = torch.empty((1, total), dtype=torch.long)
    labels = torch.empty((1, total), dtype=torch.long)
    positions = torch.empty((1, total), dtype=torch.long)
    _fill_row(ids[0], labels[0], positions[0], examples)
    bounds = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32)
    return Batch(
        ids.to(device),
        labels.to(device),
        position_ids=positions.to(device),
        real_tokens=total,
        cu_seq_lens=bounds.to(device),
        max_length=max(lengths),
    )


def pad_to_multiple(batch: Batch, multiple: int, pad_id: int) -> Batch:
    """``batch`` with its rows padded to a length that is a multiple of ``multiple`` (for compiled
    graphs, which then see a bounded set of shapes). The padding is never a target and never
    attended to from real tokens: a varlen row gets it as one more sequence, packed rows as a tail
    whose positions restart, padded rows behind their attention mask."""
    width = batch.input_ids.size(1)
    extra = -width % multiple if multiple > 1 else 0
    if extra == 0:
        return batch
    rows = batch.input_ids.size(0)

    def grow(t: torch.Tensor, fill: int | torch.Tensor) -> torch.Tensor:
        tail = fill.expand(rows, extra) if isinstance(fill, torch.Tensor) else torch.full((rows, extra), fill)
        return torch.cat([t, tail.to(t.dtype)], dim=1)

    restart = torch.arange(extra)
    padded = replace(
        batch,
        input_ids=grow(batch.input_ids, pad_id),
        labels=grow(batch.labels, IGNORE_INDEX),
        attention_mask=None if batch.attention_mask is None else grow(batch.attention_mask, 0),
        position_ids=None if batch.position_ids is None else grow(batch.position_ids, restart),
    )
    if batch.cu_seq_lens is not None:
        end = torch.tensor([width + extra], dtype=batch.cu_seq_lens.dtype)
        padded = replace(
            padded, cu_seq_lens=torch.cat([batch.cu_seq_lens, end]), max_length=max(batch.max_length, extra)
        )
    return padded


def _fill_row(
    ids: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, examples: list[Example]
) -> int:
    """Lay ``examples`` end to end from the start of a row; returns the tokens placed."""
    at = 0
    for e in examples:
        n = len(e.input_ids)
        ids[at : at + n] = torch.tensor(e.input_ids)
        labels[at : at + n] = torch.tensor(e.labels)
        # Unpacked, an example's first token is never a target; packed, it must not become the
        # target of the previous example's last token either.
        labels[at] = IGNORE_INDEX
        positions[at : at + n] = torch.arange(n)
        at += n
    return at
